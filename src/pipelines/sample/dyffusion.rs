//! `dydiff sample` on a DYffusion model folder (docs/dyffusion.md, “Cold sampling”): every
//! (sample, member) pair of a batch runs the cold-sampling loop of [`crate::model::dyffusion`], its
//! spread from the interpolator's dropout, whose masks are keyed by the pair, the window and the
//! call (docs/random.md, “Dropout masks”), so the forecast does not depend on `--batch`, the
//! thread count or the device beyond rounding. Roll-outs beyond the horizon go window by window
//! as for every method.

use super::ensemble::{
    check_batch, check_lead, check_members, model_space_histories, pair_rows, rank_progress,
    roll_out, SampleTimes, Window,
};
use super::{
    histories, picture_channels, read_observations, write_and_report, Frames, Made, SampleOptions,
    SampleReport,
};
use crate::backend::Device;
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::io::outputs::{DirOutput, FileOutput, Outputs};
use crate::memory;
use crate::model::dyffusion::{cold_sample, CallKeys, Calls, DyffusionConfig, DyffusionModel};
use crate::nn::UNet2D;
use crate::rng::Purpose;
use crate::tensor::Tensor;
use std::path::Path;
use std::time::Instant;

/// How cold sampling runs, independent of files.
#[derive(Clone, Copy, Debug)]
pub struct ColdSettings {
    pub members: usize,
    pub seed: u64,
    pub batch: usize,
    pub device: Device,
}

/// The most network calls of one window: the call has 16 bits of the masks' counter word.
pub const MAX_CALLS: usize = 1 << 16;

/// Refuses a DYffusion model with [`MAX_CALLS`] or more network calls per window.
pub(crate) fn check_calls(c: &DyffusionConfig) -> Result<()> {
    if c.calls_per_window() >= MAX_CALLS {
        return Err(Error::Invalid(format!(
            "{} network calls per window (horizon {}, additional_steps {}): expected fewer than {MAX_CALLS}",
            c.calls_per_window(),
            c.future,
            c.additional_steps
        )));
    }
    Ok(())
}

/// Forecasts `lead` frames for `members` members of each of the `n` histories `obs`
/// `(n, P+1, C·H·W)` (data space) by cold sampling with `forecaster`, rolled out over windows of
/// `h`; `tick(pairs)` after every network call of a batch. Returns `(n, M, lead, C·H·W)` in data
/// space. A forecast that would hold NaN or infinite values is refused.
pub fn forecast(
    model: &DyffusionModel,
    forecaster: &UNet2D,
    s: &ColdSettings,
    obs: &[f32],
    n: usize,
    lead: usize,
    mut tick: impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    let c = &model.config;
    check_calls(c)?;
    let frames = (c.history, c.future, c.frame_len());
    roll_out(frames, s.members, obs, n, lead, |histories, w| {
        window(model, forecaster, s, histories, n, w, &mut tick)
    })
}

/// One window of [`forecast`]: `(n·M, h, C·H·W)` in data space.
fn window(
    model: &DyffusionModel,
    forecaster: &UNet2D,
    s: &ColdSettings,
    obs: &[f32],
    n: usize,
    window: Window,
    tick: &mut impl FnMut(usize),
) -> Result<(Vec<f32>, SampleTimes)> {
    let c = &model.config;
    let (hist, fut, e) = (c.history, c.future, c.frame_len());
    let space = c.data_space();
    let pairs = n * s.members;
    let mut out = vec![0.0f32; pairs * fut * e];
    let mut times = SampleTimes::default();
    let mut bad = 0usize;
    // with several ranks, each takes its share of the batches (docs/distributed.md)
    let world = world();
    let parts = world.batch_shares(pairs, s.batch);
    let mine = parts[world.rank()].clone();
    for first in mine.clone().step_by(s.batch) {
        let clock = Instant::now();
        let b = s.batch.min(mine.end - first);
        let rows = pair_rows(first, b, s.members);
        let h_data = model_space_histories(obs, window, first, &rows, hist * e, space);
        let x0 = Tensor::from_vec(h_data, &[b, hist * c.channels, c.height, c.width], s.device)?;
        let keys = CallKeys {
            seed: s.seed,
            dropout: Purpose::Dropout,
            noise: Purpose::ConditionNoise,
            base: window.index << 16,
        };
        let calls = Calls::new(
            c,
            &model.interpolator,
            forecaster,
            &rows,
            keys,
            false,
            s.device,
        )?;
        times.other += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let leads = cold_sample(&calls, &x0, || tick(b))?;
        times.network += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        for (j, lead) in leads.iter().enumerate() {
            let v = lead.to_vec()?;
            for (r, row) in v.chunks(e).enumerate() {
                let dst = &mut out[((first + r) * fut + j) * e..][..e];
                for (o, &x) in dst.iter_mut().zip(row) {
                    *o = space.to_data(x);
                    bad += usize::from(!o.is_finite());
                }
            }
        }
        times.other += clock.elapsed().as_secs_f64();
    }
    world.all_gather_parts(&mut out, &parts, fut * e)?;
    let mut bad = [bad as u64];
    world.sum_u64(&mut bad)?;
    // every rank has the whole forecast: the check fails alike on every rank
    world.agree(match bad[0] {
        0 => Ok((out, times)),
        bad => Err(Error::Invalid(format!(
            "the forecast holds {bad} non-finite values: the networks' outputs left float32 (weights or histories that drive them beyond it, or a data_scale far from the data's standard deviation)"
        ))),
    })
}

