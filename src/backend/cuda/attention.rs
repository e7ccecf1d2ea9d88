//! Launchers of `kernels/attention.cu`: fused softmax attention (FlashAttention-2-style on the
//! tensor cores, or in float32) and its gradient, the scores recomputed from per-row statistics —
//! the semantics of [`crate::backend::BackendStorage::attention`] and its backward. `cargo test
//! --release --features cuda --test ops cuda::attention` compares them with the CPU backend.

use super::buffer::Buffer;
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::{consts, names};
use super::Precision;
use crate::backend::AttnGeom;
use crate::error::{Error, Result};

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
            KernelArg::pod(&shape),
        ],
    )?;
    Ok(out)
}

/// `kernels/attention.cu`'s `AttnBwdShape` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnBwdShape {
    n: i32,
    l: i32,
    heads: i32,
    d: i32,
    scale: f32,
}

/// Gradients of softmax attention `(dq, dk, dv)` (see `kernels/attention.cu`): the
/// per-row statistics (log-sum-exp and `Σ_j P·dP`) first — from what the forward saved, `(out,
/// lse)`, when given ([`attention_with_lse`]), else by a pass over the keys —
/// then the query side and the key side, each recomputing the scores.
pub fn attention_backward(
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    dout: &Buffer,
    saved: Option<(&Buffer, &Buffer)>,
    g: &AttnGeom,
) -> Result<(Buffer, Buffer, Buffer)> {
    const OP: &str = "attention_backward";
    let len = g.n * g.l * g.heads * g.d;
    for (what, b) in [("q", q), ("k", k), ("v", v), ("the output gradient", dout)] {
        check::len(OP, what, b.len(), len)?;
    }
    if g.d == 0 || g.d > 128 {
        return Err(Error::shape(
            OP,
            format!("head dimension {} (1 to 128)", g.d),
        ));
    }
    let gpu = q.gpu();
    let (dq, dk, dv) = (
        Buffer::alloc(gpu, len)?,
        Buffer::alloc(gpu, len)?,
        Buffer::alloc(gpu, len)?,
    );
    if len == 0 {
        return Ok((dq, dk, dv));
    }
    if g.heads > 65_535 || g.n > 65_535 {
        return Err(Error::shape(
            OP,
            format!("{} heads × {} samples: at most 65535 each", g.heads, g.n),
        ));
    }
    let s = AttnBwdShape {
        n: check::int(OP, "batch", g.n)?,
        l: check::int(OP, "tokens", g.l)?,
        heads: g.heads as i32,
        d: g.d as i32,
        scale: g.scale,
    };
    let rows = g.n * g.heads * g.l;
    if let Some((out, lse)) = saved {
        check::len(OP, "the saved output", out.len(), len)?;
        check::len(OP, "the saved statistics", lse.len(), rows)?;
    }
    let dsum = Buffer::alloc(gpu, rows)?;
    let shape = LaunchShape {
        grid: [
            check::grid(OP, "tokens", g.l.div_ceil(16))?,
            g.heads as u32,
            g.n as u32,
        ],
        block: [128, 1, 1],
        shared_bytes: 0,
    };
    let qkvo = [q, k, v, dout].map(|b| KernelArg::Ptr(b.ptr()));
    let computed;
    let lse = match saved {
        Some((out, lse)) => {
            gpu.launch(
                names::ATTENTION_BWD_DSUM_F32,
                shape,
                &[
                    KernelArg::Ptr(out.ptr()),
                    KernelArg::Ptr(dout.ptr()),
                    KernelArg::Ptr(dsum.ptr()),
                    KernelArg::pod(&s),
                ],
            )?;
            lse
        }
        None => {
            computed = Buffer::alloc(gpu, rows)?;
            let mut args = qkvo.to_vec();
            args.extend([
                KernelArg::Ptr(computed.ptr()),
                KernelArg::Ptr(dsum.ptr()),
                KernelArg::pod(&s),
            ]);
            gpu.launch(names::ATTENTION_BWD_ROWS_F32, shape, &args)?;
            &computed
        }
    };
    let mut args = qkvo.to_vec();
    args.extend([
        KernelArg::Ptr(lse.ptr()),
        KernelArg::Ptr(dsum.ptr()),
        KernelArg::Ptr(dq.ptr()),
        KernelArg::pod(&s),
    ]);
    gpu.launch(names::ATTENTION_BWD_DQ_F32, shape, &args)?;
    let mut args = qkvo.to_vec();
    args.extend([
        KernelArg::Ptr(lse.ptr()),
        KernelArg::Ptr(dsum.ptr()),
        KernelArg::Ptr(dk.ptr()),
        KernelArg::Ptr(dv.ptr()),
        KernelArg::pod(&s),
    ]);
    gpu.launch(names::ATTENTION_BWD_DKV_F32, shape, &args)?;
    Ok((dq, dk, dv))
}
