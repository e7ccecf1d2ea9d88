//! Plain, obviously-correct implementations of the fast kernels, written straight from the
//! formulas with f64 accumulation. Tests compare every fast path against these; they are never
//! used for real work.

use crate::backend::{AttnGeom, ConvGeom, MatmulGeom, NormGeom};

/// Direct convolution, see [`super::conv`].
pub fn conv2d(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let (ho, wo) = (g.ho(), g.wo());
    let mut y = vec![0.0f32; g.n * g.co * ho * wo];
    for n in 0..g.n {
        for co in 0..g.co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..g.ci {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad[2] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    let xv = x
                                        [((n * g.ci + ci) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((co * g.ci + ci) * g.k + ky) * g.k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    y[((n * g.co + co) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// Batched matrix product, see [`MatmulGeom`].
pub fn matmul(a: &[f32], b: &[f32], g: &MatmulGeom) -> Vec<f32> {
    let mut out = vec![0.0f32; g.batch * g.m * g.n];
    for bi in 0..g.batch {
        let (ab, bb) = (&a[bi * g.m * g.k..], &b[bi * g.k * g.n..]);
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0.0f64;
                for l in 0..g.k {
                    let av = if g.a_trans {
                        ab[l * g.m + i]
                    } else {
                        ab[i * g.k + l]
                    };
                    let bv = if g.b_trans {
                        bb[j * g.k + l]
                    } else {
                        bb[l * g.n + j]
                    };
                    acc += av as f64 * bv as f64;
                }
                out[bi * g.m * g.n + i * g.n + j] = acc as f32;
            }
        }
    }
    out
}

/// Two-pass group normalisation (then SiLU if `g.silu`), see [`super::norm`].
pub fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], g: &NormGeom) -> Vec<f32> {
    let cg = g.c / g.groups;
    let len = cg * g.hw;
    let mut y = vec![0.0f32; x.len()];
    for (i, (yc, xc)) in y.chunks_mut(len).zip(x.chunks(len)).enumerate() {
        let mean = xc.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        let var = xc.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
        for (j, (yv, &xv)) in yc.iter_mut().zip(xc).enumerate() {
            let c = (i % g.groups) * cg + j / g.hw;
            let v =
                (xv as f64 - mean) / (var + g.eps as f64).sqrt() * gamma[c] as f64 + beta[c] as f64;
            *yv = if g.silu { v / (1.0 + (-v).exp()) } else { v } as f32;
        }
    }
    y
}

/// Attention with the whole score matrix, see [`super::attention`].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], g: &AttnGeom) -> Vec<f32> {
    let c = g.heads * g.d;
    let mut out = vec![0.0f32; q.len()];
    for n in 0..g.n {
        for h in 0..g.heads {
            let at = |t: &[f32], i: usize, j: usize| t[(n * g.l + i) * c + h * g.d + j] as f64;
            for i in 0..g.l {
                let s: Vec<f64> = (0..g.l)
                    .map(|j| {
                        (0..g.d).map(|e| at(q, i, e) * at(k, j, e)).sum::<f64>() * g.scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for dd in 0..g.d {
                    let o: f64 = (0..g.l).map(|j| e[j] / z * at(v, j, dd)).sum();
                    out[(n * g.l + i) * c + h * g.d + dd] = o as f32;
                }
            }
        }
    }
    out
}
