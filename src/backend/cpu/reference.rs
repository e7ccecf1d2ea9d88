//! Plain, obviously-correct implementations of the fast kernels, written straight from the
//! formulas with f64 accumulation. Tests compare every fast path against these; they are never
//! used for real work.

use crate::backend::{AttnGeom, ConvGeom, MatmulGeom, NormGeom, Prediction, ProcessGeom, SeqGeom};

/// Calls `f(xi, wi)` for every input element `x[xi]` and kernel weight `w[wi]` that output pixel
/// `(oy, ox)` of image `n`, channel `co` multiplies (taps falling in the zero padding skipped;
/// circular padding reads the other side of the image).
fn taps(g: &ConvGeom, n: usize, co: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    for ci in 0..g.ci {
        for ky in 0..g.k {
            for kx in 0..g.k {
                if let (Some(iy), Some(ix)) = (g.in_row(oy, ky), g.in_col(ox, kx)) {
                    let xi = ((n * g.ci + ci) * g.h + iy) * g.w + ix;
                    f(xi, ((co * g.ci + ci) * g.k + ky) * g.k + kx);
                }
            }
        }
    }
}

/// Direct convolution, see [`super::conv`].
pub fn conv2d(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let (ho, wo) = (g.ho(), g.wo());
    let mut y = vec![0.0f32; g.n * g.co * ho * wo];
    for n in 0..g.n {
        for co in 0..g.co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co] as f64);
                    taps(g, n, co, oy, ox, |xi, wi| {
                        acc += x[xi] as f64 * w[wi] as f64
                    });
                    y[((n * g.co + co) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// Gradients of [`conv2d`] for the output gradient `dy`: `(dx, dw, db)` with
/// `dx[n,c,iy,ix] = Σ dy[n,o,oy,ox]·w[o,c,ky,kx]` and `dw[o,c,ky,kx] = Σ dy[n,o,oy,ox]·x[n,c,iy,ix]`
/// over the output pixels whose window puts `(ky, kx)` on `(iy, ix)`, and `db[o] = Σ dy[n,o,·,·]`.
pub fn conv2d_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (ho, wo) = (g.ho(), g.wo());
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; g.co];
    for n in 0..g.n {
        for co in 0..g.co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[((n * g.co + co) * ho + oy) * wo + ox] as f64;
                    db[co] += d;
                    taps(g, n, co, oy, ox, |xi, wi| {
                        dx[xi] += d * w[wi] as f64;
                        dw[wi] += d * x[xi] as f64;
                    });
                }
            }
        }
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f32s(dx), f32s(dw), f32s(db))
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

/// `Dyn_γ` / `InvDyn_γ` (docs/process.md, “Dynamics”) on one sequence of frames (each a
/// vector), in f64.
pub fn dyn_frames(x: &[Vec<f64>], gamma: f64, inverse: bool) -> Vec<Vec<f64>> {
    let (a, b) = (gamma.sqrt(), (1.0 - gamma).sqrt());
    let mut y: Vec<Vec<f64>> = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let v = if i == 0 {
            x[0].clone()
        } else if inverse {
            (0..x[i].len())
                .map(|e| (x[i][e] - b * x[i - 1][e]) / a)
                .collect()
        } else {
            (0..x[i].len())
                .map(|e| a * x[i][e] + b * y[i - 1][e])
                .collect()
        };
        y.push(v);
    }
    y
}

/// Frame `f` of sequence `b` of a `(batch, frames, elems)` array, in f64.
fn frame(x: &[f32], frames: usize, elems: usize, b: usize, f: usize) -> Vec<f64> {
    x[(b * frames + f) * elems..][..elems]
        .iter()
        .map(|&v| f64::from(v))
        .collect()
}

/// The frames of sequence `b`.
fn frames_of(x: &[f32], frames: usize, elems: usize, b: usize) -> Vec<Vec<f64>> {
    (0..frames).map(|f| frame(x, frames, elems, b, f)).collect()
}

/// `Dyn`/`InvDyn` over every sequence, with `γ_b` per sequence.
pub fn dynamics(x: &[f32], g: &SeqGeom, gammas: &[f64], inverse: bool) -> Vec<f32> {
    (0..g.batch)
        .flat_map(|b| dyn_frames(&frames_of(x, g.frames, g.elems, b), gammas[b], inverse))
        .flatten()
        .map(|v| v as f32)
        .collect()
}

