//! Ensemble forecast metrics (docs/metrics.md), for `dydiff eval`.
//!
//! Forecast `x (N, M, S, C, H, W)` against truth `y (N, S, C, H, W)`, both in data space. Each
//! module computes one family on one `(sample, lead)` slice as sums; [`evaluate`] adds the sums
//! up per lead time and overall, so every figure is an exact pixel (or event) average, not an
//! average of averages.
//!
//! The scores keep their precision on data with large offsets (a geopotential of 5e4 with a
//! spread of 0.5): values are taken relative to a reference value of their field before
//! anything is summed or pooled, every sum is in `f64`, variances are formed about their means,
//! and the thresholds of events compare with the values themselves. Adding one constant to
//! forecast and truth (and to the thresholds) leaves every score but SSIM unchanged; SSIM's
//! luminance term depends on the means themselves.

pub mod categorical;
pub mod crps;
pub mod fields;
pub mod turbulence;

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

/// Which evaluation protocol `dydiff eval` follows (docs/metrics.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// dydiff's: every pixel, data units, exact pixel averages (this module).
    Dydiff,
    /// Dynamical Diffusion's reference implementation for turbulence ([`turbulence`]).
    ReferenceTurbulence,
}

impl Protocol {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Dydiff => "dydiff",
            Protocol::ReferenceTurbulence => "reference-turbulence",
        }
    }
}

value_enum_by_name!(Protocol, [Protocol::Dydiff, Protocol::ReferenceTurbulence]);

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

