//! Launchers of `kernels/conv.cu` and `kernels/norm.cu`: convolutions as implicit GEMMs with the
//! group norm (+ SiLU) of their input applied as it is loaded, the skip concatenation and the 2×
//! upsampling read in place, and bias, time embedding, residual and output scale in the epilogue;
//! group-norm statistics and the plain group norm. `cargo test --release --test cuda_conv`
//! compares them with the CPU backend's unfused operations.
//!
//! Layout: NCHW, as on the CPU. The implicit GEMM puts output channels on rows and the pixels of
//! every image on columns, so in NCHW a warp's loads of the gathered input are consecutive `x`
//! positions of one channel and its stores consecutive pixels of one output channel: both
//! coalesced, with no transposed copy of the input or the output. NHWC would make the reduction
//! axis (channels) contiguous instead, which pays when tiles are loaded 16 bytes at a time with
//! `cp.async` along channels — worth measuring once a GPU is at hand (BENCHMARKS.md) — but it
//! would need a layout conversion at every boundary with the rest of the op set (group norm per
//! channel group, attention's token-major projections, the process along frames), and a change of
//! the op set's semantics, which the backends share. Measured here: nothing yet (no GPU); the
//! roofline puts the benchmark UNet's convolutions at the launch floor or bound by memory at the
//! sizes that matter, where a layout change moves no bytes.

use super::buffer::Buffer;
use super::check;
use super::gpu::{DevicePtr, KernelArg, LaunchShape};
use super::Precision;
use crate::backend::{ConvGeom, NormGeom};
use crate::error::{Error, Result};

/// `kernels/conv.cu`'s `ConvShape` (68 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvShape {
    n: i32,
    ci: i32,
    h: i32,
    w: i32,
    ci1: i32,
    co: i32,
    k: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
    ho: i32,
    wo: i32,
    upsample: i32,
    groups: i32,
    silu: i32,
    scale: f32,
    circular: i32,
}

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

/// The convolution's input as it reads it: the channels of `x`, then those of `x2` if given
/// (`(tensor, its channels)`), each `(n, c, h, w)` — or `(n, c, h/2, w/2)` with `upsample`, read
/// at `(y/2, x/2)` — optionally group-normalised, then optionally through SiLU.
#[derive(Clone, Copy, Debug)]
pub struct ConvInput<'a> {
    pub x: &'a Buffer,
    pub x2: Option<(&'a Buffer, usize)>,
    pub upsample: bool,
    pub norm: Option<NormOnLoad<'a>>,
    pub silu: bool,
}

