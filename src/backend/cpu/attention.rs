//! Multi-head softmax attention on token-major `(n, l, heads·d)` queries, keys and values.
//!
//! `out_h = softmax(q_h k_hᵀ · scale) v_h` for each head `h` (columns `h·d..(h+1)·d`), the
//! softmax taken in f32 over keys with the row maximum subtracted (diffusers' `upcast_softmax`
//! is f32 anyway). Forward works on blocks of query rows so the score block stays in cache and
//! every thread has work; no `l × l` matrix is ever held whole. Reference:
//! [`super::reference::attention`]. Bench: `cargo bench --bench ops -- attention`.

use super::matmul::{gemm1_fp32, Mat, SendPtr};
use super::scratch;
use super::simd::{self, simd_fn};
use crate::backend::AttnGeom;
use rayon::prelude::*;

simd_fn! {
    /// Row-wise `e^{s − max}` of a `(rows, cols)` block in place; returns nothing but writes
    /// each row's `1/Σ` into `inv`, so normalisation can be applied to the (narrower) output.
    fn softmax_rows_unnormalised(s: &mut [f32], cols: usize, inv: &mut [f32]) {
        for (row, r) in s.chunks_mut(cols).zip(inv.iter_mut()) {
            let m = simd::max(row);
            *r = 1.0 / simd::exp_sub_sum(row, m);
        }
    }
}

simd_fn! {
    /// Row-wise softmax of a `(rows, cols)` block in place.
    fn softmax_rows(s: &mut [f32], cols: usize) {
        for row in s.chunks_mut(cols) {
            let m = simd::max(row);
            let inv = 1.0 / simd::exp_sub_sum(row, m);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Query rows per task: every row block re-packs the head's keys and values inside `gemm`, so
/// long sequences want tall blocks; short ones stay in cache with 128 rows. Measured
/// (`cargo bench --bench ops -- attention`): 1024 tokens 35.8 ms with 128 rows, 31.7 ms with
/// 256, 35.3 ms with 512; 256 tokens 4.6 ms with 128 rows, 5.0 ms with 256.
fn row_block(g: &AttnGeom) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks_per_head = (2 * threads).div_ceil(g.n * g.heads);
    let by_threads = g.l.div_ceil(tasks_per_head.max(1));
    let by_cache = if g.l >= 512 { 256 } else { 128 };
    by_threads.min(by_cache).max(1)
}

#[allow(clippy::too_many_arguments)]
/// Scores `s (rows × l) = scale · q[r0..r0+rows] k_hᵀ` of head `h` of sample `n`.
fn scores(
    q: &[f32],
    k: &[f32],
    g: &AttnGeom,
    n: usize,
    h: usize,
    r0: usize,
    rows: usize,
    s: &mut [f32],
) {
    let c = g.heads * g.d;
    let qn = &q[n * g.l * c..][..g.l * c];
    let kn = &k[n * g.l * c..][..g.l * c];
    // SAFETY: q rows r0.. of head h: (rows × d) with row stride c; k_hᵀ: (d × l), element
    // (i, j) = k[j·c + h·d + i]; s is rows × l.
    unsafe {
        gemm1_fp32(
            rows,
            g.l,
            g.d,
            s.as_mut_ptr(),
            g.l as isize,
            1,
            false,
            Mat::new(&qn[r0 * c + h * g.d..], c, 1),
            Mat::new(&kn[h * g.d..], 1, c),
            g.scale,
        )
    };
}

/// Forward attention.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], g: &AttnGeom) -> Vec<f32> {
    let c = g.heads * g.d;
    let mut out = scratch::zeroed(g.n * g.l * c);
    let rb = row_block(g);
    let blocks = g.l.div_ceil(rb);
    let op = SendPtr(out.as_mut_ptr());
    (0..g.n * g.heads * blocks)
        .into_par_iter()
        .for_each(|item| {
            let (nh, b) = (item / blocks, item % blocks);
            let (n, h) = (nh / g.heads, nh % g.heads);
            let r0 = b * rb;
            let rows = rb.min(g.l - r0);
            scratch::with2(rows * g.l, rows, |s, inv| {
                scores(q, k, g, n, h, r0, rows, s);
                softmax_rows_unnormalised(s, g.l, inv);
                let vn = &v[n * g.l * c..][..g.l * c];
                let dst = n * g.l * c + r0 * c + h * g.d;
                // SAFETY: this task owns rows r0..r0+rows, columns h·d..(h+1)·d of sample n.
                unsafe {
                    let o = op.get().add(dst);
                    gemm1_fp32(
                        rows,
                        g.d,
                        g.l,
                        o,
                        c as isize,
                        1,
                        false,
                        Mat::new(s, g.l, 1),
                        Mat::new(&vn[h * g.d..], c, 1),
                        1.0,
                    );
                    // normalise the (narrow) output rows rather than the score rows
                    for (r, &iv) in inv.iter().enumerate() {
                        std::slice::from_raw_parts_mut(o.add(r * c), g.d)
                            .iter_mut()
                            .for_each(|v| *v *= iv);
                    }
                }
            });
        });
    out
}

/// Backward: with `P = softmax(S)`, `dP = dO vᵀ`, `dv = Pᵀ dO`, `dS = P ∘ (dP − rowsum(P ∘ dP))`,
/// `dq = scale · dS k`, `dk = scale · dSᵀ q`, per sample and head.
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    g: &AttnGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = g.heads * g.d;
    let l = g.l;
    let mut dq = scratch::zeroed(q.len());
    let mut dk = scratch::zeroed(k.len());
    let mut dv = scratch::zeroed(v.len());
    let (pq, pk, pv) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    (0..g.n * g.heads).into_par_iter().for_each(|nh| {
        let (n, h) = (nh / g.heads, nh % g.heads);
        let base = n * l * c;
        let off = base + h * g.d;
        let mut p = scratch::zeroed(l * l);
        scores(q, k, g, n, h, 0, l, &mut p);
        softmax_rows(&mut p, l);
        let mut dp = vec![0.0f32; l * l];
        let head = |t: &[f32]| Mat::new(&t[off..], c, 1);
        let head_t = |t: &[f32]| Mat::new(&t[off..], 1, c);
        // SAFETY (all four products): head h of sample n is (l × d) with row stride c and is
        // written by this task only; p and dp are l × l row-major.
        unsafe {
            gemm1_fp32(
                l,
                l,
                g.d,
                dp.as_mut_ptr(),
                l as isize,
                1,
                false,
                head(dout),
                head_t(v),
                1.0,
            );
            gemm1_fp32(
                l,
                g.d,
                l,
                pv.get().add(off),
                c as isize,
                1,
                false,
                Mat::new(&p, 1, l),
                head(dout),
                1.0,
            );
        }
        for (pr, dr) in p.chunks(l).zip(dp.chunks_mut(l)) {
            let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
            dr.iter_mut()
                .zip(pr)
                .for_each(|(d, &pv)| *d = pv * (*d - dot));
        }
        unsafe {
            gemm1_fp32(
                l,
                g.d,
                l,
                pq.get().add(off),
                c as isize,
                1,
                false,
                Mat::new(&dp, l, 1),
                head(k),
                g.scale,
            );
            gemm1_fp32(
                l,
                g.d,
                l,
                pk.get().add(off),
                c as isize,
                1,
                false,
                Mat::new(&dp, 1, l),
                head(q),
                g.scale,
            );
        }
    });
    (dq, dk, dv)
}
