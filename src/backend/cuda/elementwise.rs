//! Launchers of `kernels/elementwise.cu` and `kernels/attention.cu`: SiLU, binary operations,
//! affine, the per-(sample, channel) bias, nearest 2× upsampling, the (n, a, b) transpose,
//! concatenation and slicing along channels, the timestep embedding, and fused softmax attention —
//! the semantics of the [`crate::backend::BackendStorage`] operations of the same names.
//! `cargo test --release --test cuda_elementwise` compares them with the CPU backend.

use super::buffer::Buffer;
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::{consts, names};
use super::Precision;
use crate::backend::{AttnGeom, BinaryOp};
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

/// `kernels/attention.cu`'s `AttnShape` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnShape {
    n: i32,
    l: i32,
    heads: i32,
    d: i32,
    scale: f32,
}

/// Softmax attention per head, `softmax(q kᵀ·scale) v`, on token-major `(n, l, heads·d)`
/// operands, head dimensions 1 to 128: on the tensor cores (TF32 products) at the TF32 and bf16
/// precisions for head dimensions 16, 32, 64 and 128, in float32 otherwise.
pub fn attention(q: &Buffer, k: &Buffer, v: &Buffer, g: &AttnGeom) -> Result<Buffer> {
    launch_attention(q, k, v, g, None)
}

/// [`attention`] for training: the output and each row's log-sum-exp of the scaled scores,
/// `(n, heads, l)`, which the backward pass reuses.
pub fn attention_with_lse(
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    g: &AttnGeom,
) -> Result<(Buffer, Buffer)> {
    let lse = Buffer::alloc(q.gpu(), g.n * g.heads * g.l)?;
    let out = launch_attention(q, k, v, g, Some(&lse))?;
    Ok((out, lse))
}

fn launch_attention(
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    g: &AttnGeom,
    lse: Option<&Buffer>,
) -> Result<Buffer> {
    const OP: &str = "attention";
    let len = g.n * g.l * g.heads * g.d;
    for (what, b) in [("q", q), ("k", k), ("v", v)] {
        check::len(OP, what, b.len(), len)?;
    }
    if g.d == 0 || g.d > 128 {
        return Err(Error::shape(
            OP,
            format!("head dimension {} (1 to 128)", g.d),
        ));
    }
    let out = Buffer::alloc(q.gpu(), len)?;
    if out.is_empty() {
        return Ok(out);
    }
    let shape = AttnShape {
        n: check::int(OP, "batch", g.n)?,
        l: check::int(OP, "tokens", g.l)?,
        heads: check::int(OP, "heads", g.heads)?,
        d: g.d as i32,
        scale: g.scale,
    };
    let (heads, n) = (u32::try_from(g.heads), u32::try_from(g.n));
    let (Ok(heads), Ok(n)) = (heads, n) else {
        return Err(Error::shape(OP, "too many heads or samples".to_string()));
    };
    if heads > 65_535 || n > 65_535 {
        return Err(Error::shape(
            OP,
            format!("{} heads × {} samples: at most 65535 each", g.heads, g.n),
        ));
    }
    // on the tensor cores at the TF32 and bf16 precisions where the head dimension has a kernel
    // (and the operands allow its 16-byte loads); float32 FFMA otherwise
    let tensor_cores = super::precision() != Precision::Fp32
        && matches!(g.d, 16 | 32 | 64 | 128)
        && [q, k, v, &out].iter().all(|b| b.ptr().0.is_multiple_of(16));
    let (name, rows) = match (tensor_cores, g.d) {
        (true, 16) => (names::ATTENTION_TF32_D16, consts::FA_ROWS),
        (true, 32) => (names::ATTENTION_TF32_D32, consts::FA_ROWS),
        (true, 64) => (names::ATTENTION_TF32_D64, consts::FA_ROWS),
        (true, 128) => (names::ATTENTION_TF32_D128, consts::FA_ROWS),
        _ => (names::ATTENTION_F32, consts::ATT_ROWS),
    };
    q.gpu().launch(
        name,
        LaunchShape {
            grid: [g.l.div_ceil(rows) as u32, heads, n],
            block: [128, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(q.ptr()),
            KernelArg::Ptr(k.ptr()),
            KernelArg::Ptr(v.ptr()),
            KernelArg::Ptr(out.ptr()),
            KernelArg::Ptr(lse.map_or(super::gpu::DevicePtr(0), Buffer::ptr)),
            KernelArg::Struct(bytemuck::bytes_of(&shape).to_vec()),
        ],
    )?;
    Ok(out)
}
