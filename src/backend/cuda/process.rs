//! Launchers of `kernels/process.cu`: Dyn/InvDyn, the fused forward process, the fused DDIM step
//! with its σ-noise drawn on the device, and the normals and raw words of docs/random.md. Each
//! checks its operands' sizes, then launches one thread per (sequence, element)
//! (`LaunchShape::linear`, 256 threads per block). The semantics are the CPU backend's
//! (src/backend/cpu/dynamics.rs, src/rng.rs); `cargo test --release --features cuda --test ops
//! cuda::process` compares them.

use super::buffer::Buffer;
use super::check;
use super::gpu::{DevicePtr, Gpu, KernelArg, LaunchShape};
use super::kernels::names;
use crate::backend::{
    check_dropout, row_words, DdimCoef, DdimStep, DropoutGeom, DynCoef, ProcessGeom, QSampleCoef,
    SeqGeom,
};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow, Purpose};
use std::sync::Arc;

const BLOCK: u32 = 256;

/// The rows on the device as [`row_words`] lays them out, and the address of their members (the
/// samples are at the buffer's start).
fn rows_on_device(gpu: &Arc<dyn Gpu>, rows: &[NoiseRow]) -> Result<(Buffer, DevicePtr)> {
    let words = Buffer::from_f32(gpu, &row_words(rows))?;
    let members = DevicePtr(words.ptr().0 + 4 * rows.len() as u64);
    Ok((words, members))
}

/// `Dyn_γ` or `InvDyn_γ` along the frames of `(batch, frames, elems)`, see
/// [`crate::backend::BackendStorage::dynamics`].
pub fn dynamics(x: &Buffer, g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Result<Buffer> {
    const OP: &str = "dynamics";
    check::len(OP, "the input", x.len(), g.batch * g.frames * g.elems)?;
    check::len(OP, "the coefficients", coefs.len(), g.batch)?;
    let gpu = x.gpu();
    let y = Buffer::alloc(gpu, x.len())?;
    let c: Vec<f32> = coefs.iter().flat_map(|c| [c.sqrt_g, c.sqrt_1mg]).collect();
    let c = Buffer::from_f32(gpu, &c)?;
    gpu.launch(
        names::DYNAMICS_F32,
        LaunchShape::linear(g.batch * g.elems, BLOCK),
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::Ptr(c.ptr()),
            KernelArg::I32(check::int(OP, "batch", g.batch)?),
            KernelArg::I32(check::int(OP, "frames", g.frames)?),
            KernelArg::I64(g.elems as i64),
            KernelArg::I32(i32::from(inverse)),
        ],
    )?;
    Ok(y)
}

/// The forward process on clean sequences `x0` with noise `eps`: `(network input, target ε̃)`,
/// see [`crate::backend::BackendStorage::q_sample`].
pub fn q_sample(
    x0: &Buffer,
    eps: &Buffer,
    g: &ProcessGeom,
    coefs: &[QSampleCoef],
) -> Result<(Buffer, Buffer)> {
    const OP: &str = "q_sample";
    check::len(
        OP,
        "the clean sequences",
        x0.len(),
        g.batch * g.frames() * g.elems,
    )?;
    check::len(OP, "the noise", eps.len(), g.batch * g.diffused() * g.elems)?;
    check::len(OP, "the coefficients", coefs.len(), g.batch)?;
    let gpu = x0.gpu();
    let input = Buffer::alloc(gpu, g.batch * g.state_frames() * g.elems)?;
    let target = Buffer::alloc(gpu, eps.len())?;
    let c: Vec<f32> = coefs
        .iter()
        .flat_map(|c| {
            [
                c.dynamics.sqrt_g,
                c.dynamics.sqrt_1mg,
                c.sqrt_ab,
                c.sqrt_1mab,
                c.target_eps,
                c.target_d,
            ]
        })
        .collect();
    let c = Buffer::from_f32(gpu, &c)?;
    gpu.launch(
        names::Q_SAMPLE_F32,
        LaunchShape::linear(g.batch * g.elems, BLOCK),
        &[
            KernelArg::Ptr(x0.ptr()),
            KernelArg::Ptr(eps.ptr()),
            KernelArg::Ptr(input.ptr()),
            KernelArg::Ptr(target.ptr()),
            KernelArg::Ptr(c.ptr()),
            KernelArg::I32(check::int(OP, "batch", g.batch)?),
            KernelArg::I32(check::int(OP, "history", g.history)?),
            KernelArg::I32(check::int(OP, "future", g.future)?),
            KernelArg::I64(g.elems as i64),
            KernelArg::I32(i32::from(g.diffuse_history)),
        ],
    )?;
    Ok((input, target))
}

/// The values of a DDIM step and its σ-noise: the coefficients with the noise itself
/// `(batch, diffused, elems)` when `σ > 0`, or, in device memory, the step's
/// [`DdimStep::words`] and the sequences' noise [`crate::backend::row_words`], from
/// which the kernel draws the noise.
#[derive(Clone, Copy, Debug)]
pub enum StepValues<'a> {
    Given {
        coef: &'a DdimCoef,
        z: Option<&'a Buffer>,
    },
    Drawn {
        step: &'a Buffer,
        rows: &'a Buffer,
    },
}

