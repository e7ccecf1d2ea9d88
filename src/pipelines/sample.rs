//! `dydiff sample` (docs/cli.md, “sample”): forecasts an ensemble for every observed sequence with
//! the DDIM sampler of docs/process.md, “Sampling”, reproducibly.
//!
//! The `N × M` (sample, member) pairs are processed in network batches of `--batch` pairs. Each
//! pair's noise is drawn from its own Philox stream (docs/random.md, “Streams”) and every operation
//! acts on a pair independently, so the forecast is the same for any batch size and thread count.
//!
//! Per batch: the history in model space, `x_{τ_K} = Dyn_{γ̄_{τ_K}}(ε)`; then for `k = K … 1`
//! one network call and one fused DDIM step ([`Tensor::ddim_step_drawn`]), run by a
//! [`StepRunner`] (on a GPU, a CUDA graph replayed from the second step on); the final state's
//! future frames are `x̂_0`, mapped back to data space.

use crate::backend::Device;
use crate::data::channels::{self, Channel};
use crate::diffusion::ddim::{ddim_step_tensor, rows_tensor, timesteps, StepValues};
use crate::diffusion::schedule::{gamma_bar, Prediction};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::{DirOutput, FileOutput, Outputs};
use crate::io::{npy, picture};
use crate::memory;
use crate::model::{Model, PROCESS_FILE};
use crate::nn::UNet2D;
use crate::rng::{NoiseKey, NoiseRow, Purpose, MAX_MEMBERS};
use crate::tensor::step::StepRunner;
use crate::tensor::Tensor;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default number of (sample, member) pairs per network call.
pub const DEFAULT_BATCH: usize = 8;

/// Options of `dydiff sample`.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// The model folder; `None`: the built-in model.
    pub model: Option<PathBuf>,
    /// The observations; `None`: the built-in model's demo observations (only without `model`).
    pub input: Option<PathBuf>,
    pub out: PathBuf,
    pub members: usize,
    /// DDIM steps; `None`: [`DEFAULT_STEPS`] (refused for a DYffusion model when given).
    pub steps: Option<usize>,
    pub seed: u64,
    /// `None`: [`DEFAULT_DDIM_ETA`] (refused for a DYffusion model when given).
    pub ddim_eta: Option<f64>,
    pub init_noise: Option<PathBuf>,
    pub batch: usize,
    pub png: Option<PathBuf>,
    /// Frames to forecast, rolled out over windows of `S`; `None`: one window, `S` frames.
    pub lead: Option<usize>,
    pub device: Device,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// How the sampler runs, independent of files.
#[derive(Clone, Copy, Debug)]
pub struct SamplerSettings {
    pub members: usize,
    pub steps: usize,
    pub seed: u64,
    pub ddim_eta: f64,
    pub batch: usize,
    pub device: Device,
}

impl SamplerSettings {
    fn validate(&self) -> Result<()> {
        if self.members == 0 || self.members > MAX_MEMBERS as usize {
            return Err(Error::Invalid(format!(
                "--members: expected 1 to {MAX_MEMBERS}, found {}",
                self.members
            )));
        }
        if self.steps == 0 {
            return Err(Error::Invalid(
                "--steps: expected at least 1, found 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.ddim_eta) {
            return Err(Error::Invalid(format!(
                "--ddim-eta: expected a value in [0, 1], found {}",
                self.ddim_eta
            )));
        }
        if self.batch == 0 {
            return Err(Error::Invalid(
                "--batch: expected at least 1, found 0".into(),
            ));
        }
        Ok(())
    }
}

/// Time spent, for the benchmark report.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleTimes {
    /// Seconds in network evaluations (on a GPU, in the steps: network and DDIM update run as
    /// one graph, asynchronously, so this is the time spent launching them and waiting for the
    /// device).
    pub network: f64,
    /// Seconds in everything else of the sampling loop (noise, dynamics, DDIM updates, copies).
    pub other: f64,
}

/// Samples `members` forecasts for each of the `n` observed histories `obs (n, P+1, C·H·W)` (data
/// space). `init_noise`, if given, is `ε` of docs/process.md, “Initial state”,
/// `(n, M, S, C·H·W)` in model space.
/// `tick(steps)` is called after each network call with the number of (pair, step) units done.
/// Returns the forecasts `(n, M, S, C·H·W)` in data space.
/// A forecast that would hold NaN or infinite values is refused, naming the likely cause.
pub fn forecast(
    model: &Model,
    s: &SamplerSettings,
    obs: &[f32],
    n: usize,
    init_noise: Option<&[f32]>,
    tick: impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    let source = format!("the model's {PROCESS_FILE}");
    let window = Window {
        index: 0,
        per_pair: false,
    };
    forecast_from(model, &source, s, obs, n, window, init_noise, tick)
}

/// Rolls the forecast out over `lead` frames (docs/process.md, “Forecasting beyond one
/// window”): `⌈lead/S⌉` windows per member, each next window's history the last `P+1` frames of
/// that member's trajectory so far (its observations, then its own forecasts, in data space).
/// Window `w` draws its noise from the streams of step `(w << 24) | k`, so the first window is
/// [`forecast`] itself. `obs`, `init_noise` (the first window's) and `tick` as for [`forecast`];
/// returns `(n, M, lead, C·H·W)` in data space.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    model: &Model,
    s: &SamplerSettings,
    obs: &[f32],
    n: usize,
    lead: usize,
    init_noise: Option<&[f32]>,
    tick: impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    let source = format!("the model's {PROCESS_FILE}");
    rollout_from(model, &source, s, obs, n, lead, init_noise, tick)
}

