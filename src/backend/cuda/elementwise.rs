//! Launchers of `kernels/elementwise.cu`: SiLU, binary operations, affine, the per-(sample,
//! channel) bias, nearest 2× upsampling, the (n, a, b) transpose, concatenation and slicing along
//! channels, the timestep embedding, and the gradients of SiLU, upsampling and slicing — the
//! semantics of the [`crate::backend::BackendStorage`] operations of the same names. `cargo test
//! --release --features cuda --test ops cuda::elementwise` compares them with the CPU backend.

use super::buffer::Buffer;
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::names;
use crate::backend::BinaryOp;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

/// Launches a one-thread-per-element kernel writing a new buffer of `len` values.
pub(super) fn map(
    like: &Buffer,
    len: usize,
    kernel: &str,
    args: impl FnOnce(&Buffer) -> Vec<KernelArg>,
) -> Result<Buffer> {
    let y = Buffer::alloc(like.gpu(), len)?;
    if len > 0 {
        let a = args(&y);
        like.gpu()
            .launch(kernel, LaunchShape::linear(len, BLOCK), &a)?;
    }
    Ok(y)
}

/// `x·σ(x)`.
pub fn silu(x: &Buffer) -> Result<Buffer> {
    map(x, x.len(), names::SILU_F32, |y| {
        vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I64(x.len() as i64),
        ]
    })
}

/// Element-wise `a ∘ b`.
pub fn binary(a: &Buffer, b: &Buffer, op: BinaryOp) -> Result<Buffer> {
    check::len("binary", "the right operand", b.len(), a.len())?;
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::AbsDiff => 3,
        BinaryOp::SignDiff => 4,
    };
    map(a, a.len(), names::BINARY_F32, |y| {
        vec![
            KernelArg::Ptr(a.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I64(a.len() as i64),
            KernelArg::I32(code),
        ]
    })
}

/// `x·mul + add`.
pub fn affine(x: &Buffer, mul: f32, add: f32) -> Result<Buffer> {
    map(x, x.len(), names::AFFINE_F32, |y| {
        vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I64(x.len() as i64),
            KernelArg::F32(mul),
            KernelArg::F32(add),
        ]
    })
}

/// `y[n, c, p] = x[n, c, p] + b[n, c]`.
pub fn add_channel_bias(
    x: &Buffer,
    b: &Buffer,
    (n, c, hw): (usize, usize, usize),
) -> Result<Buffer> {
    const OP: &str = "add_channel_bias";
    check::len(OP, "x", x.len(), n * c * hw)?;
    check::len(OP, "the bias", b.len(), n * c)?;
    let hw = check::int(OP, "positions", hw.max(1))?;
    map(x, x.len(), names::ADD_CHANNEL_BIAS_F32, |y| {
        vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I64(x.len() as i64),
            KernelArg::I32(hw),
        ]
    })
}

/// Nearest 2× upsampling of `(nc, h, w)` planes.
pub fn upsample_nearest2x(x: &Buffer, (nc, h, w): (usize, usize, usize)) -> Result<Buffer> {
    const OP: &str = "upsample_nearest2x";
    check::len(OP, "x", x.len(), nc * h * w)?;
    let (a, b, c) = (
        check::int(OP, "planes", nc)?,
        check::int(OP, "height", h)?,
        check::int(OP, "width", w)?,
    );
    map(x, 4 * x.len(), names::UPSAMPLE_NEAREST2X_F32, |y| {
        vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I32(a),
            KernelArg::I32(b),
            KernelArg::I32(c),
        ]
    })
}

