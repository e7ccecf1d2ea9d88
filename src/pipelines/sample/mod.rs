//! `dydiff sample` (docs/cli.md, “sample”): forecasts an ensemble for every observed sequence,
//! reproducibly — by the DDIM sampler of docs/process.md, “Sampling”, for a Dynamical Diffusion
//! (or standard diffusion) folder, by cold sampling (docs/dyffusion.md) for a DYffusion one.
//!
//! The `N × M` (sample, member) pairs are processed in network batches of `--batch` pairs. Each
//! pair's randomness is drawn from its own Philox stream (docs/random.md, “Streams”) and every
//! operation acts on a pair independently, so the forecast is the same for any batch size and
//! thread count.
//!
//! One job a file: this one the command — its options, the inputs read and checked, the method's
//! sampler chosen from the folder, the outputs written together; `ensemble.rs` what both
//! samplers share (the pairs in batches, each rank its share, the roll-out over windows, the
//! histories in model space, the times, the progress bar); `ddim.rs` the DDIM sampler of
//! Dynamical Diffusion and the standard diffusion model; `dyffusion.rs` DYffusion's cold
//! sampling.

pub mod ddim;
pub mod dyffusion;
pub mod ensemble;

pub use ddim::{forecast, rollout, SamplerSettings, DEFAULT_DDIM_ETA, DEFAULT_STEPS};
pub use ensemble::{SampleTimes, MAX_WINDOWS};

use crate::backend::Device;
use crate::data::channels::{self, Channel};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::{DirOutput, FileOutput, Outputs};
use crate::io::{npy, picture};
use crate::model::{DataSpace, Method};
use ensemble::check_sample_count;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default number of (sample, member) pairs per network call.
pub const DEFAULT_BATCH: usize = 8;

/// Options of `dydiff sample`: its flags, declared here once (the doc comments are the `--help`).
/// `model: None` is the built-in model, `input: None` its demo observations (only without
/// `model`); `steps` and `ddim_eta` default to [`DEFAULT_STEPS`] and [`DEFAULT_DDIM_ETA`] and
/// are refused for a DYffusion model when given.
#[derive(Clone, Debug, clap::Args)]
pub struct SampleOptions {
    /// Model folder: dydiff.json, scheduler/scheduler_config.json, unet/ (diffusers).
    /// Default: the built-in demo model (trained on generated turbulence) and, without
    /// --input, its demo observations.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Observations, float32 .npy/.npz of shape (N, L, C, H, W) with L ≥ P+1.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Forecast .npy to write, shape (N, M, S, C, H, W), in an existing directory.
    #[arg(long, default_value = "forecast.npy")]
    pub out: PathBuf,
    /// Ensemble members M per sample, 1 to 16777216 (the forecast must fit in memory).
    #[arg(long, default_value_t = 8)]
    pub members: usize,
    /// DDIM steps K (default 20, chosen with --ddim-eta 1 on validation data for the built-in
    /// model), from 1 to about the model's training timesteps T
    /// (timesteps (k−1)·⌊T/K⌋ + steps_offset, all below T). Not for a DYffusion model: its
    /// cold sampling makes N = horizon + additional_steps forecaster calls, 2N − 3
    /// interpolator calls and, with refinement, horizon − 1 more per window (the summary
    /// line states the count).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the noise; each value depends only on (seed, sample, member, step, element).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// DDIM stochasticity in [0, 1] (default 1): 0 deterministic given the initial noise,
    /// 1 DDPM-like. Not for a DYffusion model, whose members differ by the interpolator's
    /// dropout masks (keyed by seed, sample, member, call and layer).
    #[arg(long)]
    pub ddim_eta: Option<f64>,
    /// Initial noise ε (N, M, S, C, H, W) in model space, instead of the seeded generator.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// (sample, member) pairs per network call, at least 1; bounds memory, never changes the
    /// result.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Directory for one PNG per sample: history, truth, members, ensemble mean and spread
    /// (an existing directory keeps its other files; a new one needs an existing parent).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Frames to forecast (default: the model's S). Beyond S the forecast rolls out in
    /// windows of S: each next window's history is the last P+1 frames of the member's own
    /// trajectory; the output is (N, M, LEAD, C, H, W), at most 256 windows. --init-noise
    /// gives the first window's noise; later windows draw theirs from the seed.
    #[arg(long)]
    pub lead: Option<usize>,
    /// Where the networks run (the global `--device`).
    #[arg(skip = Device::Cpu)]
    pub device: Device,
    /// Draw a progress bar on stderr (when it is a terminal; the command line always asks).
    #[arg(skip = true)]
    pub progress: bool,
}