/// The most windows of a roll-out: the window index has the top 8 bits of the noise counter's
/// step word (docs/random.md, “Streams”).
pub const MAX_WINDOWS: usize = 1 << 8;

/// [`rollout`]; `source` names the file the model's `data_scale` came from, for errors.
#[allow(clippy::too_many_arguments)]
fn rollout_from(
    model: &Model,
    source: &str,
    s: &SamplerSettings,
    obs: &[f32],
    n: usize,
    lead: usize,
    init_noise: Option<&[f32]>,
    mut tick: impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    let p = &model.process;
    let frames = (p.history, p.future, p.frame_len());
    roll_out(frames, s.members, obs, n, lead, |histories, window| {
        let noise = if window.index == 0 { init_noise } else { None };
        forecast_from(model, source, s, histories, n, window, noise, &mut tick)
    })
}

/// The windows of `S = fut` frames that a roll-out over `lead` frames takes; `--lead` must give
/// 1 to [`MAX_WINDOWS`] of them.
pub(crate) fn check_lead(lead: usize, fut: usize) -> Result<usize> {
    let windows = lead.div_ceil(fut);
    if lead == 0 || windows > MAX_WINDOWS {
        return Err(Error::Invalid(format!(
            "--lead: expected 1 to {} frames ({MAX_WINDOWS} windows of {fut}), found {lead}",
            MAX_WINDOWS * fut
        )));
    }
    Ok(windows)
}

/// Rolls a method's window forecasts out over `lead` frames (docs/process.md, “Forecasting
/// beyond one window”) for `members` members of each of the `n` histories `obs`
/// `(n, P+1, C·H·W)`: `window(histories, w)` forecasts `S` frames for every (sample, member)
/// pair, `(n·M, S, C·H·W)`, from the first window's `obs` (per sample) or, later, the last
/// `P+1` frames of each pair's trajectory (per pair). `frames` is `(P+1, S, C·H·W)`. Returns
/// `(n, M, lead, C·H·W)`.
pub(crate) fn roll_out(
    (hist, fut, e): (usize, usize, usize),
    members: usize,
    obs: &[f32],
    n: usize,
    lead: usize,
    mut window: impl FnMut(&[f32], Window) -> Result<(Vec<f32>, SampleTimes)>,
) -> Result<(Vec<f32>, SampleTimes)> {
    let windows = check_lead(lead, fut)?;
    let pairs = n * members;
    let mut times = SampleTimes::default();
    // each pair's trajectory so far: its history, then its forecasts (data space)
    let per = (hist + windows * fut) * e;
    let mut traj = vec![0.0f32; pairs * per];
    for (i, t) in traj.chunks_mut(per).enumerate() {
        let sample = i / members;
        t[..hist * e].copy_from_slice(&obs[sample * hist * e..][..hist * e]);
    }
    for w in 0..windows {
        let histories: std::borrow::Cow<[f32]> = if w == 0 {
            obs.into()
        } else {
            traj.chunks(per)
                .flat_map(|t| t[w * fut * e..][..hist * e].iter().copied())
                .collect::<Vec<f32>>()
                .into()
        };
        let win = Window {
            index: w as u32,
            per_pair: w > 0,
        };
        let (fc, t) = window(&histories, win)?;
        times.network += t.network;
        times.other += t.other;
        for (traj, f) in traj.chunks_mut(per).zip(fc.chunks(fut * e)) {
            traj[(hist + w * fut) * e..][..fut * e].copy_from_slice(f);
        }
    }
    let out = traj
        .chunks(per)
        .flat_map(|t| t[hist * e..][..lead * e].iter().copied())
        .collect();
    Ok((out, times))
}

/// Which window of a roll-out [`forecast_from`] samples: its index (in the noise counter) and
/// whether the histories are given per (sample, member) pair rather than per sample.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub index: u32,
    pub per_pair: bool,
}

