//! Ensemble forecast metrics (SPEC §10), for `dydiff eval`.
//!
//! Forecast `x (N, M, S, C, H, W)` against truth `y (N, S, C, H, W)`, both in data space. Each
//! module computes one family on one `(sample, lead)` slice as sums; [`evaluate`] adds the sums
//! up per lead time and overall, so every figure is an exact pixel (or event) average, not an
//! average of averages.

pub mod categorical;
pub mod crps;
pub mod fields;

use rayon::prelude::*;
use serde_json::{json, Map, Value};

/// Sizes of a forecast `(N, M, S, C, H, W)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub m: usize,
    pub s: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Windows of the pooled CRPS (those that fit the field are reported).
pub const POOL_WINDOWS: [usize; 4] = [2, 4, 8, 16];
/// Windows of CSI and FSS.
pub const EVENT_WINDOWS: [usize; 3] = [1, 3, 5];

/// Sums over the pixels of one lead time (or of all).
#[derive(Clone, Debug, Default)]
struct Sums {
    pixels: f64,
    crps_fair: f64,
    crps_standard: f64,
    /// `|mean_m x − y|`, `(mean_m x − y)²`, member variance (ddof 0).
    abs_err: f64,
    sq_err: f64,
    var: f64,
    /// Per window of [`POOL_WINDOWS`] that fits: (pooled pixels, avg-pooled CRPS, max-pooled CRPS).
    pooled: Vec<[f64; 3]>,
    /// Per (threshold, window): CSI (TP, FP, FN) and FSS (Σ(p−o)², Σ(p²+o²)).
    csi: Vec<[f64; 3]>,
    fss: Vec<[f64; 2]>,
    /// SSIM: sum over fields and number of fields.
    ssim: [f64; 2],
}

impl Sums {
    fn add(mut self, o: &Sums) -> Sums {
        self.pixels += o.pixels;
        self.crps_fair += o.crps_fair;
        self.crps_standard += o.crps_standard;
        self.abs_err += o.abs_err;
        self.sq_err += o.sq_err;
        self.var += o.var;
        resize_like(&mut self.pooled, &o.pooled);
        resize_like(&mut self.csi, &o.csi);
        resize_like(&mut self.fss, &o.fss);
        for (a, b) in self.pooled.iter_mut().zip(&o.pooled) {
            add_into(a, b);
        }
        for (a, b) in self.csi.iter_mut().zip(&o.csi) {
            add_into(a, b);
        }
        for (a, b) in self.fss.iter_mut().zip(&o.fss) {
            add_into(a, b);
        }
        add_into(&mut self.ssim, &o.ssim);
        self
    }
}

/// `a += b`, element-wise.
fn add_into(a: &mut [f64], b: &[f64]) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

fn resize_like<T: Default + Clone>(a: &mut Vec<T>, b: &[T]) {
    if a.len() < b.len() {
        a.resize(b.len(), T::default());
    }
}

/// Python's `%g`: six significant digits, trailing zeros dropped (`0.5`, `1e-05`, `250`).
pub fn fmt_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let strip = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    // Rounding to six digits can carry into the next power of ten (999999.5 → 1e+06).
    let sci = format!("{v:.5e}");
    let (mant, e) = sci.split_once('e').expect("scientific format");
    let e: i32 = e.parse().expect("exponent");
    if (-4..6).contains(&e) {
        let decimals = (5 - e).max(0) as usize;
        strip(format!("{v:.decimals$}"))
    } else {
        format!(
            "{}e{}{:02}",
            strip(mant.to_string()),
            if e < 0 { '-' } else { '+' },
            e.abs()
        )
    }
}

/// What `evaluate` needs besides the arrays.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Event thresholds `q` of CSI and FSS (data space).
    pub thresholds: Vec<f64>,
    /// `L` of PSNR and SSIM: the truth's range (max − min).
    pub data_range: f64,
}

