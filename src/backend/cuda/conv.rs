//! Launchers of `kernels/conv.cu`: convolutions with the group norm (+ SiLU) of their input applied
//! as it is loaded, the skip concatenation and the 2× upsampling read in place, and bias, time
//! embedding, residual and output scale in the epilogue; and their gradients ([`conv2d_backward`]).
//! `cargo test --release --features cuda --test ops cuda::conv` compares them with the CPU backend's
//! unfused operations.
//!
//! Which kernel runs: the network's geometries (3×3 at stride 1 and 2, 1×1 at stride 1) run the
//! direct kernels — `conv2d_weights_k{1,3}_{precision}` first prepares the weights in the kernel's order (once per
//! weights and layout: kept with the weights' buffer until they change, [`Buffer::derived`]), then
//! `conv2d_{precision}_{k3s1,k3s2,k1s1}` (`_norm_silu` when a 3×3 stride-1 input is normalised
//! and activated: fused), whose last block per tile sums the partials when the slices were split
//! among blocks (`conv2d_finish_f32` does where the device has no tile counters left); a norm
//! or SiLU the direct kernel does not fuse runs as a pass of its own first. Any other kernel size
//! or stride writes the transformed input's columns (`conv2d_im2col_f32`) for a batched GEMM
//! ([`super::gemm`]) at the same precision. [`conv2d_by`] runs one of these routes by name (the
//! kernel lab's versions, benches/kernel_lab.rs).
//!
//! Layout: NCHW, as on the CPU. The direct kernels load a patch's rows as consecutive pixels of a
//! channel (coalesced) and store consecutive pixels of an output channel; they transpose to
//! channel-contiguous order in shared memory, where the fragments need it. NHWC would let the
//! patch be copied 16 bytes at a time along channels, but would need a layout conversion at every
//! boundary with the rest of the op set (group norm per channel group, attention's token-major
//! projections, the process along frames) and a change of the op set's semantics, which the
//! backends share; the machine-code model (BENCHMARKS.md) puts the loads at under two
//! instructions per HMMA in NCHW, so the conversion would not pay.

use super::buffer::{ptr, Buffer};
use super::check;
use super::gemm::{strided, Epilogue, GemmShape, Layout, TensorCore};
use super::gpu::{DevicePtr, KernelArg, LaunchShape, TILE_COUNTERS};
use super::kernels::{consts, names};
use super::norm::{reduce_channels, NormOnLoad};
pub use super::splitk::ConvEpilogue;
use super::splitk::{finish, SMS, SPLIT_BATCH};
use super::Precision;
use crate::backend::ConvGeom;
use crate::error::{Error, Result};

/// `kernels/conv.cu`'s `ConvShape` (92 bytes, no padding).
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
    slices1: i32,
    slices: i32,
    per_split: i32,
    tiles_x: i32,
    tiles_y: i32,
    kc: i32,
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

/// Output tile of the direct kernels (pixels per side), threads per block (kernels/conv.cu).
const TILE: usize = consts::CONV_TILE;
const THREADS: u32 = consts::CONV_THREADS as u32;
/// Static shared memory of the direct kernels (and the GEMMs): the split-K flag of
/// kernels/splitk.cuh, 16-byte aligned.
const STATIC_SHARED: usize = 16;

/// The direct kernels' geometries (`kernels/conv.cu`): kernel size and stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direct {
    K3S1,
    K3S2,
    K1S1,
}