/// [`forecast`] for one window of a roll-out; `source` names the file the model's `data_scale`
/// came from, for errors.
#[allow(clippy::too_many_arguments)]
fn forecast_from(
    model: &Model,
    source: &str,
    s: &SamplerSettings,
    obs: &[f32],
    n: usize,
    window: Window,
    init_noise: Option<&[f32]>,
    mut tick: impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    s.validate()?;
    check_sample_count(n)?;
    let p = &model.process;
    let (hist, fut, e) = (p.history, p.future, p.frame_len());
    let (c, h, w) = (p.channels, p.height, p.width);
    let per_sample = if window.per_pair { s.members } else { 1 };
    if n.checked_mul(per_sample * hist * e) != Some(obs.len()) {
        return Err(Error::shape(
            "forecast",
            format!(
                "the histories hold {} values; expected N {n} × {per_sample} × history {hist} × C·H·W {e}",
                obs.len()
            ),
        ));
    }
    // the frames the process diffuses: the future, or with diffuse_history all of them
    let dn = p.diffused();
    let noise_len = memory::array(&[n, s.members, dn, e], 1);
    if let Some(eps) = init_noise.filter(|eps| Some(eps.len() as u64) != noise_len) {
        return Err(Error::shape(
            "forecast",
            format!(
                "the initial noise holds {} values; expected N {n} × M {} × {dn} diffused frames × C·H·W {e}",
                eps.len(),
                s.members
            ),
        ));
    }
    let (scale, shift) = (p.data_scale, p.data_shift);
    let ts = timesteps(&model.scheduler, s.steps)?;
    let members = s.members;
    let pairs = n * members;
    let mut out = vec![0.0f32; pairs * fut * e];
    let mut times = SampleTimes::default();
    // Non-finite values of x̂_0 in model space, and finite ones that leave float32 in data space
    // (the largest of those in model space).
    let (mut bad_model, mut bad_data, mut far) = (0usize, 0usize, 0.0f64);
    // with several ranks, each takes its share of the batches (docs/distributed.md)
    let world = world();
    let parts = world.batch_shares(pairs, s.batch);
    let mine = parts[world.rank()].clone();
    for first in mine.clone().step_by(s.batch) {
        let b = s.batch.min(mine.end - first);
        let rows: Vec<NoiseRow> = (first..first + b)
            .map(|i| NoiseRow {
                sample: (i / members) as u32,
                member: (i % members) as u32,
            })
            .collect();
        let clock = Instant::now();
        let mut h_data = Vec::with_capacity(b * hist * e);
        for (i, r) in (first..).zip(&rows) {
            let row = if window.per_pair {
                i
            } else {
                r.sample as usize
            };
            let src = &obs[row * hist * e..][..hist * e];
            h_data.extend(src.iter().map(|&v| ((f64::from(v) - shift) / scale) as f32));
        }
        let history = Tensor::from_vec(h_data, &[b, hist * c, h, w], s.device)?;
        let eps = match init_noise {
            Some(all) => Tensor::from_vec(
                all[first * dn * e..(first + b) * dn * e].to_vec(),
                &[b, dn * c, h, w],
                s.device,
            )?,
            None => Tensor::randn(
                NoiseKey {
                    seed: s.seed,
                    purpose: Purpose::InitNoise,
                    step: window.index << 24,
                },
                &rows,
                &[b, dn * c, h, w],
                s.device,
            )?,
        };
        let gb_start = gamma_bar(p.dyn_eta, model.schedule.alphas_cumprod[ts[0]]);
        let x_start = eps.dynamics(dn, &vec![gb_start; b], false)?;
        let mut state = Tensor::cat_channels(&[&history, &x_start])?;
        let noise_rows = rows_tensor(&rows, s.device)?;
        // One step — the network and the fused DDIM update, its fresh noise (σ > 0) drawn inside
        // — on (state, timesteps, the step's values, noise rows); on a GPU replayed as a CUDA
        // graph from the second step on.
        let scope = (hist, fut, p.diffuse_history);
        let in_network = std::cell::Cell::new(0.0);
        let step = |x: &[Tensor]| -> Result<Vec<Tensor>> {
            let clock = Instant::now();
            let eps_hat = model.unet.forward(&x[0], &x[1])?;
            in_network.set(in_network.get() + clock.elapsed().as_secs_f64());
            Ok(vec![x[0].ddim_step_drawn(&eps_hat, &x[2], &x[3], scope)?])
        };
        let mut runner = StepRunner::new(s.device)?;
        times.other += clock.elapsed().as_secs_f64();
        for (i, &t) in ts.iter().enumerate() {
            let clock = Instant::now();
            let v = StepValues::new(
                &model.schedule,
                p.dyn_eta,
                s.ddim_eta,
                t,
                ts.get(i + 1).copied(),
            );
            let key = NoiseKey {
                seed: s.seed,
                purpose: Purpose::StepNoise,
                step: (window.index << 24) | (ts.len() - i) as u32,
            };
            let tt = Tensor::from_vec(vec![t as f32; b], &[b], s.device)?;
            let values = ddim_step_tensor(&v.coef(), key, s.device)?;
            in_network.set(0.0);
            let next = runner.run(&[&state, &tt, &values, &noise_rows], &step)?;
            state = next.into_iter().next().expect("the step returns the state");
            let total = clock.elapsed().as_secs_f64();
            // a replayed graph runs network and update as one
            let network = match runner {
                StepRunner::Direct => in_network.get(),
                StepRunner::Graph(_) => total,
            };
            times.network += network;
            times.other += total - network;
            tick(b);
        }
        let clock = Instant::now();
        // the forecast: the last S frames of the final x̂_0
        let x0 = state
            .slice_channels((hist + dn - fut) * c, (hist + dn) * c)?
            .to_vec()?;
        for (o, v) in out[first * fut * e..][..b * fut * e].iter_mut().zip(x0) {
            *o = (f64::from(v) * scale + shift) as f32;
            if !v.is_finite() {
                bad_model += 1;
            } else if !o.is_finite() {
                bad_data += 1;
                far = far.max(f64::from(v.abs()));
            }
        }
        times.other += clock.elapsed().as_secs_f64();
    }
    world.all_gather_parts(&mut out, &parts, fut * e)?;
    let mut counts = [bad_model as u64, bad_data as u64];
    world.sum_u64(&mut counts)?;
    let (bad_model, bad_data) = (counts[0] as usize, counts[1] as usize);
    let far = world.max_f64(far)?;
    // every rank has the whole forecast: the checks below fail alike on every rank
    world.agree(check_forecast(
        &out,
        (bad_model, bad_data, far),
        init_noise,
        (scale, source),
    ))?;
    Ok((out, times))
}

