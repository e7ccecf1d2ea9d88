//! Launchers of `kernels/norm.cu`: group-norm statistics, the plain group norm (the convolutions
//! apply the norm as they load, [`NormOnLoad`]) and its gradient, and the channel sums a bias
//! gradient is — the semantics of the [`crate::backend::BackendStorage`] operations of the same
//! names. `cargo test --release --features cuda --test ops cuda::norm` compares them with the CPU
//! backend.

use super::buffer::{ptr, Buffer};
use super::check;
use super::gpu::{KernelArg, LaunchShape};
use super::kernels::names;
use crate::backend::NormGeom;
use crate::error::{Error, Result};
use std::sync::Arc;

/// `kernels/norm.cu`'s `NormShape` (28 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct NormShape {
    n: i32,
    c: i32,
    c1: i32,
    hw: i32,
    groups: i32,
    silu: i32,
    eps: f32,
}

/// A group norm applied to the convolution's input as it is loaded: statistics from
/// [`group_norm_stats`] of the same input, `groups` groups, affine `gamma`, `beta` (per input
/// channel).
#[derive(Clone, Copy, Debug)]
pub struct NormOnLoad<'a> {
    pub stats: &'a Buffer,
    pub gamma: &'a Buffer,
    pub beta: &'a Buffer,
    pub groups: usize,
}

fn norm_shape(
    n: usize,
    c: usize,
    c1: usize,
    hw: usize,
    groups: usize,
    silu: bool,
    eps: f32,
) -> Result<NormShape> {
    const OP: &str = "group_norm";
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(Error::shape(OP, format!("{c} channels in {groups} groups")));
    }
    Ok(NormShape {
        n: check::int(OP, "batch", n)?,
        c: check::int(OP, "channels", c)?,
        c1: c1 as i32,
        hw: check::int(OP, "positions", hw)?,
        groups: groups as i32,
        silu: i32::from(silu),
        eps,
    })
}

