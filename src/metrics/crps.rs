//! CRPS of an ensemble (docs/metrics.md, “CRPS” and “Pooled CRPS”), per pixel:
//!
//! - fair (the reference code's, = scoringrules' `estimator="fair"`):
//!   `mean_m|x_m − y| + β₀ − 2β₁`, `β₀ = mean_m x_m`, `β₁ = Σ_i i·x_(i) / (M(M−1))` over the
//!   ascending-sorted members `x_(0) ≤ … ≤ x_(M−1)`; undefined for `M = 1`;
//! - standard (properscoring's): `mean_m|x_m − y| − ½·mean_{m,m'}|x_m − x_m'|`, using
//!   `Σ_{m,m'}|x_m − x_m'| = 2·Σ_i (2i − M + 1)·x_(i)`;
//! - pooled: members and truth average- or max-pooled over `w × w` windows with stride
//!   `(w + 2) / 4` and no padding, then fair CRPS.

use super::categorical::pool2d;

/// `(fair, standard)` CRPS of the members `vals` (sorted in place) against `y`. The fair
/// score is NaN for one member.
///
/// Both scores depend only on differences of the values, so they are formed from the members
/// and the truth relative to the smallest member: the sums over members stay of the size of
/// the ensemble's spread, whatever offset the values carry.
pub fn crps_both(vals: &mut [f64], y: f64) -> (f64, f64) {
    vals.sort_unstable_by(|a, b| a.total_cmp(b));
    let m = vals.len() as f64;
    let lo = vals[0];
    let y = y - lo;
    let (mut abs, mut sum, mut isum) = (0.0, 0.0, 0.0);
    for (i, &v) in vals.iter().enumerate() {
        let v = v - lo;
        abs += (v - y).abs();
        sum += v;
        isum += i as f64 * v;
    }
    let mean_abs = abs / m;
    let fair = if vals.len() >= 2 {
        mean_abs + sum / m - 2.0 * isum / (m * (m - 1.0))
    } else {
        f64::NAN
    };
    let pairs = 2.0 * (2.0 * isum - (m - 1.0) * sum);
    (fair, mean_abs - 0.5 * pairs / (m * m))
}

/// Pooled fair CRPS of one `(h, w)` field: `[pooled pixels, Σ avg-pooled CRPS, Σ max-pooled
/// CRPS]`, or `None` if the window does not fit. The score is unchanged by adding one constant
/// to the members and the truth, so callers may pass them relative to any common reference
/// value; pooling then never rounds a large offset.
pub fn pooled(
    members: &[Vec<f64>],
    truth: &[f64],
    h: usize,
    w: usize,
    k: usize,
) -> Option<[f64; 3]> {
    if k > h || k > w {
        return None;
    }
    let stride = ((k + 2) / 4).max(1);
    let mut out = [0.0; 3];
    for (slot, max) in [(1, false), (2, true)] {
        let (t, ho, wo) = pool2d(truth, h, w, k, stride, 0, max);
        let pm: Vec<Vec<f64>> = members
            .iter()
            .map(|m| pool2d(m, h, w, k, stride, 0, max).0)
            .collect();
        let mut vals = vec![0.0; members.len()];
        for p in 0..ho * wo {
            for (v, m) in vals.iter_mut().zip(&pm) {
                *v = m[p];
            }
            out[slot] += crps_both(&mut vals, t[p]).0;
        }
        out[0] = (ho * wo) as f64;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct double sums over members.
    fn naive(vals: &[f64], y: f64) -> (f64, f64) {
        let m = vals.len() as f64;
        let e1 = vals.iter().map(|&v| (v - y).abs()).sum::<f64>() / m;
        let pairs: f64 = vals
            .iter()
            .flat_map(|&a| vals.iter().map(move |&b| (a - b).abs()))
            .sum();
        (
            e1 - 0.5 * pairs / (m * (m - 1.0)),
            e1 - 0.5 * pairs / (m * m),
        )
    }

    #[test]
    fn sorted_formulas_equal_the_double_sums() {
        let vals = [0.3, -1.2, 2.5, 0.3, 0.9, -0.4, 1.7];
        for y in [-2.0, 0.0, 0.31, 3.0] {
            let (f, s) = crps_both(&mut vals.clone(), y);
            let (nf, ns) = naive(&vals, y);
            assert!(
                (f - nf).abs() < 1e-12 && (s - ns).abs() < 1e-12,
                "{f} {nf} {s} {ns}"
            );
        }
        // One member: the standard score is the absolute error, the fair one undefined.
        let (f, s) = crps_both(&mut [1.5], 0.5);
        assert!(f.is_nan() && (s - 1.0).abs() < 1e-15);
    }

    #[test]
    fn a_large_offset_changes_nothing() {
        // Values on a 1/16 grid stay exact when 1e6 (a multiple of 1/16) is added.
        let vals = [0.25, -1.125, 2.5, 0.25, 0.9375, -0.4375, 1.6875];
        for y in [-2.0, 0.0, 0.3125, 3.0] {
            let want = crps_both(&mut vals.clone(), y);
            let mut shifted = vals.map(|v| v + 1e6);
            assert_eq!(crps_both(&mut shifted, y + 1e6), want);
        }
    }
}
