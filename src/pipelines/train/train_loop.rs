//! The training loop every method runs: steps, the optimizer, the EMA, validation, the log and
//! the atomic checkpoints; and the noise-prediction error `bench noise` reports.

use super::batch::{batch, read_data};
use super::options::{learning_rate, resume_command, TrainOptions, DEFAULT_TRAIN_STEPS};
use super::state::{
    non_finite_state, Checkpoint, Files, OptimizerSettings, Pending, State, Weights,
};
use crate::backend::Device;
use crate::diffusion::schedule::Schedule;
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::Outputs;
use crate::io::{atomic, npy};
use crate::metrics::crps::crps_both;
use crate::model::{Model, ProcessConfig};
use crate::nn::{UNet2D, UNet2DConfig};
use crate::pipelines::sample::{
    forecast, histories, SamplerSettings, DEFAULT_DDIM_ETA, DEFAULT_STEPS,
};
use crate::rng::{NoiseKey, Purpose};
use crate::tensor::Tensor;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

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

/// `h:mm:ss`.
pub(crate) fn clock_time(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The mean loss of `unet` over fixed validation batches (4 batches of `rows`).
pub(super) fn validation_loss(
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

/// The closing check of a run with `--val-data`: forecasts of the first window of up to 16
/// validation sequences (4 members, the sampler's default steps and ddim_eta) against
/// persistence (the last history frame repeated), both by fair CRPS over every forecast value in
/// data space (persistence's CRPS is its absolute error), as one line that says whether the
/// model is usable.
pub(super) fn validation_skill(
    model: &Model,
    val: &npy::Array,
    o: &TrainOptions,
) -> Result<String> {
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

/// Sequences, members and DDIM steps of the closing skill check.
const SKILL_SEQUENCES: usize = 16;

const SKILL_MEMBERS: usize = 4;

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