/// Refuses a forecast `out` (data space) holding non-finite values: `bad_model` of them already in
/// model space, `bad_data` finite there but beyond float32 in data space (up to `far` in model
/// space), naming the likely cause.
fn check_forecast(
    out: &[f32],
    (bad_model, bad_data, far): (usize, usize, f64),
    init_noise: Option<&[f32]>,
    (scale, source): (f64, &str),
) -> Result<()> {
    if bad_model > 0 {
        let nan = out.iter().filter(|v| v.is_nan()).count();
        let cause = match init_noise {
            Some(eps) => format!(
                "the initial noise reaches {:.3e} (expected standard normal values)",
                eps.iter().fold(0.0f32, |a, v| a.max(v.abs()))
            ),
            None => "weights or histories that drive the network beyond float32".to_string(),
        };
        return Err(Error::Invalid(format!(
            "the forecast holds {} non-finite values ({nan} NaN, {} infinite): the sampler's model-space state left float32; likely cause: {cause}",
            bad_model + bad_data,
            bad_model + bad_data - nan
        )));
    }
    if bad_data > 0 {
        return Err(Error::Invalid(format!(
            "the forecast holds {bad_data} infinite values: data_scale {scale:e} in {source} maps model-space values up to {far:.3e} beyond float32 in data space (at most {:.3e}); expected a data_scale near the data's standard deviation",
            f32::MAX
        )));
    }
    Ok(())
}

/// Refuses more sequences than the noise counter's 32-bit sample index tells apart.
fn check_sample_count(n: usize) -> Result<()> {
    if n as u64 > 1 << 32 {
        return Err(Error::Invalid(format!(
            "{n} sequences: expected at most 2^32 = 4294967296 per run (the noise of each is keyed by a 32-bit sample index); split the observations"
        )));
    }
    Ok(())
}

/// Reads the observations and checks them against the model's frames: `(N, L, C, H, W)` with
/// `L ≥ P + 1`, finite, and within float32 in model space under `(data_scale, data_shift)`.
fn read_observations(path: &Path, f: &Frames, (scale, shift): (f64, f64)) -> Result<npy::Array> {
    let a = npy::read(path)?;
    let ok = matches!(*a.shape, [n, l, c, h, w] if n > 0 && l >= f.history && c == f.channels && h == f.height && w == f.width);
    if !ok {
        return Err(Error::bad_file(
            path,
            format!(
                "expected observations of shape (N, L, C, H, W) = (N ≥ 1, L ≥ {}, {}, {}, {}) for this model, found {:?}",
                f.history, f.channels, f.height, f.width, a.shape
            ),
        ));
    }
    npy::check_finite(path, &a)?;
    check_sample_count(a.shape[0]).map_err(|e| Error::bad_file(path, e.to_string()))?;
    crate::model::check_model_space(path, &a.data, scale, shift, "from the model's dydiff.json")?;
    Ok(a)
}

/// Refuses a run whose forecast and work arrays cannot fit in memory.
fn check_memory(model: &Model, n: usize, o: &SampleOptions) -> Result<()> {
    let p = &model.process;
    let (e, frames) = (p.frame_len(), p.input_frames());
    let batch = n.checked_mul(o.members).map(|pairs| pairs.min(o.batch));
    let lead = o.lead.unwrap_or(p.future);
    let shape = [n, o.members, lead, p.channels, p.height, p.width];
    let forecast = memory::array(&shape, 4);
    let need = memory::sum(&[
        // the forecast, the bytes of its file, and the initial noise if read from a file
        forecast,
        forecast,
        if o.init_noise.is_some() {
            forecast
        } else {
            Some(0)
        },
        // the histories in data space
        memory::array(&[n, p.history, e], 4),
        // per batch: the state, the noise, the network output and the step's result
        batch.and_then(|b| memory::array(&[4, b, frames, e], 4)),
        batch.and_then(|b| model.unet.config.min_activation_bytes(b, p.height, p.width)),
    ]);
    memory::ensure(
        &format!(
            "--members {}: the forecast {shape:?} (float32) and the sampler's work arrays",
            o.members
        ),
        need,
    )
}