/// One DDIM step on the sampler state, see [`crate::backend::BackendStorage::ddim_step`] and
/// [`ddim_step_drawn`](crate::backend::BackendStorage::ddim_step_drawn).
pub fn ddim_step(
    state: &Buffer,
    eps_hat: &Buffer,
    values: StepValues,
    g: &ProcessGeom,
) -> Result<Buffer> {
    const OP: &str = "ddim_step";
    check::len(
        OP,
        "the state",
        state.len(),
        g.batch * g.state_frames() * g.elems,
    )?;
    check::len(OP, "ε̂", eps_hat.len(), g.batch * g.diffused() * g.elems)?;
    let gpu = state.gpu();
    // The kernel reads the key and the rows only when it draws, z only when it is given.
    let uploaded;
    let (params, rows, given) = match values {
        StepValues::Given { coef, z } => {
            match z {
                Some(z) => check::len(OP, "the noise", z.len(), eps_hat.len())?,
                None if coef.sigma > 0.0 => {
                    return Err(Error::Invalid(
                        "ddim_step: σ > 0 needs the noise stream of the step".into(),
                    ))
                }
                None => {}
            }
            let key = NoiseKey {
                seed: 0,
                purpose: Purpose::StepNoise,
                step: 0,
            };
            let words = DdimStep { coef: *coef, key }.words();
            uploaded = Buffer::from_f32(gpu, &words)?;
            (&uploaded, DevicePtr(0), z.map_or(DevicePtr(0), Buffer::ptr))
        }
        StepValues::Drawn { step, rows } => {
            check::len(OP, "the step's values", step.len(), DdimStep::WORDS)?;
            check::len(OP, "the noise-row words", rows.len(), 2 * g.batch)?;
            (step, rows.ptr(), DevicePtr(0))
        }
    };
    let next = Buffer::alloc(gpu, state.len())?;
    gpu.launch(
        names::DDIM_STEP_F32,
        LaunchShape::linear(g.batch * g.elems, BLOCK),
        &[
            KernelArg::Ptr(state.ptr()),
            KernelArg::Ptr(eps_hat.ptr()),
            KernelArg::Ptr(given),
            KernelArg::Ptr(next.ptr()),
            KernelArg::Ptr(params.ptr()),
            KernelArg::I32(check::int(OP, "batch", g.batch)?),
            KernelArg::I32(check::int(OP, "history", g.history)?),
            KernelArg::I32(check::int(OP, "future", g.future)?),
            KernelArg::I64(g.elems as i64),
            KernelArg::I32(i32::from(g.diffuse_history)),
            KernelArg::Ptr(rows),
        ],
    )?;
    Ok(next)
}

/// Launches a kernel of one thread per `(row, item)` for `per_row` items of each noise row,
/// writing `out_len` values: `(out, seed, purpose, step, samples, members, rows, per_row)`.
fn per_row(
    gpu: &Arc<dyn Gpu>,
    (kernel, op): (&str, &'static str),
    key: NoiseKey,
    rows: &[NoiseRow],
    per_row: usize,
    out_len: usize,
) -> Result<Buffer> {
    let out = Buffer::alloc(gpu, out_len)?;
    if out.is_empty() {
        return Ok(out);
    }
    let (words, members) = rows_on_device(gpu, rows)?;
    gpu.launch(
        kernel,
        LaunchShape::linear(rows.len() * per_row, BLOCK),
        &[
            KernelArg::Ptr(out.ptr()),
            KernelArg::U64(key.seed),
            KernelArg::U32(key.purpose as u32),
            KernelArg::U32(key.step),
            KernelArg::Ptr(words.ptr()),
            KernelArg::Ptr(members),
            KernelArg::I32(check::int(op, "rows", rows.len())?),
            KernelArg::I64(per_row as i64),
        ],
    )?;
    Ok(out)
}

/// Standard normals for `rows` of `row_len` values (docs/random.md), `(rows, row_len)`, as
/// [`crate::Device::randn`].
pub fn randn(
    gpu: &Arc<dyn Gpu>,
    key: NoiseKey,
    rows: &[NoiseRow],
    row_len: usize,
) -> Result<Buffer> {
    let len = rows.len() * row_len;
    per_row(gpu, (names::RANDN_F32, "randn"), key, rows, row_len, len)
}

/// The Philox words of calls `c0 = 0 … blocks − 1` of each row: `(rows, blocks, 4)` `u32`.
pub fn philox_words(
    gpu: &Arc<dyn Gpu>,
    key: NoiseKey,
    rows: &[NoiseRow],
    blocks: usize,
) -> Result<Buffer> {
    let len = rows.len() * blocks * 4;
    per_row(
        gpu,
        (names::PHILOX_WORDS_U32, "philox_words"),
        key,
        rows,
        blocks,
        len,
    )
}

/// Dropout of `x` `(rows, row_len)` with the masks of docs/random.md, “Dropout masks”, the rows'
/// pairs in `rows` ([`row_words`]); see [`crate::backend::BackendStorage::dropout`].
pub fn dropout(x: &Buffer, rows: &Buffer, g: &DropoutGeom) -> Result<Buffer> {
    const OP: &str = "dropout";
    check_dropout(x.len(), rows.len(), g)?;
    let gpu = x.gpu();
    let y = Buffer::alloc(gpu, x.len())?;
    if y.is_empty() {
        return Ok(y);
    }
    let calls = g.rows * g.row_len.div_ceil(4);
    gpu.launch(
        names::DROPOUT_F32,
        LaunchShape::linear(calls, BLOCK),
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::U64(g.key.seed),
            KernelArg::U32(g.key.purpose as u32),
            KernelArg::U32(g.key.step),
            KernelArg::U32(g.layer),
            KernelArg::U32(crate::rng::dropout_threshold(g.p)),
            KernelArg::F32(crate::rng::dropout_scale(g.p)),
            KernelArg::Ptr(rows.ptr()),
            KernelArg::I32(check::int(OP, "rows", g.rows)?),
            KernelArg::I64(g.row_len as i64),
        ],
    )?;
    Ok(y)
}
