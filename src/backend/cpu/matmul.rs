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
    fn offset_cols(self, c: usize) -> Self {
        // SAFETY: callers only offset within the operand they described.
        Mat {
            ptr: unsafe { self.ptr.offset(c as isize * self.cs) },
            ..self
        }
    }
}
// SAFETY: read-only views shared across rayon tasks.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

/// The longest run of the `k` sum that one `gemm` call takes: longer sums are split into
/// equal runs of at most this many terms, added into the destination in order.
const KC: usize = 512;

/// `dst (m×n) = [dst +] alpha · lhs (m×k) · rhs (k×n)` on one thread, with every element's
/// arithmetic fixed by `k` alone: the same bits whatever `m`, `n`, the strides, or the element's
/// position. Every product of the CPU backend goes through here, so a sample's result never
/// depends on what shares its product, nor on how rows and columns are split across threads.
///
/// `gemm`'s general kernel computes each element as one chain of fused multiply-adds over the
/// `k` terms of each run of its `k` sum, then scales it by `alpha`, whatever the block it lies
/// in and whether or not the crate transposes the product (it does for column-oriented
/// destinations). But the crate chooses that run length from the shape when `k > 512`, and
/// leaves the general kernel for small or thin products: a dot-product kernel when `m·n ≤ 256`
/// and both operands are contiguous along `k`, matrix–vector kernels when `m` or `n` is 1, an
/// element-wise kernel when `k ≤ 2` (which applies `alpha` to one operand or the other). So here
/// the `k` sum is split into equal runs of at most [`KC`] terms, a product that would leave the
/// general kernel is computed on a copy that keeps it there (an operand re-laid out, a second
/// zero row or column), and sums of one or two terms are computed directly. Tested below. With
/// the CPU's precision at bf16 ([`super::set_precision`]) the product is [`super::bf16::gemm`]'s,
/// which keeps the same promise.
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
    if super::precision() == crate::backend::Precision::Bf16 && m > 0 && n > 0 && k > 0 {
        return super::bf16::gemm(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, alpha);
    }
    gemm1_fp32(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, alpha)
}

/// [`gemm1`] in float32 whatever the CPU's precision: the Winograd convolutions' products (see
/// [`super::winograd`] for why) and attention's, one small product per head and sample, where
/// packing bf16 operands costs more than it saves. Safety as [`gemm1`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm1_fp32(
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
    if k <= 2 {
        return short_sum(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, alpha);
    }
    // runs of ⌊k/runs⌋ or ⌈k/runs⌉ terms: all longer than KC/2 when k > KC
    let runs = k.div_ceil(KC);
    for r in 0..runs {
        let (k0, k1) = (r * k / runs, (r + 1) * k / runs);
        general_kernel(
            m,
            n,
            k1 - k0,
            dst,
            dst_rs,
            dst_cs,
            accumulate || r > 0,
            lhs.offset_cols(k0),
            rhs.offset_rows(k0),
            alpha,
        );
    }
}

/// A product with `k ≤ 2`, element by element: `alpha·(a₀b₀ [+ a₁b₁])` with the second term
/// fused, then added to `dst` when accumulating. (`gemm`'s own kernel for such short sums
/// applies `alpha` to one operand or the other depending on the destination's layout.) Safety
/// as [`gemm1`].
#[allow(clippy::too_many_arguments)]
unsafe fn short_sum(
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
    let a = |i: usize, t: usize| *lhs.ptr.offset(i as isize * lhs.rs + t as isize * lhs.cs);
    let b = |t: usize, j: usize| *rhs.ptr.offset(t as isize * rhs.rs + j as isize * rhs.cs);
    for i in 0..m {
        for j in 0..n {
            let mut s = a(i, 0) * b(0, j);
            if k == 2 {
                s = a(i, 1).mul_add(b(1, j), s);
            }
            let d = dst.offset(i as isize * dst_rs + j as isize * dst_cs);
            *d = if accumulate {
                *d + alpha * s
            } else {
                alpha * s
            };
        }
    }
}

/// Whether `gemm` takes its dot-product kernel for this product (see [`gemm1`]).
fn dot_product_kernel(m: usize, n: usize, lhs: Mat, rhs: Mat) -> bool {
    lhs.cs == 1 && rhs.rs == 1 && m * n <= 256
}