/// Python's `%.{digits}g`: `digits` significant digits, trailing zeros dropped (with six:
/// `0.5`, `1e-05`, `250`).
pub fn fmt_g(v: f64, digits: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = digits.max(1);
    let strip = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    // Rounding can carry into the next power of ten (999999.5 → 1e+06 with six digits).
    let sci = format!("{v:.prec$e}", prec = digits - 1);
    let (mant, e) = sci.split_once('e').expect("scientific format");
    let e: i32 = e.parse().expect("exponent");
    if (-4..digits as i32).contains(&e) {
        let decimals = (digits as i32 - 1 - e).max(0) as usize;
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

/// The thresholds as they appear in the report's keys (`csi_q{label}_w{w}`): `%g` with six
/// significant digits, or with the fewest more (up to 17, which tell any two `f64`s apart)
/// that give distinct thresholds distinct labels — `1000000.25` and `1000000.5` are
/// `1000000.2` and `1000000.5`, not both `1e+06`.
pub fn threshold_labels(thresholds: &[f64]) -> Vec<String> {
    let labels =
        |digits: usize| -> Vec<String> { thresholds.iter().map(|&q| fmt_g(q, digits)).collect() };
    let distinct = |l: &[String]| {
        (0..l.len()).all(|i| (0..i).all(|j| l[i] != l[j] || thresholds[i] == thresholds[j]))
    };
    (6..17)
        .map(labels)
        .find(|l| distinct(l))
        .unwrap_or_else(|| labels(17))
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
///
/// Every score except the events (values compared with absolute thresholds) and SSIM's
/// luminance term depends only on differences of values, so each `(H, W)` plane is taken
/// relative to one of its truth values `r`: the differences of `f32` values are exact in `f64`,
/// and means, variances and pooled averages are formed from numbers of the size of the field's
/// variation, whatever offset the data carry. Events are binarised from the values themselves;
/// SSIM gets `r` back for its luminance term.
fn slice_sums(x: &[f32], y: &[f32], d: &Dims, n: usize, s: usize, cfg: &EvalSettings) -> Sums {
    let hw = d.h * d.w;
    let field = d.c * hw;
    // members of this slice: x[n, m, s] for all m, each (C, H, W)
    let member = |m: usize| &x[((n * d.m + m) * d.s + s) * field..][..field];
    let truth = &y[(n * d.s + s) * field..][..field];
    let mut out = Sums {
        pixels: field as f64,
        pooled: vec![[0.0; 3]; POOL_WINDOWS.len()],
        ..Sums::default()
    };
    let mut vals = vec![0.0; d.m];
    let mut mean = vec![0.0; hw];
    for c in 0..d.c {
        let plane = c * hw..(c + 1) * hw;
        let r = f64::from(truth[c * hw]);
        let relative = |a: &[f32]| -> Vec<f64> { a.iter().map(|&v| f64::from(v) - r).collect() };
        let members: Vec<Vec<f64>> = (0..d.m)
            .map(|m| relative(&member(m)[plane.clone()]))
            .collect();
        let t = relative(&truth[plane.clone()]);
        for (p, (&tv, mu)) in t.iter().zip(mean.iter_mut()).enumerate() {
            for (v, m) in vals.iter_mut().zip(&members) {
                *v = m[p];
            }
            let (fair, standard) = crps::crps_both(&mut vals, tv);
            out.crps_fair += fair;
            out.crps_standard += standard;
            *mu = vals.iter().sum::<f64>() / d.m as f64;
            out.abs_err += (*mu - tv).abs();
            out.sq_err += (*mu - tv).powi(2);
            out.var += vals.iter().map(|&v| (v - *mu).powi(2)).sum::<f64>() / d.m as f64;
        }
        for (i, &w) in POOL_WINDOWS.iter().enumerate() {
            if let Some(sums) = crps::pooled(&members, &t, d.h, d.w, w) {
                add_into(&mut out.pooled[i], &sums);
            }
        }
        let raw: Vec<&[f32]> = (0..d.m).map(|m| &member(m)[plane.clone()]).collect();
        let events = categorical::events(
            &raw,
            &truth[plane],
            (d.h, d.w),
            &cfg.thresholds,
            &EVENT_WINDOWS,
        );
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
        if let Some(v) = fields::ssim(&mean, &t, r, d.h, d.w, cfg.data_range) {
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

/// The metrics of one set of sums, with the keys of docs/metrics.md.
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
    for (qi, label) in threshold_labels(&cfg.thresholds).iter().enumerate() {
        for (wi, &w) in EVENT_WINDOWS.iter().enumerate() {
            let k = qi * EVENT_WINDOWS.len() + wi;
            let [tp, fp, fn_] = t.csi[k];
            r.insert(format!("csi_q{label}_w{w}"), ratio(tp, tp + fp + fn_));
            let [num, den] = t.fss[k];
            let fss = if den > 0.0 {
                json!(1.0 - num / den)
            } else {
                Value::Null
            };
            r.insert(format!("fss_q{label}_w{w}"), fss);
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

/// All metrics of docs/metrics.md: `{"overall": {...}, "per_lead": [{...}, ...]}`. The slices are
/// scored in parallel and their sums added in a fixed order, so the report does not depend on
/// the thread count.
pub fn evaluate(x: &[f32], y: &[f32], d: &Dims, cfg: &EvalSettings) -> Value {
    SampleScores::report(&score(x, y, d, cfg))
}

/// Scores that can be formed from any multiset of a forecast's samples: what the per-sample
/// report and the paired bootstrap ([`compare`]) need, whatever the protocol.
pub trait SampleScores: Sync {
    /// The number of samples `N`.
    fn samples(&self) -> usize;
    /// The overall scores of the samples `idx` (a repeated index counts repeatedly), with the
    /// keys of the report's `"overall"`.
    fn overall_of(&self, idx: &[usize]) -> Map<String, Value>;
    /// The full report: `{"overall": {...}, "per_lead": [{...}, ...]}` and what the protocol adds.
    fn report(&self) -> Value;
    /// Each sample's overall scores, `[{"sample": n, ...}, ...]`.
    fn per_sample(&self) -> Vec<Value> {
        (0..self.samples())
            .map(|n| {
                let mut r = self.overall_of(&[n]);
                r.insert("sample".into(), json!(n));
                Value::Object(r)
            })
            .collect()
    }
}

/// The sums of every `(sample, lead)` slice of one forecast (docs/metrics.md's protocol).
pub struct Scores {
    /// Slice `(n, s)` at `s·N + n`.
    slices: Vec<Sums>,
    /// Sample `n`'s slices added in lead order.
    per_sample: Vec<Sums>,
    d: Dims,
    cfg: EvalSettings,
}

/// Scores every slice of the forecast `x (N, M, S, C, H, W)` against the truth `y (N, S, C, H, W)`.
pub fn score(x: &[f32], y: &[f32], d: &Dims, cfg: &EvalSettings) -> Scores {
    let slices: Vec<Sums> = (0..d.s * d.n)
        .into_par_iter()
        .map(|i| slice_sums(x, y, d, i % d.n, i / d.n, cfg))
        .collect();
    let per_sample = (0..d.n)
        .map(|n| (0..d.s).fold(Sums::default(), |a, s| a.add(&slices[s * d.n + n])))
        .collect();
    Scores {
        slices,
        per_sample,
        d: *d,
        cfg: cfg.clone(),
    }
}

impl SampleScores for Scores {
    fn samples(&self) -> usize {
        self.d.n
    }

    fn overall_of(&self, idx: &[usize]) -> Map<String, Value> {
        let t = idx
            .iter()
            .fold(Sums::default(), |t, &i| t.add(&self.per_sample[i]));
        report(&t, &self.d, &self.cfg)
    }

    fn report(&self) -> Value {
        let (d, cfg) = (&self.d, &self.cfg);
        let per: Vec<Sums> = (0..d.s)
            .map(|s| {
                self.slices[s * d.n..(s + 1) * d.n]
                    .iter()
                    .fold(Sums::default(), |a, b| a.add(b))
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
}

/// The paired bootstrap of forecast `a` against forecast `b` of the same truth (docs/metrics.md,
/// "Comparing two forecasts"): for every overall score `k` either defines, both values and the
/// change `(a_k − b_k) / |b_k|` (negative: `a` lower, whatever the scores' sign; `null` where
/// undefined), with its 95% percentile interval over `resamples` resamples of the `N` samples with
/// replacement, the same samples for both forecasts (indices from a SplitMix64 stream seeded with
/// `seed`). A resample that leaves the change undefined (no events, no unmasked pixel) is left
/// out of that score's interval; `"resamples"` counts those used.
pub fn compare(a: &dyn SampleScores, b: &dyn SampleScores, resamples: usize, seed: u64) -> Value {
    let n = a.samples();
    debug_assert_eq!(n, b.samples());
    let all: Vec<usize> = (0..n).collect();
    let (ra, rb) = (a.overall_of(&all), b.overall_of(&all));
    let change = |x: &Value, y: &Value| match (x.as_f64(), y.as_f64()) {
        (Some(x), Some(y)) if y != 0.0 && ((x - y) / y.abs()).is_finite() => {
            Some((x - y) / y.abs())
        }
        _ => None,
    };
    let mut keys: Vec<&String> = ra.keys().chain(rb.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rng = crate::nn::InitRng::new(seed);
    let draws: Vec<Vec<usize>> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| ((rng.uniform() * n as f64) as usize).min(n - 1))
                .collect()
        })
        .collect();
    let get = |r: &Map<String, Value>, k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let defined: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| change(&get(&ra, k), &get(&rb, k)).is_some())
        .collect();
    let changes: Vec<Vec<Option<f64>>> = draws
        .par_iter()
        .map(|idx| {
            let (ba, bb) = (a.overall_of(idx), b.overall_of(idx));
            defined
                .iter()
                .map(|k| change(&get(&ba, k), &get(&bb, k)))
                .collect()
        })
        .collect();
    let mut out = Map::new();
    for k in keys {
        let at = defined.iter().position(|d| *d == k);
        let mut d: Vec<f64> = at.map_or(Vec::new(), |i| {
            changes.iter().filter_map(|c| c[i]).collect()
        });
        d.sort_unstable_by(f64::total_cmp);
        let ci = if d.is_empty() {
            Value::Null
        } else {
            json!([percentile(&d, 0.025), percentile(&d, 0.975)])
        };
        let (this, other) = (get(&ra, k), get(&rb, k));
        out.insert(
            k.clone(),
            json!({
                "change": change(&this, &other),
                "this": this,
                "other": other,
                "ci95": ci,
                "resamples": d.len(),
            }),
        );
    }
    Value::Object(out)
}

/// The `q`-quantile of sorted `v`, linear between order statistics (numpy's default).
fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    v[i] * (1.0 - f) + v[(i + 1).min(v.len() - 1)] * f
}

#[cfg(test)]
mod tests {
    use super::{compare, fmt_g, threshold_labels, SampleScores};
    use serde_json::{json, Map, Value};

    /// Scores given per sample: "s" the mean over the samples, "gone" only where `defined`.
    struct Given {
        s: Vec<f64>,
        defined: bool,
    }

    impl SampleScores for Given {
        fn samples(&self) -> usize {
            self.s.len()
        }
        fn overall_of(&self, idx: &[usize]) -> Map<String, Value> {
            let mean = idx.iter().map(|&i| self.s[i]).sum::<f64>() / idx.len() as f64;
            let mut r = Map::new();
            r.insert("s".into(), json!(mean));
            if self.defined {
                r.insert("gone".into(), json!(1.0));
            }
            r
        }
        fn report(&self) -> Value {
            Value::Null
        }
    }

    /// The change's sign says which forecast is lower whatever the scores' sign (a PSNR of
    /// −12.5 dB against −6.6 dB is lower, not 90% higher), and a score only one forecast defines
    /// is reported with a null change rather than left out.
    #[test]
    fn the_change_is_signed_by_which_is_lower_and_nothing_is_dropped() {
        let a = Given {
            s: vec![-12.0, -13.0, -12.5],
            defined: true,
        };
        let b = Given {
            s: vec![-6.5, -6.6, -6.7],
            defined: false,
        };
        let c = compare(&a, &b, 200, 0);
        let s = &c["s"];
        let want = (-12.5 - -6.6) / 6.6;
        assert!((s["change"].as_f64().unwrap() - want).abs() < 1e-12, "{s}");
        assert!(s["change"].as_f64().unwrap() < 0.0);
        let ci = s["ci95"].as_array().unwrap();
        assert!(ci[1].as_f64().unwrap() < 0.0, "{s}");
        assert_eq!(c["gone"]["this"], json!(1.0));
        assert_eq!(c["gone"]["other"], Value::Null);
        assert_eq!(c["gone"]["change"], Value::Null);
        assert_eq!(c["gone"]["ci95"], Value::Null);
    }

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
            assert_eq!(fmt_g(v, 6), want, "{v}");
        }
    }

    #[test]
    fn more_digits_only_where_six_do_not_tell_thresholds_apart() {
        assert_eq!(fmt_g(1000000.25, 8), "1000000.2");
        assert_eq!(fmt_g(0.1, 17), "0.10000000000000001");
        assert_eq!(threshold_labels(&[0.3, 1.1]), ["0.3", "1.1"]);
        assert_eq!(
            threshold_labels(&[1e6 + 0.25, 1e6 + 0.5]),
            ["1000000.2", "1000000.5"]
        );
        assert_eq!(threshold_labels(&[2.5, 2.5]), ["2.5", "2.5"]);
        let close = [0.1, 0.1 + f64::EPSILON / 8.0];
        let l = threshold_labels(&close);
        assert!(l[0] != l[1], "{l:?}");
    }
}
