//! The split-K rule the direct convolutions and the GEMMs share, the convolutions' epilogue, and
//! the finishing launch of a split product whose blocks do not add their partial sums themselves
//! (kernels/splitk.cuh: a device without tile counters left, or an epilogue the product does not
//! apply).

use super::buffer::{ptr, Buffer};
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::names;
use crate::error::Result;

/// The split-K rule of the direct kernels and kernels/gemm.cu: enough splits of the reduction
/// that a batch of [`SPLIT_BATCH`] puts a block on each of an H100's or H200's [`SMS`] SMs. It
/// depends on the layer's shape only — never on the batch — so that a sample's result does not
/// depend on the batch it is in.
pub(super) const SPLIT_BATCH: usize = 8;
pub(super) const SMS: usize = 132;

/// The epilogue of a convolution, and of a split product's finishing launch
/// (`conv2d_finish_f32`): `y = (conv + bias[co] + temb[n, co] + residual) · scale`.
#[derive(Clone, Copy, Debug)]
pub struct ConvEpilogue<'a> {
    pub bias: Option<&'a Buffer>,
    pub temb: Option<&'a Buffer>,
    pub residual: Option<&'a Buffer>,
    pub scale: f32,
}

impl ConvEpilogue<'_> {
    /// Nothing: `y = conv`.
    pub const NONE: ConvEpilogue<'static> = ConvEpilogue {
        bias: None,
        temb: None,
        residual: None,
        scale: 1.0,
    };
}

/// `conv2d_finish_f32`: `y = (Σ_z parts[z] + bias[c] + temb[n, c] + residual)·scale` over `y`
/// `(n, co, hw)`, the `splits` planes of `parts` (each shaped like `y`) added in order — a split-K
/// product's finish where the device's tile counters do not cover it, or an epilogue the product
/// itself does not apply.
pub(super) fn finish(
    parts: &Buffer,
    y: &Buffer,
    (n, co, hw): (usize, usize, usize),
    splits: usize,
    epi: &ConvEpilogue,
) -> Result<()> {
    const OP: &str = "conv2d_finish";
    y.gpu().launch(
        names::CONV2D_FINISH_F32,
        LaunchShape::linear(y.len(), 256),
        &[
            KernelArg::Ptr(parts.ptr()),
            ptr(epi.bias),
            ptr(epi.temb),
            ptr(epi.residual),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I32(check::int(OP, "rows", n)?),
            KernelArg::I32(check::int(OP, "channels", co)?),
            KernelArg::I64(hw as i64),
            KernelArg::I32(check::int(OP, "splits", splits)?),
            KernelArg::F32(epi.scale),
        ],
    )
}