impl<'a> ConvInput<'a> {
    /// `x` as it is.
    pub fn plain(x: &'a Buffer) -> ConvInput<'a> {
        ConvInput {
            x,
            x2: None,
            upsample: false,
            norm: None,
            silu: false,
        }
    }
}

/// The epilogue: `y = (conv + bias[co] + temb[n, co] + residual) · scale`.
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

fn ptr(b: Option<&Buffer>) -> KernelArg {
    KernelArg::Ptr(b.map_or(DevicePtr(0), Buffer::ptr))
}

/// The convolution of `g` (whose input is the logical one: all channels, after upsampling) with
/// weights `w` `(co, ci, k, k)`; padding is symmetric per axis as far as the kernel knows it
/// (`pad[0]` on top, `pad[2]` on the left; the output size comes from `g`).
pub fn conv2d(
    input: &ConvInput,
    w: &Buffer,
    g: &ConvGeom,
    epi: &ConvEpilogue,
    precision: Precision,
) -> Result<Buffer> {
    const OP: &str = "conv2d";
    let (ho, wo) = (g.ho(), g.wo());
    let c2 = input.x2.map_or(0, |(_, c)| c);
    if c2 > g.ci {
        return Err(Error::shape(
            OP,
            format!("x2 has {c2} of {} channels", g.ci),
        ));
    }
    let c1 = g.ci - c2;
    let up = if input.upsample { 2 } else { 1 };
    if !g.h.is_multiple_of(up) || !g.w.is_multiple_of(up) {
        return Err(Error::shape(OP, "an upsampled input needs an even size"));
    }
    let stored = (g.h / up) * (g.w / up);
    check::len(OP, "x", input.x.len(), g.n * c1 * stored)?;
    if let Some((x2, _)) = input.x2 {
        check::len(OP, "x2", x2.len(), g.n * c2 * stored)?;
    }
    check::len(OP, "the weights", w.len(), g.co * g.ci * g.k * g.k)?;
    if let Some(n) = input.norm {
        if n.groups == 0 || !g.ci.is_multiple_of(n.groups) {
            return Err(Error::shape(
                OP,
                format!("{} channels in {} groups", g.ci, n.groups),
            ));
        }
        check::len(OP, "the statistics", n.stats.len(), 2 * g.n * n.groups)?;
        check::len(OP, "gamma", n.gamma.len(), g.ci)?;
        check::len(OP, "beta", n.beta.len(), g.ci)?;
    }
    if let Some(b) = epi.bias {
        check::len(OP, "the bias", b.len(), g.co)?;
    }
    if let Some(t) = epi.temb {
        check::len(OP, "the time embedding", t.len(), g.n * g.co)?;
    }
    if let Some(r) = epi.residual {
        check::len(OP, "the residual", r.len(), g.n * g.co * ho * wo)?;
    }
    let gpu = input.x.gpu();
    let y = Buffer::alloc(gpu, g.n * g.co * ho * wo)?;
    if y.is_empty() {
        return Ok(y);
    }
    let shape = ConvShape {
        n: check::int(OP, "batch", g.n)?,
        ci: check::int(OP, "channels", g.ci)?,
        h: check::int(OP, "height", g.h)?,
        w: check::int(OP, "width", g.w)?,
        ci1: c1 as i32,
        co: check::int(OP, "output channels", g.co)?,
        k: g.k as i32,
        stride: g.stride as i32,
        pad_top: g.pad[0] as i32,
        pad_left: g.pad[2] as i32,
        ho: ho as i32,
        wo: wo as i32,
        upsample: i32::from(input.upsample),
        groups: input.norm.map_or(0, |n| n.groups as i32),
        silu: i32::from(input.silu),
        scale: epi.scale,
        circular: i32::from(g.circular()),
    };
    let pixels = g.n * ho * wo;
    let grid_x = u32::try_from(pixels.div_ceil(64))
        .map_err(|_| Error::shape(OP, format!("{pixels} output pixels")))?;
    let kernel = precision.kernel("conv2d");
    gpu.launch(
        &kernel,
        LaunchShape {
            grid: [grid_x, g.co.div_ceil(64) as u32, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(input.x.ptr()),
            ptr(input.x2.map(|(b, _)| b)),
            KernelArg::Ptr(w.ptr()),
            ptr(epi.bias),
            ptr(epi.temb),
            ptr(epi.residual),
            ptr(input.norm.map(|n| n.stats)),
            ptr(input.norm.map(|n| n.gamma)),
            ptr(input.norm.map(|n| n.beta)),
            KernelArg::Ptr(y.ptr()),
            KernelArg::Struct(bytemuck::bytes_of(&shape).to_vec()),
        ],
    )?;
    Ok(y)
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
        "group_norm_stats_f32",
        LaunchShape {
            grid: [(n * groups) as u32, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            ptr(x2.map(|(b, _)| b)),
            KernelArg::Ptr(stats.ptr()),
            KernelArg::Struct(bytemuck::bytes_of(&s).to_vec()),
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
    let gpu = x.gpu();
    let y = Buffer::alloc(gpu, x.len())?;
    if y.is_empty() {
        return Ok((y, stats));
    }
    gpu.launch(
        "group_norm_apply_f32",
        LaunchShape::linear(x.len(), 256),
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(DevicePtr(0)),
            KernelArg::Ptr(stats.ptr()),
            KernelArg::Ptr(gamma.ptr()),
            KernelArg::Ptr(beta.ptr()),
            KernelArg::Ptr(y.ptr()),
            KernelArg::Struct(bytemuck::bytes_of(&s).to_vec()),
        ],
    )?;
    Ok((y, stats))
}
