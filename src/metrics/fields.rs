//! Field comparison of the ensemble mean with the truth (SPEC §10): SSIM (Wang et al., 2004)
//! with an 11×11 Gaussian window (σ = 1.5), per `(H, W)` field:
//! `SSIM = mean over valid window positions of
//! ((2μ_aμ_b + C₁)(2σ_ab + C₂)) / ((μ_a² + μ_b² + C₁)(σ_a² + σ_b² + C₂))`,
//! with Gaussian-weighted means, variances and covariance (population form), `C₁ = (0.01·L)²`,
//! `C₂ = (0.03·L)²` and `L` the truth's range. Windows lie wholly inside the field (no padding).

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

/// Valid separable filtering of an `(h, w)` field with the normalised Gaussian.
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

/// SSIM of `a` against `b`, or `None` for fields smaller than the window or a zero range.
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize, range: f64) -> Option<f64> {
    if h < WIN || w < WIN || range <= 0.0 || !range.is_finite() {
        return None;
    }
    let g = gaussian();
    let af: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
    let bf: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
    let prod = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p * q).collect() };
    let (ma, mb) = (filter(&af, h, w, &g), filter(&bf, h, w, &g));
    let (aa, bb, ab) = (
        filter(&prod(&af, &af), h, w, &g),
        filter(&prod(&bf, &bf), h, w, &g),
        filter(&prod(&af, &bf), h, w, &g),
    );
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let n = ma.len();
    let total: f64 = (0..n)
        .map(|p| {
            let (va, vb, cov) = (
                aa[p] - ma[p] * ma[p],
                bb[p] - mb[p] * mb[p],
                ab[p] - ma[p] * mb[p],
            );
            ((2.0 * ma[p] * mb[p] + c1) * (2.0 * cov + c2))
                / ((ma[p] * ma[p] + mb[p] * mb[p] + c1) * (va + vb + c2))
        })
        .sum();
    Some(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_of_a_field_with_itself_is_one_and_drops_with_noise() {
        let (h, w) = (16, 20);
        let a: Vec<f32> = (0..h * w)
            .map(|p| ((p % w) as f32 * 0.3).sin() + (p / w) as f32 * 0.1)
            .collect();
        assert!((ssim(&a, &a, h, w, 3.0).unwrap() - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let s = ssim(&a, &b, h, w, 3.0).unwrap();
        assert!(s < 0.9 && s > 0.0, "{s}");
        assert!(ssim(&a[..100], &a[..100], 10, 10, 1.0).is_none());
    }
}