/// Reads `--init-noise`: `(N, M, S, C, H, W)` in model space, finite and of magnitude at most
/// [`MAX_NOISE`].
fn read_init_noise(path: &Path, model: &Model, n: usize, members: usize) -> Result<npy::Array> {
    let p = &model.process;
    let want = [n, members, p.diffused(), p.channels, p.height, p.width];
    let a = npy::read(path)?;
    if a.shape != want {
        let frames = if p.diffuse_history { "L" } else { "S" };
        return Err(Error::bad_file(
            path,
            format!(
                "expected initial noise of shape (N, M, {frames}, C, H, W) = {want:?}, found {:?}",
                a.shape
            ),
        ));
    }
    npy::check_finite(path, &a)?;
    let far = a.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if far > MAX_NOISE {
        return Err(Error::bad_file(
            path,
            format!(
                "values up to {far:.3e}: expected standard normal noise (magnitudes at most {MAX_NOISE:e})"
            ),
        ));
    }
    Ok(a)
}

/// The largest magnitude `--init-noise` may hold: standard normal noise beyond it has
/// probability 0 in float32, so such a file is not noise.
const MAX_NOISE: f32 = 1e4;

/// The progress bar of rank 0 over its share of `pairs` pairs taken in batches of `batch`, each
/// pair `units` (pair, step) units of which a network call does `per_call`; hidden on the other
/// ranks (docs/distributed.md).
fn rank_progress(
    pairs: usize,
    batch: usize,
    units: usize,
    per_call: usize,
    enabled: bool,
) -> indicatif::ProgressBar {
    let w = world();
    let mine = w.batch_shares(pairs, batch)[w.rank()].len();
    progress_bar(mine * units, per_call, enabled && w.is_root())
}

/// A progress bar over (pair, step) units with ETA and forecasts per second, on stderr; hidden
/// when stderr is not a terminal.
fn progress_bar(total: usize, steps: usize, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template(
        "sampling {bar:30} {percent:>3}%  {msg}  elapsed {elapsed_precise}, ETA {eta_precise}",
    )
    .expect("valid template")
    .with_key(
        "msg",
        move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let per_s = st.per_sec() / steps as f64;
            let _ = write!(w, "{:.2} forecasts/s", per_s);
        },
    );
    bar.set_style(style);
    bar
}

/// What a run did and where its time went.
#[derive(Clone, Debug)]
pub struct SampleReport {
    pub out: PathBuf,
    pub samples: usize,
    pub members: usize,
    pub future: usize,
    /// Network calls per member's forecast.
    pub network_calls: usize,
    /// Reading the model folder and the input files.
    pub load_s: f64,
    pub times: SampleTimes,
    /// Writing the forecast and the pictures.
    pub write_s: f64,
}

impl std::fmt::Display for SampleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.times;
        write!(
            f,
            "wrote {} ({} samples × {} members × {} frames, {} network calls per member) in {:.3} s: load {:.3} s, network {:.3} s, sampler other {:.3} s, write {:.3} s",
            self.out.display(),
            self.samples,
            self.members,
            self.future,
            self.network_calls,
            self.load_s + t.network + t.other + self.write_s,
            self.load_s,
            t.network,
            t.other,
            self.write_s
        )
    }
}

