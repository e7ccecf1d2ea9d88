//! The options of `dydiff train` and what follows from them: the recipe recorded in the model
//! folder (and compared on `--resume`), the learning-rate schedule, the default network for the
//! data, the checks of the flags, and the flags a folder recorded.

use crate::backend::{Device, PadMode};
use crate::diffusion::schedule::Prediction;
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::model::dyffusion::Condition;
use crate::model::Method;
use crate::nn::UNet2DConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Options of `dydiff train`: its flags, declared here once (the doc comments are the `--help`).
/// `warmup_steps: None` is [`TrainOptions::warmup`]'s default; `cosine_given` is the accepted,
/// effect-free `--cosine` (the schedule decays unless `constant_lr`).
#[derive(Clone, Debug, clap::Args)]
pub struct TrainOptions {
    /// Training sequences, float32 .npy (N, L, C, H, W), L ≥ history + future, finite and
    /// not constant.
    #[arg(long)]
    pub data: PathBuf,
    /// Model folder to write, in an existing directory; it always holds one whole
    /// checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// History frames P+1 given to the network, at least 1.
    #[arg(long)]
    pub history: usize,
    /// Future frames S to forecast, at least 1.
    #[arg(long)]
    pub future: usize,
    /// The method: dydiff (Dynamical Diffusion; with --dyn-eta 0 the standard diffusion
    /// model) or dyffusion (DYffusion: an interpolator, then a forecaster; see --stage).
    #[arg(long, default_value = "dydiff", value_enum)]
    pub method: Method,
    /// η of the dynamics schedule, in [0, 1]; 0 trains the standard diffusion model
    /// (--method dydiff).
    #[arg(long, default_value_t = 0.5)]
    pub dyn_eta: f64,
    /// The settings of `--method dyffusion` (ignored by `dydiff`).
    #[command(flatten)]
    pub dyffusion: DyffusionOptions,
    /// Diffuse the history frames too, as the reference implementation does: the noise
    /// chain starts at the oldest frame, the network sees the clean history as a separate
    /// condition and predicts the noise of all P+1+S frames (in (P+1+L)·C channels, out
    /// L·C). Stored as "diffuse_history": true in dydiff.json; the sampler follows it.
    #[arg(long)]
    pub diffuse_history: bool,
    /// A diffusers UNet2DModel config.json (in/out channels filled in from the data, or
    /// checked). Default: a small 3-level network.
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// What the network's convolutions read outside the frame: zeros (diffusers' default)
    /// or circular (the frame wrapped around: the right choice for periodic fields such as
    /// `data navier-stokes`; zero padding there makes the border pixels diverge as DDIM
    /// takes more steps). Stored as "padding_mode" in dydiff.json; the sampler follows it.
    #[arg(long, default_value = "zeros", value_enum)]
    pub padding_mode: PadMode,
    /// What the network learns to predict: epsilon (the noise ε̃, the papers' choice) or
    /// v_prediction (the velocity v = √ᾱ·ε̃ − √(1−ᾱ)·D, whose error does not grow as 1/√ᾱ
    /// at the noisiest timesteps: sampling with many DDIM steps stays stable). Stored as
    /// diffusers' "prediction_type" in scheduler/scheduler_config.json; the sampler follows
    /// it.
    #[arg(
        long = "prediction-type",
        value_name = "PREDICTION_TYPE",
        default_value = "epsilon",
        value_parser = prediction_type
    )]
    pub prediction: Prediction,
    /// Total optimizer steps, 1 to 4294967295. The default, with the other defaults (batch
    /// 16, lr 1e-3, 100 warm-up steps, cosine decay), is the recipe of the built-in model:
    /// about 15 minutes on 2 CPU cores for its 32×32 turbulence; far fewer steps give a model
    /// that does not beat persistence (see --val-data).
    #[arg(long, default_value_t = DEFAULT_TRAIN_STEPS)]
    pub steps: usize,
    /// Windows per step, 1 to 4294967295 (the batch must fit in memory). Under mpirun or
    /// srun (mpi feature) the global batch: each rank takes its share, at least one row.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate (AdamW), positive and within float32.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear warm-up steps, at most --steps (default: 100, or --steps and
    /// --interpolator-steps when fewer; with --resume, the run's own).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Cosine decay of the learning rate to 0 at --steps after the warm-up (the default;
    /// the flag is accepted for older scripts).
    #[arg(long = "cosine", conflicts_with = "constant_lr")]
    pub cosine_given: bool,
    /// Keep the peak learning rate after the warm-up instead of the cosine decay.
    #[arg(long)]
    pub constant_lr: bool,
    /// AdamW weight decay, ≥ 0.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Maximum global gradient norm, positive.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Decay of the weights' moving average (the saved weights), in [0, 1).
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Seed of the initial weights, the windows, timesteps and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation sequences; their loss is logged at every checkpoint.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (same flags).
    #[arg(long)]
    pub resume: bool,
    /// data_scale, x_model = (x_data − data_shift) / data_scale: positive and finite
    /// (default: the training data's standard deviation).
    #[arg(long)]
    pub data_scale: Option<f64>,
    /// data_shift, see --data-scale: finite (default: the training data's mean).
    #[arg(long, allow_hyphen_values = true)]
    pub data_shift: Option<f64>,
    /// Steps between log lines, at least 1.
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// Steps between checkpoints, at least 1.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// Where the network trains (the global `--device`).
    #[arg(skip = Device::Cpu)]
    pub device: Device,
    /// Draw a progress bar on stderr (when it is a terminal; the command line always asks).
    #[arg(skip = true)]
    pub progress: bool,
}