/// Whether `gemm` computes this product (`k ≥ 3`) with its general kernel (see [`gemm1`]).
fn takes_general_kernel(m: usize, n: usize, lhs: Mat, rhs: Mat) -> bool {
    m >= 2 && n >= 2 && !dot_product_kernel(m, n, lhs, rhs)
}

/// One `gemm` call with `3 ≤ k ≤` [`KC`], on copies that keep it in the general kernel where the
/// shape would not (see [`gemm1`]): a thin or small operand is copied column-major (`lhs`) or
/// row-major (`rhs`), padded with a zero row or column to at least two, so that it is neither
/// contiguous along `k` nor a vector. Safety as [`gemm1`].
#[allow(clippy::too_many_arguments)]
unsafe fn general_kernel(
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
    if takes_general_kernel(m, n, lhs, rhs) {
        return call_gemm(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, alpha);
    }
    let dot = dot_product_kernel(m, n, lhs, rhs);
    let copy_lhs = m < 2 || (dot && m <= n);
    let copy_rhs = n < 2 || (dot && !copy_lhs);
    let (mp, np) = (m.max(2), n.max(2));
    let mut a = Vec::new();
    if copy_lhs {
        a = vec![0.0f32; mp * k];
        for j in 0..k {
            for i in 0..m {
                a[j * mp + i] = *lhs.ptr.offset(i as isize * lhs.rs + j as isize * lhs.cs);
            }
        }
    }
    let mut b = Vec::new();
    if copy_rhs {
        b = vec![0.0f32; k * np];
        for j in 0..k {
            for c in 0..n {
                b[j * np + c] = *rhs.ptr.offset(j as isize * rhs.rs + c as isize * rhs.cs);
            }
        }
    }
    let lhs = if copy_lhs { Mat::new(&a, 1, mp) } else { lhs };
    let rhs = if copy_rhs { Mat::new(&b, np, 1) } else { rhs };
    debug_assert!(takes_general_kernel(mp, np, lhs, rhs));
    if (mp, np) == (m, n) {
        return call_gemm(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, alpha);
    }
    // A padding row or column: the product goes to a row-major copy of dst.
    let mut d = vec![0.0f32; mp * np];
    if accumulate {
        for i in 0..m {
            for c in 0..n {
                d[i * np + c] = *dst.offset(i as isize * dst_rs + c as isize * dst_cs);
            }
        }
    }
    call_gemm(
        mp,
        np,
        k,
        d.as_mut_ptr(),
        np as isize,
        1,
        accumulate,
        lhs,
        rhs,
        alpha,
    );
    for i in 0..m {
        for c in 0..n {
            *dst.offset(i as isize * dst_rs + c as isize * dst_cs) = d[i * np + c];
        }
    }
}