/// Sums over one `(sample n, lead s)` slice.
fn slice_sums(x: &[f32], y: &[f32], d: &Dims, n: usize, s: usize, cfg: &EvalSettings) -> Sums {
    let hw = d.h * d.w;
    let field = d.c * hw;
    // members of this slice: x[n, m, s] for all m, each (C, H, W)
    let member = |m: usize| &x[((n * d.m + m) * d.s + s) * field..][..field];
    let truth = &y[(n * d.s + s) * field..][..field];
    let mut out = Sums {
        pixels: field as f64,
        ..Sums::default()
    };
    let mut vals = vec![0.0f32; d.m];
    let mut mean = vec![0.0f32; field];
    for p in 0..field {
        for (m, v) in vals.iter_mut().enumerate() {
            *v = member(m)[p];
        }
        let yv = f64::from(truth[p]);
        let (fair, standard) = crps::crps_both(&mut vals, yv);
        out.crps_fair += fair;
        out.crps_standard += standard;
        let mu = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / d.m as f64;
        out.abs_err += (mu - yv).abs();
        out.sq_err += (mu - yv).powi(2);
        out.var += vals
            .iter()
            .map(|&v| (f64::from(v) - mu).powi(2))
            .sum::<f64>()
            / d.m as f64;
        mean[p] = mu as f32;
    }
    for c in 0..d.c {
        let plane = |a: &[f32]| a[c * hw..(c + 1) * hw].to_vec();
        let members: Vec<Vec<f32>> = (0..d.m).map(|m| plane(member(m))).collect();
        let t = plane(truth);
        out.pooled.resize(POOL_WINDOWS.len(), [0.0; 3]);
        for (i, &w) in POOL_WINDOWS.iter().enumerate() {
            if let Some(r) = crps::pooled(&members, &t, d.h, d.w, w) {
                add_into(&mut out.pooled[i], &r);
            }
        }
        let events = categorical::events(&members, &t, d.h, d.w, &cfg.thresholds);
        if out.csi.is_empty() {
            out.csi = vec![[0.0; 3]; events.csi.len()];
            out.fss = vec![[0.0; 2]; events.fss.len()];
        }
        for (a, b) in out.csi.iter_mut().zip(&events.csi) {
            add_into(a, b);
        }
        for (a, b) in out.fss.iter_mut().zip(&events.fss) {
            add_into(a, b);
        }
        if let Some(v) = fields::ssim(&mean[c * hw..(c + 1) * hw], &t, d.h, d.w, cfg.data_range) {
            out.ssim[0] += v;
            out.ssim[1] += 1.0;
        }
    }
    out
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 && (a / b).is_finite() {
        json!(a / b)
    } else {
        Value::Null
    }
}

/// The metrics of one set of sums, with SPEC §10's keys.
fn report(t: &Sums, d: &Dims, cfg: &EvalSettings) -> Map<String, Value> {
    let mut r = Map::new();
    let fair = if d.m >= 2 {
        json!(t.crps_fair / t.pixels)
    } else {
        Value::Null
    };
    r.insert("crps".into(), fair);
    r.insert("crps_standard".into(), json!(t.crps_standard / t.pixels));
    for (i, &w) in POOL_WINDOWS.iter().enumerate() {
        let Some(p) = t.pooled.get(i) else { continue };
        if p[0] == 0.0 {
            continue;
        }
        let (avg, max) = if d.m >= 2 {
            (json!(p[1] / p[0]), json!(p[2] / p[0]))
        } else {
            (Value::Null, Value::Null)
        };
        r.insert(format!("crps_pool{w}_avg"), avg);
        r.insert(format!("crps_pool{w}_max"), max);
    }
    for (qi, &q) in cfg.thresholds.iter().enumerate() {
        for (wi, &w) in EVENT_WINDOWS.iter().enumerate() {
            let k = qi * EVENT_WINDOWS.len() + wi;
            let [tp, fp, fn_] = t.csi[k];
            r.insert(format!("csi_q{}_w{w}", fmt_g(q)), ratio(tp, tp + fp + fn_));
            let [num, den] = t.fss[k];
            let fss = if den > 0.0 {
                json!(1.0 - num / den)
            } else {
                Value::Null
            };
            r.insert(format!("fss_q{}_w{w}", fmt_g(q)), fss);
        }
    }
    let mse = t.sq_err / t.pixels;
    let (rmse, spread) = (mse.sqrt(), (t.var / t.pixels).sqrt());
    r.insert("rmse".into(), json!(rmse));
    r.insert("mae".into(), json!(t.abs_err / t.pixels));
    r.insert("spread".into(), json!(spread));
    r.insert("ssr".into(), ratio(spread, rmse));
    let psnr = 10.0 * (cfg.data_range * cfg.data_range / mse).log10();
    r.insert(
        "psnr".into(),
        if psnr.is_finite() {
            json!(psnr)
        } else {
            Value::Null
        },
    );
    r.insert("ssim".into(), ratio(t.ssim[0], t.ssim[1]));
    r
}

/// All metrics of SPEC §10: `{"overall": {...}, "per_lead": [{...}, ...]}`.
pub fn evaluate(x: &[f32], y: &[f32], d: &Dims, cfg: &EvalSettings) -> Value {
    let per: Vec<Sums> = (0..d.s)
        .into_par_iter()
        .map(|s| {
            (0..d.n)
                .into_par_iter()
                .map(|n| slice_sums(x, y, d, n, s, cfg))
                .reduce(Sums::default, |a, b| a.add(&b))
        })
        .collect();
    let total = per.iter().fold(Sums::default(), |a, b| a.add(b));
    let per_lead: Vec<Value> = per
        .iter()
        .enumerate()
        .map(|(s, t)| {
            let mut r = report(t, d, cfg);
            r.insert("lead".into(), json!(s + 1));
            Value::Object(r)
        })
        .collect();
    json!({"overall": Value::Object(report(&total, d, cfg)), "per_lead": per_lead})
}

#[cfg(test)]
mod tests {
    use super::fmt_g;

    #[test]
    fn percent_g_like_python() {
        for (v, want) in [
            (0.5, "0.5"),
            (1.0, "1"),
            (250.0, "250"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (-2.5, "-2.5"),
            (0.1234567, "0.123457"),
            (999999.5, "1e+06"),
        ] {
            assert_eq!(fmt_g(v), want, "{v}");
        }
    }
}