/// The forward process written from the formulas (docs/process.md, “Forward process” and
/// “Diffusing the history”): `ε̃ = Dyn(ε)` over the diffused frames, `D = Dyn(x_0)` over the
/// whole sequence, `x_t = √ᾱ·D + √(1−ᾱ)·ε̃` on the diffused frames; the input is the clean
/// history, then `x_t` (with `diffuse_history`, of every frame); the target is `ε̃`, or
/// `v = √ᾱ·ε̃ − √(1−ᾱ)·D` for a velocity `prediction`.
pub fn q_sample(
    x0: &[f32],
    eps: &[f32],
    g: &ProcessGeom,
    ab_gb: &[(f64, f64)],
    prediction: Prediction,
) -> (Vec<f32>, Vec<f32>) {
    let (mut input, mut target) = (Vec::new(), Vec::new());
    let first = g.frames() - g.diffused();
    for (b, &(ab, gb)) in ab_gb.iter().enumerate() {
        let x = frames_of(x0, g.frames(), g.elems, b);
        let et = dyn_frames(&frames_of(eps, g.diffused(), g.elems, b), gb, false);
        let d = dyn_frames(&x, gb, false);
        for f in x.iter().take(g.history) {
            input.extend(f.iter().map(|&v| v as f32));
        }
        for (i, et) in et.iter().enumerate() {
            input.extend(
                (0..g.elems)
                    .map(|e| (ab.sqrt() * d[first + i][e] + (1.0 - ab).sqrt() * et[e]) as f32),
            );
        }
        for (i, et) in et.iter().enumerate() {
            target.extend((0..g.elems).map(|e| match prediction {
                Prediction::Epsilon => et[e] as f32,
                Prediction::V => (ab.sqrt() * et[e] - (1.0 - ab).sqrt() * d[first + i][e]) as f32,
            }));
        }
    }
    (input, target)
}

/// Schedule values of one DDIM step from `t` to `p` (docs/process.md, “One step”).
#[derive(Clone, Copy, Debug)]
pub struct DdimValues {
    pub ab_t: f64,
    pub gb_t: f64,
    pub ab_p: f64,
    pub gb_p: f64,
    pub sigma: f64,
    pub prediction: Prediction,
}

/// One DDIM step of docs/process.md, “One step”, steps 2–5 (or of “Diffusing the history”),
/// written term by term from the formulas; a velocity prediction `v̂` (in `eps_hat`) gives
/// `ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂` first.
pub fn ddim_step(
    state: &[f32],
    eps_hat: &[f32],
    z: Option<&[f32]>,
    g: &ProcessGeom,
    v: &DdimValues,
) -> Vec<f32> {
    let (p1, dn) = (g.history, g.diffused());
    let mut next = Vec::new();
    for b in 0..g.batch {
        let seq = frames_of(state, g.state_frames(), g.elems, b);
        let (hist, xt) = seq.split_at(p1);
        let out = frames_of(eps_hat, dn, g.elems, b);
        let eh: Vec<Vec<f64>> = match v.prediction {
            Prediction::Epsilon => out,
            Prediction::V => (0..dn)
                .map(|i| {
                    (0..g.elems)
                        .map(|e| (1.0 - v.ab_t).sqrt() * xt[i][e] + v.ab_t.sqrt() * out[i][e])
                        .collect()
                })
                .collect(),
        };
        let zero = vec![0.0f32; dn * g.elems * g.batch];
        let zf = frames_of(z.unwrap_or(&zero), dn, g.elems, b);
        // 2. y = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t
        let y: Vec<Vec<f64>> = (0..dn)
            .map(|i| {
                (0..g.elems)
                    .map(|e| (xt[i][e] - (1.0 - v.ab_t).sqrt() * eh[i][e]) / v.ab_t.sqrt())
                    .collect()
            })
            .collect();
        // 3. x̂_0 = InvDyn over frames P … P+S of [Dyn(history)^P, y], keeping P+1 …; with the
        //    history diffused, InvDyn over all frames of y
        let x0 = if g.diffuse_history {
            dyn_frames(&y, v.gb_t, true)
        } else {
            let dh = dyn_frames(hist, v.gb_t, false);
            let mut run = vec![dh[p1 - 1].clone()];
            run.extend(y);
            dyn_frames(&run, v.gb_t, true)[1..].to_vec()
        };
        // 4. ε_w = InvDyn(ε̂)
        let ew = dyn_frames(&eh, v.gb_t, true);
        // 5. x_p = √ᾱ_p·Dyn_p([h, x̂_0])^fut (or Dyn_p(x̂_0)) + √(1−ᾱ_p−σ²)·Dyn_p(ε_w) + σ·Dyn_p(z)
        let dx = if g.diffuse_history {
            dyn_frames(&x0, v.gb_p, false)
        } else {
            let mut whole = hist.to_vec();
            whole.extend(x0);
            dyn_frames(&whole, v.gb_p, false)[p1..].to_vec()
        };
        let dw = dyn_frames(&ew, v.gb_p, false);
        let dz = dyn_frames(&zf, v.gb_p, false);
        let ce = (1.0 - v.ab_p - v.sigma * v.sigma).max(0.0).sqrt();
        next.extend(hist.iter().flatten().map(|&v| v as f32));
        for i in 0..dn {
            next.extend(
                (0..g.elems).map(|e| {
                    (v.ab_p.sqrt() * dx[i][e] + ce * dw[i][e] + v.sigma * dz[i][e]) as f32
                }),
            );
        }
    }
    next
}