/// Where the built-in model's demo puts its pictures when no `--png` is given (docs/cli.md).
pub const DEMO_PNG: &str = "forecast_png";

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
/// DYffusion one), and writes the forecast `(N, M, S, C, H, W)` and, with `--png` (for the
/// built-in model by default, in [`DEMO_PNG`]), one picture per sample, all together.
pub fn run(o: &SampleOptions) -> Result<SampleReport> {
    let clock = Instant::now();
    let mut outputs = Outputs::new();
    let out = outputs.npy_file("--out", &o.out)?;
    let record = outputs.file("--out", &window_record_path(&o.out))?;
    let demo_png = o.model.is_none().then(|| PathBuf::from(DEMO_PNG));
    let png = o
        .png
        .clone()
        .or(demo_png)
        .map(|d| outputs.dir("--png", &d))
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
    let files = (out, record, png);
    match crate::model::method_of(&model_dir)? {
        Method::Dydiff => ddim::run(o, &model_dir, &input, outputs, files, clock),
        Method::Dyffusion => dyffusion::run(o, &model_dir, &input, outputs, files, clock),
    }
}

/// The frame layout observations must have for a model.
#[derive(Clone, Copy, Debug)]
struct Frames {
    history: usize,
    channels: usize,
    height: usize,
    width: usize,
}

impl Frames {
    /// `history` frames of `(channels, height, width)`.
    fn of(history: usize, (channels, height, width): (usize, usize, usize)) -> Frames {
        Frames {
            history,
            channels,
            height,
            width,
        }
    }
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

/// Reads the observations and checks them against the model's frames: `(N, L, C, H, W)` with
/// `L ≥ P + 1`, finite, and within float32 in model space (`space`).
fn read_observations(path: &Path, f: &Frames, space: DataSpace) -> Result<npy::Array> {
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
    crate::model::check_model_space(path, &a.data, space, "from the model's dydiff.json")?;
    Ok(a)
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

/// A method's forecast `(N, M, lead, C·H·W)` (data space) and how it was made, for
/// [`write_and_report`].
struct Made<'a> {
    fc: Vec<f32>,
    times: SampleTimes,
    lead: usize,
    /// DDIM steps, in the window record (`None`: cold sampling).
    steps: Option<usize>,
    /// Network calls per member's forecast.
    network_calls: usize,
    /// Seconds reading the model and the inputs.
    load_s: f64,
    /// `(data_scale, data_shift)` and the likely causes of a forecast far beyond the data.
    check: (f64, f64, String),
    obs: &'a npy::Array,
    frames: &'a Frames,
    names: &'a [Channel],
}

/// Writes a method's forecast with its window record and pictures on the root rank (every rank
/// has the whole forecast) and reports the run.
fn write_and_report(
    o: &SampleOptions,
    (model_dir, input): (&Path, &Path),
    outputs: Outputs,
    files: (FileOutput, FileOutput, Option<DirOutput>),
    m: Made,
) -> Result<SampleReport> {
    let clock = Instant::now();
    if world().is_root() {
        let record = window_record(o, model_dir, input, (m.obs, m.frames, m.lead), m.steps);
        write_forecast(
            outputs,
            files,
            (m.obs, m.frames, m.names),
            (&m.fc, o.members, m.lead),
            (&record, m.check),
        )?;
    }
    Ok(SampleReport {
        out: o.out.clone(),
        samples: m.obs.shape[0],
        members: o.members,
        future: m.lead,
        network_calls: m.network_calls,
        load_s: m.load_s,
        times: m.times,
        write_s: clock.elapsed().as_secs_f64(),
    })
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