/// `(n, a, b) → (n, b, a)`.
pub fn transpose12(x: &Buffer, (n, a, b): (usize, usize, usize)) -> Result<Buffer> {
    const OP: &str = "transpose12";
    check::len(OP, "x", x.len(), n * a * b)?;
    let y = Buffer::alloc(x.gpu(), x.len())?;
    if y.is_empty() {
        return Ok(y);
    }
    let batch = u32::try_from(n)
        .ok()
        .filter(|&v| v <= 65_535)
        .ok_or_else(|| Error::shape(OP, format!("batch {n} exceeds 65535")))?;
    x.gpu().launch(
        names::TRANSPOSE12_F32,
        LaunchShape {
            grid: [b.div_ceil(32) as u32, a.div_ceil(32) as u32, batch],
            block: [32, 8, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I32(check::int(OP, "a", a)?),
            KernelArg::I32(check::int(OP, "b", b)?),
        ],
    )?;
    Ok(y)
}

/// Copies channels `src_offset..src_offset + count` of `src` `(n, c_src, hw)` to channels
/// `dst_offset..` of `dst` `(n, c_dst, hw)`.
#[allow(clippy::too_many_arguments)]
fn channel_copy(
    src: &Buffer,
    dst: &Buffer,
    n: usize,
    (c_src, src_offset): (usize, usize),
    (c_dst, dst_offset): (usize, usize),
    count: usize,
    hw: usize,
) -> Result<()> {
    const OP: &str = "channels";
    let len = n * count * hw;
    if len == 0 {
        return Ok(());
    }
    src.gpu().launch(
        names::CHANNEL_COPY_F32,
        LaunchShape::linear(len, BLOCK),
        &[
            KernelArg::Ptr(src.ptr()),
            KernelArg::Ptr(dst.ptr()),
            KernelArg::I32(check::int(OP, "batch", n)?),
            KernelArg::I32(check::int(OP, "channels", c_src)?),
            KernelArg::I32(src_offset as i32),
            KernelArg::I32(check::int(OP, "channels", c_dst)?),
            KernelArg::I32(dst_offset as i32),
            KernelArg::I32(count as i32),
            KernelArg::I32(check::int(OP, "positions", hw)?),
        ],
    )
}

/// The concatenation of `(n, cᵢ, hw)` parts along channels.
pub fn concat_channels(parts: &[&Buffer], n: usize, cs: &[usize], hw: usize) -> Result<Buffer> {
    const OP: &str = "concat_channels";
    let Some(first) = parts.first() else {
        return Err(Error::shape(OP, "no parts"));
    };
    if cs.len() != parts.len() {
        return Err(Error::shape(
            OP,
            format!("{} parts, {} channel counts", parts.len(), cs.len()),
        ));
    }
    let total: usize = cs.iter().sum();
    let y = Buffer::alloc(first.gpu(), n * total * hw)?;
    let mut offset = 0;
    for (p, &c) in parts.iter().zip(cs) {
        check::len(OP, "a part", p.len(), n * c * hw)?;
        channel_copy(p, &y, n, (c, 0), (total, offset), c, hw)?;
        offset += c;
    }
    Ok(y)
}

/// Channels `start..end` of `(n, c, hw)`.
pub fn slice_channels(
    x: &Buffer,
    (n, c, hw): (usize, usize, usize),
    start: usize,
    end: usize,
) -> Result<Buffer> {
    const OP: &str = "slice_channels";
    check::len(OP, "x", x.len(), n * c * hw)?;
    if start > end || end > c {
        return Err(Error::shape(OP, format!("channels {start}..{end} of {c}")));
    }
    let y = Buffer::alloc(x.gpu(), n * (end - start) * hw)?;
    channel_copy(x, &y, n, (c, start), (end - start, 0), end - start, hw)?;
    Ok(y)
}

/// diffusers' sinusoidal embedding `(len(t), dim)` of the timesteps `t`.
pub fn timestep_embedding(
    t: &Buffer,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Result<Buffer> {
    const OP: &str = "timestep_embedding";
    let rows = check::int(OP, "timesteps", t.len())?;
    let d = check::int(OP, "dim", dim)?;
    map(t, t.len() * dim, names::TIMESTEP_EMBEDDING_F32, |y| {
        vec![
            KernelArg::Ptr(t.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I32(rows),
            KernelArg::I32(d),
            KernelArg::I32(i32::from(flip_sin_to_cos)),
            KernelArg::F32(freq_shift),
        ]
    })
}

/// `dy·σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_backward(x: &Buffer, dy: &Buffer) -> Result<Buffer> {
    check::len("silu_backward", "the output gradient", dy.len(), x.len())?;
    map(x, x.len(), names::SILU_BACKWARD_F32, |dx| {
        vec![
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(dy.ptr()),
            KernelArg::Ptr(dx.ptr()),
            KernelArg::I64(x.len() as i64),
        ]
    })
}

/// The adjoint of nearest 2× upsampling: `(nc, 2h, 2w)` → `(nc, h, w)`, sums of 2×2 blocks.
pub fn upsample_nearest2x_backward(
    dy: &Buffer,
    (nc, h, w): (usize, usize, usize),
) -> Result<Buffer> {
    const OP: &str = "upsample_backward";
    check::len(OP, "the output gradient", dy.len(), nc * 4 * h * w)?;
    let (nc, h, w) = (
        check::int(OP, "planes", nc)?,
        check::int(OP, "height", h)?,
        check::int(OP, "width", w)?,
    );
    map(
        dy,
        dy.len() / 4,
        names::UPSAMPLE_NEAREST2X_BACKWARD_F32,
        |dx| {
            vec![
                KernelArg::Ptr(dy.ptr()),
                KernelArg::Ptr(dx.ptr()),
                KernelArg::I32(nc),
                KernelArg::I32(h),
                KernelArg::I32(w),
            ]
        },
    )
}

/// The adjoint of slicing channels `start..end` of `(n, c, hw)`: `g` `(n, end − start, hw)` placed
/// into zeros.
pub fn slice_channels_backward(
    g: &Buffer,
    (n, c, hw): (usize, usize, usize),
    start: usize,
    end: usize,
) -> Result<Buffer> {
    const OP: &str = "slice_backward";
    if start > end || end > c {
        return Err(Error::shape(OP, format!("channels {start}..{end} of {c}")));
    }
    check::len(OP, "the gradient", g.len(), n * (end - start) * hw)?;
    let args = [
        check::int(OP, "batch", n)?,
        check::int(OP, "channels", c)?,
        check::int(OP, "positions", hw)?,
        start as i32,
        end as i32,
    ];
    map(g, n * c * hw, names::SLICE_CHANNELS_BACKWARD_F32, |y| {
        let mut a = vec![KernelArg::Ptr(g.ptr()), KernelArg::Ptr(y.ptr())];
        a.extend(args.map(KernelArg::I32));
        a
    })
}
