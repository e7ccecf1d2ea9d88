//! `dydiff sample` on a DYffusion model folder (docs/dyffusion.md, “Cold sampling”): every
//! (sample, member) pair of a batch runs the cold-sampling loop of [`crate::model::dyffusion`], its
//! spread from the interpolator's dropout, whose masks are keyed by the pair, the window and the
//! call (docs/random.md, “Dropout masks”), so the forecast does not depend on `--batch`, the
//! thread count or the device beyond rounding. Roll-outs beyond the horizon go window by window
//! as for every method.

use super::sample::{roll_out, SampleTimes, Window};
use crate::backend::Device;
use crate::distributed::world;
use crate::error::{Error, Result};
use crate::model::dyffusion::{cold_sample, CallKeys, Calls, DyffusionConfig, DyffusionModel};
use crate::nn::UNet2D;
use crate::rng::{NoiseRow, Purpose};
use crate::tensor::Tensor;
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
    let (scale, shift) = (c.data_scale, c.data_shift);
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
        let rows: Vec<NoiseRow> = (first..first + b)
            .map(|i| NoiseRow {
                sample: (i / s.members) as u32,
                member: (i % s.members) as u32,
            })
            .collect();
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
                    *o = (f64::from(x) * scale + shift) as f32;
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