impl Direct {
    fn of(g: &ConvGeom) -> Option<Direct> {
        match (g.k, g.stride) {
            (3, 1) => Some(Direct::K3S1),
            (3, 2) => Some(Direct::K3S2),
            (1, 1) => Some(Direct::K1S1),
            _ => None,
        }
    }
    /// The kernel at `precision`, with the norm and SiLU on load when `fused` (3×3 stride 1
    /// only: the others never fuse).
    fn kernel(self, precision: Precision, fused: bool) -> &'static str {
        precision.pick(match (self, fused) {
            (Direct::K3S1, false) => [
                names::CONV2D_F32_K3S1,
                names::CONV2D_TF32_K3S1,
                names::CONV2D_BF16_K3S1,
            ],
            (Direct::K3S1, true) => [
                names::CONV2D_F32_K3S1_NORM_SILU,
                names::CONV2D_TF32_K3S1_NORM_SILU,
                names::CONV2D_BF16_K3S1_NORM_SILU,
            ],
            (Direct::K3S2, _) => [
                names::CONV2D_F32_K3S2,
                names::CONV2D_TF32_K3S2,
                names::CONV2D_BF16_K3S2,
            ],
            (Direct::K1S1, _) => [
                names::CONV2D_F32_K1S1,
                names::CONV2D_TF32_K1S1,
                names::CONV2D_BF16_K1S1,
            ],
        })
    }
    fn k(self) -> usize {
        match self {
            Direct::K1S1 => 1,
            _ => 3,
        }
    }
    fn stride(self) -> usize {
        match self {
            Direct::K3S2 => 2,
            _ => 1,
        }
    }
    /// Channels per slice (`conv_slice_channels`).
    fn kc(self) -> usize {
        if self.k() == 1 {
            consts::CONV_SLICE_K1
        } else {
            consts::CONV_SLICE_K3
        }
    }
    /// Output channels per block (`conv_block_channels`).
    fn block_co(self) -> usize {
        if self.k() == 1 {
            consts::CONV_BLOCK_K1
        } else {
            consts::CONV_BLOCK_K3
        }
    }
    /// Dynamic shared memory in bytes (`ConvGeo`): the norm table when `act`, and two buffers
    /// of weights and patch.
    /// Shared-memory words per slice of one weight row or patch pixel (`ConvGeo::WPC`): a
    /// channel a word, or a bf16 pair.
    fn words_per_slice(self, precision: Precision) -> usize {
        if precision == Precision::Bf16 {
            self.kc() / 2
        } else {
            self.kc()
        }
    }
    fn shared_bytes(self, precision: Precision, slices: usize, act: bool) -> usize {
        let (k, s, kc) = (self.k(), self.stride(), self.kc());
        let bf16 = precision == Precision::Bf16;
        let wpc = self.words_per_slice(precision);
        let pc = (TILE - 1) * s + k;
        let ps = if s == 1 {
            let banks = if bf16 { 8 } else { 16 };
            wpc + (banks + 32 - wpc % 32) % 32
        } else {
            wpc + wpc / 2
        };
        let words = self.block_co() * k * k * wpc + pc * pc * ps;
        let table = if precision == Precision::Fp32 {
            consts::CONV_TABLE_WORDS_F32
        } else {
            consts::CONV_TABLE_WORDS
        };
        4 * (if act { table * kc * slices } else { 0 } + 2 * words)
    }
}

/// The convolution of `g` (whose input is the logical one: all channels, after upsampling) with
/// weights `w` `(co, ci, k, k)`; padding is symmetric per axis as far as the kernel knows it
/// (`pad[0]` on top, `pad[2]` on the left; the output size comes from `g`).
///
/// 3×3 kernels at stride 1 and 2 and 1×1 kernels at stride 1 — every convolution of the network
/// — run the direct kernels at `precision` (the weights prepared by `conv2d_weights_*` the first
/// time, then kept with `w` until it is written in place; split-K with a finishing sum where a
/// layer has few tiles); a group norm or SiLU on load is
/// fused into the 3×3 stride-1 kernel when it ends in SiLU, and otherwise applied by a separate
/// pass before the convolution. Other kernel sizes and strides run as a GEMM over the input's
/// columns at `precision`.
pub fn conv2d(
    input: &ConvInput,
    w: &Buffer,
    g: &ConvGeom,
    epi: &ConvEpilogue,
    precision: Precision,
) -> Result<Buffer> {
    convolve(input, w, false, g, epi, precision, ConvRoute::Auto)
}

/// Which kernels compute a convolution: [`conv2d`]'s choice, or one of the versions it chooses
/// among, for the kernel lab (benches/kernel_lab.rs) to run side by side on one geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvRoute {
    /// [`conv2d`]'s rules.
    Auto,
    /// The direct kernels, a norm or SiLU on load applied by a separate pass before them (where
    /// [`conv2d`] fuses it into the 3×3 stride-1 kernel).
    DirectPass,
    /// The transformed input's columns (`conv2d_im2col_f32`) and a batched GEMM, the path of
    /// the geometries the direct kernels do not have.
    Columns,
}

/// [`conv2d`] by the kernels of `route`.
pub fn conv2d_by(
    route: ConvRoute,
    input: &ConvInput,
    w: &Buffer,
    g: &ConvGeom,
    epi: &ConvEpilogue,
    precision: Precision,
) -> Result<Buffer> {
    convolve(input, w, false, g, epi, precision, route)
}