/// Group-norm statistics of `(n, c, hw)`, its channels those of `x` then of `x2` (`(tensor, its
/// channels)`): `(n, groups, 2)` = mean, `1/√(var + eps)` per sample and group.
pub fn group_norm_stats(
    x: &Buffer,
    x2: Option<(&Buffer, usize)>,
    (n, c, hw): (usize, usize, usize),
    groups: usize,
    eps: f32,
) -> Result<Buffer> {
    let c2 = x2.map_or(0, |(_, c2)| c2);
    let s = norm_shape(n, c, c.saturating_sub(c2), hw, groups, false, eps)?;
    check::len("group_norm", "x", x.len(), n * (c - c2.min(c)) * hw)?;
    if let Some((b, _)) = x2 {
        check::len("group_norm", "x2", b.len(), n * c2 * hw)?;
    }
    let gpu = x.gpu();
    let stats = Buffer::alloc(gpu, 2 * n * groups)?;
    if stats.is_empty() {
        return Ok(stats);
    }
    gpu.launch(
        names::GROUP_NORM_STATS_F32,
        LaunchShape {
            grid: [(n * groups) as u32, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            ptr(x2.map(|(b, _)| b)),
            KernelArg::Ptr(stats.ptr()),
            KernelArg::pod(&s),
        ],
    )?;
    Ok(stats)
}

/// Group normalisation with affine `gamma`, `beta` (and SiLU if `g.silu`), as
/// [`crate::backend::BackendStorage::group_norm`]: `(y, statistics)`, the statistics as
/// [`group_norm_stats`] lays them out.
pub fn group_norm(
    x: &Buffer,
    gamma: &Buffer,
    beta: &Buffer,
    g: &NormGeom,
) -> Result<(Buffer, Buffer)> {
    let s = norm_shape(g.n, g.c, g.c, g.hw, g.groups, g.silu, g.eps)?;
    check::len("group_norm", "gamma", gamma.len(), g.c)?;
    check::len("group_norm", "beta", beta.len(), g.c)?;
    let stats = group_norm_stats(x, None, (g.n, g.c, g.hw), g.groups, g.eps)?;
    let norm = NormOnLoad {
        stats: &stats,
        gamma,
        beta,
        groups: g.groups,
    };
    let y = norm_apply(x, None, &norm, &s)?;
    Ok((y, stats))
}

/// The group norm of `(n, c1 + c2, hw)` — the channels of `x`, then of `x2` — from statistics
/// computed before, then SiLU if `silu`: a convolution's input whose norm its kernel does not
/// apply as it loads.
pub(super) fn apply(
    x: &Buffer,
    x2: Option<&Buffer>,
    norm: &NormOnLoad,
    (n, c1, c2, hw): (usize, usize, usize, usize),
    silu: bool,
) -> Result<Buffer> {
    let s = norm_shape(n, c1 + c2, c1, hw, norm.groups, silu, 0.0)?;
    norm_apply(x, x2, norm, &s)
}

/// `group_norm_apply_f32`: the group norm of `s`'s tensor (its channels those of `x`, then of
/// `x2`) from statistics computed before, then SiLU if `s.silu`.
fn norm_apply(x: &Buffer, x2: Option<&Buffer>, norm: &NormOnLoad, s: &NormShape) -> Result<Buffer> {
    let gpu = x.gpu();
    let y = Buffer::alloc(gpu, s.n as usize * s.c as usize * s.hw as usize)?;
    if y.is_empty() {
        return Ok(y);
    }
    gpu.launch(
        names::GROUP_NORM_APPLY_F32,
        LaunchShape::linear(y.len(), 256),
        &[
            KernelArg::Ptr(x.ptr()),
            ptr(x2),
            KernelArg::Ptr(norm.stats.ptr()),
            KernelArg::Ptr(norm.gamma.ptr()),
            KernelArg::Ptr(norm.beta.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::pod(s),
        ],
    )?;
    Ok(y)
}

/// `kernels/norm.cu`'s `NormBwdShape` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct NormBwdShape {
    n: i32,
    c: i32,
    hw: i32,
    groups: i32,
}

/// `y[c] = Σ_{o, i} x[o, c, i]` for `x` `(outer, channels, inner)`: a convolution's bias gradient,
/// or with `inner = 1` the column sums of a matrix.
pub fn reduce_channels(
    x: &Buffer,
    (outer, channels, inner): (usize, usize, usize),
) -> Result<Buffer> {
    const OP: &str = "sum_rows";
    check::len(OP, "the input", x.len(), outer * channels * inner)?;
    let y = Buffer::alloc(x.gpu(), channels)?;
    if y.is_empty() {
        return Ok(y);
    }
    x.gpu().launch(
        names::REDUCE_CHANNELS_F32,
        LaunchShape {
            grid: [check::grid(OP, "channels", channels)?, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::I32(check::int(OP, "rows", outer)?),
            KernelArg::I32(check::int(OP, "channels", channels)?),
            KernelArg::I32(check::int(OP, "positions", inner)?),
        ],
    )?;
    Ok(y)
}

/// Gradients of the group norm (without SiLU) from its saved statistics: `(dx, dγ, dβ)`.
pub fn group_norm_backward(
    x: &Buffer,
    gamma: &Buffer,
    stats: &Buffer,
    dy: &Buffer,
    g: &NormGeom,
) -> Result<(Buffer, Buffer, Buffer)> {
    const OP: &str = "group_norm_backward";
    if g.silu {
        return Err(Error::shape(
            OP,
            "a group norm fused with SiLU has no backward pass",
        ));
    }
    if g.groups == 0 || !g.c.is_multiple_of(g.groups) {
        return Err(Error::shape(
            OP,
            format!("{} channels in {} groups", g.c, g.groups),
        ));
    }
    let len = g.n * g.c * g.hw;
    check::len(OP, "x", x.len(), len)?;
    check::len(OP, "the output gradient", dy.len(), len)?;
    check::len(OP, "gamma", gamma.len(), g.c)?;
    check::len(OP, "the statistics", stats.len(), 2 * g.n * g.groups)?;
    let s = NormBwdShape {
        n: check::int(OP, "batch", g.n)?,
        c: check::int(OP, "channels", g.c)?,
        hw: check::int(OP, "positions", g.hw)?,
        groups: g.groups as i32,
    };
    let gpu = x.gpu();
    // a and b of each sample side by side, (n, 2, c): one channel sum gives dγ and dβ
    let ab = Buffer::alloc(gpu, 2 * g.n * g.c)?;
    let dx = Buffer::alloc(gpu, len)?;
    let block = |blocks| LaunchShape {
        grid: [blocks, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    if !ab.is_empty() {
        gpu.launch(
            names::GROUP_NORM_BWD_CHANNEL_F32,
            block(check::grid(OP, "channels", g.n * g.c)?),
            &[
                KernelArg::Ptr(x.ptr()),
                KernelArg::Ptr(dy.ptr()),
                KernelArg::Ptr(stats.ptr()),
                KernelArg::Ptr(ab.ptr()),
                KernelArg::pod(&s),
            ],
        )?;
    }
    if len > 0 {
        gpu.launch(
            names::GROUP_NORM_BWD_DX_F32,
            block(check::grid(OP, "groups", g.n * g.groups)?),
            &[
                KernelArg::Ptr(x.ptr()),
                KernelArg::Ptr(dy.ptr()),
                KernelArg::Ptr(stats.ptr()),
                KernelArg::Ptr(gamma.ptr()),
                KernelArg::Ptr(ab.ptr()),
                KernelArg::Ptr(dx.ptr()),
                KernelArg::pod(&s),
            ],
        )?;
    }
    let sums = Arc::new(reduce_channels(&ab, (g.n, 2 * g.c, 1))?);
    let [dgamma, dbeta]: [Buffer; 2] = Buffer::views(&sums, &[g.c, g.c])?
        .try_into()
        .map_err(|_| Error::shape(OP, "two halves of the channel sums"))?;
    Ok((dx, dgamma, dbeta))
}
