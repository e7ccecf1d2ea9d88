//! Launchers of `kernels/gemm.cu`: batched matrix products with a fused epilogue (bias, output
//! scale, residual), on the tensor cores in TF32 or bf16 (operands packed K-contiguous first where
//! they are not; split-K where a product has few tiles, finished by the last block of each tile) or
//! with FFMA in float32; and [`pack`], an operand rewritten K-contiguous, group-normalised on the
//! way. The semantics of [`crate::backend::BackendStorage::matmul`] and
//! [`crate::backend::BackendStorage::linear`]; `cargo test --release --features cuda --test
//! ops cuda::gemm` compares them with the CPU backend.

use super::buffer::{ptr, Buffer};
use super::check;
use super::gpu::{DevicePtr, KernelArg, LaunchShape, TILE_COUNTERS};
use super::kernels::{consts, names};
use super::norm::NormOnLoad;
use super::splitk::{finish, ConvEpilogue, SMS, SPLIT_BATCH};
use super::Precision;
use crate::backend::MatmulGeom;
use crate::error::{Error, Result};

/// The tile of one thread block (rows and columns of C: square), and K per slice of the
/// tensor-core kernels (`kernels/gemm.cu`).
const TILE: usize = consts::GEMM_BM;
const SLICE_K: usize = consts::GEMM_KC;
const _: () = assert!(consts::GEMM_BM == consts::GEMM_BN);

/// `kernels/gemm_tc.cuh`'s `GemmShape`, field for field (no padding: 72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct GemmShape {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub a_trans: i32,
    pub b_trans: i32,
    pub bias_per_row: i32,
    pub scale: f32,
    pub slices: i32,
    pub per_split: i32,
}

/// What is applied to each element of the product before it is stored:
/// `C = (A·B + bias + residual) · scale` (diffusers' residual blocks and attention add their
/// input, then divide by their output scale factor).
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// A bias per column of C (length `n`), or per row (length `m`) when `bias_per_row`.
    pub bias: Option<&'a Buffer>,
    pub bias_per_row: bool,
    pub scale: f32,
    /// Shaped like C.
    pub residual: Option<&'a Buffer>,
}

impl Epilogue<'_> {
    /// Nothing: `C = A·B`.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        bias_per_row: false,
        scale: 1.0,
        residual: None,
    };
}

/// The batched product of [`MatmulGeom`] (`C[b] = op(A[b])·op(B[b])`, row-major, contiguous)
/// with an epilogue.
pub fn matmul(
    a: &Buffer,
    b: &Buffer,
    g: &MatmulGeom,
    epilogue: Epilogue,
    precision: Precision,
) -> Result<Buffer> {
    check::len("matmul", "A", a.len(), g.batch * g.m * g.k)?;
    check::len("matmul", "B", b.len(), g.batch * g.k * g.n)?;
    let layout = Layout {
        batch: g.batch,
        m: g.m,
        n: g.n,
        k: g.k,
        a_trans: g.a_trans,
        b_trans: g.b_trans,
        stride_a: g.m * g.k,
        stride_b: g.k * g.n,
        rows_are_samples: false,
    };
    strided(a, b, &layout, epilogue, precision)
}

/// Where the operands of a batched product are: `op(A[i])` is `m × k` (stored `k × m` when
/// `a_trans`), `op(B[i])` is `k × n` (stored `n × k` when `b_trans`), each row-major and dense,
/// matrix `i` of A at `i·stride_a` and of B at `i·stride_b` (0: one matrix for the whole batch);
/// C is dense, `batch × m × n`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_trans: bool,
    pub b_trans: bool,
    pub stride_a: usize,
    pub stride_b: usize,
    /// The rows of C are the samples (a linear layer over a batch), not the matrices: the
    /// split-K rule, which must not depend on the number of samples, then takes a tile of rows
    /// for all of them.
    pub rows_are_samples: bool,
}

