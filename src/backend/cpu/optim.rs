//! The optimizer's element-wise update (AdamW with a weight EMA, see
//! [`crate::backend::AdamStep`]) in one pass over the five arrays, the squared norm used for
//! gradient clipping, and the losses. Reference: the formulas, evaluated in f64 in `tests/ops.rs`.

use super::elementwise::CHUNK;
use crate::backend::{AdamStep, LossKind};
use rayon::prelude::*;

/// `(p', m', v', e')` with the gradient — the parts `g`, one per parameter, in order — times the
/// clipping factor `scale`, see [`AdamStep`].
pub fn adamw(
    p: &[f32],
    g: &[&[f32]],
    m: &[f32],
    v: &[f32],
    e: &[f32],
    h: &AdamStep,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = p.len();
    let (mut po, mut mo, mut vo, mut eo) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut at = 0;
    for part in g {
        let r = at..at + part.len();
        at = r.end;
        po[r.clone()]
            .par_chunks_mut(CHUNK)
            .zip(mo[r.clone()].par_chunks_mut(CHUNK))
            .zip(vo[r.clone()].par_chunks_mut(CHUNK))
            .zip(eo[r.clone()].par_chunks_mut(CHUNK))
            .zip(part.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, ((((po, mo), vo), eo), g))| {
                let i0 = r.start + c * CHUNK;
                let r = i0..i0 + po.len();
                let (p, m, v, e) = (&p[r.clone()], &m[r.clone()], &v[r.clone()], &e[r]);
                for i in 0..po.len() {
                    let gi = g[i] * scale;
                    let mi = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
                    let vi = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
                    let step = (mi / h.bc1) / ((vi / h.bc2).sqrt() + h.eps) + h.weight_decay * p[i];
                    let pi = p[i] - h.lr * step;
                    po[i] = pi;
                    mo[i] = mi;
                    vo[i] = vi;
                    eo[i] = h.ema_decay * e[i] + (1.0 - h.ema_decay) * pi;
                }
            });
    }
    (po, mo, vo, eo)
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
