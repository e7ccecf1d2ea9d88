//! Launchers of `kernels/backward.cu` and `kernels/attention_backward.cu`: the gradients of the
//! convolution, the group norm, SiLU, upsampling, slicing and attention, and the column sums of a
//! bias gradient — the semantics of the [`crate::backend::BackendStorage`] backward operations.
//! `cargo test --release --test cuda_backward` compares each with the CPU backend on the emulator.

use super::buffer::Buffer;
use super::check;
use super::conv::SMS;
use super::elementwise::map;
use super::gemm::{strided, Epilogue, GemmShape, Layout, TensorCore};
use super::gpu::{DevicePtr, KernelArg, LaunchShape};
use super::kernels::{consts, names};
use super::Precision;
use crate::backend::{AttnGeom, ConvGeom, NormGeom};
use crate::error::{Error, Result};

/// `kernels/conv_backward.cu`'s `ConvBwdShape` (48 bytes).
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

/// `kernels/conv_backward.cu`'s `WgradGrid` (88 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct WgradGrid {
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
    hq: i32,
    wq: i32,
    cells: i64,
    ld: i64,
    k_len: i64,
}

/// `kernels/backward.cu`'s `NormBwdShape` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct NormBwdShape {
    n: i32,
    c: i32,
    hw: i32,
    groups: i32,
}

/// `kernels/attention_backward.cu`'s `AttnBwdShape` (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnBwdShape {
    n: i32,
    l: i32,
    heads: i32,
    d: i32,
    scale: f32,
}

fn shape_arg<T: bytemuck::Pod>(s: &T) -> KernelArg {
    KernelArg::Struct(bytemuck::bytes_of(s).to_vec())
}

fn grid(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n.max(1)).map_err(|_| Error::shape(op, format!("{n} {what}")))
}

/// Gradients of the convolution `y = conv(x, w) + b` (see `kernels/conv_backward.cu`): `(dx if
/// need_dx, dw, db)` for `dy` `(n, co, ho, wo)`. The input gradient of a 3×3 or 1×1 stride-1
/// convolution runs the forward's direct kernels ([`super::conv::input_gradient`]); of the
/// others, a GEMM into columns and `conv2d_col2im_f32`. The weight gradient is a GEMM over the
/// phase-split padded input ([`weight_gradient`]).
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
    } else if let Some(dx) = super::conv::input_gradient(dy, w, g, precision)? {
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
/// GEMM at `precision`) gathered back onto the input's pixels by `conv2d_col2im_f32`.
fn input_gradient_by_columns(
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
                shape_arg(&bwd_shape(g)?),
            ],
        )?;
    }
    Ok(dx)
}

