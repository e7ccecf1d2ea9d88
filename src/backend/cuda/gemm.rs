//! Launchers of `kernels/gemm.cu`: batched matrix products with a fused epilogue (bias, output
//! scale, residual), on the tensor cores in TF32 or with FFMA in float32. The semantics of
//! [`crate::backend::BackendStorage::matmul`] and [`crate::backend::BackendStorage::linear`];
//! `cargo test --release --test cuda_gemm` compares them with the CPU backend.

use super::buffer::Buffer;
use super::check;
use super::conv::NormOnLoad;
use super::gpu::{DevicePtr, KernelArg, LaunchShape};
use super::Precision;
use crate::backend::MatmulGeom;
use crate::error::{Error, Result};

/// The tile of one thread block (rows and columns of C).
const TILE: usize = 64;

/// `kernels/gemm.cu`'s `GemmShape`, field for field (no padding: 64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmShape {
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    stride_a: i64,
    stride_b: i64,
    stride_c: i64,
    a_trans: i32,
    b_trans: i32,
    bias_per_row: i32,
    scale: f32,
}

/// `kernels/gemm.cu`'s `GemmNorm` (32 bytes): device addresses of the statistics, gamma and beta,
/// or zeros for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmNorm {
    stats: u64,
    gamma: u64,
    beta: u64,
    groups: i32,
    unused: i32,
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
    /// A group norm of `op(A)`'s columns as A is loaded: column `k` is channel `k` of sample `i`
    /// (the batch index), statistics `(batch, groups, 2)`.
    pub norm_a: Option<NormOnLoad<'a>>,
}

impl Epilogue<'_> {
    /// Nothing: `C = A·B`.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        bias_per_row: false,
        scale: 1.0,
        residual: None,
        norm_a: None,
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
    let norm = match epilogue.norm_a {
        Some(n) => {
            if n.groups == 0 || !g.k.is_multiple_of(n.groups) {
                return Err(Error::shape(
                    "matmul",
                    format!("{} channels in {} groups", g.k, n.groups),
                ));
            }
            check::len(
                "matmul",
                "the statistics",
                n.stats.len(),
                2 * g.batch * n.groups,
            )?;
            check::len("matmul", "gamma", n.gamma.len(), g.k)?;
            check::len("matmul", "beta", n.beta.len(), g.k)?;
            GemmNorm {
                stats: n.stats.ptr().0,
                gamma: n.gamma.ptr().0,
                beta: n.beta.ptr().0,
                groups: n.groups as i32,
                unused: 0,
            }
        }
        None => GemmNorm {
            stats: 0,
            gamma: 0,
            beta: 0,
            groups: 0,
            unused: 0,
        },
    };
    let gpu = a.gpu();
    let c = Buffer::alloc(gpu, g.batch * g.m * g.n)?;
    if c.is_empty() {
        return Ok(c);
    }
    let shape = GemmShape {
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
    };
    let kernel = precision.kernel("gemm");
    let batch = u32::try_from(g.batch)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| Error::shape("matmul", format!("batch {} exceeds 65535", g.batch)))?;
    let ptr = |b: Option<&Buffer>| KernelArg::Ptr(b.map_or(DevicePtr(0), Buffer::ptr));
    gpu.launch(
        &kernel,
        LaunchShape {
            grid: [g.n.div_ceil(TILE) as u32, g.m.div_ceil(TILE) as u32, batch],
            block: [128, 1, 1],
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(a.ptr()),
            KernelArg::Ptr(b.ptr()),
            KernelArg::Ptr(c.ptr()),
            ptr(epilogue.bias),
            ptr(epilogue.residual),
            KernelArg::Struct(bytemuck::bytes_of(&shape).to_vec()),
            KernelArg::Struct(bytemuck::bytes_of(&norm).to_vec()),
        ],
    )?;
    Ok(c)
}

/// PyTorch's `Linear`: `y = x·wᵀ + b` for `x (m, k)`, `w (n, k)`, `b (n)`.
pub fn linear(
    x: &Buffer,
    w: &Buffer,
    bias: Option<&Buffer>,
    (m, k, n): (usize, usize, usize),
    precision: Precision,
) -> Result<Buffer> {
    let g = MatmulGeom {
        batch: 1,
        m,
        n,
        k,
        a_trans: false,
        b_trans: true,
    };
    let epilogue = Epilogue {
        bias,
        ..Epilogue::NONE
    };
    matmul(x, w, &g, epilogue, precision)
}