/// Runs `dydiff sample`: checks the locations of `--out` and `--png`, reads the model and
/// observations, samples (DDIM for a Dynamical Diffusion or standard model, cold sampling for a
/// DYffusion one), and writes the forecast `(N, M, S, C, H, W)` and, with `--png`, one picture per
/// sample, all together.
pub fn run(o: &SampleOptions) -> Result<SampleReport> {
    let clock = Instant::now();
    let mut outputs = Outputs::new();
    let out = outputs.npy_file("--out", &o.out)?;
    let record = outputs.file("--out", &window_record_path(&o.out))?;
    let png = o
        .png
        .as_ref()
        .map(|d| outputs.dir("--png", d))
        .transpose()?;
    for (flag, input) in [
        ("--model", &o.model),
        ("--input", &o.input),
        ("--init-noise", &o.init_noise),
    ] {
        if let Some(p) = input {
            outputs.check_input(flag, p)?;
        }
    }
    let (model_dir, input) = match (&o.model, &o.input) {
        (Some(m), Some(i)) => (m.clone(), i.clone()),
        (Some(_), None) => {
            return Err(Error::Invalid(
                "--input: required with --model (the demo observations go with the built-in model only)".into(),
            ))
        }
        (None, input) => {
            let (m, demo) = crate::model::default_model::materialize()?;
            (m, input.clone().unwrap_or(demo))
        }
    };
    if crate::model::method_of(&model_dir)? == "dyffusion" {
        return run_cold(o, &model_dir, &input, outputs, (out, record, png), clock);
    }
    let settings = SamplerSettings {
        members: o.members,
        steps: o.steps.unwrap_or(DEFAULT_STEPS),
        seed: o.seed,
        ddim_eta: o.ddim_eta.unwrap_or(DEFAULT_DDIM_ETA),
        batch: o.batch,
        device: o.device,
    };
    settings.validate()?;
    let model = Model::load(&model_dir, o.device)?;
    timesteps(&model.scheduler, settings.steps)?;
    let p = &model.process;
    let frames = Frames {
        history: p.history,
        channels: p.channels,
        height: p.height,
        width: p.width,
    };
    let obs = read_observations(&input, &frames, (p.data_scale, p.data_shift))?;
    let names = picture_channels(&input, p.channels, png.is_some())?;
    let (n, e) = (obs.shape[0], p.frame_len());
    check_memory(&model, n, o)?;
    let noise = match &o.init_noise {
        Some(path) => Some(read_init_noise(path, &model, n, o.members)?),
        None => None,
    };
    let load_s = clock.elapsed().as_secs_f64();
    let history = histories(&obs, n, p.history, e);
    let lead = o.lead.unwrap_or(p.future);
    let windows = check_lead(lead, p.future)?;
    let steps = settings.steps;
    let bar = rank_progress(n * o.members, o.batch, steps * windows, steps, o.progress);
    let source = model_dir.join(PROCESS_FILE).display().to_string();
    // every rank has read the model and the inputs, or all stop here
    world().begin_collectives(Ok(()))?;
    let (fc, times) = rollout_from(
        &model,
        &source,
        &settings,
        &history,
        n,
        lead,
        noise.as_ref().map(|a| a.data.as_slice()),
        |b| bar.inc(b as u64),
    )?;
    world().end_collectives();
    bar.finish_and_clear();
    let clock = Instant::now();
    if world().is_root() {
        let window = window_record(o, &model_dir, &input, (&obs, &frames, lead), Some(steps));
        let check = (p.data_scale, p.data_shift, causes_ddim(o, &model));
        let files = (out, record, png);
        write_forecast(
            outputs,
            files,
            (&obs, &frames, &names),
            (&fc, o.members, lead),
            (&window, check),
        )?;
    }
    Ok(SampleReport {
        out: o.out.clone(),
        samples: n,
        members: o.members,
        future: lead,
        network_calls: steps * windows,
        load_s,
        times,
        write_s: clock.elapsed().as_secs_f64(),
    })
}

/// The default number of DDIM steps: chosen with [`DEFAULT_DDIM_ETA`] on validation sequences
/// for the built-in model (README, “Sampling steps”; `experiments/builtin.sh`): the fewest steps
/// whose fair CRPS is within 1% of the lowest (more steps do not make its forecasts worse).
pub const DEFAULT_STEPS: usize = 20;

/// The default DDIM stochasticity (1: DDPM-like), chosen with [`DEFAULT_STEPS`].
pub const DEFAULT_DDIM_ETA: f64 = 1.0;

/// The frame layout observations must have for a model.
#[derive(Clone, Copy, Debug)]
struct Frames {
    history: usize,
    channels: usize,
    height: usize,
    width: usize,
}

/// The first `history` frames of the first `n` sequences of `obs` `(N, L, …)`, `(n, history, e)`.
pub(crate) fn histories(obs: &npy::Array, n: usize, history: usize, e: usize) -> Vec<f32> {
    let l = obs.shape[1];
    let mut out = Vec::with_capacity(n * history * e);
    for i in 0..n {
        out.extend_from_slice(&obs.data[i * l * e..][..history * e]);
    }
    out
}

/// How far, in standard deviations of the training data (`data_scale`) from its mean
/// (`data_shift`), a forecast value may lie before `sample` warns: the training data of the
/// built-in model reach 4.3.
pub const FAR_BEYOND_DATA: f64 = 10.0;

/// A warning (one line, the run still writes) when a data-space forecast `fc` lies more than
/// [`FAR_BEYOND_DATA`] training standard deviations from the training mean, naming the likely
/// `causes`; `None` otherwise.
pub fn magnitude_warning(fc: &[f32], (scale, shift): (f64, f64), causes: &str) -> Option<String> {
    let (far, count) = fc.iter().fold((0.0f64, 0usize), |(far, count), &v| {
        let z = ((f64::from(v) - shift) / scale).abs();
        (far.max(z), count + usize::from(z > FAR_BEYOND_DATA))
    });
    (count > 0).then(|| {
        format!(
            "{count} forecast values lie more than {FAR_BEYOND_DATA} × data_scale from data_shift (the farthest {far:.1} ×, {:.4e} in data units); the training data's values lie within a few: likely {causes}",
            shift + far * scale
        )
    })
}

/// The likely causes of a diverging DDIM forecast, for [`magnitude_warning`].
fn causes_ddim(o: &SampleOptions, model: &Model) -> String {
    let p = &model.process;
    let mut causes = Vec::new();
    if p.padding_mode.is_zeros() {
        causes.push("zero padding on a periodic field (the border pixels diverge; train with --padding-mode circular)".to_string());
    }
    if model.scheduler.prediction == Prediction::Epsilon {
        causes.push("a network that predicts the noise, whose error grows as 1/√ᾱ at the noisiest timesteps where many --steps spend more steps (try fewer --steps, or train with --prediction-type v_prediction)".to_string());
    }
    if o.ddim_eta.unwrap_or(DEFAULT_DDIM_ETA) == 0.0 {
        causes.push(format!(
            "deterministic DDIM (--ddim-eta 0) over many steps ({}) with an imperfect network (try fewer --steps or --ddim-eta 1)",
            o.steps.unwrap_or(DEFAULT_STEPS)
        ));
    }
    causes.push("a network trained too briefly, or observations unlike the training data".into());
    causes.join("; or ")
}