/// The product of [`Layout`] with an epilogue. The operands must hold every matrix the layout
/// reads.
pub fn strided(
    a: &Buffer,
    b: &Buffer,
    g: &Layout,
    epilogue: Epilogue,
    precision: Precision,
) -> Result<Buffer> {
    let reach = |stride: usize, size: usize| {
        if g.batch == 0 {
            0
        } else {
            (g.batch - 1) * stride + size
        }
    };
    if a.len() < reach(g.stride_a, g.m * g.k) || b.len() < reach(g.stride_b, g.k * g.n) {
        return Err(Error::shape(
            "matmul",
            format!("{} and {} values for the layout {g:?}", a.len(), b.len()),
        ));
    }
    if let Some(bias) = epilogue.bias {
        let want = if epilogue.bias_per_row { g.m } else { g.n };
        check::len("matmul", "the bias", bias.len(), want)?;
    }
    if let Some(r) = epilogue.residual {
        check::len("matmul", "the residual", r.len(), g.batch * g.m * g.n)?;
    }
    let gpu = a.gpu();
    let c = Buffer::alloc(gpu, g.batch * g.m * g.n)?;
    if c.is_empty() {
        return Ok(c);
    }
    let batch = u32::try_from(g.batch)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| Error::shape("matmul", format!("batch {} exceeds 65535", g.batch)))?;
    let (m_tiles, n_tiles) = (g.m.div_ceil(TILE), g.n.div_ceil(TILE));
    let mut shape = GemmShape {
        m: check::int("matmul", "m", g.m)?,
        n: check::int("matmul", "n", g.n)?,
        k: check::int("matmul", "k", g.k)?,
        lda: check::int("matmul", "lda", if g.a_trans { g.m } else { g.k })?,
        ldb: check::int("matmul", "ldb", if g.b_trans { g.k } else { g.n })?,
        ldc: check::int("matmul", "n", g.n)?,
        stride_a: g.stride_a as i64,
        stride_b: g.stride_b as i64,
        stride_c: (g.m * g.n) as i64,
        a_trans: i32::from(g.a_trans),
        b_trans: i32::from(g.b_trans),
        bias_per_row: i32::from(epilogue.bias_per_row),
        scale: epilogue.scale,
        slices: 0,
        per_split: 0,
    };
    // the arguments every variant takes: the operands, C, bias, residual, shape
    let args = |a: &Buffer, b: &Buffer, shape: &GemmShape| {
        vec![
            KernelArg::Ptr(a.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(c.ptr()),
            ptr(epilogue.bias),
            ptr(epilogue.residual),
            KernelArg::pod(shape),
        ]
    };
    if precision == Precision::Fp32 {
        let grid = [n_tiles as u32, m_tiles as u32, batch];
        gpu.launch(
            names::GEMM_F32,
            LaunchShape {
                grid,
                block: [consts::TILE_THREADS as u32, 1, 1],
                shared_bytes: 0,
            },
            &args(a, b, &shape),
        )?;
        return Ok(c);
    }

    // the tensor-core kernels read both operands K-contiguous, 16-byte aligned, K a multiple of 4
    let width = g.k.next_multiple_of(4);
    let ready = |k_contiguous: bool, buf: &Buffer, stride: usize| {
        k_contiguous
            && g.k == width
            && (g.batch == 1 || stride.is_multiple_of(4))
            && buf.ptr().0.is_multiple_of(16)
    };
    let packed_a;
    let a = if ready(!g.a_trans, a, g.stride_a) {
        a
    } else {
        let p = Packing {
            batch: if g.stride_a == 0 { 1 } else { g.batch },
            rows: g.m,
            k: g.k,
            width,
            stride: g.stride_a,
            trans: g.a_trans,
        };
        packed_a = pack(a, &p, None)?;
        shape.stride_a = if g.stride_a == 0 {
            0
        } else {
            (g.m * width) as i64
        };
        &packed_a
    };
    let packed_b;
    let b = if ready(g.b_trans, b, g.stride_b) {
        b
    } else {
        let p = Packing {
            batch: if g.stride_b == 0 { 1 } else { g.batch },
            rows: g.n,
            k: g.k,
            width,
            stride: g.stride_b,
            trans: !g.b_trans,
        };
        packed_b = pack(b, &p, None)?;
        shape.stride_b = if g.stride_b == 0 {
            0
        } else {
            (g.n * width) as i64
        };
        &packed_b
    };
    shape.k = check::int("matmul", "k", width)?;
    shape.lda = shape.k;
    shape.ldb = shape.k;

    // split-K: enough splits that SPLIT_BATCH samples put a block on every SM, from the shape
    // per sample only
    let per_sample = if g.rows_are_samples {
        SPLIT_BATCH.div_ceil(TILE) * n_tiles
    } else {
        SPLIT_BATCH * m_tiles * n_tiles
    };
    let launch = TensorCore {
        // (float32 took the FFMA kernel above)
        kernel: precision.pick([names::GEMM_TF32, names::GEMM_TF32, names::GEMM_BF16]),
        shape,
        batch,
        wanted_splits: SMS.div_ceil(per_sample),
        epilogue,
        precision,
    };
    launch.run(&c, |shape| args(a, b, shape))?;
    Ok(c)
}