impl TrainOptions {
    /// The warm-up steps: `--warmup-steps`, else [`default_warmup`] of the shortest stage (with
    /// `--resume` the command line adds the run's own, [`recorded_flags`]).
    pub fn warmup(&self) -> usize {
        let shortest = self
            .steps
            .min(self.dyffusion.interpolator_steps.unwrap_or(self.steps));
        self.warmup_steps
            .unwrap_or_else(|| default_warmup(shortest))
    }

    /// Whether the learning rate decays on a cosine after the warm-up (unless `--constant-lr`).
    pub fn cosine(&self) -> bool {
        !self.constant_lr
    }
}

/// Which stages a DYffusion run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1, then stage 2.
    Both,
    Interpolator,
    Forecaster,
}

value_enum_by_name!(Stage, [Stage::Both, Stage::Interpolator, Stage::Forecaster]);

impl Stage {
    /// The name on the command line (`--stage`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Both => "both",
            Stage::Interpolator => "interpolator",
            Stage::Forecaster => "forecaster",
        }
    }
}

/// The settings of `--method dyffusion` (docs/dyffusion.md): flags of `dydiff train`.
#[derive(Clone, Debug, clap::Args)]
pub struct DyffusionOptions {
    /// DYffusion: which stages to train — both (the interpolator for --interpolator-steps,
    /// then the forecaster for --steps), interpolator, or forecaster (on a folder whose
    /// interpolator is trained). --resume continues whichever is unfinished.
    #[arg(long, default_value = "both", value_enum)]
    pub stage: Stage,
    /// DYffusion: the interpolator's optimizer steps (default: --steps).
    #[arg(long)]
    pub interpolator_steps: Option<usize>,
    /// DYffusion: k ≥ 0 interpolation steps before the first whole time step (the
    /// forecaster runs N = future + k steps).
    #[arg(long, default_value_t = 0)]
    pub additional_steps: usize,
    /// DYffusion: the forecaster's condition besides its input — data (the history), none,
    /// or data+noise (the history blended with fresh noise, more history as n grows).
    #[arg(long, default_value = "data", value_enum)]
    pub forecaster_condition: Condition,
    /// DYffusion: the interpolator's dropout, 0 ≤ p < 1; active in training and at
    /// inference, where it makes the ensemble's spread.
    #[arg(long, default_value_t = 0.15)]
    pub interpolator_dropout: f64,
    /// DYffusion: the weight λ₁ of the forecaster's loss on its first forecast.
    #[arg(long, default_value_t = 0.5)]
    pub lambda_1: f64,
    /// DYffusion: the weight λ₂ of the look-ahead loss (through the interpolator).
    #[arg(long, default_value_t = 0.5)]
    pub lambda_2: f64,
}

/// `--prediction-type`: `epsilon` or `v_prediction`.
fn prediction_type(s: &str) -> std::result::Result<Prediction, String> {
    Prediction::parse(s).ok_or_else(|| format!("expected epsilon or v_prediction, found {s:?}"))
}

