//! `dydiff train`: fits the denoiser of docs/process.md, “Forward process” (Dynamical Diffusion,
//! or with `dyn_eta = 0` the standard diffusion model) to sequences `(N, L, C, H, W)`; the recipe
//! is docs/process.md, “Training”.
//!
//! Each step draws, per batch row, a sequence, a window of `P+1+S` frames and a timestep `t`
//! (uniform), and the noise `ε`, all from counter-based streams keyed by (seed, step, row)
//! (docs/random.md, “Streams”) — so a run resumed from a checkpoint continues exactly as an
//! uninterrupted run would. The loss is the mean squared error between `ε̂` and `ε̃`
//! (docs/process.md, “Training loss”); AdamW with linear warm-up and optional cosine decay,
//! gradient clipping by global norm, and an exponential moving average of the weights, which is
//! what the model folder receives.
//!
//! Files in `MODEL/`: the model folder of docs/model-folder.md (EMA weights),
//! `train_state.safetensors` (weights, Adam moments, EMA and the step) and `train_log.jsonl`,
//! written together at each checkpoint, so the folder always holds one whole checkpoint.

use crate::backend::{AdamStep, Device, PadMode, Storage};
use crate::diffusion::ddim::rows_tensor;
use crate::diffusion::schedule::{Prediction, Schedule, SchedulerConfig};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::{DirOutput, Outputs};
use crate::io::{atomic, npy, safetensors};
use crate::memory;
use crate::metrics::crps::crps_both;
use crate::model::{Model, ProcessConfig, UNET_DIR};
use crate::nn::{Dropout, ParamBuilder, UNet2D, UNet2DConfig};
use crate::pipelines::sample::{
    forecast, histories, SamplerSettings, DEFAULT_DDIM_ETA, DEFAULT_STEPS,
};
use crate::rng::{below, words, NoiseKey, NoiseRow, Purpose};
use crate::tensor::autograd::{backward, Tape};
use crate::tensor::Tensor;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const STATE_FILE: &str = "train_state.safetensors";
pub const LOG_FILE: &str = "train_log.jsonl";
/// The metadata key of `train_state.safetensors` holding the step.
pub const STEP_KEY: &str = "dydiff_train_step";

/// Options of `dydiff train`.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    /// `P + 1`.
    pub history: usize,
    /// `S`.
    pub future: usize,
    pub dyn_eta: f64,
    /// Diffuse the history frames too (docs/process.md, “Diffusing the history”).
    pub diffuse_history: bool,
    pub unet_config: Option<PathBuf>,
    /// What the network's convolutions read outside the frame (`circular` for periodic data).
    pub padding_mode: PadMode,
    /// What the network predicts (the scheduler's `prediction_type`; DDIM models only).
    pub prediction: Prediction,
    /// Total optimizer steps (a resumed run continues up to this many).
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub cosine: bool,
    pub weight_decay: f64,
    /// Maximum global gradient norm.
    pub clip: f64,
    pub ema_decay: f64,
    pub seed: u64,
    pub val_data: Option<PathBuf>,
    pub resume: bool,
    pub data_scale: Option<f64>,
    pub data_shift: Option<f64>,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub device: Device,
    pub progress: bool,
}