/// The input gradient `dx` `(n, ci, h, w)` of the convolution `g` (weights `w` `(co, ci, k, k)`)
/// from its output gradient `dy` `(n, co, ho, wo)`, where it is itself a convolution the direct
/// kernels compute: at stride 1 the convolution of `dy` with `w` transposed and rotated by 180°,
/// padded by `k − 1 − p` (circular padding only where the output has the input's size, so that
/// `dy` is periodic too). `None` elsewhere (stride 2 and other geometries: the caller's kernel).
pub fn input_gradient(
    dy: &Buffer,
    w: &Buffer,
    g: &ConvGeom,
    precision: Precision,
) -> Result<Option<Buffer>> {
    let (ho, wo) = (g.ho(), g.wo());
    let same = ho == g.h && wo == g.w;
    if g.stride != 1
        || Direct::of(g).is_none()
        || g.pad.iter().any(|&p| p >= g.k)
        || (g.circular() && !same)
    {
        return Ok(None);
    }
    let k = g.k;
    let adjoint = ConvGeom {
        n: g.n,
        ci: g.co,
        h: ho,
        w: wo,
        co: g.ci,
        k,
        stride: 1,
        pad: g.pad.map(|p| k - 1 - p),
        pad_mode: g.pad_mode,
    };
    convolve(
        &ConvInput::plain(dy),
        w,
        true,
        &adjoint,
        &ConvEpilogue::NONE,
        precision,
        ConvRoute::Auto,
    )
    .map(Some)
}

