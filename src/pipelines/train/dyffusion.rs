//! `dydiff train --method dyffusion` (docs/dyffusion.md, “Training”): stage 1 fits the
//! interpolator, stage 2 the forecaster with the interpolator frozen (its dropout active, the
//! look-ahead loss's gradient flowing through it), each with the training loop, optimizer, EMA,
//! validation, atomic checkpoints and exact `--resume` of every method
//! (`train_loop.rs` of [`super`]).
//!
//! Files in `MODEL/`: the DYffusion folder (EMA weights), and per stage its training state and log
//! (`train_state_interpolator.safetensors`, `train_log_interpolator.jsonl`, and the same for the
//! forecaster), written together at each checkpoint.

use super::{
    check_inputs, check_model_spread, data_stats, log_until, network_for, read_training_data,
    recipe, recipe_differences, rows_part, train_loop, validate, Checkpoint, DyffusionOptions,
    Files, Stage, State, TrainOptions, Weights,
};
use crate::backend::Device;
use crate::diffusion::ddim::rows_tensor;
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::io::outputs::{DirOutput, Outputs};
use crate::model::dyffusion::{
    forecaster_loss, interpolator_loss, CallKeys, Calls, DyffusionConfig, DyffusionModel,
    FORECASTER_DIR, INTERPOLATOR_DIR, LOG_FORECASTER, LOG_INTERPOLATOR, STATE_FORECASTER,
    STATE_INTERPOLATOR,
};
use crate::model::PROCESS_FILE;
use crate::nn::{Dropout, UNet2D, UNet2DConfig};
use crate::rng::{below, words, NoiseKey, NoiseRow, Purpose};
use crate::tensor::Tensor;
use serde_json::{json, Value};
use std::ops::Range;
use std::path::Path;

/// The most optimizer steps of a stage: the step has 30 bits of the call word `4·step + j`.
const MAX_STEPS: usize = (1 << 30) - 1;

/// Windows of `P + 1 + h` frames of `data` (model space) for rows `rows` of a batch, drawn from
/// `key` (docs/random.md, purposes 3 and 5) by the row's index in the whole batch:
/// `(windows (|rows|, P+1+h, C·H·W), word w2 per row)`.
fn windows(
    data: &npy::Array,
    c: &DyffusionConfig,
    rows: Range<usize>,
    key: NoiseKey,
) -> (Vec<f32>, Vec<u32>) {
    let (n, l) = (data.shape[0], data.shape[1]);
    let (frames, e) = (c.history + c.future, c.frame_len());
    let mut x = Vec::with_capacity(rows.len() * frames * e);
    let mut w2 = Vec::with_capacity(rows.len());
    for b in rows {
        let w = words(key, row(b));
        let (seq, start) = (below(w[0], n), below(w[1], l - frames + 1));
        let src = &data.data[(seq * l + start) * e..][..frames * e];
        x.extend(src.iter().map(|&v| c.data_space().to_model(v)));
        w2.push(w[2]);
    }
    (x, w2)
}

/// Row `b` of a batch as the pair keying its randomness.
fn row(b: usize) -> NoiseRow {
    NoiseRow {
        sample: b as u32,
        member: 0,
    }
}

/// Frames `range` of each window `(rows, frames, e)` as `(rows, |range|·C, H, W)`.
fn frames_of(
    x: &[f32],
    c: &DyffusionConfig,
    rows: &[usize],
    pick: impl Fn(usize) -> std::ops::Range<usize>,
    device: Device,
) -> Result<Tensor> {
    let (frames, e) = (c.history + c.future, c.frame_len());
    let mut out = Vec::new();
    let mut count = 0;
    for &r in rows {
        let f = pick(r);
        count = f.len();
        out.extend_from_slice(&x[(r * frames + f.start) * e..][..f.len() * e]);
    }
    Tensor::from_vec(
        out,
        &[rows.len(), count * c.channels, c.height, c.width],
        device,
    )
}