/// Where `sample --out FORECAST.npy` records the forecast's window: `FORECAST.window.json`.
pub fn window_record_path(out: &Path) -> PathBuf {
    out.with_extension("window.json")
}

/// The forecast's window (docs/cli.md, “The forecast's window”), written beside it so that
/// `eval` scores the frames that were forecast: the input file and its frame count, the frames
/// read as history (`0 … P`, in the input's numbering), the first forecast frame (`P + 1`), the
/// lead, and the model and sampler settings.
fn window_record(
    o: &SampleOptions,
    model_dir: &Path,
    input: &Path,
    (obs, f, lead): (&npy::Array, &Frames, usize),
    steps: Option<usize>,
) -> Value {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    json!({
        "input": absolute(input),
        "input_frames": obs.shape[1],
        "samples": obs.shape[0],
        "history_frames": f.history,
        "first_forecast_frame": f.history,
        "lead": lead,
        "model": if o.model.is_some() { absolute(model_dir) } else { "built-in".to_string() },
        "members": o.members,
        "steps": steps,
        "ddim_eta": steps.map(|_| o.ddim_eta.unwrap_or(DEFAULT_DDIM_ETA)),
        "seed": o.seed,
    })
}

/// The channels the pictures name: those of the input's channel record (`INPUT.channels.json`,
/// written by `dydiff data`), else `C0, C1, …`; the record is read only for `--png`.
fn picture_channels(input: &Path, count: usize, png: bool) -> Result<Vec<Channel>> {
    let recorded = if png {
        channels::read(input, count)?
    } else {
        None
    };
    Ok(recorded.unwrap_or_else(|| channels::numbered(count)))
}

/// Writes the forecast `(N, M, lead, C, H, W)`, its window record and, if asked, one picture per
/// sample (with the truth when the observations hold every lead), then commits all outputs
/// together; first warns (one line) when the forecast lies far beyond the training data
/// (`data_scale`, `data_shift`), naming the likely `causes`.
fn write_forecast(
    mut outputs: Outputs,
    (out, record, png): (FileOutput, FileOutput, Option<DirOutput>),
    (obs, f, names): (&npy::Array, &Frames, &[Channel]),
    (fc, members, lead): (&[f32], usize, usize),
    (record_json, (scale, shift, causes)): (&Value, (f64, f64, String)),
) -> Result<()> {
    if let Some(w) = magnitude_warning(fc, (scale, shift), &causes) {
        eprintln!("dydiff: warning: {w}");
    }
    let (n, l) = (obs.shape[0], obs.shape[1]);
    let e = f.channels * f.height * f.width;
    let shape = [n, members, lead, f.channels, f.height, f.width];
    outputs.write(out, &npy::encode(&shape, fc))?;
    let text = serde_json::to_string_pretty(record_json).expect("the record serialises");
    outputs.write(record, text.as_bytes())?;
    if let Some(dir) = png {
        let model = record_json["model"].as_str().unwrap_or("");
        let model = Path::new(model)
            .file_name()
            .map_or(model.to_string(), |m| m.to_string_lossy().into_owned());
        let sampler = match (
            record_json["steps"].as_u64(),
            record_json["ddim_eta"].as_f64(),
        ) {
            (Some(k), Some(eta)) => format!("{k} DDIM STEPS, ETA {eta}"),
            _ => "COLD SAMPLING".to_string(),
        };
        for i in 0..n {
            let title = format!("SAMPLE {i}   MODEL {}   {sampler}", model.to_uppercase());
            let truth =
                (l >= f.history + lead).then(|| &obs.data[i * l * e + f.history * e..][..lead * e]);
            let pic = picture::Forecast {
                channels: names,
                height: f.height,
                width: f.width,
                history: &obs.data[i * l * e..][..f.history * e],
                truth,
                members: &fc[i * members * lead * e..][..members * lead * e],
                n_members: members,
                future: lead,
                title: &title,
            };
            outputs.write_in(dir, &format!("sample_{i:04}.png"), &picture::render(&pic)?)?;
        }
    }
    outputs.commit()
}

/// Refuses a DYffusion folder whose interpolator is short of its recorded steps (the forecaster
/// must be trained on the finished one), naming the command that finishes it.
fn unfinished_interpolator(dir: &Path, c: &crate::model::dyffusion::DyffusionConfig) -> Result<()> {
    let planned = c
        .training
        .as_ref()
        .and_then(|t| t["interpolator"]["steps"].as_u64());
    let state = dir.join(super::train_dyffusion::STATE_I);
    let reached = super::train::State::checkpoint_step(&state).ok();
    match (reached, planned) {
        (Some(k), Some(n)) if (k as u64) < n => Err(Error::bad_file(
            dir,
            format!("a DYffusion folder whose interpolator is unfinished (step {k} of {n}) and without a forecaster; finish the interpolator with dydiff train --method dyffusion --stage interpolator --resume (its flags), then train the forecaster with --stage forecaster"),
        )),
        _ => Ok(()),
    }
}