/// A launch of a tensor-core product (`gemm_tf32`/`gemm_bf16`, or a kernel that is one over
/// operands laid out for it, `conv2d_wgrad_*`): K split into `wanted_splits` runs of whole slices
/// at most (one slice each at most), each split's partial sums added in order and the epilogue
/// applied by the last block of each tile (`kernels/splitk.cuh`) where the device's tile counters
/// cover the tiles, by `conv2d_finish_f32` otherwise.
pub(super) struct TensorCore<'a> {
    pub kernel: &'static str,
    /// The product's shape; `slices` and `per_split` are set by [`TensorCore::run`].
    pub shape: GemmShape,
    pub batch: u32,
    pub wanted_splits: usize,
    pub epilogue: Epilogue<'a>,
    pub precision: Precision,
}

impl TensorCore<'_> {
    /// Launches into `c` (`batch × m × n`); `args(shape)` gives the kernel's arguments before its
    /// last two, the split planes and the tile counters.
    pub fn run(self, c: &Buffer, args: impl Fn(&GemmShape) -> Vec<KernelArg>) -> Result<()> {
        let TensorCore {
            kernel,
            mut shape,
            batch,
            wanted_splits,
            epilogue,
            precision,
        } = self;
        let gpu = c.gpu();
        let (m, n, width) = (shape.m as usize, shape.n as usize, shape.k as usize);
        let (m_tiles, n_tiles) = (m.div_ceil(TILE), n.div_ceil(TILE));
        let slices = width.div_ceil(SLICE_K);
        let wanted = wanted_splits.clamp(1, slices.max(1));
        let per_split = (slices / wanted).max(1);
        let splits = slices.div_ceil(per_split).max(1);
        shape.slices = check::int("matmul", "k", slices)?;
        shape.per_split = per_split as i32;
        let grid_y = u32::try_from(m_tiles * splits)
            .ok()
            .filter(|&y| y <= 65_535)
            .ok_or_else(|| Error::shape("matmul", format!("{m} rows")))?;
        let parts = if splits > 1 {
            Some(Buffer::alloc(gpu, splits * c.len())?)
        } else {
            None
        };
        // split, the last block of each tile finishes it (kernels/splitk.cuh) where the device's
        // counters cover the tiles; a launch of its own otherwise
        let counters = gpu
            .tile_counters()
            .filter(|_| splits > 1 && n_tiles * m_tiles * batch as usize <= TILE_COUNTERS);
        let mut tc_args = args(&shape);
        tc_args.push(ptr(parts.as_ref()));
        tc_args.push(KernelArg::Ptr(counters.unwrap_or(DevicePtr(0))));
        gpu.launch(
            kernel,
            LaunchShape {
                grid: [n_tiles as u32, grid_y, batch],
                block: [consts::GEMM_THREADS as u32, 1, 1],
                shared_bytes: shared_bytes(precision) as u32,
            },
            &tc_args,
        )?;
        if let (Some(parts), None) = (parts, counters) {
            // the finish's bias is per channel `(i / hw) % co`: a column's (hw 1, co n) or a
            // row's (hw n, co m)
            let (outer, co, hw) = if epilogue.bias_per_row {
                (batch as usize, m, n)
            } else {
                (batch as usize * m, n, 1)
            };
            let epi = ConvEpilogue {
                bias: epilogue.bias,
                temb: None,
                residual: epilogue.residual,
                scale: epilogue.scale,
            };
            finish(&parts, c, (outer, co, hw), splits, &epi)?;
        }
        Ok(())
    }
}

