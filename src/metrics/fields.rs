//! Field comparison of the ensemble mean with the truth (docs/metrics.md, “SSIM”): SSIM (Wang et
//! al., 2004) with an 11×11 Gaussian window (σ = 1.5), per `(H, W)` field:
//! `SSIM = mean over valid window positions of
//! ((2μ_aμ_b + C₁)(2σ_ab + C₂)) / ((μ_a² + μ_b² + C₁)(σ_a² + σ_b² + C₂))`,
//! with Gaussian-weighted means, variances and covariance (population form), `C₁ = (0.01·L)²`,
//! `C₂ = (0.03·L)²` and `L` the truth's range. Windows lie wholly inside the field (no padding).
//!
//! The variances and the covariance are weighted sums of squared deviations from the local
//! means (two passes in `f64`), never `E[a²] − E[a]²`, and the luminance term is evaluated as
//! `1 − (μ_a − μ_b)² / (μ_a² + μ_b² + C₁)`: a field of spread 0.5 on an offset of 1e6 keeps
//! its full precision. The score is not offset-invariant (the luminance term depends on the
//! means themselves).

const WIN: usize = 11;
const SIGMA: f64 = 1.5;

fn gaussian() -> [f64; WIN] {
    let mut g = [0.0; WIN];
    let c = (WIN / 2) as f64;
    for (i, v) in g.iter_mut().enumerate() {
        *v = (-((i as f64 - c).powi(2)) / (2.0 * SIGMA * SIGMA)).exp();
    }
    let s: f64 = g.iter().sum();
    g.map(|v| v / s)
}

/// Valid separable filtering of an `(h, w)` field with the normalised Gaussian: the local
/// means.
fn filter(a: &[f64], h: usize, w: usize, g: &[f64; WIN]) -> Vec<f64> {
    let (ho, wo) = (h - WIN + 1, w - WIN + 1);
    let mut rows = vec![0.0; h * wo];
    for i in 0..h {
        for j in 0..wo {
            rows[i * wo + j] = (0..WIN).map(|k| g[k] * a[i * w + j + k]).sum();
        }
    }
    let mut out = vec![0.0; ho * wo];
    for i in 0..ho {
        for j in 0..wo {
            out[i * wo + j] = (0..WIN).map(|k| g[k] * rows[(i + k) * wo + j]).sum();
        }
    }
    out
}

/// SSIM of the field `base + a` against `base + b`, or `None` for fields smaller than the
/// window or a zero range. `a` and `b` are given relative to a common reference value `base`
/// (any value; zero for absolute fields), so that the local statistics are formed from numbers
/// of the size of the fields' variation; only the luminance term's denominator uses `base`.
pub fn ssim(a: &[f64], b: &[f64], base: f64, h: usize, w: usize, range: f64) -> Option<f64> {
    if h < WIN || w < WIN || range <= 0.0 || !range.is_finite() {
        return None;
    }
    let g = gaussian();
    let (ho, wo) = (h - WIN + 1, w - WIN + 1);
    let (ma, mb) = (filter(a, h, w, &g), filter(b, h, w, &g));
    // Second pass: Σ g_k g_l (a − μ_a)², (b − μ_b)², (a − μ_a)(b − μ_b) over each window.
    let (mut va, mut vb, mut cov) = (vec![0.0; ho * wo], vec![0.0; ho * wo], vec![0.0; ho * wo]);
    for i in 0..ho {
        let at = i * wo..(i + 1) * wo;
        let (mra, mrb) = (&ma[at.clone()], &mb[at.clone()]);
        let (va, vb, cov) = (&mut va[at.clone()], &mut vb[at.clone()], &mut cov[at]);
        for k in 0..WIN {
            for l in 0..WIN {
                let wt = g[k] * g[l];
                let (ra, rb) = (&a[(i + k) * w + l..][..wo], &b[(i + k) * w + l..][..wo]);
                for j in 0..wo {
                    let (da, db) = (ra[j] - mra[j], rb[j] - mrb[j]);
                    va[j] += wt * da * da;
                    vb[j] += wt * db * db;
                    cov[j] += wt * da * db;
                }
            }
        }
    }
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let total: f64 = (0..ho * wo)
        .map(|p| {
            let (ua, ub) = (base + ma[p], base + mb[p]);
            let luminance = 1.0 - (ma[p] - mb[p]).powi(2) / (ua * ua + ub * ub + c1);
            luminance * (2.0 * cov[p] + c2) / (va[p] + vb[p] + c2)
        })
        .sum();
    Some(total / (ho * wo) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_of_a_field_with_itself_is_one_and_drops_with_noise() {
        let (h, w) = (16, 20);
        let a: Vec<f64> = (0..h * w)
            .map(|p| ((p % w) as f64 * 0.3).sin() + (p / w) as f64 * 0.1)
            .collect();
        assert!((ssim(&a, &a, 0.0, h, w, 3.0).unwrap() - 1.0).abs() < 1e-12);
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let s = ssim(&a, &b, 0.0, h, w, 3.0).unwrap();
        assert!(s < 0.9 && s > 0.0, "{s}");
        assert!(ssim(&a[..100], &a[..100], 0.0, 10, 10, 1.0).is_none());
        // The reference value only enters the luminance term: a common shift of both fields
        // (given relative to it) moves the local means, not the variances.
        let shifted = ssim(&a, &b, 5e4, h, w, 3.0).unwrap();
        let a_abs: Vec<f64> = a.iter().map(|v| v + 5e4).collect();
        let b_abs: Vec<f64> = b.iter().map(|v| v + 5e4).collect();
        let absolute = ssim(&a_abs, &b_abs, 0.0, h, w, 3.0).unwrap();
        assert!((shifted - absolute).abs() < 1e-9, "{shifted} {absolute}");
        assert!(shifted > s, "{shifted} {s}");
    }
}