/// [`conv2d`] by `route`, the weights read as given or (`flipped`) transposed and rotated (see
/// [`input_gradient`]).
fn convolve(
    input: &ConvInput,
    w: &Buffer,
    flipped: bool,
    g: &ConvGeom,
    epi: &ConvEpilogue,
    precision: Precision,
    route: ConvRoute,
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
    if g.ci == 0 {
        return Err(Error::shape(OP, "a convolution of no input channels"));
    }
    let gpu = input.x.gpu();
    if g.n * g.co * ho * wo == 0 {
        return Buffer::alloc(gpu, 0);
    }
    let mut shape = ConvShape {
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
        slices1: 0,
        slices: 0,
        per_split: 0,
        tiles_x: 0,
        tiles_y: 0,
        kc: 0,
    };
    // a slice's channel offsets are 32-bit in the kernels
    let direct = Direct::of(g)
        .filter(|d| d.kc() * stored < i32::MAX as usize && route != ConvRoute::Columns);
    let Some(direct) = direct else {
        if flipped {
            return Err(Error::shape(
                OP,
                "transposed weights need a direct kernel's geometry",
            ));
        }
        return generic(input, w, g, epi, &shape, precision);
    };
    let y = Buffer::alloc(gpu, g.n * g.co * ho * wo)?;
    // fused when the per-channel norm table fits beside the buffers in what the device gives a
    // block (ci up to about 8 000 on sm_90, 800 on sm_86/89)
    let fused = direct == Direct::K3S1
        && route == ConvRoute::Auto
        && input.silu
        && direct.shared_bytes(precision, c1.div_ceil(16) + c2.div_ceil(16), true)
            <= gpu.max_shared_per_block().saturating_sub(STATIC_SHARED);
    let transformed;
    let (x, x2, c1) = if !fused && (input.norm.is_some() || input.silu) {
        transformed = transform(input, (g.n, c1, c2, stored))?;
        (&transformed, None, g.ci)
    } else {
        (input.x, input.x2.map(|(b, _)| b), c1)
    };
    let kc = direct.kc();
    let slices1 = c1.div_ceil(kc);
    let slices = slices1 + (g.ci - c1).div_ceil(kc);
    let (tiles_x, tiles_y) = (wo.div_ceil(TILE), ho.div_ceil(TILE));
    let co_tiles = g.co.div_ceil(direct.block_co());
    let per_sample = tiles_x * tiles_y * co_tiles;
    // at least `wanted` splits (as many as there are slices at most), the slices shared evenly
    let wanted = SMS.div_ceil(SPLIT_BATCH * per_sample).clamp(1, slices);
    let per_split = slices / wanted;
    let splits = slices.div_ceil(per_split);
    shape.ci1 = c1 as i32;
    shape.slices1 = slices1 as i32;
    shape.slices = slices as i32;
    shape.per_split = per_split as i32;
    shape.tiles_x = tiles_x as i32;
    shape.tiles_y = tiles_y as i32;
    shape.kc = kc as i32;
    let fused_norm = input.norm.filter(|_| fused);
    if !fused {
        shape.groups = 0;
        shape.silu = 0;
    }
    let struct_arg = KernelArg::pod(&shape);

    // the weights as the kernel reads them: prepared once and kept with the weights while they
    // do not change (a sampler's every step reuses them)
    let words = 16 * g.k * g.k * direct.words_per_slice(precision); // per slice and 16 rows
    let rows16 = co_tiles * direct.block_co() / 16;
    let key = [g.co, g.ci, c1, g.k, kc, rows16, words, slices].map(|v| v as i64);
    let key = [
        &key[..],
        &[i64::from(precision.mma_code()), i64::from(flipped)],
    ]
    .concat();
    let prepared = w.derived(&key, || {
        let prepared = Buffer::alloc(gpu, slices * rows16 * words)?;
        let kernel = if g.k == 1 {
            precision.pick([
                names::CONV2D_WEIGHTS_K1_F32,
                names::CONV2D_WEIGHTS_K1_TF32,
                names::CONV2D_WEIGHTS_K1_BF16,
            ])
        } else {
            precision.pick([
                names::CONV2D_WEIGHTS_K3_F32,
                names::CONV2D_WEIGHTS_K3_TF32,
                names::CONV2D_WEIGHTS_K3_BF16,
            ])
        };
        gpu.launch(
            kernel,
            LaunchShape {
                grid: [words.div_ceil(256) as u32, rows16 as u32, slices as u32],
                block: [256, 1, 1],
                shared_bytes: 0,
            },
            &[
                KernelArg::Ptr(w.ptr()),
                KernelArg::Ptr(prepared.ptr()),
                struct_arg.clone(),
                KernelArg::I32(i32::from(flipped)),
            ],
        )?;
        Ok(prepared)
    })?;

    let grid_x = u32::try_from(g.n * tiles_x * tiles_y)
        .map_err(|_| Error::shape(OP, format!("{} output tiles", g.n * tiles_x * tiles_y)))?;
    let shared = direct.shared_bytes(precision, slices, fused);
    let name = direct.kernel(precision, fused);
    let parts = if splits > 1 {
        Some(Buffer::alloc(gpu, splits * y.len())?)
    } else {
        None
    };
    // split, the last block of each tile finishes it (kernels/splitk.cuh) where the device's
    // counters cover the tiles; a launch of its own otherwise
    let counters = gpu
        .tile_counters()
        .filter(|_| splits > 1 && grid_x as usize * co_tiles <= TILE_COUNTERS);
    gpu.launch(
        name,
        LaunchShape {
            grid: [grid_x, co_tiles as u32, splits as u32],
            block: [THREADS, 1, 1],
            shared_bytes: shared as u32,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            ptr(x2),
            KernelArg::Ptr(prepared.ptr()),
            ptr(epi.bias),
            ptr(epi.temb),
            ptr(epi.residual),
            ptr(fused_norm.map(|n| n.stats)),
            ptr(fused_norm.map(|n| n.gamma)),
            ptr(fused_norm.map(|n| n.beta)),
            KernelArg::Ptr(y.ptr()),
            ptr(parts.as_ref()),
            KernelArg::Ptr(counters.unwrap_or(DevicePtr(0))),
            struct_arg,
        ],
    )?;
    if let (Some(parts), None) = (parts, counters) {
        finish(&parts, &y, (g.n, g.co, ho * wo), splits, epi)?;
    }
    Ok(y)
}

/// The input of a convolution whose norm or SiLU the direct kernel does not fuse, transformed by
/// a pass of its own: `(n, c1 + c2, stored)`, the group norm (then SiLU if asked) over both
/// parts, or SiLU alone.
fn transform(
    input: &ConvInput,
    (n, c1, c2, stored): (usize, usize, usize, usize),
) -> Result<Buffer> {
    let x2 = input.x2.map(|(b, _)| b);
    if let Some(norm) = input.norm {
        return super::norm::apply(input.x, x2, &norm, (n, c1, c2, stored), input.silu);
    }
    match x2 {
        None => super::elementwise::silu(input.x),
        Some(b) => super::elementwise::silu(&super::elementwise::concat_channels(
            &[input.x, b],
            n,
            &[c1, c2],
            stored,
        )?),
    }
}