/// Where an operand is and how [`pack`] rewrites it: `batch` matrices `op(X[i])`, each `rows × k`,
/// at `i·stride`; stored `rows × k` row-major, or (`trans`) `k × rows`; packed `(batch, rows,
/// width)`, zeros past `k`.
#[derive(Clone, Copy, Debug)]
pub struct Packing {
    pub batch: usize,
    pub rows: usize,
    pub k: usize,
    pub width: usize,
    pub stride: usize,
    pub trans: bool,
}

/// An operand rewritten K-contiguous (`kernels/gemm.cu`'s `gemm_pack_f32`), as the tensor-core
/// products read it: `(batch, rows, width)`; with `norm`, the group norm of its columns (column
/// `k` is channel `k` of matrix `i`, statistics `(batch, groups, 2)`) applied on the way —
/// attention's norm before its projections, the image `(n, c, l)` read as tokens `(n, l, c)`.
/// Errors: an operand too short for the packing, or a norm whose groups do not divide `k`.
pub fn pack(x: &Buffer, p: &Packing, norm: Option<NormOnLoad>) -> Result<Buffer> {
    if p.batch > 0 && x.len() < (p.batch - 1) * p.stride + p.rows * p.k {
        return Err(Error::shape(
            "matmul",
            format!("{} values for the operand {p:?}", x.len()),
        ));
    }
    if p.width < p.k {
        return Err(Error::shape(
            "matmul",
            format!("a packed width {} under k {}", p.width, p.k),
        ));
    }
    if let Some(n) = norm {
        if n.groups == 0 || !p.k.is_multiple_of(n.groups) {
            return Err(Error::shape(
                "matmul",
                format!("{} channels in {} groups", p.k, n.groups),
            ));
        }
        check::len(
            "matmul",
            "the statistics",
            n.stats.len(),
            2 * p.batch * n.groups,
        )?;
        check::len("matmul", "gamma", n.gamma.len(), p.k)?;
        check::len("matmul", "beta", n.beta.len(), p.k)?;
    }
    let out = Buffer::alloc(x.gpu(), p.batch * p.rows * p.width)?;
    if out.is_empty() {
        return Ok(out);
    }
    let batch = u32::try_from(p.batch)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| Error::shape("matmul", format!("batch {} exceeds 65535", p.batch)))?;
    let ld = if p.trans { p.rows } else { p.k };
    x.gpu().launch(
        names::GEMM_PACK_F32,
        LaunchShape {
            grid: [
                p.width.div_ceil(32) as u32,
                p.rows.div_ceil(32) as u32,
                batch,
            ],
            block: [32, 8, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(x.ptr()),
            KernelArg::Ptr(out.ptr()),
            KernelArg::I32(check::int("matmul", "rows", p.rows)?),
            KernelArg::I32(check::int("matmul", "k", p.k)?),
            KernelArg::I32(check::int("matmul", "width", p.width)?),
            KernelArg::I32(check::int("matmul", "ld", ld)?),
            KernelArg::I64(p.stride as i64),
            KernelArg::I32(i32::from(p.trans)),
            ptr(norm.map(|n| n.stats)),
            ptr(norm.map(|n| n.gamma)),
            ptr(norm.map(|n| n.beta)),
            KernelArg::I32(norm.map_or(0, |n| n.groups as i32)),
        ],
    )?;
    Ok(out)
}

/// `kernels/gemm.cu`'s `gemm_shared_bytes`: two buffers of both operands' slices (a word per
/// element, or per bf16 pair).
fn shared_bytes(precision: Precision) -> usize {
    let words = if precision == Precision::Bf16 {
        SLICE_K / 2
    } else {
        SLICE_K
    } * TILE;
    4 * 2 * 2 * words
}

/// PyTorch's `Linear`: `y = x·wᵀ + b` for `x (m, k)`, `w (n, k)`, `b (n)`.
pub fn linear(
    x: &Buffer,
    w: &Buffer,
    bias: Option<&Buffer>,
    (m, k, n): (usize, usize, usize),
    precision: Precision,
) -> Result<Buffer> {
    check::len("linear", "x", x.len(), m * k)?;
    check::len("linear", "the weight", w.len(), n * k)?;
    let layout = Layout {
        batch: 1,
        m,
        n,
        k,
        a_trans: false,
        b_trans: true,
        stride_a: 0,
        stride_b: 0,
        rows_are_samples: true,
    };
    let epilogue = Epilogue {
        bias,
        ..Epilogue::NONE
    };
    strided(x, w, &layout, epilogue, precision)
}