/// The recipe stored in `dydiff.json`; a resumed run must match it.
pub(crate) fn recipe(o: &TrainOptions) -> Value {
    let mut r = json!({
        "batch": o.batch, "lr": o.lr, "warmup_steps": o.warmup(), "cosine": o.cosine(),
        "weight_decay": o.weight_decay, "clip": o.clip, "ema_decay": o.ema_decay, "seed": o.seed,
        "steps": o.steps, "data": o.data.display().to_string(), "loss": "mse(eps_hat, eps_tilde)",
        "optimizer": "adamw(0.9, 0.999, 1e-8)",
    });
    if o.prediction == Prediction::V {
        r["loss"] = json!("mse(v_hat, v)");
        r["prediction_type"] = json!(o.prediction.name());
    }
    r
}

/// The flags whose values in `want` (this run's [`recipe`]) differ from the `stored` recipe of
/// the run being resumed, each as `--flag given (the run: stored)`; a recipe without a seed
/// (not written by `dydiff train`) differs as a whole.
pub(crate) fn recipe_differences(stored: &Value, want: &Value) -> Vec<String> {
    if stored.get("seed").is_none() {
        return vec![format!("the flags (the folder's recipe is {stored})")];
    }
    let show = |key: &str, v: &Value| match (key, v) {
        ("cosine", Value::Bool(true)) => "cosine decay".to_string(),
        ("cosine", Value::Bool(false)) => "--constant-lr".to_string(),
        _ => v.to_string(),
    };
    [
        ("batch", "--batch"),
        ("lr", "--lr"),
        ("warmup_steps", "--warmup-steps"),
        ("cosine", "the learning-rate schedule"),
        ("weight_decay", "--weight-decay"),
        ("clip", "--clip"),
        ("ema_decay", "--ema-decay"),
        ("seed", "--seed"),
        ("steps", "--steps"),
    ]
    .iter()
    .filter(|(k, _)| stored[k] != want[k])
    .map(|&(k, flag)| {
        let note = if k == "steps" && want["cosine"] == Value::Bool(true) {
            " — a cosine schedule has a fixed length; a run with --constant-lr may be extended"
        } else {
            ""
        };
        format!(
            "{flag} {} (the run: {}){note}",
            show(k, &want[k]),
            show(k, &stored[k])
        )
    })
    .collect()
}

/// The learning rate at `step` (1-based) of a run of `steps` steps: linear warm-up, then
/// constant or cosine to 0.
pub fn learning_rate(o: &TrainOptions, step: usize, steps: usize) -> f64 {
    let warmup = o.warmup();
    if step <= warmup {
        return o.lr * step as f64 / warmup.max(1) as f64;
    }
    if !o.cosine() {
        return o.lr;
    }
    let span = (steps.saturating_sub(warmup)).max(1) as f64;
    let f = ((step - warmup) as f64 / span).min(1.0);
    o.lr * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
}

/// Levels of the default network for frames of `h × w`: three (32, 64, 64 channels) when both
/// sides are multiples of 4, two (32, 64) when they are even — the spring mesh's 10 × 10 — else
/// one.
fn default_levels(h: usize, w: usize) -> usize {
    match (h % 4, w % 4, h % 2, w % 2) {
        (0, 0, _, _) => 3,
        (_, _, 0, 0) => 2,
        _ => 1,
    }
}