/// The generic path (any kernel size and stride): the transformed, upsampled and concatenated
/// input's columns (`conv2d_im2col_f32`, `(n, ho·wo, ci·k²)`), then the batched GEMM
/// `y[n] = w · cols[n]ᵀ` at `precision` with the bias, residual and scale in its epilogue — the
/// time embedding, per sample and channel, added with them by `conv2d_finish_f32` when there is
/// one.
fn generic(
    input: &ConvInput,
    w: &Buffer,
    g: &ConvGeom,
    epi: &ConvEpilogue,
    shape: &ConvShape,
    precision: Precision,
) -> Result<Buffer> {
    let gpu = input.x.gpu();
    let (hw_out, kdim) = (g.ho() * g.wo(), g.ci * g.k * g.k);
    let cols = Buffer::alloc(gpu, g.n * hw_out * kdim)?;
    if !cols.is_empty() {
        gpu.launch(
            names::CONV2D_IM2COL_F32,
            LaunchShape::linear(cols.len(), 256),
            &[
                KernelArg::Ptr(input.x.ptr()),
                ptr(input.x2.map(|(b, _)| b)),
                ptr(input.norm.map(|n| n.stats)),
                ptr(input.norm.map(|n| n.gamma)),
                ptr(input.norm.map(|n| n.beta)),
                KernelArg::Ptr(cols.ptr()),
                KernelArg::pod(shape),
            ],
        )?;
    }
    let layout = Layout {
        batch: g.n,
        m: g.co,
        n: hw_out,
        k: kdim,
        a_trans: false,
        b_trans: true,
        stride_a: 0,
        stride_b: hw_out * kdim,
        rows_are_samples: false,
    };
    if epi.temb.is_none() {
        let epilogue = Epilogue {
            bias: epi.bias,
            bias_per_row: true,
            scale: epi.scale,
            residual: epi.residual,
        };
        return strided(w, &cols, &layout, epilogue, precision);
    }
    let product = strided(w, &cols, &layout, Epilogue::NONE, precision)?;
    let y = Buffer::alloc(gpu, product.len())?;
    finish(&product, &y, (g.n, g.co, hw_out), 1, epi)?;
    Ok(y)
}

/// `kernels/conv.cu`'s `ConvBwdShape` (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvBwdShape {
    n: i32,
    ci: i32,
    h: i32,
    w: i32,
    co: i32,
    k: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
    ho: i32,
    wo: i32,
    circular: i32,
}

/// `kernels/conv.cu`'s `WgradGrid` (96 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct WgradGrid {
    /// The convolution's shape (the C++ struct derives from `ConvBwdShape`: it comes first).
    conv: ConvBwdShape,
    hq: i32,
    wq: i32,
    cells: i64,
    ld: i64,
    k_len: i64,
    cells_mul: u32,
    cells_shift: u32,
    wq_mul: u32,
    wq_shift: u32,
}
const _: () = assert!(std::mem::size_of::<WgradGrid>() == 96);

/// Gradients of the convolution `y = conv(x, w) + b` (see the end of `kernels/conv.cu`): `(dx if
/// need_dx, dw, db)` for `dy` `(n, co, ho, wo)`. The input gradient of a 3×3 or 1×1 stride-1
/// convolution runs the forward's direct kernels ([`input_gradient`]); of the
/// others, a GEMM into columns and `conv2d_col2im_f32`. The weight gradient is a GEMM over the
/// phase-split padded input (`weight_gradient`).
pub fn conv2d_backward(
    x: &Buffer,
    w: &Buffer,
    dy: &Buffer,
    g: &ConvGeom,
    need_dx: bool,
    precision: Precision,
) -> Result<(Option<Buffer>, Buffer, Buffer)> {
    const OP: &str = "conv2d_backward";
    let (ho, wo) = (g.ho(), g.wo());
    check::len(OP, "x", x.len(), g.n * g.ci * g.h * g.w)?;
    check::len(OP, "the weights", w.len(), g.co * g.ci * g.k * g.k)?;
    check::len(OP, "the output gradient", dy.len(), g.n * g.co * ho * wo)?;
    let dx = if !need_dx {
        None
    } else if let Some(dx) = input_gradient(dy, w, g, precision)? {
        Some(dx)
    } else {
        Some(input_gradient_by_columns(dy, w, g, precision)?)
    };
    let dw = weight_gradient(x, dy, g, precision)?;
    let db = reduce_channels(dy, (g.n, g.co, ho * wo))?;
    Ok((dx, dw, db))
}

