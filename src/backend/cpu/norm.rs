//! Group normalisation over contiguous `(C/G)·HW` runs of an NCHW tensor.
//!
//! `y = (x − μ)/√(σ² + ε)·γ_c + β_c`, `μ`, `σ²` (biased) over the channels of a group and all
//! pixels of one sample, as `torch.nn.GroupNorm`, optionally followed by SiLU in the same pass.
//! Sums are accumulated in f64 in one pass.
//! Reference: [`super::reference::group_norm`]. Bench: `cargo bench --bench ops -- group_norm`.

use super::scratch;
use super::simd::{sigmoid, simd_fn};
use crate::backend::NormGeom;
use rayon::prelude::*;

simd_fn! {
    fn moments(x: &[f32]) -> (f64, f64) {
        // eight f32 lanes of f64 partial sums keep the loop vectorised and exact enough
        let mut s = [0.0f64; 8];
        let mut q = [0.0f64; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                let v = c[i] as f64;
                s[i] += v;
                q[i] += v * v;
            }
        }
        let (mut s1, mut q1): (f64, f64) = (s.iter().sum(), q.iter().sum());
        for &v in rest {
            s1 += v as f64;
            q1 += (v as f64) * (v as f64);
        }
        (s1, q1)
    }
}

simd_fn! {
    fn scale_shift(x: &[f32], y: &mut [f32], a: f32, b: f32) {
        for (y, x) in y.iter_mut().zip(x) {
            *y = x * a + b;
        }
    }
}

simd_fn! {
    /// `silu(x·a + b)`.
    fn scale_shift_silu(x: &[f32], y: &mut [f32], a: f32, b: f32) {
        for (y, x) in y.iter_mut().zip(x) {
            let v = x * a + b;
            *y = v * sigmoid(v);
        }
    }
}

/// Forward; returns `y` and the statistics `[μ for each (n, g)…, 1/σ for each (n, g)…]`.
pub fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom) -> (Vec<f32>, Vec<f32>) {
    let cg = g.c / g.groups;
    let len = cg * g.hw;
    let mut y = scratch::zeroed(x.len());
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .map(|(i, (yc, xc))| {
            let (s, q) = moments(xc);
            let mean = s / len as f64;
            let var = (q / len as f64 - mean * mean).max(0.0);
            let rstd = 1.0 / (var + g.eps as f64).sqrt();
            let c0 = (i % g.groups) * cg;
            for (j, (yp, xp)) in yc.chunks_mut(g.hw).zip(xc.chunks(g.hw)).enumerate() {
                let a = rstd * gamma[c0 + j] as f64;
                let b = beta[c0 + j] as f64 - mean * a;
                if g.silu {
                    scale_shift_silu(xp, yp, a as f32, b as f32);
                } else {
                    scale_shift(xp, yp, a as f32, b as f32);
                }
            }
            (mean as f32, rstd as f32)
        })
        .collect();
    let mut out = Vec::with_capacity(2 * stats.len());
    out.extend(stats.iter().map(|s| s.0));
    out.extend(stats.iter().map(|s| s.1));
    (y, out)
}

/// Backward: with `x̂ = (x − μ)/σ` and `d = dy·γ`, `dx = (d − mean(d) − x̂·mean(d·x̂))/σ` over
/// each group; `dγ_c = Σ dy·x̂`, `dβ_c = Σ dy` over samples and pixels.
pub fn group_norm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
    g: &NormGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let cg = g.c / g.groups;
    let len = cg * g.hw;
    let ng = g.n * g.groups;
    let mut dx = scratch::zeroed(x.len());
    let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(dy.par_chunks(len)))
        .enumerate()
        .map(|(i, (dxc, (xc, dyc)))| {
            let (mean, rstd) = (stats[i] as f64, stats[ng + i] as f64);
            let c0 = (i % g.groups) * cg;
            let (mut sd, mut sdx) = (0.0f64, 0.0f64);
            let mut dgamma = vec![0.0f64; cg];
            let mut dbeta = vec![0.0f64; cg];
            for j in 0..cg {
                let gm = gamma[c0 + j] as f64;
                let (xp, dp) = (&xc[j * g.hw..][..g.hw], &dyc[j * g.hw..][..g.hw]);
                let (mut a, mut b) = (0.0f64, 0.0f64);
                for (&xv, &dv) in xp.iter().zip(dp) {
                    let xh = (xv as f64 - mean) * rstd;
                    a += dv as f64 * xh;
                    b += dv as f64;
                }
                dgamma[j] = a;
                dbeta[j] = b;
                sd += b * gm;
                sdx += a * gm;
            }
            let (md, mdx) = (sd / len as f64, sdx / len as f64);
            for j in 0..cg {
                let gm = gamma[c0 + j] as f64;
                let off = j * g.hw;
                for p in 0..g.hw {
                    let xh = (xc[off + p] as f64 - mean) * rstd;
                    dxc[off + p] = ((dyc[off + p] as f64 * gm - md - xh * mdx) * rstd) as f32;
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let mut dgamma = vec![0.0f64; g.c];
    let mut dbeta = vec![0.0f64; g.c];
    for (i, (a, b)) in partial.iter().enumerate() {
        let c0 = (i % g.groups) * cg;
        for j in 0..cg {
            dgamma[c0 + j] += a[j];
            dbeta[c0 + j] += b[j];
        }
    }
    (
        dx,
        dgamma.iter().map(|&v| v as f32).collect(),
        dbeta.iter().map(|&v| v as f32).collect(),
    )
}