/// Stage 1's loss on rows `rows` of the batch of `batch` rows drawn for `key`:
/// `MSE(I(x_0, x_h, i), x^{P+i})`, `i ~ U{1…h−1}`, as this rank's part of the batch's mean
/// ([`rows_part`]).
#[allow(clippy::too_many_arguments)]
fn interpolator_batch_loss(
    net: &UNet2D,
    c: &DyffusionConfig,
    data: &npy::Array,
    (rows, batch): (Range<usize>, usize),
    key: NoiseKey,
    drop: Option<&Dropout>,
    device: Device,
) -> Result<Tensor> {
    let (x, w2) = windows(data, c, rows.clone(), key);
    let i: Vec<usize> = w2.iter().map(|&w| 1 + below(w, c.future - 1)).collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let (p1, h) = (c.history, c.future);
    let x0 = frames_of(&x, c, &all, |_| 0..p1, device)?;
    let xh = frames_of(&x, c, &all, |_| p1 + h - 1..p1 + h, device)?;
    let target = frames_of(&x, c, &all, |r| p1 + i[r] - 1..p1 + i[r], device)?;
    let t = Tensor::from_vec(i.iter().map(|&v| v as f32).collect(), &[rows.len()], device)?;
    rows_part(
        interpolator_loss(net, (&x0, &xh, &target), &t, drop)?,
        &rows,
        batch,
    )
}

/// Stage 2's loss on rows `rows` of the batch of `batch` rows drawn for `key`, `n ~ U{0…N−1}`
/// per row, the rows taken with `n ≤ N−2` first (each keeps its own pair for its randomness),
/// as this rank's part of the batch's loss: each mean weighed by the rank's share of the rows it
/// is taken over (all rows for `L₁`, those with `n ≤ N−2` for `L₂`).
#[allow(clippy::too_many_arguments)]
fn forecaster_batch_loss(
    interpolator: &UNet2D,
    forecaster: &UNet2D,
    c: &DyffusionConfig,
    data: &npy::Array,
    (rows, batch): (Range<usize>, usize),
    key: NoiseKey,
    keys: CallKeys,
    forecaster_dropout: bool,
    device: Device,
) -> Result<Tensor> {
    let (x, w2) = windows(data, c, rows.clone(), key);
    let big_n = c.n_steps();
    let n: Vec<usize> = w2.iter().map(|&w| below(w, big_n)).collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&r| n[r] + 2 > big_n);
    let pairs: Vec<NoiseRow> = order.iter().map(|&r| row(rows.start + r)).collect();
    let (p1, h) = (c.history, c.future);
    let x0 = frames_of(&x, c, &order, |_| 0..p1, device)?;
    let xh = frames_of(&x, c, &order, |_| p1 + h - 1..p1 + h, device)?;
    let n_sorted: Vec<usize> = order.iter().map(|&r| n[r]).collect();
    let calls = Calls::new(
        c,
        interpolator,
        forecaster,
        &pairs,
        keys,
        forecaster_dropout,
        device,
    )?;
    // the rows of the whole batch with a look-ahead (n ≤ N−2), and this rank's
    let ahead = |n: usize| n + 2 <= big_n;
    let two_all = (0..batch)
        .filter(|&b| ahead(below(words(key, row(b))[2], big_n)))
        .count();
    let two = n.iter().filter(|&&v| ahead(v)).count();
    let weights = if rows.len() == batch {
        [1.0, 1.0]
    } else {
        [
            (rows.len() as f64 / batch as f64) as f32,
            (two as f64 / two_all.max(1) as f64) as f32,
        ]
    };
    forecaster_loss(&calls, &x0, &xh, &n_sorted, weights)
}

/// The checkpoint step of a stage's state file, if it exists.
fn stage_step(path: &Path) -> Result<Option<usize>> {
    path.exists()
        .then(|| crate::model::checkpoint_step(path))
        .transpose()
}