/// `dydiff sample` on a DYffusion folder: cold sampling (docs/dyffusion.md). `--steps`,
/// `--ddim-eta` and `--init-noise` belong to DDIM and are refused.
fn run_cold(
    o: &SampleOptions,
    model_dir: &Path,
    input: &Path,
    outputs: Outputs,
    files: (FileOutput, FileOutput, Option<DirOutput>),
    clock: Instant,
) -> Result<SampleReport> {
    let settings = super::cold::ColdSettings {
        members: o.members,
        seed: o.seed,
        batch: o.batch,
        device: o.device,
    };
    SamplerSettings {
        members: o.members,
        steps: 1,
        seed: o.seed,
        ddim_eta: 0.0,
        batch: o.batch,
        device: o.device,
    }
    .validate()?;
    let model = crate::model::load_dyffusion(model_dir, o.device)?;
    for (flag, given) in [
        ("--steps", o.steps.is_some()),
        ("--ddim-eta", o.ddim_eta.is_some()),
        ("--init-noise", o.init_noise.is_some()),
    ] {
        if given {
            return Err(Error::Invalid(format!(
                "{flag}: a DDIM option, but {} is a DYffusion model (cold sampling: its steps are the horizon plus additional_steps of its dydiff.json, its spread comes from the interpolator's dropout); leave {flag} out",
                model_dir.display()
            )));
        }
    }
    if model.forecaster.is_none() {
        unfinished_interpolator(model_dir, &model.config)?;
    }
    let forecaster = model.forecaster(model_dir)?;
    let c = &model.config;
    let frames = Frames {
        history: c.history,
        channels: c.channels,
        height: c.height,
        width: c.width,
    };
    let obs = read_observations(input, &frames, (c.data_scale, c.data_shift))?;
    let names = picture_channels(input, c.channels, files.2.is_some())?;
    let (n, e) = (obs.shape[0], c.frame_len());
    let lead = o.lead.unwrap_or(c.future);
    let shape = [n, o.members, lead, c.channels, c.height, c.width];
    let forecast = memory::array(&shape, 4);
    let batch = n.checked_mul(o.members).map(|pairs| pairs.min(o.batch));
    let net = |u: &UNet2D| batch.and_then(|b| u.config.min_activation_bytes(b, c.height, c.width));
    memory::ensure(
        &format!(
            "--members {}: the forecast {shape:?} (float32) and the sampler's work arrays",
            o.members
        ),
        memory::sum(&[
            forecast,
            forecast,
            memory::array(&[n, c.history, e], 4),
            batch.and_then(|b| memory::array(&[4 + c.future, b, c.history + 1, e], 4)),
            net(&model.interpolator),
            net(forecaster),
        ]),
    )?;
    let load_s = clock.elapsed().as_secs_f64();
    let history = histories(&obs, n, c.history, e);
    let windows = check_lead(lead, c.future)?;
    super::cold::check_calls(c)?;
    let calls = c.calls_per_window();
    let bar = rank_progress(n * o.members, o.batch, calls * windows, calls, o.progress);
    // every rank has read the model and the inputs, or all stop here
    world().begin_collectives(Ok(()))?;
    let (fc, times) =
        super::cold::forecast(&model, forecaster, &settings, &history, n, lead, |b| {
            bar.inc(b as u64)
        })?;
    world().end_collectives();
    bar.finish_and_clear();
    let clock = Instant::now();
    if world().is_root() {
        let causes = "a network trained too briefly, or observations unlike the training data";
        let check = (c.data_scale, c.data_shift, causes.to_string());
        let record = window_record(o, model_dir, input, (&obs, &frames, lead), None);
        write_forecast(
            outputs,
            files,
            (&obs, &frames, &names),
            (&fc, o.members, lead),
            (&record, check),
        )?;
    }
    Ok(SampleReport {
        out: o.out.clone(),
        samples: n,
        members: o.members,
        future: lead,
        network_calls: calls * windows,
        load_s,
        times,
        write_s: clock.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magnitude_warning_counts_values_far_beyond_the_data() {
        // data_scale 2, data_shift 1: 21 is exactly 10 standard deviations away, 21.5 beyond
        let fc = [1.0, 21.0, -18.0, 21.5, -20.0];
        let w = magnitude_warning(&fc, (2.0, 1.0), "a cause").unwrap();
        assert!(w.starts_with("2 forecast values"), "{w}");
        assert!(
            w.contains("the farthest 10.5 ×") && w.contains("a cause"),
            "{w}"
        );
        assert_eq!(magnitude_warning(&fc[..3], (2.0, 1.0), "a cause"), None);
    }
}
