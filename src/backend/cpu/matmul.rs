//! Matrix products through the `gemm` crate, with our own split across threads.
//!
//! `gemm`'s own two-thread split scales poorly on the shapes of this engine (DESIGN.md,
//! "Performance method"), so every call here runs `gemm` single-threaded on a block of rows of
//! the destination and rayon spreads the blocks. Reference: [`super::reference::matmul`].
//! Bench: `cargo bench --bench ops -- linear`.

use super::scratch;
use crate::backend::MatmulGeom;
use rayon::prelude::*;

/// A raw pointer that may cross threads; every user writes to disjoint parts.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used to hand disjoint output regions to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// A strided matrix operand: element `(i, j)` at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    pub fn new(s: &[f32], rs: usize, cs: usize) -> Self {
        Mat {
            ptr: s.as_ptr(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }
    fn offset_rows(self, r: usize) -> Self {
        // SAFETY: callers only offset within the operand they described.
        Mat {
            ptr: unsafe { self.ptr.offset(r as isize * self.rs) },
            ..self
        }
    }
}
// SAFETY: read-only views shared across rayon tasks.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

/// `dst (m×n) = [dst +] alpha · lhs (m×k) · rhs (k×n)` on one thread.
///
/// # Safety
/// Every operand must be valid for the index ranges its strides describe, and `dst` must not
/// alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m as isize {
                for j in 0..n as isize {
                    *dst.offset(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    // gemm computes dst := a·dst + b·lhs·rhs and takes (column stride, row stride) pairs.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Rows per task: enough tasks for every thread, each large enough to amortise packing, and
/// never fewer than [`SMALL_M`].
fn row_block(m: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (1 << 16) / work_per_row.max(1) + 1;
    m.div_ceil(threads * 2).max(min_rows.min(m)).max(SMALL_M)
}

/// `gemm` computes a row differently when the product has very few rows (other kernels), so a
/// sample's result would depend on how many samples share the call (the timestep MLP has one
/// row per sample). Products with fewer rows are padded with zero rows to this many; from
/// here up, a row's result does not depend on the row count (tested in tests/unet_parity.rs).
const SMALL_M: usize = 16;

/// `dst (m×n, row-major) = [dst +] alpha · lhs · rhs`, rows spread across threads.
///
/// # Safety
/// As [`gemm1`]; `dst` is contiguous `m×n`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_par(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    alpha: f32,
) {
    debug_assert!(dst.len() >= m * n);
    if m < SMALL_M && m > 0 {
        let mut a = vec![0.0f32; SMALL_M * k];
        for (i, row) in a.chunks_mut(k.max(1)).take(m).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = *lhs.ptr.offset(i as isize * lhs.rs + j as isize * lhs.cs);
            }
        }
        let mut d = vec![0.0f32; SMALL_M * n];
        if accumulate {
            d[..m * n].copy_from_slice(&dst[..m * n]);
        }
        gemm1(
            SMALL_M,
            n,
            k,
            d.as_mut_ptr(),
            n as isize,
            1,
            accumulate,
            Mat::new(&a, k, 1),
            rhs,
            alpha,
        );
        dst[..m * n].copy_from_slice(&d[..m * n]);
        return;
    }
    // floor(m / rb) blocks of near-equal size: none smaller than rb ≥ SMALL_M rows
    let blocks = (m / row_block(m, n * k)).max(1);
    let dp = SendPtr(dst.as_mut_ptr());
    (0..blocks).into_par_iter().for_each(|i| {
        let (r0, r1) = (i * m / blocks, (i + 1) * m / blocks);
        // SAFETY: rows r0..r1 of dst belong to this task alone.
        gemm1(
            r1 - r0,
            n,
            k,
            dp.get().add(r0 * n),
            n as isize,
            1,
            accumulate,
            lhs.offset_rows(r0),
            rhs,
            alpha,
        );
    });
}

/// Batched product with transposes, see [`MatmulGeom`].
pub fn matmul(a: &[f32], b: &[f32], g: &MatmulGeom) -> Vec<f32> {
    let MatmulGeom {
        batch,
        m,
        n,
        k,
        a_trans,
        b_trans,
    } = *g;
    let mut out = scratch::zeroed(batch * m * n);
    let dst = SendPtr(out.as_mut_ptr());
    let rb = row_block(m, n * k);
    let blocks = m.div_ceil(rb).max(1);
    (0..batch * blocks).into_par_iter().for_each(|item| {
        let (bi, r0) = (item / blocks, (item % blocks) * rb);
        let rows = rb.min(m - r0);
        let ab = &a[bi * m * k..][..m * k];
        let bb = &b[bi * k * n..][..k * n];
        let lhs = if a_trans {
            Mat::new(&ab[r0..], 1, m)
        } else {
            Mat::new(&ab[r0 * k..], k, 1)
        };
        let rhs = if b_trans {
            Mat::new(bb, 1, k)
        } else {
            Mat::new(bb, n, 1)
        };
        let d = dst;
        // SAFETY: each task writes rows r0..r0+rows of batch bi, disjoint from all others.
        unsafe {
            gemm1(
                rows,
                n,
                k,
                d.0.add(bi * m * n + r0 * n),
                n as isize,
                1,
                false,
                lhs,
                rhs,
                1.0,
            )
        };
    });
    out
}

/// `y = x · wᵀ + b` for `x (m, k)`, `w (n, k)`, `b (n)`.
pub fn linear(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = scratch::zeroed(m * n);
    if let Some(b) = b {
        y.par_chunks_mut(n.max(1))
            .for_each(|row| row.copy_from_slice(b));
    }
    // SAFETY: x is m×k row-major, wᵀ is (k×n) with element (i, j) = w[j·k + i].
    unsafe {
        gemm_par(
            m,
            n,
            k,
            &mut y,
            b.is_some(),
            Mat::new(x, k, 1),
            Mat::new(w, 1, k),
            1.0,
        )
    };
    y
}