/// Checks what each stage of this run will do against what the folder holds, before any work
/// (Rose-STL-Lab/dyffusion#7: a forecaster must be trained with the interpolator it is used
/// with): an interpolator that would train further under a forecaster trained on it is refused,
/// as is a forecaster already at `--steps`; a forecaster that starts on an interpolator short of
/// its recorded steps is announced.
fn check_stages(
    o: &TrainOptions,
    d: &DyffusionOptions,
    training: &Value,
    steps_1: usize,
) -> Result<()> {
    let step_1 = stage_step(&o.out.join(STATE_INTERPOLATOR))?;
    let step_2 = stage_step(&o.out.join(STATE_FORECASTER))?;
    let run_1 = d.stage != Stage::Forecaster;
    let run_2 = d.stage != Stage::Interpolator;
    // a resumed stage continues its own recipe
    for (name, runs, steps, reached) in [
        ("interpolator", run_1, steps_1, step_1),
        ("forecaster", run_2, o.steps, step_2),
    ] {
        if !(o.resume && runs && reached.is_some()) {
            continue;
        }
        let stored = &training[name];
        let mut want = recipe(o);
        want["steps"] = json!(steps);
        if !o.cosine() {
            // the schedule does not depend on the total, so a stage may be extended
            want["steps"] = stored["steps"].clone();
        }
        let differ = recipe_differences(stored, &want);
        if !differ.is_empty() {
            return Err(Error::Invalid(format!(
                "--resume: {} differ from the {name}'s run in {}; resume with the run's values",
                differ.join(", "),
                o.out.display()
            )));
        }
    }
    if let (true, Some(k2)) = (run_1, step_2) {
        let k1 = step_1.unwrap_or(0);
        if k1 < steps_1 {
            let flag = match (d.stage, d.interpolator_steps) {
                (Stage::Both, Some(n)) => format!("--interpolator-steps {n}"),
                _ => format!("--steps {steps_1}"),
            };
            return Err(Error::Invalid(format!(
                "{flag}: the interpolator in {} is at step {k1}, and the forecaster beside it (at step {k2}) was trained on that interpolator; training the interpolator further would pair the forecaster with an interpolator it was never trained with. Train a new interpolator in another --out (or remove {FORECASTER_DIR}/, {STATE_FORECASTER} and {LOG_FORECASTER} to retrain the forecaster too)",
                o.out.display()
            )));
        }
    }
    if let (true, Some(k2)) = (run_2, step_2) {
        if k2 >= o.steps {
            return Err(Error::Invalid(format!(
                "--steps {}: the forecaster's checkpoint in {} is already at step {k2}",
                o.steps,
                o.out.display()
            )));
        }
    }
    if let (true, false, None, Some(k1)) = (run_2, run_1, step_2, step_1) {
        let planned = training["interpolator"]["steps"].as_u64().unwrap_or(0) as usize;
        if k1 < planned && world().is_root() {
            eprintln!(
                "dydiff: warning: the forecaster starts on the interpolator in {} at step {k1} of its {planned} (unfinished: `--stage interpolator --resume` finishes it, but a forecaster trained now could not be used with the finished one)",
                o.out.display()
            );
        }
    }
    Ok(())
}

