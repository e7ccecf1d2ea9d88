//! The DDIM sampler (docs/process.md, “Sampling”) of a Dynamical Diffusion or standard diffusion
//! model: per batch, the history in model space, `x_{τ_K} = Dyn_{γ̄_{τ_K}}(ε)`; then for
//! `k = K … 1` one network call and one fused DDIM step ([`Tensor::ddim_step_drawn`]), run by a
//! [`StepRunner`] (on a GPU, a CUDA graph replayed from the second step on); the final state's
//! future frames are `x̂_0`, mapped back to data space.

use super::ensemble::{
    check_batch, check_lead, check_members, check_sample_count, model_space_histories, pair_rows,
    rank_progress, roll_out, SampleTimes, Window,
};
use super::{
    histories, picture_channels, read_observations, write_and_report, Frames, Made, SampleOptions,
    SampleReport,
};
use crate::backend::Device;
use crate::diffusion::ddim::{ddim_step_tensor, rows_tensor, timesteps, StepValues};
use crate::diffusion::schedule::{gamma_bar, Prediction};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::io::outputs::{DirOutput, FileOutput, Outputs};
use crate::memory;
use crate::model::{Model, PROCESS_FILE};
use crate::rng::{NoiseKey, Purpose};
use crate::tensor::step::StepRunner;
use crate::tensor::Tensor;
use std::path::Path;
use std::time::Instant;

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
        check_members(self.members)?;
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
        check_batch(self.batch)
    }
}

/// The default number of DDIM steps: chosen with [`DEFAULT_DDIM_ETA`] on validation sequences
/// for the built-in model (README, “Sampling steps”; `experiments/builtin.sh`): the fewest steps
/// whose fair CRPS is within 1% of the lowest (more steps do not make its forecasts worse).
pub const DEFAULT_STEPS: usize = 20;

/// The default DDIM stochasticity (1: DDPM-like), chosen with [`DEFAULT_STEPS`].
pub const DEFAULT_DDIM_ETA: f64 = 1.0;

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
    let space = p.data_space();
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
        let rows = pair_rows(first, b, members);
        let clock = Instant::now();
        let h_data = model_space_histories(obs, window, first, &rows, hist * e, space);
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
        let scope = p.scope();
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
            *o = space.to_data(v);
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
        (space.scale, source),
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

/// `dydiff sample` on a Dynamical Diffusion (or standard diffusion) folder: the DDIM sampler,
/// rolled out over `--lead`; the outputs' locations already checked by [`super::run`].
pub(super) fn run(
    o: &SampleOptions,
    model_dir: &Path,
    input: &Path,
    outputs: Outputs,
    (out, record, png): (FileOutput, FileOutput, Option<DirOutput>),
    clock: Instant,
) -> Result<SampleReport> {
    let settings = SamplerSettings {
        members: o.members,
        steps: o.steps.unwrap_or(DEFAULT_STEPS),
        seed: o.seed,
        ddim_eta: o.ddim_eta.unwrap_or(DEFAULT_DDIM_ETA),
        batch: o.batch,
        device: o.device,
    };
    settings.validate()?;
    let model = Model::load(model_dir, o.device)?;
    timesteps(&model.scheduler, settings.steps)?;
    let p = &model.process;
    let frames = Frames::of(p.history, (p.channels, p.height, p.width));
    let obs = read_observations(input, &frames, p.data_space())?;
    let names = picture_channels(input, p.channels, png.is_some())?;
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
    let check = (p.data_scale, p.data_shift, causes_ddim(o, &model));
    let made = Made {
        fc,
        times,
        lead,
        steps: Some(steps),
        network_calls: steps * windows,
        load_s,
        check,
        obs: &obs,
        frames: &frames,
        names: &names,
    };
    write_and_report(o, (model_dir, input), outputs, (out, record, png), made)
}