/// The network used when no `--unet-config` is given for frames of `h × w`: up to three levels
/// (32, 64, 64 channels; as many as the frame size can be halved into, [`default_levels`]), one
/// resnet per level, attention at the levels below the top — small enough to train on a CPU.
pub(crate) fn default_unet(in_ch: usize, out_ch: usize, (h, w): (usize, usize)) -> Value {
    let levels = default_levels(h, w);
    let channels = &[32, 64, 64][..levels];
    let down: Vec<&str> = (0..levels)
        .map(|l| {
            if l == 0 {
                "DownBlock2D"
            } else {
                "AttnDownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = (0..levels)
        .rev()
        .map(|l| if l == 0 { "UpBlock2D" } else { "AttnUpBlock2D" })
        .collect();
    json!({
        "_class_name": "UNet2DModel", "sample_size": h, "in_channels": in_ch,
        "out_channels": out_ch, "block_out_channels": channels, "layers_per_block": 1,
        "down_block_types": down, "up_block_types": up,
        "norm_num_groups": 8, "attention_head_dim": 32,
    })
}

/// The network of a run for frames of `h × w` and `in_ch → out_ch` channels: `--unet-config`
/// with the channel counts filled in, or the default network, with `--padding-mode`. A frame size
/// the network cannot downsample is refused naming `--data`, the size, and what fits.
pub(crate) fn network_for(
    o: &TrainOptions,
    (in_ch, out_ch): (usize, usize),
    (h, w): (usize, usize),
) -> Result<UNet2DConfig> {
    let config = UNet2DConfig {
        padding_mode: o.padding_mode,
        ..match &o.unet_config {
            Some(p) => unet_config(p, in_ch, out_ch)?,
            None => UNet2DConfig::from_json(&default_unet(in_ch, out_ch, (h, w)))?,
        }
    };
    let multiple = config.size_multiple();
    if h % multiple != 0 || w % multiple != 0 {
        let net = o
            .unet_config
            .as_ref()
            .map_or("the default network".to_string(), |p| {
                format!("the network of --unet-config {}", p.display())
            });
        let fits = default_levels(h, w);
        return Err(Error::bad_file(
            &o.data,
            format!("frames of {h}×{w}: expected height and width multiples of {multiple}, the downsampling factor of {net}; a config with {fits} entr{} in block_out_channels and in each of down_block_types and up_block_types fits (or leave --unet-config out: the default network adapts)", if fits == 1 { "y" } else { "ies" }),
        ));
    }
    Ok(config)
}

/// The `--unet-config` file with the channel counts filled in or checked.
pub(crate) fn unet_config(path: &Path, in_ch: usize, out_ch: usize) -> Result<UNet2DConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::bad_file(path, "expected a JSON object"))?;
    if obj.is_empty() {
        return Err(Error::bad_file(
            path,
            "an empty object {}; expected a UNet2DModel configuration (block_out_channels, block types, …)",
        ));
    }
    for (key, want) in [("in_channels", in_ch), ("out_channels", out_ch)] {
        match obj.get(key).and_then(Value::as_u64) {
            None => {
                obj.insert(key.into(), json!(want));
            }
            Some(found) if found as usize != want => {
                return Err(Error::bad_file(
                    path,
                    format!("{key} = {found}, but the data and --history/--future need {want}"),
                ))
            }
            Some(_) => {}
        }
    }
    UNet2DConfig::from_json(&v).map_err(|e| Error::bad_file(path, e.to_string()))
}

pub(crate) fn validate(o: &TrainOptions) -> Result<()> {
    for (flag, v) in [
        ("--history", o.history),
        ("--future", o.future),
        ("--steps", o.steps),
        ("--batch", o.batch),
        ("--log-every", o.log_every),
        ("--checkpoint-every", o.checkpoint_every),
    ] {
        if v == 0 {
            return Err(Error::Invalid(format!(
                "{flag}: expected at least 1, found 0"
            )));
        }
    }
    // Steps and batch rows key the noise counter with 32 bits.
    for (flag, v) in [("--steps", o.steps), ("--batch", o.batch)] {
        if v > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{flag}: expected 1 to {}, found {v}",
                u32::MAX
            )));
        }
    }
    let ranks = world().size();
    if o.batch < ranks {
        return Err(Error::Invalid(format!(
            "--batch {}: fewer rows than the {ranks} ranks of the job; expected at least one row per rank",
            o.batch
        )));
    }
    if o.history.checked_add(o.future).is_none() {
        return Err(Error::Invalid(format!(
            "--history {} + --future {}: too many frames (the sum overflows)",
            o.history, o.future
        )));
    }
    if !(0.0..=1.0).contains(&o.dyn_eta) {
        return Err(Error::Invalid(format!(
            "--dyn-eta: expected a value in [0, 1], found {}",
            o.dyn_eta
        )));
    }
    if o.warmup() > o.steps {
        return Err(Error::Invalid(format!(
            "--warmup-steps {}: longer than the run (--steps {}), whose learning rate would never reach --lr; expected at most {}",
            o.warmup(), o.steps, o.steps
        )));
    }
    // The optimizer computes in float32: --lr must stay positive and --weight-decay finite there.
    let lr = o.lr as f32;
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(Error::Invalid(format!(
            "--lr: expected a positive number within float32 ({:e} to {:e}), found {:?}",
            f32::from_bits(1),
            f32::MAX,
            o.lr
        )));
    }
    if !(o.clip.is_finite() && o.clip > 0.0) {
        return Err(Error::Invalid(format!(
            "--clip: expected a positive number, found {}",
            o.clip
        )));
    }
    if !(o.weight_decay >= 0.0 && (o.weight_decay as f32).is_finite()) {
        return Err(Error::Invalid(format!(
            "--weight-decay: expected a number ≥ 0 within float32, found {}",
            o.weight_decay
        )));
    }
    if o.lr * o.weight_decay >= 1.0 {
        return Err(Error::Invalid(format!(
            "--lr {:?} × --weight-decay {:?} = {:e}: expected less than 1 (the decoupled decay step p ← p − lr·weight_decay·p would flip or blow up every weight)",
            o.lr,
            o.weight_decay,
            o.lr * o.weight_decay
        )));
    }
    if !(0.0..1.0).contains(&o.ema_decay) {
        return Err(Error::Invalid(format!(
            "--ema-decay: expected a value in [0, 1), found {}",
            o.ema_decay
        )));
    }
    if let Some(s) = o.data_scale.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::Invalid(format!(
            "--data-scale: expected a positive finite number, found {s}"
        )));
    }
    if let Some(s) = o.data_shift.filter(|s| !s.is_finite()) {
        return Err(Error::Invalid(format!(
            "--data-shift: expected a finite number, found {s}"
        )));
    }
    Ok(())
}