/// `gemm::gemm` single-threaded: `dst := [dst +] alpha · lhs · rhs`. Safety as [`gemm1`].
#[allow(clippy::too_many_arguments)]
unsafe fn call_gemm(
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

/// Rows per task: enough tasks for every thread, each large enough to amortise packing. (How
/// rows are split never changes a result: see [`gemm1`].)
fn row_block(m: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (1 << 16) / work_per_row.max(1) + 1;
    m.div_ceil(threads * 2).max(min_rows.min(m)).max(1)
}

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
    let rb = row_block(m, n * k);
    let dp = SendPtr(dst.as_mut_ptr());
    (0..m.div_ceil(rb)).into_par_iter().for_each(|i| {
        let (r0, r1) = (i * rb, ((i + 1) * rb).min(m));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// Every element of a product is the same bits whatever block of the product it is
    /// computed in — a single element, a thin row or column, a small block or the whole — for
    /// both layouts of each operand, short and long sums, with and without accumulation; and
    /// it agrees with a float64 product.
    #[test]
    fn an_element_does_not_depend_on_the_block() {
        let (m, n) = (37, 29);
        for k in [1, 2, 3, 16, 300, 513, 1100] {
            let (a, b) = (vals(m * k, k), vals(k * n, k + 1));
            let c0 = vals(m * n, k + 2);
            for (a_rowmajor, b_rowmajor, accumulate) in [
                (true, true, false),
                (true, false, false),
                (false, true, true),
                (false, false, true),
            ] {
                let lhs = |r0: usize, c0: usize| {
                    let (rs, cs) = if a_rowmajor { (k, 1) } else { (1, m) };
                    Mat::new(&a[r0 * rs + c0 * cs..], rs, cs)
                };
                let rhs = |r0: usize, c0: usize| {
                    let (rs, cs) = if b_rowmajor { (n, 1) } else { (1, k) };
                    Mat::new(&b[r0 * rs + c0 * cs..], rs, cs)
                };
                let mut whole = c0.clone();
                // SAFETY: all operands are in bounds for the shapes given.
                unsafe {
                    gemm1(
                        m,
                        n,
                        k,
                        whole.as_mut_ptr(),
                        n as isize,
                        1,
                        accumulate,
                        lhs(0, 0),
                        rhs(0, 0),
                        0.3,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|t| {
                                let x = if a_rowmajor {
                                    a[i * k + t]
                                } else {
                                    a[t * m + i]
                                };
                                let y = if b_rowmajor {
                                    b[t * n + j]
                                } else {
                                    b[j * k + t]
                                };
                                x as f64 * y as f64
                            })
                            .sum::<f64>()
                            * 0.3
                            + if accumulate {
                                c0[i * n + j] as f64
                            } else {
                                0.0
                            };
                        let got = whole[i * n + j] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-5 * (k as f64).sqrt() + 1e-5 * exact.abs()
                        );
                    }
                }
                for (r0, r1, c0_, c1) in [
                    (0, 1, 0, 1),
                    (5, 6, 0, n),
                    (0, m, 7, 8),
                    (3, 5, 4, 6),
                    (10, 26, 3, 19),
                    (1, 17, 0, 16),
                    (0, 33, 2, 29),
                    (36, 37, 28, 29),
                ] {
                    let (bm, bn) = (r1 - r0, c1 - c0_);
                    // the block, written into a column-major destination
                    let mut d = vec![0.0f32; bm * bn];
                    for i in 0..bm {
                        for j in 0..bn {
                            d[j * bm + i] = c0[(r0 + i) * n + c0_ + j];
                        }
                    }
                    // SAFETY: as above.
                    unsafe {
                        gemm1(
                            bm,
                            bn,
                            k,
                            d.as_mut_ptr(),
                            1,
                            bm as isize,
                            accumulate,
                            lhs(r0, 0),
                            rhs(0, c0_),
                            0.3,
                        )
                    };
                    for i in 0..bm {
                        for j in 0..bn {
                            assert_eq!(
                                d[j * bm + i].to_bits(),
                                whole[(r0 + i) * n + c0_ + j].to_bits(),
                                "k {k}, layouts {a_rowmajor}/{b_rowmajor}: element ({}, {}) of block {bm}×{bn}",
                                r0 + i,
                                c0_ + j
                            );
                        }
                    }
                }
            }
        }
    }

    /// A very long sum (as in a kernel gradient over a large batch of large images) splits into
    /// runs without a short or empty one, agrees with a float64 sum, and an element is the same
    /// bits in a block of one.
    #[test]
    fn a_very_long_sum_splits_into_even_runs() {
        let (m, n, k) = (3, 2, 261_122);
        let (a, b) = (vals(m * k, 1), vals(k * n, 2));
        let mut whole = vec![0.0f32; m * n];
        // SAFETY: all operands are in bounds for the shapes given.
        unsafe {
            gemm1(
                m,
                n,
                k,
                whole.as_mut_ptr(),
                n as isize,
                1,
                false,
                Mat::new(&a, k, 1),
                Mat::new(&b, n, 1),
                1.0,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|t| a[i * k + t] as f64 * b[t * n + j] as f64)
                    .sum();
                assert!((whole[i * n + j] as f64 - exact).abs() <= 1e-6 * k as f64);
                let mut one = 0.0f32;
                // SAFETY: as above, one element.
                unsafe {
                    gemm1(
                        1,
                        1,
                        k,
                        &mut one,
                        1,
                        1,
                        false,
                        Mat::new(&a[i * k..], k, 1),
                        Mat::new(&b[j..], n, 1),
                        1.0,
                    )
                };
                assert_eq!(one.to_bits(), whole[i * n + j].to_bits());
            }
        }
    }
}