/// The recipe stored in `dydiff.json`; a resumed run must match it.
pub(crate) fn recipe(o: &TrainOptions) -> Value {
    let mut r = json!({
        "batch": o.batch, "lr": o.lr, "warmup_steps": o.warmup_steps, "cosine": o.cosine,
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
    if step <= o.warmup_steps {
        return o.lr * step as f64 / o.warmup_steps.max(1) as f64;
    }
    if !o.cosine {
        return o.lr;
    }
    let span = (steps.saturating_sub(o.warmup_steps)).max(1) as f64;
    let f = ((step - o.warmup_steps) as f64 / span).min(1.0);
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

/// Reads a data file `(N, L, C, H, W)` with `L ≥ frames`.
fn read_data(path: &Path, frames: usize, like: Option<&[usize]>) -> Result<npy::Array> {
    let a = npy::read(path)?;
    let ok = match *a.shape {
        [n, l, c, h, w] => {
            n > 0
                && l >= frames
                && c > 0
                && h > 0
                && w > 0
                && like.is_none_or(|s| s[2..] == [c, h, w])
        }
        _ => false,
    };
    if !ok {
        let want = like.map_or("(N, L, C, H, W)".to_string(), |s| {
            format!("(N, L, {}, {}, {})", s[2], s[3], s[4])
        });
        return Err(Error::bad_file(
            path,
            format!("expected sequences of shape {want} with N, C, H, W ≥ 1 and L ≥ {frames} (history + future), found {:?}", a.shape),
        ));
    }
    npy::check_finite(path, &a)?;
    Ok(a)
}

/// Everything the optimizer carries between steps: the weights, Adam's moments and the weight
/// EMA, each one contiguous array holding the parameters in order (on the GPU the network's
/// weights are views of it, and one fused kernel updates all four).
pub struct State {
    pub step: usize,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    params: Storage,
    m: Storage,
    v: Storage,
    ema: Storage,
}

/// Which weights of a [`State`] a network is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// The optimizer's current weights (what the next step trains).
    Current,
    /// Their exponential moving average (what the model folder receives).
    Ema,
}

/// What one training step leaves on the device: its loss and the global gradient norm before
/// clipping, one value each, read when the host needs them (at log lines and checkpoints).
pub struct StepResult {
    pub step: usize,
    pub loss: Storage,
    pub norm: Storage,
}

/// The optimizer settings of a run.
#[derive(Clone, Copy, Debug)]
pub struct OptimizerSettings {
    pub weight_decay: f64,
    /// Maximum global gradient norm.
    pub clip: f64,
    pub ema_decay: f64,
}

impl State {
    /// The state of a fresh run on `unet`'s weights.
    pub fn fresh(unet: &UNet2D, device: Device) -> Result<State> {
        let mut names = vec![];
        let mut shapes = vec![];
        let mut flat = Vec::new();
        for (name, t) in unet.params() {
            names.push(name.clone());
            shapes.push(t.shape().to_vec());
            flat.extend(t.to_vec()?);
        }
        let zeros = vec![0.0; flat.len()];
        Ok(State {
            step: 0,
            names,
            shapes,
            params: device.storage_from_vec(flat.clone())?,
            ema: device.storage_from_vec(flat)?,
            m: device.storage_from_vec(zeros.clone())?,
            v: device.storage_from_vec(zeros)?,
        })
    }

    /// The parameters' lengths, in order.
    fn lens(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    /// One training step of `unet` (built by [`State::network`] on the current weights): the
    /// loss `loss(unet)` (a scalar), its gradients, and the fused update — clipping to the global
    /// norm, AdamW at learning rate `lr`, the EMA — all enqueued on the device without waiting
    /// for it. A non-finite loss or norm leaves the weights as they were; the caller finds it
    /// when it reads the step's loss.
    pub fn train_step(
        &mut self,
        unet: &UNet2D,
        loss: impl FnOnce(&UNet2D) -> Result<Tensor>,
        lr: f64,
        o: &OptimizerSettings,
        device: Device,
    ) -> Result<StepResult> {
        let loss = {
            let _tape = Tape::start();
            let loss = loss(unet)?;
            backward(&loss)?;
            loss
        };
        let grads: Vec<Storage> = unet
            .params()
            .iter()
            .map(|(_, t)| match t.grad() {
                Some(g) => Ok(g.storage().clone()),
                None => device.storage_from_vec(vec![0.0; t.elem_count()]),
            })
            .collect::<Result<_>>()?;
        let (grads, loss) = sum_over_ranks(grads, loss.storage().clone())?;
        let grads: Vec<&Storage> = grads.iter().collect();
        let step = self.step + 1;
        let h = AdamStep {
            lr: lr as f32,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: o.weight_decay as f32,
            bc1: (1.0 - 0.9f64.powi(step as i32)) as f32,
            bc2: (1.0 - 0.999f64.powi(step as i32)) as f32,
            max_norm: o.clip as f32,
            ema_decay: o.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64)) as f32,
        };
        let norm = self
            .params
            .adamw(&grads, &mut self.m, &mut self.v, &mut self.ema, &loss, &h)?;
        self.step = step;
        Ok(StepResult { step, loss, norm })
    }

    /// The network on the current weights or their EMA.
    pub fn network(&self, config: &UNet2DConfig, device: Device, which: Weights) -> Result<UNet2D> {
        let flat = match which {
            Weights::Current => &self.params,
            Weights::Ema => &self.ema,
        };
        let map: HashMap<String, Storage> = self
            .names
            .iter()
            .cloned()
            .zip(flat.split(&self.lens())?)
            .collect();
        UNet2D::new(config.clone(), ParamBuilder::from_storages(map, device))
    }

    /// The bytes of `train_state.safetensors`; `path`, the file they are meant for, names it in
    /// errors.
    fn encode(&self, path: &Path) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(4 * self.names.len());
        for (kind, flat) in [
            ("param", &self.params),
            ("m", &self.m),
            ("v", &self.v),
            ("ema", &self.ema),
        ] {
            let values = flat.to_vec()?;
            let mut at = 0;
            for (name, shape) in self.names.iter().zip(&self.shapes) {
                let n: usize = shape.iter().product();
                tensors.push((
                    format!("{kind}/{name}"),
                    shape.clone(),
                    values[at..at + n].to_vec(),
                ));
                at += n;
            }
        }
        let step = self.step.to_string();
        // One metadata key: the header is then the same bytes in every process (a map's order
        // is not).
        safetensors::encode(path, &tensors, &[(STEP_KEY, &step)])
    }

    /// The step of the checkpoint in the state file `path`, from its metadata alone.
    pub(crate) fn checkpoint_step(path: &Path) -> Result<usize> {
        let meta = safetensors::read_metadata(path)?;
        meta.get(STEP_KEY)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::bad_file(
                    path,
                    "not a dydiff training state (no step in its metadata)",
                )
            })
    }

    pub(crate) fn load(path: &Path, unet: &UNet2D, device: Device) -> Result<State> {
        let step = State::checkpoint_step(path)?;
        let mut arrays = safetensors::read(path)?;
        let (names, shapes): (Vec<String>, Vec<Vec<usize>>) = unet
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .unzip();
        let mut flat = Vec::with_capacity(4);
        for kind in ["param", "m", "v", "ema"] {
            let mut values = Vec::new();
            for (name, shape) in names.iter().zip(&shapes) {
                let key = format!("{kind}/{name}");
                let (found, data) = arrays
                    .remove(&key)
                    .ok_or_else(|| Error::bad_file(path, format!("tensor {key} is missing")))?;
                if &found != shape {
                    return Err(Error::bad_file(
                        path,
                        format!("tensor {key}: expected shape {shape:?}, found {found:?}"),
                    ));
                }
                values.extend(data);
            }
            flat.push(device.storage_from_vec(values)?);
        }
        let [params, m, v, ema]: [Storage; 4] = flat
            .try_into()
            .map_err(|_| Error::bad_file(path, "four kinds of arrays"))?;
        let s = State {
            step,
            names,
            shapes,
            params,
            m,
            v,
            ema,
        };
        Ok(s)
    }
}