/// Runs `dydiff train --method dyffusion` with `o`'s DYffusion settings.
pub fn run(o: &TrainOptions) -> Result<()> {
    let d = &o.dyffusion;
    let mut outputs = Outputs::new();
    let mut names = vec![PROCESS_FILE.to_string()];
    for dir in [INTERPOLATOR_DIR, FORECASTER_DIR] {
        for f in UNet2D::PRETRAINED_FILES {
            names.push(format!("{dir}/{f}"));
        }
    }
    names.extend(
        [
            STATE_INTERPOLATOR,
            LOG_INTERPOLATOR,
            STATE_FORECASTER,
            LOG_FORECASTER,
        ]
        .map(String::from),
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let folder = outputs.dir_with("--out", &o.out, &names)?;
    check_inputs(o, &outputs)?;
    validate(o)?;
    check_options(o, d)?;
    let device = o.device;
    let (data, val) = read_training_data(o)?;
    let [_, _, ch, height, width] = data.shape[..] else {
        unreachable!("checked 5-d")
    };
    let steps_1 = d.interpolator_steps.unwrap_or(o.steps);
    let (s1, s2) = (o.out.join(STATE_INTERPOLATOR), o.out.join(STATE_FORECASTER));
    let existing = o.out.join(PROCESS_FILE).is_file();
    let run_1 = d.stage != Stage::Forecaster;
    let run_2 = d.stage != Stage::Interpolator;
    // What the folder must hold for this run.
    if !o.resume && ((run_1 && (s1.exists() || existing)) || (!run_1 && s2.exists())) {
        return Err(Error::bad_file(
            &o.out,
            "holds a training run already; pass --resume to continue it, or choose another --out",
        ));
    }
    if !run_1 && !o.out.join(INTERPOLATOR_DIR).is_dir() {
        return Err(Error::bad_file(
            &o.out,
            format!("--stage forecaster: expected a folder holding a trained interpolator ({INTERPOLATOR_DIR}/ and {PROCESS_FILE}, from --stage interpolator), found none"),
        ));
    }
    if o.resume && !s1.exists() && !s2.exists() {
        return Err(Error::Output {
            flag: "--out".into(),
            path: o.out.clone(),
            expected: "a folder holding a DYffusion training run to continue (--resume)".into(),
            found: format!("no {STATE_INTERPOLATOR} or {STATE_FORECASTER} in it"),
        });
    }
    let mut config = if existing {
        let m = crate::model::load_dyffusion(&o.out, device)?;
        let c = m.config;
        if (
            c.history,
            c.future,
            c.additional_steps,
            c.forecaster_condition,
            c.padding_mode,
        ) != (
            o.history,
            o.future,
            d.additional_steps,
            d.forecaster_condition,
            o.padding_mode,
        ) || (c.channels, c.height, c.width) != (ch, height, width)
        {
            return Err(Error::Invalid(format!(
                "the flags or data differ from the DYffusion run in {} (history {}, future {}, additional_steps {}, forecaster_condition {}, padding_mode {}, frames {:?}); use the same",
                o.out.display(),
                c.history,
                c.future,
                c.additional_steps,
                c.forecaster_condition.name(),
                c.padding_mode.name(),
                (c.channels, c.height, c.width)
            )));
        }
        c
    } else {
        let stats = data_stats(&data.data);
        DyffusionConfig {
            method: "dyffusion".into(),
            history: o.history,
            future: o.future,
            channels: ch,
            height,
            width,
            data_scale: o.data_scale.unwrap_or(stats.1),
            data_shift: o.data_shift.unwrap_or(stats.0),
            additional_steps: d.additional_steps,
            forecaster_condition: d.forecaster_condition,
            interpolator_dropout: d.interpolator_dropout,
            refine: true,
            lambda_1: d.lambda_1,
            lambda_2: d.lambda_2,
            padding_mode: o.padding_mode,
            training: None,
        }
    };
    config
        .validate()
        .map_err(|m| Error::Invalid(format!("--method dyffusion: {m}")))?;
    let source = "data_scale and data_shift of the run";
    for (path, a) in [(&o.data, &data)]
        .into_iter()
        .chain(o.val_data.iter().zip(&val))
    {
        crate::model::check_model_space(path, &a.data, config.data_space(), source)?;
    }
    check_model_spread(&o.data, &data.data, config.data_space(), source)?;
    let mut training = config.training.clone().unwrap_or_else(|| json!({}));
    check_stages(o, d, &training, steps_1)?;
    let mut interpolator: Option<UNet2D> = None;
    let mut stages = StageFiles {
        outputs: &mut outputs,
        folder,
    };
    // Stage 1.
    if run_1 {
        let mut want = recipe(o);
        want["steps"] = json!(steps_1);
        want["loss"] = json!("mse(I(x_0, x_h, i), x_{P+i})");
        let fresh = {
            let mut n = network_for(o, (config.interpolator_in(), ch), (height, width))?;
            n.dropout = config.interpolator_dropout;
            n
        };
        training["interpolator"] = want;
        config.training = Some(training.clone());
        let c = &config;
        let loss = |net: &UNet2D, data: &npy::Array, rows: Range<usize>, phase: Phase| match phase {
            Phase::Train(step) => {
                let drop_rows = rows_tensor(&super::batch_rows(rows.clone(), 0), device)?;
                let drop = Dropout {
                    key: NoiseKey {
                        seed: o.seed,
                        purpose: Purpose::TrainDropout,
                        step: 4 * step as u32,
                    },
                    rows: &drop_rows,
                };
                let key = NoiseKey {
                    seed: o.seed,
                    purpose: Purpose::TrainBatch,
                    step: step as u32,
                };
                interpolator_batch_loss(net, c, data, (rows, o.batch), key, Some(&drop), device)
            }
            Phase::Validation(k) => {
                let key = NoiseKey {
                    seed: o.seed,
                    purpose: Purpose::ValBatch,
                    step: k,
                };
                interpolator_batch_loss(net, c, data, (rows, o.batch), key, None, device)
            }
        };
        let model = |ema: UNet2D| -> Result<DyffusionModel> {
            Ok(DyffusionModel {
                config: c.clone(),
                interpolator: ema,
                forecaster: None,
            })
        };
        let spec = StageSpec {
            dir: INTERPOLATOR_DIR,
            state: STATE_INTERPOLATOR,
            log: LOG_INTERPOLATOR,
            done: "trained the interpolator of",
            fresh: (&|| Ok(fresh.clone()), o.seed),
            steps: steps_1,
            // a finished interpolator is not trained again when the forecaster's stage follows
            skip_finished: true,
        };
        let (state, net_config) =
            run_stage(o, &spec, &mut stages, (&data, val.as_ref()), &loss, &model)?;
        interpolator = Some(state.network(&net_config, device, Weights::Ema)?);
    }
    if !run_2 {
        return Ok(());
    }
    // Stage 2: the interpolator from stage 1 (EMA weights) or the folder, frozen.
    let interpolator = match interpolator {
        Some(i) => i,
        None => {
            UNet2D::from_pretrained_padded(&o.out.join(INTERPOLATOR_DIR), device, o.padding_mode)?
        }
    };
    let frozen = interpolator.frozen()?;
    let mut want = recipe(o);
    want["loss"] = json!("lambda_1·L1 + lambda_2·L2 (look-ahead through the interpolator)");
    let forecaster_in = config.forecaster_in();
    let fresh = || network_for(o, (forecaster_in, ch), (height, width));
    training["forecaster"] = want;
    config.training = Some(training);
    let c = &config;
    let loss = |net: &UNet2D, data: &npy::Array, rows: Range<usize>, phase: Phase| {
        let (keys, key, dropout) = match phase {
            Phase::Train(step) => (
                CallKeys {
                    seed: o.seed,
                    dropout: Purpose::TrainDropout,
                    noise: Purpose::TrainNoise,
                    base: 4 * step as u32,
                },
                NoiseKey {
                    seed: o.seed,
                    purpose: Purpose::TrainBatch,
                    step: step as u32,
                },
                true,
            ),
            Phase::Validation(k) => (
                CallKeys {
                    seed: o.seed,
                    dropout: Purpose::ValDropout,
                    noise: Purpose::ValNoise,
                    base: 4 * k,
                },
                NoiseKey {
                    seed: o.seed,
                    purpose: Purpose::ValBatch,
                    step: k,
                },
                false,
            ),
        };
        forecaster_batch_loss(
            &frozen,
            net,
            c,
            data,
            (rows, o.batch),
            key,
            keys,
            dropout,
            device,
        )
    };
    let model = |ema: UNet2D| -> Result<DyffusionModel> {
        Ok(DyffusionModel {
            config: c.clone(),
            interpolator: interpolator.frozen()?,
            forecaster: Some(ema),
        })
    };
    let spec = StageSpec {
        dir: FORECASTER_DIR,
        state: STATE_FORECASTER,
        log: LOG_FORECASTER,
        done: "trained the forecaster of",
        fresh: (&fresh, o.seed.wrapping_add(1)),
        steps: o.steps,
        skip_finished: false,
    };
    run_stage(o, &spec, &mut stages, (&data, val.as_ref()), &loss, &model).map(|_| ())
}

/// Where a stage's loss is taken: a training step (its dropout and noise keyed by the step), or
/// validation batch `k` of four (keyed by `k`, dropout off).
#[derive(Clone, Copy)]
enum Phase {
    Train(usize),
    Validation(u32),
}

/// A stage's loss of a network on rows of a batch of the given data, at a [`Phase`].
type StageLoss<'a> = dyn Fn(&UNet2D, &npy::Array, Range<usize>, Phase) -> Result<Tensor> + 'a;

/// What differs between DYffusion's two training stages, for [`run_stage`]: the network's folder,
/// state and log files, the summary's verb, a fresh network (its configuration, made only when
/// the stage starts afresh, and its seed) and the stage's steps.
struct StageSpec<'a> {
    dir: &'static str,
    state: &'static str,
    log: &'static str,
    done: &'static str,
    fresh: (&'a dyn Fn() -> Result<UNet2DConfig>, u64),
    steps: usize,
    /// Leave the loop out when the state has reached `steps` already (the interpolator, whose
    /// checkpoint the forecaster's stage goes on from).
    skip_finished: bool,
}

/// The outputs both stages write into: the run's pending outputs and the model folder's.
struct StageFiles<'a> {
    outputs: &'a mut Outputs,
    folder: DirOutput,
}