fn bwd_shape(g: &ConvGeom) -> Result<ConvBwdShape> {
    const OP: &str = "conv2d_backward";
    Ok(ConvBwdShape {
        n: check::int(OP, "batch", g.n)?,
        ci: check::int(OP, "channels", g.ci)?,
        h: check::int(OP, "height", g.h)?,
        w: check::int(OP, "width", g.w)?,
        co: check::int(OP, "output channels", g.co)?,
        k: check::int(OP, "kernel size", g.k)?,
        stride: check::int(OP, "stride", g.stride)?,
        pad_top: check::int(OP, "padding", g.pad[0])?,
        pad_left: check::int(OP, "padding", g.pad[2])?,
        ho: check::int(OP, "output height", g.ho())?,
        wo: check::int(OP, "output width", g.wo())?,
        circular: i32::from(g.circular()),
    })
}

/// `dx` `(n, ci, h, w)` as the columns `G[n] = wᵀ·dy[n]` (`(ci·k², ho·wo)` per sample, a batched
/// GEMM at `precision`) gathered back onto the input's pixels by `conv2d_col2im_f32`: what
/// [`conv2d_backward`] runs where [`input_gradient`] has no direct kernel, and the kernel lab's
/// second version of the input gradient where it has.
pub fn input_gradient_by_columns(
    dy: &Buffer,
    w: &Buffer,
    g: &ConvGeom,
    precision: Precision,
) -> Result<Buffer> {
    let (kk, hw_out) = (g.k * g.k, g.ho() * g.wo());
    let layout = Layout {
        batch: g.n,
        m: g.ci * kk,
        n: hw_out,
        k: g.co,
        a_trans: true,
        b_trans: false,
        stride_a: 0,
        stride_b: g.co * hw_out,
        rows_are_samples: false,
    };
    let cols = strided(w, dy, &layout, Epilogue::NONE, precision)?;
    let dx = Buffer::alloc(dy.gpu(), g.n * g.ci * g.h * g.w)?;
    if !dx.is_empty() {
        dy.gpu().launch(
            names::CONV2D_COL2IM_F32,
            LaunchShape::linear(dx.len(), 256),
            &[
                KernelArg::Ptr(cols.ptr()),
                KernelArg::Ptr(dx.ptr()),
                KernelArg::pod(&bwd_shape(g)?),
            ],
        )?;
    }
    Ok(dx)
}