/// The gradients and the loss of a training step summed over the ranks of the job
/// (docs/distributed.md, “Data-parallel training”): each rank's loss is its part of the mean
/// over the whole batch ([`rows_part`]), so the sums are the whole batch's gradients and loss.
/// One sum of one array per step — the gradients and the loss side by side — with NCCL on GPUs,
/// MPI on CPUs; in a process of its own, nothing is done.
fn sum_over_ranks(grads: Vec<Storage>, loss: Storage) -> Result<(Vec<Storage>, Storage)> {
    if world().size() == 1 {
        return Ok((grads, loss));
    }
    let mut lens: Vec<usize> = grads.iter().map(Storage::len).collect();
    lens.push(1);
    let mut parts: Vec<&Storage> = grads.iter().collect();
    parts.push(&loss);
    let sums = Storage::concat_channels(&parts, 1, &lens, 1)?.sum_over_ranks()?;
    let mut split = sums.split(&lens)?;
    let loss = split.pop().expect("the loss is the last part");
    Ok((split, loss))
}

/// The steps whose loss and gradient norm the host has not read yet: on the GPU they are read
/// only when a log line or a checkpoint needs them, so that the host never waits inside a step.
#[derive(Default)]
pub(crate) struct Pending(Vec<StepResult>);

impl Pending {
    pub fn push(&mut self, r: StepResult) {
        self.0.push(r);
    }
    /// Reads the pending steps: the sum and count of their losses and the last step's gradient
    /// norm; the first step with a non-finite loss is an error `bad(step, loss)`.
    pub fn read(&mut self, bad: impl Fn(usize, f32) -> Error) -> Result<(f64, usize, f64)> {
        let mut sum = 0.0;
        let n = self.0.len();
        for r in &self.0 {
            let loss = r.loss.to_vec()?[0];
            if !loss.is_finite() {
                return Err(bad(r.step, loss));
            }
            sum += f64::from(loss);
        }
        // only the last step's norm is logged: one read, not one per step
        let norm = match self.0.last() {
            Some(r) => f64::from(r.norm.to_vec()?[0]),
            None => f64::NAN,
        };
        self.0.clear();
        Ok((sum, n, norm))
    }
}

/// The (sample, member) pairs of rows `rows` of a training or validation batch: `(row, call)`,
/// keying the noise and the dropout masks of network call `call` of the step
/// (docs/random.md, “Streams”). The row's index in the whole batch keys it, so a rank drawing
/// its share of the batch draws what one process would (docs/distributed.md).
pub fn batch_rows(rows: Range<usize>, call: u32) -> Vec<NoiseRow> {
    rows.map(|b| NoiseRow {
        sample: b as u32,
        member: call,
    })
    .collect()
}

/// This rank's part of a loss that is a mean over the rows of a batch of `batch` rows, from the
/// mean `loss` over its own `rows`: `loss · |rows| / batch`, so that the parts summed over the
/// ranks are the mean over the whole batch (itself when the rank has every row).
pub fn rows_part(loss: Tensor, rows: &Range<usize>, batch: usize) -> Result<Tensor> {
    if rows.len() == batch {
        return Ok(loss);
    }
    loss.scale((rows.len() as f64 / batch as f64) as f32)
}

/// Rows `rows` of one batch: network input, target and timesteps, from windows of `data` (model
/// space); every row at timestep `fixed_t` if given, else at a drawn one.
#[allow(clippy::too_many_arguments)]
fn batch(
    data: &npy::Array,
    p: &ProcessConfig,
    schedule: &Schedule,
    rows: Range<usize>,
    key_batch: NoiseKey,
    key_noise: NoiseKey,
    fixed_t: Option<usize>,
    device: Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, l) = (data.shape[0], data.shape[1]);
    let (frames, e) = (p.frames(), p.frame_len());
    let noise_rows = batch_rows(rows, 0);
    let rows = noise_rows.len();
    let mut x0 = Vec::with_capacity(rows * frames * e);
    let mut ts = Vec::with_capacity(rows);
    for row in &noise_rows {
        let w = words(key_batch, *row);
        let (seq, start, t) = (
            below(w[0], n),
            below(w[1], l - frames + 1),
            below(w[2], schedule.len()),
        );
        let src = &data.data[(seq * l + start) * e..][..frames * e];
        x0.extend(
            src.iter()
                .map(|&v| ((f64::from(v) - p.data_shift) / p.data_scale) as f32),
        );
        ts.push(fixed_t.unwrap_or(t));
    }
    let x0 = Tensor::from_vec(x0, &[rows, frames * e], device)?;
    let eps = Tensor::randn(key_noise, &noise_rows, &[rows, p.diffused() * e], device)?;
    let (inp, target) = Tensor::q_sample(
        &x0,
        &eps,
        p.history,
        p.future,
        p.diffuse_history,
        schedule,
        p.dyn_eta,
        &ts,
    )?;
    let (c, h, w) = (p.channels, p.height, p.width);
    let t = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), &[rows], device)?;
    Ok((
        inp.reshape(&[rows, p.input_frames() * c, h, w])?,
        target.reshape(&[rows, p.diffused() * c, h, w])?,
        t,
    ))
}