/// `dw` `(co, ci, k, k)`: the output gradient laid on the grid of the padded input's phase planes
/// (`conv2d_grid_pack_f32`, `conv2d_phase_pack_f32`), then their product (`conv2d_wgrad_*`; see
/// `kernels/conv_backward.cu`). The splits of the reduction are a function of the shapes only, so
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
    let b = bwd_shape(g)?;
    let cells_grid = WgradGrid {
        n: b.n,
        ci: b.ci,
        h: b.h,
        w: b.w,
        co: b.co,
        k: b.k,
        stride: b.stride,
        pad_top: b.pad_top,
        pad_left: b.pad_left,
        ho: b.ho,
        wo: b.wo,
        circular: b.circular,
        hq: check::int(OP, "grid rows", hq)?,
        wq: check::int(OP, "grid columns", wq)?,
        cells: cells as i64,
        ld: ld as i64,
        k_len: k_len as i64,
    };
    let xp = Buffer::alloc(gpu, s * s * g.ci * ld)?;
    let dyp = Buffer::alloc(gpu, g.co * k_len)?;
    for (kernel, out, input) in [
        (names::CONV2D_PHASE_PACK_F32, &xp, x),
        (names::CONV2D_GRID_PACK_F32, &dyp, dy),
    ] {
        gpu.launch(
            kernel,
            LaunchShape::linear(out.len(), 256),
            &[
                KernelArg::Ptr(input.ptr()),
                KernelArg::Ptr(out.ptr()),
                shape_arg(&cells_grid),
            ],
        )?;
    }
    let (m, n) = (g.co, g.ci * g.k * g.k);
    let tiles = m.div_ceil(consts::GEMM_BM) * n.div_ceil(consts::GEMM_BN);
    // about two blocks on every SM (the kernels hold two per SM)
    let wanted = (2 * SMS).div_ceil(tiles);
    if precision == Precision::Fp32 {
        let slices = k_len / consts::TILE_K;
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
                    grid(OP, "weight columns", n.div_ceil(consts::TILE_N))?,
                    grid(OP, "output channels", m.div_ceil(consts::TILE_M))?,
                    grid(OP, "slices", splits)?,
                ],
                block: [consts::TILE_THREADS as u32, 1, 1],
                shared_bytes: 0,
            },
            &[
                KernelArg::Ptr(dyp.ptr()),
                KernelArg::Ptr(xp.ptr()),
                KernelArg::Ptr(parts.as_ref().unwrap_or(&dw).ptr()),
                shape_arg(&cells_grid),
                KernelArg::I64(slice_len as i64),
            ],
        )?;
        if let Some(parts) = parts {
            gpu.launch(
                names::CONV2D_FINISH_F32,
                LaunchShape::linear(dw.len(), 256),
                &[
                    KernelArg::Ptr(parts.ptr()),
                    KernelArg::Ptr(DevicePtr(0)),
                    KernelArg::Ptr(DevicePtr(0)),
                    KernelArg::Ptr(DevicePtr(0)),
                    KernelArg::Ptr(dw.ptr()),
                    KernelArg::I32(1),
                    KernelArg::I32(1),
                    KernelArg::I64(dw.len() as i64),
                    KernelArg::I32(check::int(OP, "slices", splits)?),
                    KernelArg::F32(1.0),
                ],
            )?;
        }
        return Ok(dw);
    }
    let shape = GemmShape {
        m: b.co,
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
            shape_arg(shape),
            shape_arg(&cells_grid),
        ]
    })?;
    Ok(dw)
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
            grid: [grid(OP, "channels", channels)?, 1, 1],
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
    let (a, b) = (
        Buffer::alloc(gpu, g.n * g.c)?,
        Buffer::alloc(gpu, g.n * g.c)?,
    );
    let dx = Buffer::alloc(gpu, len)?;
    if len > 0 {
        let block = |blocks| LaunchShape {
            grid: [blocks, 1, 1],
            block: [256, 1, 1],
            shared_bytes: 0,
        };
        gpu.launch(
            names::GROUP_NORM_BWD_CHANNEL_F32,
            block(grid(OP, "channels", g.n * g.c)?),
            &[
                KernelArg::Ptr(x.ptr()),
                KernelArg::Ptr(dy.ptr()),
                KernelArg::Ptr(stats.ptr()),
                KernelArg::Ptr(a.ptr()),
                KernelArg::Ptr(b.ptr()),
                shape_arg(&s),
            ],
        )?;
        gpu.launch(
            names::GROUP_NORM_BWD_DX_F32,
            block(grid(OP, "groups", g.n * g.groups)?),
            &[
                KernelArg::Ptr(x.ptr()),
                KernelArg::Ptr(dy.ptr()),
                KernelArg::Ptr(stats.ptr()),
                KernelArg::Ptr(gamma.ptr()),
                KernelArg::Ptr(a.ptr()),
                KernelArg::Ptr(b.ptr()),
                KernelArg::Ptr(dx.ptr()),
                shape_arg(&s),
            ],
        )?;
    }
    let dgamma = reduce_channels(&a, (g.n, g.c, 1))?;
    let dbeta = reduce_channels(&b, (g.n, g.c, 1))?;
    Ok((dx, dgamma, dbeta))
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

/// Gradients of softmax attention `(dq, dk, dv)` (see `kernels/attention_backward.cu`): the
/// per-row statistics (log-sum-exp and `Σ_j P·dP`) first — from what the forward saved, `(out,
/// lse)`, when given ([`super::elementwise::attention_with_lse`]), else by a pass over the keys —
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
            grid(OP, "tokens", g.l.div_ceil(16))?,
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
                    shape_arg(&s),
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
                shape_arg(&s),
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
        shape_arg(&s),
    ]);
    gpu.launch(names::ATTENTION_BWD_DQ_F32, shape, &args)?;
    let mut args = qkvo.to_vec();
    args.extend([
        KernelArg::Ptr(lse.ptr()),
        KernelArg::Ptr(dsum.ptr()),
        KernelArg::Ptr(dk.ptr()),
        KernelArg::Ptr(dv.ptr()),
        shape_arg(&s),
    ]);
    gpu.launch(names::ATTENTION_BWD_DKV_F32, shape, &args)?;
    Ok((dq, dk, dv))
}