/// Refuses a DYffusion folder whose interpolator is short of its recorded steps (the forecaster
/// must be trained on the finished one), naming the command that finishes it.
fn unfinished_interpolator(dir: &Path, c: &crate::model::dyffusion::DyffusionConfig) -> Result<()> {
    let planned = c
        .training
        .as_ref()
        .and_then(|t| t["interpolator"]["steps"].as_u64());
    let state = dir.join(crate::model::dyffusion::STATE_INTERPOLATOR);
    let reached = crate::model::checkpoint_step(&state).ok();
    match (reached, planned) {
        (Some(k), Some(n)) if (k as u64) < n => Err(Error::bad_file(
            dir,
            format!("a DYffusion folder whose interpolator is unfinished (step {k} of {n}) and without a forecaster; finish the interpolator with dydiff train --method dyffusion --stage interpolator --resume (its flags), then train the forecaster with --stage forecaster"),
        )),
        _ => Ok(()),
    }
}

/// `dydiff sample` on a DYffusion folder: cold sampling (docs/dyffusion.md); the outputs'
/// locations already checked by [`super::run`]. `--steps`, `--ddim-eta` and `--init-noise`
/// belong to DDIM and are refused.
pub(super) fn run(
    o: &SampleOptions,
    model_dir: &Path,
    input: &Path,
    outputs: Outputs,
    files: (FileOutput, FileOutput, Option<DirOutput>),
    clock: Instant,
) -> Result<SampleReport> {
    let settings = ColdSettings {
        members: o.members,
        seed: o.seed,
        batch: o.batch,
        device: o.device,
    };
    check_members(o.members)?;
    check_batch(o.batch)?;
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
    let frames = Frames::of(c.history, (c.channels, c.height, c.width));
    let obs = read_observations(input, &frames, c.data_space())?;
    let names = picture_channels(input, c.channels, files.2.is_some())?;
    let (n, e) = (obs.shape[0], c.frame_len());
    let lead = o.lead.unwrap_or(c.future);
    let shape = [n, o.members, lead, c.channels, c.height, c.width];
    let forecast_bytes = memory::array(&shape, 4);
    let batch = n.checked_mul(o.members).map(|pairs| pairs.min(o.batch));
    let net = |u: &UNet2D| batch.and_then(|b| u.config.min_activation_bytes(b, c.height, c.width));
    memory::ensure(
        &format!(
            "--members {}: the forecast {shape:?} (float32) and the sampler's work arrays",
            o.members
        ),
        memory::sum(&[
            forecast_bytes,
            forecast_bytes,
            memory::array(&[n, c.history, e], 4),
            batch.and_then(|b| memory::array(&[4 + c.future, b, c.history + 1, e], 4)),
            net(&model.interpolator),
            net(forecaster),
        ]),
    )?;
    let load_s = clock.elapsed().as_secs_f64();
    let history = histories(&obs, n, c.history, e);
    let windows = check_lead(lead, c.future)?;
    check_calls(c)?;
    let calls = c.calls_per_window();
    let bar = rank_progress(n * o.members, o.batch, calls * windows, calls, o.progress);
    // every rank has read the model and the inputs, or all stop here
    world().begin_collectives(Ok(()))?;
    let (fc, times) = forecast(&model, forecaster, &settings, &history, n, lead, |b| {
        bar.inc(b as u64)
    })?;
    world().end_collectives();
    bar.finish_and_clear();
    let causes = "a network trained too briefly, or observations unlike the training data";
    let made = Made {
        fc,
        times,
        lead,
        steps: None,
        network_calls: calls * windows,
        load_s,
        check: (c.data_scale, c.data_shift, causes.to_string()),
        obs: &obs,
        frames: &frames,
        names: &names,
    };
    write_and_report(o, (model_dir, input), outputs, files, made)
}