/// One stage of `dydiff train --method dyffusion`: its network and state resumed from the folder
/// (`--resume`, when its state file exists) or fresh, then the training loop of every method on
/// `loss`, validated on four batches of the validation data at each checkpoint, the folder's
/// networks at a checkpoint given by `model` from the EMA network. Returns the state and the
/// network's configuration.
fn run_stage(
    o: &TrainOptions,
    spec: &StageSpec,
    files: &mut StageFiles,
    (data, val): (&npy::Array, Option<&npy::Array>),
    loss: &StageLoss,
    model: &dyn Fn(UNet2D) -> Result<DyffusionModel>,
) -> Result<(State, UNet2DConfig)> {
    let device = o.device;
    let state_path = o.out.join(spec.state);
    let (mut state, log, net_config) = if o.resume && state_path.exists() {
        let net =
            UNet2D::from_pretrained_padded(&o.out.join(spec.dir), Device::Cpu, o.padding_mode)?;
        let state = State::load(&state_path, &net, device)?;
        let step = state.step;
        (
            state,
            log_until(&o.out.join(spec.log), step),
            net.config.clone(),
        )
    } else {
        let (config, seed) = (spec.fresh.0()?, spec.fresh.1);
        let net = UNet2D::init(config.clone(), seed, Device::Cpu)?;
        (State::fresh(&net, device)?, String::new(), config)
    };
    if spec.skip_finished && state.step >= spec.steps {
        return Ok((state, net_config));
    }
    let loop_files = Files {
        folder: files.folder,
        state: spec.state,
        log: spec.log,
        done: spec.done,
        weights: format!("EMA weights in {}", o.out.join(spec.dir).display()),
    };
    let train =
        |net: &UNet2D, step: usize, rows: Range<usize>| loss(net, data, rows, Phase::Train(step));
    let checkpoint = |ema: UNet2D| -> Result<Checkpoint> {
        let val_loss = match val {
            Some(v) => {
                let mut total = 0.0;
                for k in 0..4u32 {
                    total += f64::from(loss(&ema, v, 0..o.batch, Phase::Validation(k))?.scalar()?);
                }
                Some(total / 4.0)
            }
            None => None,
        };
        Ok((val_loss, model(ema)?.files()?))
    };
    train_loop(
        o,
        (spec.steps, &mut state, &net_config),
        (files.outputs, &loop_files, log),
        train,
        checkpoint,
    )?;
    Ok((state, net_config))
}