/// `dw` `(co, ci, k, k)`: the output gradient laid on the grid of the padded input's phase planes
/// (`conv2d_grid_pack_f32`, `conv2d_phase_pack_f32`), then their product (`conv2d_wgrad_*`; see
/// `kernels/conv.cu`). The splits of the reduction are a function of the shapes only, so
/// the sums are the same bits on every GPU.
fn weight_gradient(x: &Buffer, dy: &Buffer, g: &ConvGeom, precision: Precision) -> Result<Buffer> {
    const OP: &str = "conv2d_backward";
    let gpu = x.gpu();
    let dw = Buffer::alloc(gpu, g.co * g.ci * g.k * g.k)?;
    if dw.is_empty() {
        return Ok(dw);
    }
    let s = g.stride;
    let (hq, wq) = (
        (g.h + g.pad[0] + g.pad[1]).div_ceil(s),
        (g.w + g.pad[2] + g.pad[3]).div_ceil(s),
    );
    let cells = g.n * hq * wq;
    let k_len = cells.next_multiple_of(consts::GEMM_KC);
    let reach = (g.k - 1) / s * wq + (g.k - 1) / s;
    let ld = (k_len + reach).next_multiple_of(4);
    let cells_div = check::fast_div(OP, "grid cells per sample", hq * wq)?;
    let wq_div = check::fast_div(OP, "grid columns", wq)?;
    let cells_grid = WgradGrid {
        conv: bwd_shape(g)?,
        hq: check::int(OP, "grid rows", hq)?,
        wq: check::int(OP, "grid columns", wq)?,
        cells: i64::from(check::int(OP, "grid cells", cells)?),
        ld: ld as i64,
        k_len: k_len as i64,
        cells_mul: cells_div[0],
        cells_shift: cells_div[1],
        wq_mul: wq_div[0],
        wq_shift: wq_div[1],
    };
    let xp = Buffer::alloc(gpu, s * s * g.ci * ld)?;
    let dyp = Buffer::alloc(gpu, g.co * k_len)?;
    // one thread per cell, a block's cells of one channel (and phase row)
    for (kernel, input, out, len, channels, phase_rows) in [
        (names::CONV2D_PHASE_PACK_F32, x, &xp, ld, g.ci, s),
        (names::CONV2D_GRID_PACK_F32, dy, &dyp, k_len, g.co, 1),
    ] {
        if channels > 65_535 || phase_rows > 65_535 {
            return Err(Error::shape(
                OP,
                format!("{channels} channels at stride {s} (at most 65535 each)"),
            ));
        }
        gpu.launch(
            kernel,
            LaunchShape {
                grid: [
                    check::grid(OP, "cells", len.div_ceil(256))?,
                    channels as u32,
                    phase_rows as u32,
                ],
                block: [256, 1, 1],
                shared_bytes: 0,
            },
            &[
                KernelArg::Ptr(input.ptr()),
                KernelArg::Ptr(out.ptr()),
                KernelArg::pod(&cells_grid),
            ],
        )?;
    }
    let (m, n) = (g.co, g.ci * g.k * g.k);
    let tiles = m.div_ceil(consts::GEMM_BM) * n.div_ceil(consts::GEMM_BN);
    // about two blocks on every SM (the kernels hold two per SM)
    let wanted = (2 * SMS).div_ceil(tiles);
    if precision == Precision::Fp32 {
        let slices = (k_len / consts::TILE_K).max(1); // (none for an empty batch)
        let per_split = slices.div_ceil(wanted.clamp(1, slices));
        let slice_len = per_split * consts::TILE_K;
        let splits = k_len.div_ceil(slice_len);
        let parts = if splits > 1 {
            Some(Buffer::alloc(gpu, splits * dw.len())?)
        } else {
            None
        };
        gpu.launch(
            names::CONV2D_WGRAD_F32,
            LaunchShape {
                grid: [
                    check::grid(OP, "weight columns", n.div_ceil(consts::TILE_N))?,
                    check::grid(OP, "output channels", m.div_ceil(consts::TILE_M))?,
                    check::grid(OP, "slices", splits)?,
                ],
                block: [consts::TILE_THREADS as u32, 1, 1],
                shared_bytes: 0,
            },
            &[
                KernelArg::Ptr(dyp.ptr()),
                KernelArg::Ptr(xp.ptr()),
                KernelArg::Ptr(parts.as_ref().unwrap_or(&dw).ptr()),
                KernelArg::pod(&cells_grid),
                KernelArg::I64(slice_len as i64),
            ],
        )?;
        if let Some(parts) = parts {
            finish(&parts, &dw, (1, 1, dw.len()), splits, &ConvEpilogue::NONE)?;
        }
        return Ok(dw);
    }
    let shape = GemmShape {
        m: cells_grid.conv.co,
        n: check::int(OP, "weight columns", n)?,
        k: check::int(OP, "reduction", k_len)?,
        lda: check::int(OP, "reduction", k_len)?,
        ldb: 0,
        ldc: check::int(OP, "weight columns", n)?,
        stride_a: 0,
        stride_b: 0,
        stride_c: (m * n) as i64,
        a_trans: 0,
        b_trans: 1,
        bias_per_row: 0,
        scale: 1.0,
        slices: 0,
        per_split: 0,
    };
    let launch = TensorCore {
        kernel: precision.pick([
            names::CONV2D_WGRAD_TF32,
            names::CONV2D_WGRAD_TF32,
            names::CONV2D_WGRAD_BF16,
        ]),
        shape,
        batch: 1,
        wanted_splits: wanted,
        epilogue: Epilogue::NONE,
        precision,
    };
    launch.run(&dw, |shape| {
        vec![
            KernelArg::Ptr(dyp.ptr()),
            KernelArg::Ptr(xp.ptr()),
            KernelArg::Ptr(dw.ptr()),
            KernelArg::pod(shape),
            KernelArg::pod(&cells_grid),
        ]
    })?;
    Ok(dw)
}
