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
//!
//! One job a file: this one the command (inputs checked, data read, the network built or
//! resumed, the loop run); `options.rs` the flags and the recipe they make; `state.rs` the
//! training state and its checkpoint files; `batch.rs` the data and each step's rows;
//! `train_loop.rs` the loop every method runs; `dyffusion.rs` DYffusion's two stages on it.

mod batch;
pub mod dyffusion;
mod options;
mod state;
mod train_loop;

pub use batch::{batch_rows, rows_part};
pub use options::{
    default_warmup, learning_rate, recorded_flags, DyffusionOptions, Stage, TrainOptions,
    DEFAULT_TRAIN_STEPS, DEFAULT_WARMUP,
};
pub use state::{OptimizerSettings, State, StepResult, Weights, LOG_FILE, STATE_FILE, STEP_KEY};
pub(crate) use train_loop::clock_time;
pub use train_loop::noise_error;

use crate::backend::Device;
use crate::diffusion::ddim::rows_tensor;
use crate::diffusion::schedule::{Schedule, SchedulerConfig};
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::Outputs;
use crate::memory;
use crate::model::{Method, Model, ProcessConfig, UNET_DIR};
use crate::nn::{Dropout, UNet2D, UNet2DConfig};
use crate::rng::{NoiseKey, Purpose};
use crate::tensor::Tensor;
use batch::{batch, check_model_spread, data_stats, read_training_data};
use options::{network_for, recipe, recipe_differences, validate};
use serde_json::Value;
use state::{Checkpoint, Files};
use std::ops::Range;
use train_loop::{log_until, train_loop, validation_loss, validation_skill};

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

/// Runs `dydiff train`: Dynamical Diffusion (or the standard model) below, DYffusion by
/// [`dyffusion::run`], as `o.method` says.
pub fn run(o: &TrainOptions) -> Result<()> {
    match o.method {
        Method::Dydiff => run_dydiff(o),
        Method::Dyffusion => dyffusion::run(o),
    }
}

/// Trains a Dynamical Diffusion model. `--out` is checked first (a new path in an existing
/// directory or a directory without a run; with `--resume`, a directory holding one); the folder
/// is written only at checkpoints, each one whole: the model, the training state and the log up
/// to that step, committed together.
fn run_dydiff(o: &TrainOptions) -> Result<()> {
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
        if !o.cosine() {
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
            m.process.data_space(),
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
        check_model_spread(&o.data, &data.data, process.data_space(), &source)?;
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