/// The mean loss of `unet` over fixed validation batches (4 batches of `rows`).
fn validation_loss(
    unet: &UNet2D,
    val: &npy::Array,
    p: &ProcessConfig,
    schedule: &Schedule,
    rows: usize,
    seed: u64,
    device: Device,
) -> Result<f64> {
    let mut total = 0.0;
    for k in 0..4u32 {
        let kb = NoiseKey {
            seed,
            purpose: Purpose::ValBatch,
            step: k,
        };
        let kn = NoiseKey {
            seed,
            purpose: Purpose::ValNoise,
            step: k,
        };
        let (inp, target, t) = batch(val, p, schedule, 0..rows, kb, kn, None, device)?;
        total += f64::from(unet.forward(&inp, &t)?.mse(&target)?.scalar()?);
    }
    Ok(total / 4.0)
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
    if o.warmup_steps > o.steps {
        return Err(Error::Invalid(format!(
            "--warmup-steps {}: longer than the run (--steps {}), whose learning rate would never reach --lr; expected at most {}",
            o.warmup_steps, o.steps, o.steps
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

/// Checks that the input files of a run (`--data`, `--val-data`, `--unet-config`) can be read
/// and are not among its outputs.
pub(crate) fn check_inputs(o: &TrainOptions, outputs: &Outputs) -> Result<()> {
    outputs.check_input("--data", &o.data)?;
    for (flag, input) in [
        ("--val-data", &o.val_data),
        ("--unet-config", &o.unet_config),
    ] {
        if let Some(p) = input {
            outputs.check_input(flag, p)?;
        }
    }
    Ok(())
}

/// The training sequences (windows of `--history + --future` frames, not constant) and the
/// validation sequences if given (the same frame size).
pub(crate) fn read_training_data(o: &TrainOptions) -> Result<(npy::Array, Option<npy::Array>)> {
    let frames = o.history + o.future;
    let data = read_data(&o.data, frames, None)?;
    check_varies(&o.data, &data)?;
    let val = match &o.val_data {
        Some(p) => Some(read_data(p, frames, Some(&data.shape))?),
        None => None,
    };
    Ok((data, val))
}

/// The mean and standard deviation (ddof 0) of the training data, in f64: the default
/// `data_shift` and `data_scale`.
pub(crate) fn data_stats(data: &[f32]) -> (f64, f64) {
    let n = data.len() as f64;
    let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Refuses training data whose values are all the same: its standard deviation, the default
/// `data_scale`, is 0, and there is nothing to learn from it.
fn check_varies(path: &Path, data: &npy::Array) -> Result<()> {
    let first = data.data[0];
    if data.data.iter().all(|&v| v == first) {
        return Err(Error::bad_file(
            path,
            format!(
                "every value is {first}: constant training data (its standard deviation 0 would make data_scale vanish); expected sequences that vary"
            ),
        ));
    }
    Ok(())
}

/// Refuses a `data_scale` and `data_shift` under which the training data are constant in
/// model space: the spread of `(x − data_shift) / data_scale`, computed in f64 and then taken to
/// float32 as training does, must be a normal float32 number and above float32's resolution at
/// the values' magnitude (one step, `ε · max |value|`). `source` says where the scale and shift came from.
pub(crate) fn check_model_spread(
    path: &Path,
    data: &[f32],
    (data_scale, data_shift): (f64, f64),
    source: &str,
) -> Result<()> {
    let to_model = |v: f32| f64::from(((f64::from(v) - data_shift) / data_scale) as f32);
    let n = data.len() as f64;
    let mean = data.iter().map(|&v| to_model(v)).sum::<f64>() / n;
    let spread = (data
        .iter()
        .map(|&v| (to_model(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let magnitude = data.iter().map(|&v| to_model(v).abs()).fold(0.0, f64::max);
    let resolution = f64::from(f32::EPSILON) * magnitude;
    if !(spread >= f64::from(f32::MIN_POSITIVE) && spread > resolution) {
        return Err(Error::bad_file(
            path,
            format!(
                "(x − data_shift {:e}) / data_scale {:e} ({source}) spreads only {spread:.3e} in float32 (values up to {magnitude:.3e}, resolution {resolution:.3e}): constant training data in model space; expected a data_scale near the data's standard deviation and a data_shift near its mean",
                data_shift, data_scale
            ),
        ));
    }
    Ok(())
}

/// Refuses a run whose weights, optimizer state and batch cannot fit in memory.
fn check_memory(o: &TrainOptions, config: &UNet2DConfig, p: &ProcessConfig) -> Result<()> {
    let params = config.min_params();
    let (frames, e) = (p.frames(), p.frame_len());
    // this rank's share of the batch (all of it in a process of its own)
    let rows = o.batch.div_ceil(world().size());
    let need = memory::sum(&[
        // weights, gradients, Adam's two moments and the EMA
        params.and_then(|n| n.checked_mul(5 * 4)),
        // one batch: the clean windows and the network input, the noise and the target
        memory::array(&[2, rows, frames.max(p.input_frames()), e], 4),
        memory::array(&[2, rows, p.diffused(), e], 4),
        config.min_activation_bytes(rows, p.height, p.width),
    ]);
    let params = params.map_or("more than 2^64".to_string(), |n| n.to_string());
    memory::ensure(
        &format!(
            "--batch {} of {}×{} frames with a network of at least {params} parameters: the weights, the optimizer state and one batch",
            o.batch, p.height, p.width
        ),
        need,
    )
}

/// What to change when training diverges: a smaller --lr, and --weight-decay (when it is used)
/// and --clip, with their values.
fn remedy(o: &TrainOptions) -> String {
    let decay = if o.weight_decay > 0.0 {
        format!(", --weight-decay (now {:?})", o.weight_decay)
    } else {
        String::new()
    };
    format!(
        "try a smaller --lr (now {:?}){decay} or --clip (now {:?})",
        o.lr, o.clip
    )
}

/// The first of the weights and the EMA weights that holds NaN or infinite values, and how many.
fn non_finite_state(state: &State) -> Result<Option<(&'static str, usize)>> {
    for (kind, flat) in [("weights", &state.params), ("EMA weights", &state.ema)] {
        let bad = flat.to_vec()?.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Ok(Some((kind, bad)));
        }
    }
    Ok(None)
}

/// The log lines of steps up to `step`, which a resumed run continues (it rewrites what
/// follows).
pub(crate) fn log_until(path: &Path, step: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    text.lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs `dydiff train`. `--out` is checked first (a new path in an existing directory or a
/// directory without a run; with `--resume`, a directory holding one); the folder is written
/// only at checkpoints, each one whole: the model, the training state and the log up to that
/// step, committed together.
pub fn run(o: &TrainOptions) -> Result<()> {
    let mut outputs = Outputs::new();
    // The files of every checkpoint, so that one that could not be placed is refused now.
    let mut names = Model::folder_files();
    names.extend([STATE_FILE.to_string(), LOG_FILE.to_string()]);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let folder = outputs.dir_with("--out", &o.out, &names)?;
    check_inputs(o, &outputs)?;
    let state_path = o.out.join(STATE_FILE);
    let log_path = o.out.join(LOG_FILE);
    if o.resume && !state_path.is_file() {
        return Err(Error::Output {
            flag: "--out".into(),
            path: o.out.clone(),
            expected: "a folder holding a training run to continue (--resume)".into(),
            found: format!("no {STATE_FILE} in it"),
        });
    }
    if !o.resume && state_path.exists() {
        return Err(Error::bad_file(
            &o.out,
            "holds a training run already; pass --resume to continue it, or choose another --out",
        ));
    }
    validate(o)?;
    let device = o.device;
    let frames = o.history + o.future;
    let (data, val) = read_training_data(o)?;
    let [_, _, c, h, w] = data.shape[..] else {
        unreachable!("checked 5-d")
    };
    let diffused = if o.diffuse_history { frames } else { o.future };
    let (in_ch, out_ch) = ((o.history + diffused) * c, diffused * c);
    let mut log = String::new();
    let (mut model, mut state) = if o.resume {
        // on the host: the state goes to the device, the network is rebuilt on it
        let m = Model::load(&o.out, Device::Cpu)?;
        let stored = m.process.training.clone().unwrap_or(Value::Null);
        let mut want = recipe(o);
        if !o.cosine {
            // The schedule does not depend on the total, so a run may be extended.
            want["steps"] = stored["steps"].clone();
        }
        let mut differ = recipe_differences(&stored, &want);
        let p = &m.process;
        for (flag, run, given) in [
            ("--history", p.history.to_string(), o.history.to_string()),
            ("--future", p.future.to_string(), o.future.to_string()),
            ("--dyn-eta", p.dyn_eta.to_string(), o.dyn_eta.to_string()),
            (
                "--diffuse-history",
                p.diffuse_history.to_string(),
                o.diffuse_history.to_string(),
            ),
            (
                "--padding-mode",
                p.padding_mode.name().to_string(),
                o.padding_mode.name().to_string(),
            ),
            (
                "--prediction-type",
                m.scheduler.prediction.name().to_string(),
                o.prediction.name().to_string(),
            ),
        ] {
            if run != given {
                differ.insert(0, format!("{flag} {given} (the run: {run})"));
            }
        }
        if !differ.is_empty() {
            return Err(Error::Invalid(format!(
                "--resume: {} differ from the run in {}; resume with the run's values",
                differ.join(", "),
                o.out.display()
            )));
        }
        let found = (m.process.channels, m.process.height, m.process.width);
        if (c, h, w) != found {
            return Err(Error::bad_file(
                &o.data,
                format!(
                    "--resume: frames of (C, H, W) = {:?}; the model in {} was trained on {found:?}",
                    (c, h, w),
                    o.out.display()
                ),
            ));
        }
        for (flag, given, stored) in [
            ("--data-scale", o.data_scale, m.process.data_scale),
            ("--data-shift", o.data_shift, m.process.data_shift),
        ] {
            if let Some(v) = given.filter(|&v| v != stored) {
                return Err(Error::Invalid(format!(
                    "{flag} {v}: the run in {} uses {stored}; resume with the same value or without the flag",
                    o.out.display()
                )));
            }
        }
        for (path, a) in [(&o.data, &data)]
            .into_iter()
            .chain(o.val_data.iter().zip(&val))
        {
            m.process
                .check_model_space(path, &a.data, "from the model's dydiff.json")?;
        }
        check_model_spread(
            &o.data,
            &data.data,
            (m.process.data_scale, m.process.data_shift),
            "from the model's dydiff.json",
        )?;
        check_memory(o, &m.unet.config, &m.process)?;
        let s = State::load(&state_path, &m.unet, device)?;
        if s.step >= o.steps {
            return Err(Error::Invalid(format!(
                "--steps {}: the checkpoint in {} is already at step {}",
                o.steps,
                o.out.display(),
                s.step
            )));
        }
        log = log_until(&log_path, s.step);
        (m, s)
    } else {
        let config = network_for(o, (in_ch, out_ch), (h, w))?;
        let (mean, std) = data_stats(&data.data);
        let process = ProcessConfig {
            method: "dydiff".into(),
            dyn_eta: o.dyn_eta,
            diffuse_history: o.diffuse_history,
            history: o.history,
            future: o.future,
            channels: c,
            height: h,
            width: w,
            data_scale: o.data_scale.unwrap_or(std),
            data_shift: o.data_shift.unwrap_or(mean),
            padding_mode: o.padding_mode,
            training: Some(recipe(o)),
        };
        let source = format!(
            "data_scale from {}, data_shift from {}",
            if o.data_scale.is_some() {
                "--data-scale"
            } else {
                "the data's standard deviation"
            },
            if o.data_shift.is_some() {
                "--data-shift"
            } else {
                "the data's mean"
            }
        );
        for (path, a) in [(&o.data, &data)]
            .into_iter()
            .chain(o.val_data.iter().zip(&val))
        {
            process.check_model_space(path, &a.data, &source)?;
        }
        check_model_spread(
            &o.data,
            &data.data,
            (process.data_scale, process.data_shift),
            &source,
        )?;
        check_memory(o, &config, &process)?;
        let scheduler = SchedulerConfig {
            prediction: o.prediction,
            ..SchedulerConfig::default()
        };
        // initialised on the host, so that the device holds the weights once (in the state)
        let unet = UNet2D::init(config, o.seed, Device::Cpu)?;
        let state = State::fresh(&unet, device)?;
        (
            Model {
                schedule: Schedule::new(&scheduler),
                process,
                scheduler,
                unet,
            },
            state,
        )
    };
    model.process.training = Some(recipe(o));
    let config = model.unet.config.clone();
    let p = model.process.clone();
    let files = Files {
        folder,
        state: STATE_FILE,
        log: LOG_FILE,
        done: "trained",
        weights: format!("EMA weights in {}", o.out.join(UNET_DIR).display()),
    };
    let schedule = model.schedule.clone();
    let loss = |unet: &UNet2D, step: usize, rows: Range<usize>| -> Result<Tensor> {
        let key = |purpose| NoiseKey {
            seed: o.seed,
            purpose,
            step: step as u32,
        };
        let (inp, target, t) = batch(
            &data,
            &p,
            &schedule,
            rows.clone(),
            key(Purpose::TrainBatch),
            key(Purpose::TrainNoise),
            None,
            device,
        )?;
        // the resnet blocks' dropout (if the network has any), masks keyed by (step, row)
        let drop_rows = rows_tensor(&batch_rows(rows.clone(), 0), device)?;
        let drop = Dropout {
            key: key(Purpose::TrainDropout),
            rows: &drop_rows,
        };
        let mean = unet.forward_with(&inp, &t, Some(&drop))?.mse(&target)?;
        rows_part(mean, &rows, o.batch)
    };
    let checkpoint = |ema: UNet2D| -> Result<Checkpoint> {
        let val_loss = match &val {
            Some(v) => Some(validation_loss(
                &ema, v, &p, &schedule, o.batch, o.seed, device,
            )?),
            None => None,
        };
        model.unet = ema;
        Ok((val_loss, model.files()?))
    };
    train_loop(
        o,
        (o.steps, &mut state, &config),
        (&mut outputs, &files, log),
        loss,
        checkpoint,
    )?;
    match (&val, world().is_root()) {
        (Some(v), true) => {
            let model = Model::load(&o.out, device)?;
            eprintln!("dydiff: {}", validation_skill(&model, v, o)?);
        }
        (None, true) => eprintln!(
            "dydiff: pass --val-data (held-out sequences) to learn whether the model beats persistence"
        ),
        _ => {}
    }
    Ok(())
}

/// Sequences, members and DDIM steps of the closing skill check.
const SKILL_SEQUENCES: usize = 16;
const SKILL_MEMBERS: usize = 4;

/// The closing check of a run with `--val-data`: forecasts of the first window of up to 16
/// validation sequences (4 members, the sampler's default steps and ddim_eta) against
/// persistence (the last history frame repeated), both by fair CRPS over every forecast value in
/// data space (persistence's CRPS is its absolute error), as one line that says whether the
/// model is usable.
fn validation_skill(model: &Model, val: &npy::Array, o: &TrainOptions) -> Result<String> {
    let p = &model.process;
    let (l, e) = (val.shape[1], p.frame_len());
    let n = val.shape[0].min(SKILL_SEQUENCES);
    let history = histories(val, n, p.history, e);
    let settings = SamplerSettings {
        members: SKILL_MEMBERS,
        steps: DEFAULT_STEPS,
        seed: o.seed,
        ddim_eta: DEFAULT_DDIM_ETA,
        batch: o.batch,
        device: o.device,
    };
    let (fc, _) = forecast(model, &settings, &history, n, None, |_| {})?;
    let (s, m) = (p.future, SKILL_MEMBERS);
    let (mut crps, mut persistence) = (0.0f64, 0.0f64);
    let mut vals = vec![0.0f64; m];
    for i in 0..n {
        let seq = &val.data[i * l * e..][..l * e];
        let last = &seq[(p.history - 1) * e..][..e];
        for f in 0..s {
            let truth = &seq[(p.history + f) * e..][..e];
            for (j, &y) in truth.iter().enumerate() {
                for (k, v) in vals.iter_mut().enumerate() {
                    *v = f64::from(fc[((i * m + k) * s + f) * e + j]);
                }
                crps += crps_both(&mut vals, f64::from(y)).0;
                persistence += (f64::from(last[j]) - f64::from(y)).abs();
            }
        }
    }
    let count = (n * s * e) as f64;
    let (crps, persistence) = (crps / count, persistence / count);
    let verdict = if crps < persistence {
        format!(
            "{:.0}% better than persistence",
            100.0 * (1.0 - crps / persistence)
        )
    } else {
        format!(
            "{:.0}% WORSE than persistence: not yet a usable forecaster (train longer: the default recipe is {} steps; see docs/cli.md, “train”)",
            100.0 * (crps / persistence - 1.0),
            DEFAULT_TRAIN_STEPS
        )
    };
    Ok(format!(
        "validation skill ({n} sequences of {}, {m} members, {DEFAULT_STEPS} DDIM steps, ddim_eta {DEFAULT_DDIM_ETA}): fair CRPS {crps:.4} against persistence {persistence:.4}, {verdict}",
        o.val_data
            .as_ref()
            .map_or(String::new(), |v| v.display().to_string())
    ))
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

/// What a checkpoint adds to the state and the log: the validation loss (with `--val-data`) and
/// the model folder's files, by path inside it.
pub(crate) type Checkpoint = (Option<f64>, Vec<(String, Vec<u8>)>);

/// Where a training loop writes its checkpoints: the folder, the names of its state and log
/// files, and the verb of its closing line.
pub(crate) struct Files {
    pub folder: DirOutput,
    pub state: &'static str,
    pub log: &'static str,
    /// What the closing line says, e.g. `trained` or `trained the interpolator of`.
    pub done: &'static str,
    /// Where the weights went, for the closing line.
    pub weights: String,
}

/// This process's command line with `--resume` (added if absent), shell-quoted where needed.
fn resume_command() -> String {
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

/// `h:mm:ss`.
pub(crate) fn clock_time(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The training loop shared by every method and stage, from `state.step` to `steps`: each step
/// the loss `loss(network, step, rows)` — this rank's part of the mean over the batch, from its
/// share `rows` of the batch's rows (all of them in a process of its own) — its gradient summed
/// over the ranks, and the optimizer update; a log line every `--log-every` steps; at every
/// checkpoint (and the last step) `checkpoint(EMA network)` gives the validation loss and the
/// model folder's files, which are written with the state and the log `log` so far, all
/// together. A non-finite loss or state stops the run naming the last good checkpoint.
///
/// With several ranks (docs/distributed.md) every rank runs the loop in step with the others;
/// rank 0 alone draws the progress bar, computes the checkpoint and writes files, and every
/// rank learns at once of an error it met there.
pub(crate) fn train_loop(
    o: &TrainOptions,
    (steps, state, config): (usize, &mut State, &UNet2DConfig),
    (outputs, files, mut log): (&mut Outputs, &Files, String),
    mut loss: impl FnMut(&UNet2D, usize, Range<usize>) -> Result<Tensor>,
    mut checkpoint: impl FnMut(UNet2D) -> Result<Checkpoint>,
) -> Result<()> {
    let device = o.device;
    let w = world();
    // every rank has prepared the run, or all stop here
    let mut unet = w.begin_collectives(state.network(config, device, Weights::Current))?;
    let rows = w.share(o.batch);
    let state_path = o.out.join(files.state);
    let bar = if o.progress && w.is_root() {
        let b = indicatif::ProgressBar::new(steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "training {bar:30} {pos}/{len} steps  {msg}  ETA {eta_precise}",
            )
            .expect("valid template"),
        );
        b.set_position(state.step as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    atomic::on_interrupt_say(if state.step > 0 {
        format!(
            "the checkpoint of step {} is kept in {}; continue the run with: {}",
            state.step,
            o.out.display(),
            resume_command()
        )
    } else {
        format!(
            "nothing was written (the first checkpoint comes at step {})",
            o.checkpoint_every.min(steps)
        )
    });
    let (mut loss_sum, mut loss_n, mut clock) = (0.0f64, 0usize, Instant::now());
    let plain_progress = o.progress && w.is_root() && !std::io::stderr().is_terminal();
    let (started, first) = (Instant::now(), state.step);
    let mut norm = f64::NAN;
    let mut pending = Pending::default();
    let mut last_saved = state.step;
    let settings = OptimizerSettings {
        weight_decay: o.weight_decay,
        clip: o.clip,
        ema_decay: o.ema_decay,
    };
    while state.step < steps {
        let step = state.step + 1;
        let lr = learning_rate(o, step, steps);
        pending.push(state.train_step(
            &unet,
            |u| loss(u, step, rows.clone()),
            lr,
            &settings,
            device,
        )?);
        let kept = || {
            if last_saved > 0 {
                format!(
                    "the last good checkpoint, step {last_saved}, is in {}",
                    o.out.display()
                )
            } else {
                "before the first checkpoint, so nothing was written".to_string()
            }
        };
        unet = state.network(config, device, Weights::Current)?;
        bar.set_position(step as u64);
        let at_checkpoint = step % o.checkpoint_every == 0 || step == steps;
        let at_log = step % o.log_every == 0 || at_checkpoint;
        // The CPU has its values at hand; the GPU's are read at log lines and checkpoints only.
        if device == Device::Cpu || at_log {
            // the losses are the whole batch's: every rank reads the same
            let (sum, n, last_norm) = w.agree(pending.read(|bad_step, value| {
                Error::Invalid(format!(
                    "step {bad_step}: the loss is {value}; stopped ({}); {}",
                    kept(),
                    remedy(o)
                ))
            }))?;
            if n > 0 {
                bar.set_message(format!("loss {:.4}", sum / n as f64));
            }
            (loss_sum, loss_n, norm) = (loss_sum + sum, loss_n + n, last_norm);
        }
        if at_log && plain_progress && loss_n > 0 {
            // without a terminal (a batch job, nohup), a plain line per log line
            let elapsed = started.elapsed().as_secs_f64();
            let done = (step - first) as f64;
            let eta = elapsed / done * (steps - step) as f64;
            eprintln!(
                "dydiff: step {step}/{steps}, loss {:.4}, {:.2} steps/s, elapsed {}, ETA {}",
                loss_sum / loss_n as f64,
                done / elapsed.max(1e-9),
                clock_time(elapsed),
                clock_time(eta)
            );
        }
        if at_log {
            let secs = clock.elapsed().as_secs_f64();
            let mut line = json!({
                "step": step, "loss": loss_sum / loss_n as f64, "lr": lr, "grad_norm": norm,
                "steps_per_s": loss_n as f64 / secs.max(1e-9),
            });
            if !at_checkpoint {
                log.push_str(&format!("{line}\n"));
            } else {
                // rank 0 computes and writes the checkpoint; every rank learns whether it could
                let mut write = || -> Result<()> {
                    let (val_loss, model_files) =
                        checkpoint(state.network(config, device, Weights::Ema)?)?;
                    if let Some(v) = val_loss {
                        line["val_loss"] = json!(v);
                    }
                    log.push_str(&format!("{line}\n"));
                    // A checkpoint is written only with finite weights.
                    if let Some((kind, bad)) = non_finite_state(state)? {
                        return Err(Error::Invalid(format!(
                            "step {step}: the {kind} hold {bad} non-finite values; stopped without writing this checkpoint ({}); {}",
                            kept(),
                            remedy(o)
                        )));
                    }
                    for (name, bytes) in model_files {
                        outputs.write_in(files.folder, &name, &bytes)?;
                    }
                    outputs.write_in(files.folder, files.state, &state.encode(&state_path)?)?;
                    outputs.write_in(files.folder, files.log, log.as_bytes())?;
                    outputs.commit()
                };
                w.agree(if w.is_root() { write() } else { Ok(()) })?;
                last_saved = step;
                if step < steps {
                    atomic::on_interrupt_say(format!(
                        "the checkpoint of step {step} is kept in {}; continue the run with: {}",
                        o.out.display(),
                        resume_command()
                    ));
                }
            }
            (loss_sum, loss_n, clock) = (0.0, 0, Instant::now());
        }
    }
    bar.finish_and_clear();
    w.end_collectives();
    if w.is_root() {
        eprintln!(
            "dydiff: {} {} to step {} ({})",
            files.done,
            o.out.display(),
            state.step,
            files.weights
        );
    }
    Ok(())
}

/// The network's noise-prediction error of a model folder on sequences `(N, L, C, H, W)` (data
/// space, `L ≥ P+1+S`), at fixed timesteps: for each `t`, `batches` batches of `rows` windows
/// drawn as in validation (purposes 5 and 6 of docs/random.md, `seed`), the mean squared error
/// of `ε̂` against `ε̃` per diffused frame (for a network that predicts the velocity, of the `ε̂`
/// that follows from it: `ᾱ_t` times the velocity's error). Returns, per timestep, the per-frame
/// errors (the diffused frames: `S`, or all `P+1+S` when the model diffuses the history).
pub fn noise_error(
    model: &Model,
    data_path: &Path,
    timesteps: &[usize],
    rows: usize,
    batches: u32,
    seed: u64,
    device: Device,
) -> Result<Vec<Vec<f64>>> {
    let p = &model.process;
    let data = read_data(data_path, p.frames(), None)?;
    let found = (data.shape[2], data.shape[3], data.shape[4]);
    if found != (p.channels, p.height, p.width) {
        return Err(Error::bad_file(
            data_path,
            format!(
                "frames of (C, H, W) = {found:?}; the model was trained on {:?}",
                (p.channels, p.height, p.width)
            ),
        ));
    }
    if let Some(&t) = timesteps.iter().find(|&&t| t >= model.schedule.len()) {
        return Err(Error::Invalid(format!(
            "--timesteps: expected values below {}, found {t}",
            model.schedule.len()
        )));
    }
    let (dn, e) = (p.diffused(), p.frame_len());
    let mut out = Vec::with_capacity(timesteps.len());
    for &t in timesteps {
        let mut per_frame = vec![0.0f64; dn];
        for k in 0..batches {
            let key = |purpose| NoiseKey {
                seed,
                purpose,
                step: k,
            };
            let (inp, target, tt) = batch(
                &data,
                p,
                &model.schedule,
                0..rows,
                key(Purpose::ValBatch),
                key(Purpose::ValNoise),
                Some(t),
                device,
            )?;
            let (eh, tg) = (model.unet.forward(&inp, &tt)?.to_vec()?, target.to_vec()?);
            for (a, b) in eh.chunks(dn * e).zip(tg.chunks(dn * e)) {
                for (f, (fa, fb)) in a.chunks(e).zip(b.chunks(e)).enumerate() {
                    per_frame[f] += fa
                        .iter()
                        .zip(fb)
                        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                        .sum::<f64>();
                }
            }
        }
        // ε̂ = a·x_t + b·output, so the noise's error is b times the output's (b = √ᾱ_t for v)
        let (_, b) = model
            .schedule
            .prediction
            .epsilon(model.schedule.alphas_cumprod[t]);
        let scale = b * b;
        let count = (rows * batches as usize * e) as f64;
        out.push(per_frame.iter().map(|s| scale * s / count).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_weights_are_found() {
        let c = UNet2DConfig::from_json(&default_unet(4, 2, (8, 8))).unwrap();
        let unet = UNet2D::init(c, 0, Device::Cpu).unwrap();
        let mut s = State::fresh(&unet, Device::Cpu).unwrap();
        assert_eq!(non_finite_state(&s).unwrap(), None);
        let mut bad = s.ema.to_vec().unwrap();
        let n = bad.len();
        bad[0] = f32::NAN;
        bad[n - 1] = f32::INFINITY;
        s.ema = Device::Cpu.storage_from_vec(bad).unwrap();
        assert_eq!(non_finite_state(&s).unwrap(), Some(("EMA weights", 2)));
        s.params = Device::Cpu.storage_from_vec(vec![f32::NAN; n]).unwrap();
        assert!(matches!(
            non_finite_state(&s).unwrap(),
            Some(("weights", _))
        ));
    }
}