/// The default warm-up of a run of `steps` steps (its shortest stage's): the built-in model's
/// 100, or `steps` when fewer. (A resumed run gets its recorded warm-up from
/// [`recorded_flags`] instead.)
pub fn default_warmup(steps: usize) -> usize {
    DEFAULT_WARMUP.min(steps)
}

/// The flags of the run recorded in `out/dydiff.json` (docs/cli.md, “train”: `--resume` alone
/// continues a run), each with its value (`None`: a switch that was given): the data, frames and
/// process, the recipe, and for DYffusion its settings and each stage's steps. Empty when the
/// folder holds no readable record.
pub fn recorded_flags(out: &Path) -> Vec<(&'static str, Option<String>)> {
    let Ok(text) = std::fs::read_to_string(out.join(crate::model::PROCESS_FILE)) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    let dyffusion = v["method"] == "dyffusion";
    let t = &v["training"];
    // the recipe: a DyDiff run's, or a DYffusion run's latest stage's
    let recipe = if dyffusion {
        if t["forecaster"].is_object() {
            &t["forecaster"]
        } else {
            &t["interpolator"]
        }
    } else {
        t
    };
    let text = |x: &Value| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut flags: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut value = |flag: &'static str, x: &Value| {
        if let Some(s) = text(x) {
            flags.push((flag, Some(s)));
        }
    };
    value("--data", &recipe["data"]);
    value("--history", &v["history"]);
    value("--future", &v["future"]);
    value("--padding-mode", &v["padding_mode"]);
    value("--prediction-type", &recipe["prediction_type"]);
    for (flag, key) in [
        ("--batch", "batch"),
        ("--lr", "lr"),
        ("--warmup-steps", "warmup_steps"),
        ("--weight-decay", "weight_decay"),
        ("--clip", "clip"),
        ("--ema-decay", "ema_decay"),
        ("--seed", "seed"),
    ] {
        value(flag, &recipe[key]);
    }
    if dyffusion {
        value("--method", &v["method"]);
        value("--additional-steps", &v["additional_steps"]);
        value("--forecaster-condition", &v["forecaster_condition"]);
        value("--interpolator-dropout", &v["interpolator_dropout"]);
        value("--lambda-1", &v["lambda_1"]);
        value("--lambda-2", &v["lambda_2"]);
        value("--interpolator-steps", &t["interpolator"]["steps"]);
        value("--steps", &t["forecaster"]["steps"]);
    } else {
        value("--dyn-eta", &v["dyn_eta"]);
        value("--steps", &recipe["steps"]);
    }
    if recipe["cosine"] == Value::Bool(false) {
        flags.push(("--constant-lr", None));
    }
    if v["diffuse_history"] == Value::Bool(true) {
        flags.push(("--diffuse-history", None));
    }
    flags
}

/// The built-in model's warm-up steps.
pub const DEFAULT_WARMUP: usize = 100;

/// The default `--steps` of `dydiff train`: the built-in model's recipe.
pub const DEFAULT_TRAIN_STEPS: usize = 4000;

/// This process's command line with `--resume` (added if absent), shell-quoted where needed.
pub(super) fn resume_command() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
