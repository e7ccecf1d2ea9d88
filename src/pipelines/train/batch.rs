//! The training data and its batches: the data read and checked (finite, varying, a spread the
//! model space can hold), and each step's rows drawn from the counter-based streams.

use super::options::TrainOptions;
use crate::backend::Device;
use crate::diffusion::schedule::Schedule;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::model::{DataSpace, ProcessConfig};
use crate::rng::{below, words, NoiseKey, NoiseRow};
use crate::tensor::Tensor;
use std::ops::Range;
use std::path::Path;

/// Reads a data file `(N, L, C, H, W)` with `L ≥ frames`.
pub(super) fn read_data(path: &Path, frames: usize, like: Option<&[usize]>) -> Result<npy::Array> {
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
pub(super) fn batch(
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
    let space = p.data_space();
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
        x0.extend(src.iter().map(|&v| space.to_model(v)));
        ts.push(fixed_t.unwrap_or(t));
    }
    let x0 = Tensor::from_vec(x0, &[rows, frames * e], device)?;
    let eps = Tensor::randn(key_noise, &noise_rows, &[rows, p.diffused() * e], device)?;
    let (inp, target) = Tensor::q_sample(&x0, &eps, p.scope(), schedule, p.dyn_eta, &ts)?;
    let (c, h, w) = (p.channels, p.height, p.width);
    let t = Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), &[rows], device)?;
    Ok((
        inp.reshape(&[rows, p.input_frames() * c, h, w])?,
        target.reshape(&[rows, p.diffused() * c, h, w])?,
        t,
    ))
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
    space: DataSpace,
    source: &str,
) -> Result<()> {
    let to_model = |v: f32| f64::from(space.to_model(v));
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
                space.shift, space.scale
            ),
        ));
    }
    Ok(())
}
