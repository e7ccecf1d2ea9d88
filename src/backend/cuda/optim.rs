//! Launchers of `kernels/optim.cu`: the loss as one value on the device and its gradient, and the
//! optimizer step — gradient clipping by global norm, AdamW and the weight EMA — over contiguous
//! parameter arrays, the norm never leaving the device (see [`crate::backend::AdamStep`]).

use super::buffer::Buffer;
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::names;
use crate::backend::{AdamStep, LossKind};
use crate::error::{Error, Result};

/// Values per block of the loss's first pass.
const LOSS_SLICE: usize = 16 * 1024;
/// Values per chunk of the optimizer's table.
const OPT_CHUNK: usize = 16 * 1024;

fn kind_code(kind: LossKind) -> i32 {
    match kind {
        LossKind::Mse => 0,
        LossKind::Mae => 1,
    }
}

/// `mean((a − b)²)` or `mean|a − b|` as one value.
pub fn loss(a: &Buffer, b: &Buffer, kind: LossKind) -> Result<Buffer> {
    const OP: &str = "loss";
    check::len(OP, "the target", b.len(), a.len())?;
    let gpu = a.gpu();
    let out = Buffer::alloc(gpu, 1)?;
    let blocks = a.len().div_ceil(LOSS_SLICE).max(1);
    let partial = Buffer::alloc(gpu, blocks)?;
    let shape = |blocks: usize| LaunchShape {
        grid: [blocks as u32, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    gpu.launch(
        names::LOSS_PARTIAL_F32,
        shape(blocks),
        &[
            KernelArg::Ptr(a.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(partial.ptr()),
            KernelArg::I64(a.len() as i64),
            KernelArg::I64(LOSS_SLICE as i64),
            KernelArg::I32(kind_code(kind)),
        ],
    )?;
    let blocks_arg = check::int(OP, "blocks", blocks)?;
    gpu.launch(
        names::LOSS_FINISH_F32,
        shape(1),
        &[
            KernelArg::Ptr(partial.ptr()),
            KernelArg::Ptr(out.ptr()),
            KernelArg::I32(blocks_arg),
            KernelArg::U64((1.0 / a.len().max(1) as f64).to_bits()),
        ],
    )?;
    Ok(out)
}

/// The loss's gradient with respect to `a`, given the loss's own gradient `g` (one value).
pub fn loss_backward(a: &Buffer, b: &Buffer, g: &Buffer, kind: LossKind) -> Result<Buffer> {
    const OP: &str = "loss_backward";
    check::len(OP, "the target", b.len(), a.len())?;
    check::len(OP, "the loss gradient", g.len(), 1)?;
    let da = Buffer::alloc(a.gpu(), a.len())?;
    if !da.is_empty() {
        a.gpu().launch(
            names::LOSS_BACKWARD_F32,
            LaunchShape::linear(a.len(), 256),
            &[
                KernelArg::Ptr(a.ptr()),
                KernelArg::Ptr(b.ptr()),
                KernelArg::Ptr(g.ptr()),
                KernelArg::Ptr(da.ptr()),
                KernelArg::I64(a.len() as i64),
                KernelArg::I32(kind_code(kind)),
                KernelArg::F32(1.0 / a.len().max(1) as f32),
            ],
        )?;
    }
    Ok(da)
}

/// `kernels/optim.cu`'s `OptChunk` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct OptChunk {
    grad: u64,
    flat: u64,
    len: u32,
    unused: u32,
}

/// `kernels/optim.cu`'s `AdamHyper` (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamHyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2: f32,
    max_norm: f32,
    ema_decay: f32,
    chunks: i32,
}

/// One optimizer step over the contiguous arrays `p`, `m`, `v`, `e`, updated in place, with the
/// gradients `grads` (one per parameter, in order, their lengths summing to the arrays'): returns
/// the global gradient norm as one value. A non-finite `loss` (one value) or norm changes nothing.
pub fn adamw(
    p: &Buffer,
    grads: &[&Buffer],
    (m, v, e): (&Buffer, &Buffer, &Buffer),
    loss: &Buffer,
    h: &AdamStep,
) -> Result<Buffer> {
    const OP: &str = "adamw";
    let len = p.len();
    for (what, b) in [("m", m), ("v", v), ("the EMA", e)] {
        check::len(OP, what, b.len(), len)?;
    }
    check::len(OP, "the loss", loss.len(), 1)?;
    let total: usize = grads.iter().map(|g| g.len()).sum();
    check::len(OP, "the gradients", total, len)?;
    let mut table = Vec::new();
    let mut flat = 0usize;
    for g in grads {
        for start in (0..g.len()).step_by(OPT_CHUNK) {
            let n = OPT_CHUNK.min(g.len() - start);
            table.push(OptChunk {
                grad: g.ptr().0 + 4 * start as u64,
                flat: (flat + start) as u64,
                len: n as u32,
                unused: 0,
            });
        }
        flat += g.len();
    }
    let chunks = table.len();
    if chunks == 0 {
        return Err(Error::shape(OP, "no parameters to update"));
    }
    let gpu = p.gpu();
    let norm = Buffer::alloc(gpu, 1)?;
    let words: &[f32] = bytemuck::cast_slice(&table);
    let table_buf = Buffer::from_f32(gpu, words)?;
    let partial = Buffer::alloc(gpu, chunks)?;
    let blocks = LaunchShape {
        grid: [check::int(OP, "chunks", chunks)? as u32, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    gpu.launch(
        names::GRAD_SQ_PARTIAL_F32,
        blocks,
        &[
            KernelArg::Ptr(table_buf.ptr()),
            KernelArg::Ptr(partial.ptr()),
        ],
    )?;
    let hyper = AdamHyper {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        bc1: h.bc1,
        bc2: h.bc2,
        max_norm: h.max_norm,
        ema_decay: h.ema_decay,
        chunks: chunks as i32,
    };
    let mut args: Vec<KernelArg> = [&table_buf, &partial, loss, p, m, v, e, &norm]
        .iter()
        .map(|b| KernelArg::Ptr(b.ptr()))
        .collect();
    args.push(KernelArg::pod(&hyper));
    gpu.launch(names::ADAMW_FUSED_F32, blocks, &args)?;
    // written in place: what was derived from them (prepared convolution weights) is stale
    for b in [p, m, v, e] {
        b.touch();
    }
    Ok(norm)
}
