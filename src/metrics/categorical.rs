//! Event scores (SPEC §10) at thresholds `q` and windows `w ∈ {1, 3, 5}`, on fields binarised
//! as `x ≥ q`:
//!
//! - CSI: max-pooled with kernel `w`, stride `w / 2`, padding `w / 2` (`w = 1`: no pooling),
//!   `CSI = ΣTP / Σ(TP + FP + FN)` over members and pixels;
//! - FSS: fractions by average pooling (kernel `w`, stride `(w + 2) / 4` (at least 1), zero
//!   padding `w / 2` counted in the window), `FSS = 1 − Σ(p − o)² / Σ(p² + o²)` over members
//!   and pixels.

use super::EVENT_WINDOWS;

/// Pools an `(h, w)` field with a `k × k` window: the maximum over the window's pixels inside
/// the field, or their sum divided by `k²` (padding counts as zeros). Returns the field and its
/// size.
pub fn pool2d(
    a: &[f32],
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    max: bool,
) -> (Vec<f32>, usize, usize) {
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let mut out = Vec::with_capacity(ho * wo);
    for i in 0..ho {
        for j in 0..wo {
            let (mut mx, mut sum) = (f32::NEG_INFINITY, 0.0f64);
            for di in 0..k {
                for dj in 0..k {
                    let (y, x) = (
                        (i * stride + di) as isize - pad as isize,
                        (j * stride + dj) as isize - pad as isize,
                    );
                    if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                        let v = a[y as usize * w + x as usize];
                        mx = mx.max(v);
                        sum += f64::from(v);
                    }
                }
            }
            out.push(if max {
                mx
            } else {
                (sum / (k * k) as f64) as f32
            });
        }
    }
    (out, ho, wo)
}

/// Sums for every (threshold, window), indexed `q · 3 + window`.
pub struct Events {
    /// (TP, FP, FN).
    pub csi: Vec<[f64; 3]>,
    /// (Σ(p − o)², Σ(p² + o²)).
    pub fss: Vec<[f64; 2]>,
}

/// The event sums of one `(h, w)` field: every member against the truth.
pub fn events(
    members: &[Vec<f32>],
    truth: &[f32],
    h: usize,
    w: usize,
    thresholds: &[f64],
) -> Events {
    let mut ev = Events {
        csi: Vec::new(),
        fss: Vec::new(),
    };
    let binary = |a: &[f32], q: f64| -> Vec<f32> {
        a.iter()
            .map(|&v| if f64::from(v) >= q { 1.0 } else { 0.0 })
            .collect()
    };
    for &q in thresholds {
        let o = binary(truth, q);
        let bm: Vec<Vec<f32>> = members.iter().map(|m| binary(m, q)).collect();
        for &k in &EVENT_WINDOWS {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            let csi_pool = |a: &[f32]| {
                if k == 1 {
                    a.to_vec()
                } else {
                    pool2d(a, h, w, k, k / 2, k / 2, true).0
                }
            };
            let to = csi_pool(&o);
            for m in &bm {
                for (&f, &t) in csi_pool(m).iter().zip(&to) {
                    let (f, t) = (f64::from(f), f64::from(t));
                    tp += f * t;
                    fp += f * (1.0 - t);
                    fn_ += (1.0 - f) * t;
                }
            }
            ev.csi.push([tp, fp, fn_]);
            let stride = ((k + 2) / 4).max(1);
            let oo = pool2d(&o, h, w, k, stride, k / 2, false).0;
            let (mut num, mut den) = (0.0, 0.0);
            for m in &bm {
                for (&p, &t) in pool2d(m, h, w, k, stride, k / 2, false).0.iter().zip(&oo) {
                    let (p, t) = (f64::from(p), f64::from(t));
                    num += (p - t) * (p - t);
                    den += p * p + t * t;
                }
            }
            ev.fss.push([num, den]);
        }
    }
    ev
}