/// The flags of `--method dyffusion` within their ranges.
fn check_options(o: &TrainOptions, d: &DyffusionOptions) -> Result<()> {
    if o.prediction != crate::diffusion::schedule::Prediction::Epsilon {
        return Err(Error::Invalid(format!(
            "--prediction-type {}: DYffusion's networks predict frames, not noise (only --method dydiff trains a DDIM model)",
            o.prediction.name()
        )));
    }
    if let Some(n) = d.interpolator_steps.filter(|&n| n < o.warmup()) {
        if d.stage != Stage::Forecaster {
            return Err(Error::Invalid(format!(
                "--warmup-steps {}: longer than the interpolator's run (--interpolator-steps {n}), whose learning rate would never reach --lr; expected at most {n}",
                o.warmup()
            )));
        }
    }
    if o.future < 2 {
        return Err(Error::Invalid(format!(
            "--future {}: DYffusion needs a horizon of at least 2 frames (the interpolator predicts the frames between the history and frame h)",
            o.future
        )));
    }
    for (flag, v) in [
        ("--steps", Some(o.steps)),
        ("--interpolator-steps", d.interpolator_steps),
    ] {
        if let Some(v) = v.filter(|&v| v == 0 || v > MAX_STEPS) {
            return Err(Error::Invalid(format!(
                "{flag}: expected 1 to {MAX_STEPS} (the step has 30 bits of the randomness's call word), found {v}"
            )));
        }
    }
    if d.additional_steps > 1000 {
        return Err(Error::Invalid(format!(
            "--additional-steps: expected 0 to 1000, found {}",
            d.additional_steps
        )));
    }
    if !(0.0..1.0).contains(&d.interpolator_dropout) {
        return Err(Error::Invalid(format!(
            "--interpolator-dropout: expected 0 ≤ p < 1, found {}",
            d.interpolator_dropout
        )));
    }
    for (flag, v) in [("--lambda-1", d.lambda_1), ("--lambda-2", d.lambda_2)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::Invalid(format!(
                "{flag}: expected a finite number ≥ 0, found {v}"
            )));
        }
    }
    Ok(())
}
