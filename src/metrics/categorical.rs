//! Event scores (docs/metrics.md, “CSI” and “FSS”) at thresholds `q` and windows `w ∈ {1, 3, 5}`,
//! on fields binarised as `x ≥ q`:
//!
//! - CSI: max-pooled with kernel `w`, stride `w / 2`, padding `w / 2` (`w = 1`: no pooling),
//!   `CSI = ΣTP / Σ(TP + FP + FN)` over members and pixels;
//! - FSS: fractions by average pooling (kernel `w`, stride `(w + 2) / 4` (at least 1), zero
//!   padding `w / 2` counted in the window), `FSS = 1 − Σ(p − o)² / Σ(p² + o²)` over members
//!   and pixels.

/// Pools an `(h, w)` field with a `k × k` window at `stride`, with `pad` pixels of padding on
/// each side: the maximum over the window's pixels inside the field, or their sum divided by
/// `k²` (padding counts as zeros). Returns the field and its size. Separable: rows, then
/// columns, each in `f64`.
pub fn pool2d(
    a: &[f64],
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    max: bool,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let init = if max { f64::NEG_INFINITY } else { 0.0 };
    // Rows: tap `t` of output `j` reads column `j·stride + t − pad`, when inside `0..w`.
    let mut rows = vec![init; h * wo];
    for (y, row) in rows.chunks_exact_mut(wo).enumerate() {
        let line = &a[y * w..(y + 1) * w];
        for t in 0..k {
            let first = pad.saturating_sub(t).div_ceil(stride);
            let end = (w + pad)
                .checked_sub(t + 1)
                .map_or(0, |last| last / stride + 1)
                .min(wo);
            if first < end {
                let taps = line[first * stride + t - pad..].iter().step_by(stride);
                accumulate(&mut row[first..end], taps, max);
            }
        }
    }
    // Columns: output row `i` combines the rows of its window inside `0..h` (never empty:
    // `pad < k`).
    let mut out = vec![init; ho * wo];
    for (i, o) in out.chunks_exact_mut(wo).enumerate() {
        for y in (i * stride).saturating_sub(pad)..(i * stride + k - pad).min(h) {
            accumulate(o, rows[y * wo..(y + 1) * wo].iter(), max);
        }
        if !max {
            let count = (k * k) as f64;
            o.iter_mut().for_each(|o| *o /= count);
        }
    }
    (out, ho, wo)
}

/// `acc = max(acc, v)` or `acc += v`, element-wise.
fn accumulate<'a>(acc: &mut [f64], vals: impl Iterator<Item = &'a f64>, max: bool) {
    if max {
        acc.iter_mut()
            .zip(vals)
            .for_each(|(o, &v)| *o = if v > *o { v } else { *o });
    } else {
        acc.iter_mut().zip(vals).for_each(|(o, &v)| *o += v);
    }
}

/// Sums for every (threshold, window), indexed `q · windows + window`.
pub struct Events {
    /// (TP, FP, FN).
    pub csi: Vec<[f64; 3]>,
    /// (Σ(p − o)², Σ(p² + o²)).
    pub fss: Vec<[f64; 2]>,
}

/// The event sums of one `(h, w)` field at each threshold and window (the default report's are
/// [`super::EVENT_WINDOWS`]): every member against the truth. The fields are binarised from the
/// values themselves (`x ≥ q` compared exactly in `f64`).
pub fn events(
    members: &[&[f32]],
    truth: &[f32],
    (h, w): (usize, usize),
    thresholds: &[f64],
    windows: &[usize],
) -> Events {
    let mut ev = Events {
        csi: Vec::new(),
        fss: Vec::new(),
    };
    let binary = |a: &[f32], q: f64| -> Vec<f64> {
        a.iter()
            .map(|&v| if f64::from(v) >= q { 1.0 } else { 0.0 })
            .collect()
    };
    for &q in thresholds {
        let o = binary(truth, q);
        let bm: Vec<Vec<f64>> = members.iter().map(|m| binary(m, q)).collect();
        for &k in windows {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            let csi_pool = |a: &[f64]| {
                if k == 1 {
                    a.to_vec()
                } else {
                    pool2d(a, h, w, k, k / 2, k / 2, true).0
                }
            };
            let to = csi_pool(&o);
            for m in &bm {
                for (&f, &t) in csi_pool(m).iter().zip(&to) {
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
                    num += (p - t) * (p - t);
                    den += p * p + t * t;
                }
            }
            ev.fss.push([num, den]);
        }
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::pool2d;

    #[test]
    fn separable_pooling_equals_the_window_loops() {
        let (h, w) = (7, 9);
        let a: Vec<f64> = (0..h * w).map(|i| ((i * 37 % 11) as f64) - 4.5).collect();
        for (k, stride, pad) in [
            (1, 1, 0),
            (2, 1, 0),
            (3, 1, 1),
            (4, 1, 0),
            (5, 2, 2),
            (5, 1, 2),
            (7, 3, 0),
            (6, 4, 3),
        ] {
            for max in [false, true] {
                let (got, ho, wo) = pool2d(&a, h, w, k, stride, pad, max);
                assert_eq!(got.len(), ho * wo);
                for i in 0..ho {
                    for j in 0..wo {
                        let inside: Vec<f64> = (0..k * k)
                            .filter_map(|t| {
                                let y = (i * stride + t / k) as isize - pad as isize;
                                let x = (j * stride + t % k) as isize - pad as isize;
                                let ok =
                                    (0..h as isize).contains(&y) && (0..w as isize).contains(&x);
                                ok.then(|| a[y as usize * w + x as usize])
                            })
                            .collect();
                        let want = if max {
                            inside.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                        } else {
                            inside.iter().sum::<f64>() / (k * k) as f64
                        };
                        assert_eq!(
                            got[i * wo + j],
                            want,
                            "k {k} stride {stride} pad {pad} max {max}"
                        );
                    }
                }
            }
        }
    }
}
