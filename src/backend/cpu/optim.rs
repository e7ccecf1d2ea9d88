//! The optimizer's element-wise update (AdamW with a weight EMA, see
//! [`crate::backend::AdamStep`]) in one pass over the five arrays, the squared norm used for
//! gradient clipping, and the losses. Reference: the formulas, evaluated in f64 in `tests/ops/cpu.rs`.

use super::elementwise::CHUNK;
use crate::backend::{AdamStep, LossKind};
use rayon::prelude::*;

/// One step, in place, of `p`, `m`, `v`, `e` with the gradient — the parts `g`, one per
/// parameter, in order — times the clipping factor `scale`, see [`AdamStep`].
pub fn adamw(
    p: &mut [f32],
    g: &[&[f32]],
    m: &mut [f32],
    v: &mut [f32],
    e: &mut [f32],
    h: &AdamStep,
    scale: f32,
) {
    // every part, in pieces of at most CHUNK values, with its range of the arrays as disjoint
    // slices; then one parallel pass over all pieces
    let mut work = Vec::with_capacity(g.len());
    let (mut rp, mut rm, mut rv, mut re) = (p, m, v, e);
    for piece in g.iter().flat_map(|part| part.chunks(CHUNK)) {
        let k = piece.len();
        let (a, b) = std::mem::take(&mut rp).split_at_mut(k);
        let (c, d) = std::mem::take(&mut rm).split_at_mut(k);
        let (x, y) = std::mem::take(&mut rv).split_at_mut(k);
        let (z, w) = std::mem::take(&mut re).split_at_mut(k);
        (rp, rm, rv, re) = (b, d, y, w);
        work.push((piece, a, c, x, z));
    }
    work.into_par_iter().for_each(|(g, p, m, v, e)| {
        for i in 0..g.len() {
            let gi = g[i] * scale;
            let mi = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
            let vi = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
            let step = (mi / h.bc1) / ((vi / h.bc2).sqrt() + h.eps) + h.weight_decay * p[i];
            let pi = p[i] - h.lr * step;
            p[i] = pi;
            m[i] = mi;
            v[i] = vi;
            e[i] = h.ema_decay * e[i] + (1.0 - h.ema_decay) * pi;
        }
    });
}

/// `Σ x²` in f64, by fixed chunks added in order (the same bits on any thread count).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
        .collect();
    partial.iter().sum()
}

/// `mean((a − b)²)` or `mean|a − b|`: the terms in f32, summed in f64 by fixed chunks, the mean
/// in f32.
pub fn loss(a: &[f32], b: &[f32], kind: LossKind) -> f32 {
    let partial: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let d = x - y;
                    f64::from(match kind {
                        LossKind::Mse => d * d,
                        LossKind::Mae => d.abs(),
                    })
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum::<f64>() as f32 / a.len().max(1) as f32
}

/// The loss's gradient with respect to `a`: `(a − b)·(2g/N)` or `sign(a − b)·(g/N)`.
pub fn loss_backward(a: &[f32], b: &[f32], g: f32, kind: LossKind) -> Vec<f32> {
    let n = a.len().max(1) as f32;
    a.par_iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x - y;
            match kind {
                LossKind::Mse => d * (2.0 * g / n),
                LossKind::Mae => {
                    let s = if d > 0.0 {
                        1.0
                    } else if d < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    s * (g / n)
                }
            }
        })
        .collect()
}
