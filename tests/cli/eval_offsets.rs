//! `dydiff eval` keeps its precision on data with large offsets (a geopotential of 5e4 with a
//! spread of 0.5, a temperature in kelvin). Every score, overall and per lead — fair and
//! standard CRPS, pooled CRPS (average and maximum, every window), CSI and FSS (every threshold
//! and window, given or the truth's default percentiles), RMSE, MAE, spread, spread-skill
//! ratio, PSNR, SSIM — must equal a straightforward float64 computation of its definition on
//! the same float32 inputs to 1e-6 relative, at offsets 0, 1e4, 5e4 and 1e6. Adding one
//! constant to forecast and truth (and to the thresholds) must change no offset-invariant score
//! by more than 1e-6 relative: all but SSIM, whose luminance term depends on the local means
//! themselves. PSNR is invariant here because its data range is the truth's max − min.
//!
//! The invariance cases use fields on a grid of 1/16, so that adding any of the offsets is
//! exact in float32 (its spacing is 1/16 between 2^19 and 2^20, where 1e6 lies); the rounded
//! cases add the offset in float64 and round to float32, and check exactness only.

use crate::common::{dydiff, Scratch};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    m: usize,
    s: usize,
    c: usize,
    h: usize,
    w: usize,
}

/// Small, with every pooled-CRPS window (up to 16) and the SSIM window (11) fitting.
const D: Dims = Dims {
    n: 2,
    m: 5,
    s: 3,
    c: 2,
    h: 16,
    w: 20,
};
/// Frames of the truth before the scored ones (the truth file is `(N, HISTORY + S, C, H, W)`).
const HISTORY: usize = 2;
const POOL_WINDOWS: [usize; 4] = [2, 4, 8, 16];
const EVENT_WINDOWS: [usize; 3] = [1, 3, 5];

// ---------------------------------------------------------------------------------------------
// Data

/// SplitMix64, with Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (1.0 - self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// A smooth field of amplitude 1.2 with noise 0.25, members with a spread of 0.5.
    Smooth,
    /// The same spread on a field that varies by ±250 across the domain (a geopotential).
    Wide,
}

/// Truth `(N, HISTORY + S, C, H, W)` and forecast `(N, M, S, C, H, W)` relative to the offset;
/// on the 1/16 grid when `grid`.
fn fields(kind: Kind, grid: bool, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(seed);
    let snap = |v: f64| if grid { (v * 16.0).round() / 16.0 } else { v };
    let (amplitude, scale) = match kind {
        Kind::Smooth => (1.2, 1.0),
        Kind::Wide => (250.0, 0.1),
    };
    let l = HISTORY + D.s;
    let plane = D.h * D.w;
    let mut truth = Vec::with_capacity(D.n * l * D.c * plane);
    for n in 0..D.n {
        for t in 0..l {
            for c in 0..D.c {
                for p in 0..plane {
                    let (i, j) = ((p / D.w) as f64, (p % D.w) as f64);
                    let phase = 0.45 * j + 0.3 * i + 0.7 * t as f64 + n as f64 + 2.0 * c as f64;
                    // The history frames sit apart from the scored ones: using them anywhere
                    // (percentiles, data range) would show.
                    let history = if t < HISTORY { 3.0 } else { 0.0 };
                    truth.push(snap(
                        amplitude * (scale * phase).sin() + 0.25 * rng.normal() + history,
                    ));
                }
            }
        }
    }
    let frame = D.c * plane;
    let mut forecast = Vec::with_capacity(D.n * D.m * D.s * frame);
    for n in 0..D.n {
        for m in 0..D.m {
            let bias = 0.1 * (m as f64 - 2.0);
            for s in 0..D.s {
                let at = (n * l + HISTORY + s) * frame;
                for p in 0..frame {
                    forecast.push(snap(truth[at + p] + bias + 0.5 * rng.normal()));
                }
            }
        }
    }
    (truth, forecast)
}

/// `offset + v` in float32; with `exact`, checks that no value was rounded.
fn shifted(v: &[f64], offset: f64, exact: bool) -> Vec<f32> {
    v.iter()
        .map(|&v| {
            let x = (v + offset) as f32;
            assert!(
                !exact || f64::from(x) == v + offset,
                "{v} + {offset} is not a float32"
            );
            x
        })
        .collect()
}

/// The truth's scored frames `(N, S, C, H, W)`.
fn scored(truth: &[f32]) -> Vec<f32> {
    let (l, frame) = (HISTORY + D.s, D.c * D.h * D.w);
    (0..D.n)
        .flat_map(|n| truth[(n * l + HISTORY) * frame..(n + 1) * l * frame].to_vec())
        .collect()
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The float64 reference, from the definitions

/// Named sums over a group of `(sample, lead)` slices, from which every score follows.
#[derive(Clone, Default)]
struct Sums(BTreeMap<String, f64>);

impl Sums {
    fn add(&mut self, key: &str, v: f64) {
        *self.0.entry(key.to_string()).or_default() += v;
    }
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
    fn merge(&mut self, other: &Sums) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }
}

/// (fair, standard) CRPS: `mean|x − y| − Σ_{i,j}|x_i − x_j| / (2M(M−1))`, resp. `/ (2M²)`.
fn crps(xs: &[f64], y: f64) -> (f64, f64) {
    let m = xs.len() as f64;
    let e1 = xs.iter().map(|x| (x - y).abs()).sum::<f64>() / m;
    let pairs: f64 = xs
        .iter()
        .map(|a| xs.iter().map(|b| (a - b).abs()).sum::<f64>())
        .sum();
    (
        e1 - pairs / (2.0 * m * (m - 1.0)),
        e1 - pairs / (2.0 * m * m),
    )
}

/// `k × k` pooling at `stride` with `pad` on each side: the maximum of the window's pixels in
/// the field, or their sum over `k²`.
fn pool(a: &[f64], k: usize, stride: usize, pad: usize, max: bool) -> Vec<f64> {
    let (h, w) = (D.h as isize, D.w as isize);
    let ho = (D.h + 2 * pad - k) / stride + 1;
    let wo = (D.w + 2 * pad - k) / stride + 1;
    let mut out = Vec::new();
    for i in 0..ho {
        for j in 0..wo {
            let mut inside = Vec::new();
            for di in 0..k {
                for dj in 0..k {
                    let y = (i * stride + di) as isize - pad as isize;
                    let x = (j * stride + dj) as isize - pad as isize;
                    if y >= 0 && y < h && x >= 0 && x < w {
                        inside.push(a[(y * w + x) as usize]);
                    }
                }
            }
            out.push(if max {
                inside.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            } else {
                inside.iter().sum::<f64>() / (k * k) as f64
            });
        }
    }
    out
}

/// SSIM (11×11 Gaussian window, σ 1.5, valid positions): per position, the weighted means,
/// the weighted variances and covariance about them, and
/// `(2μ_aμ_b + C₁)(2σ_ab + C₂) / ((μ_a² + μ_b² + C₁)(σ_a² + σ_b² + C₂))`; the mean over
/// positions.
fn ssim(a: &[f64], b: &[f64], range: f64) -> f64 {
    let g: Vec<f64> = (0..11)
        .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let weight = |k: usize, l: usize| g[k] * g[l] / (gs * gs);
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let (mut total, mut count) = (0.0, 0.0);
    for i in 0..=D.h - 11 {
        for j in 0..=D.w - 11 {
            let at = |k: usize, l: usize| (i + k) * D.w + j + l;
            let (mut ma, mut mb) = (0.0, 0.0);
            for k in 0..11 {
                for l in 0..11 {
                    ma += weight(k, l) * a[at(k, l)];
                    mb += weight(k, l) * b[at(k, l)];
                }
            }
            let (mut va, mut vb, mut cab) = (0.0, 0.0, 0.0);
            for k in 0..11 {
                for l in 0..11 {
                    let (da, db) = (a[at(k, l)] - ma, b[at(k, l)] - mb);
                    va += weight(k, l) * da * da;
                    vb += weight(k, l) * db * db;
                    cab += weight(k, l) * da * db;
                }
            }
            total += ((2.0 * ma * mb + c1) * (2.0 * cab + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            count += 1.0;
        }
    }
    total / count
}

/// The sums of one `(sample n, lead s)` slice; `y` is the scored truth `(N, S, C, H, W)`.
fn slice_sums(x: &[f32], y: &[f32], n: usize, s: usize, thresholds: &[f64], range: f64) -> Sums {
    let plane = D.h * D.w;
    let mut t = Sums::default();
    for c in 0..D.c {
        let read = |a: &[f32], at: usize| -> Vec<f64> {
            a[at * plane..(at + 1) * plane]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        };
        let truth = read(y, (n * D.s + s) * D.c + c);
        let members: Vec<Vec<f64>> = (0..D.m)
            .map(|m| read(x, ((n * D.m + m) * D.s + s) * D.c + c))
            .collect();
        let mut mean = vec![0.0; plane];
        for p in 0..plane {
            let xs: Vec<f64> = members.iter().map(|f| f[p]).collect();
            let (fair, standard) = crps(&xs, truth[p]);
            t.add("crps", fair);
            t.add("crps_standard", standard);
            t.add("pixels", 1.0);
            mean[p] = xs.iter().sum::<f64>() / D.m as f64;
            t.add("abs", (mean[p] - truth[p]).abs());
            t.add("sq", (mean[p] - truth[p]).powi(2));
            let var = xs.iter().map(|v| (v - mean[p]).powi(2)).sum::<f64>() / D.m as f64;
            t.add("var", var);
        }
        for k in POOL_WINDOWS {
            let stride = (k + 2) / 4;
            for (name, max) in [("avg", false), ("max", true)] {
                let pt = pool(&truth, k, stride, 0, max);
                let pm: Vec<Vec<f64>> =
                    members.iter().map(|f| pool(f, k, stride, 0, max)).collect();
                for p in 0..pt.len() {
                    let xs: Vec<f64> = pm.iter().map(|f| f[p]).collect();
                    t.add(&format!("crps_pool{k}_{name}"), crps(&xs, pt[p]).0);
                }
                if !max {
                    t.add(&format!("pool{k}_pixels"), pt.len() as f64);
                }
            }
        }
        for (qi, &q) in thresholds.iter().enumerate() {
            let binary = |f: &[f64]| -> Vec<f64> {
                f.iter().map(|&v| f64::from(u8::from(v >= q))).collect()
            };
            let bt = binary(&truth);
            let bm: Vec<Vec<f64>> = members.iter().map(|f| binary(f)).collect();
            for k in EVENT_WINDOWS {
                let csi_pool = |f: &[f64]| {
                    if k == 1 {
                        f.to_vec()
                    } else {
                        pool(f, k, k / 2, k / 2, true)
                    }
                };
                let ct = csi_pool(&bt);
                for f in &bm {
                    for (a, b) in csi_pool(f).iter().zip(&ct) {
                        t.add(&format!("csi#{qi}_w{k}_tp"), a * b);
                        t.add(&format!("csi#{qi}_w{k}_fp"), a * (1.0 - b));
                        t.add(&format!("csi#{qi}_w{k}_fn"), (1.0 - a) * b);
                    }
                }
                let stride = ((k + 2) / 4).max(1);
                let ft = pool(&bt, k, stride, k / 2, false);
                for f in &bm {
                    for (p, o) in pool(f, k, stride, k / 2, false).iter().zip(&ft) {
                        t.add(&format!("fss#{qi}_w{k}_num"), (p - o).powi(2));
                        t.add(&format!("fss#{qi}_w{k}_den"), p * p + o * o);
                    }
                }
            }
        }
        t.add("ssim", ssim(&mean, &truth, range));
        t.add("fields", 1.0);
    }
    t
}

/// The scores of a group of slices, keyed as in the report except for CSI and FSS, which are
/// keyed `csi#{threshold index}_w{w}`.
fn scores(t: &Sums, thresholds: &[f64], range: f64) -> BTreeMap<String, f64> {
    let mut r = BTreeMap::new();
    let pixels = t.get("pixels");
    r.insert("crps".to_string(), t.get("crps") / pixels);
    r.insert("crps_standard".to_string(), t.get("crps_standard") / pixels);
    for k in POOL_WINDOWS {
        for name in ["avg", "max"] {
            let key = format!("crps_pool{k}_{name}");
            r.insert(key.clone(), t.get(&key) / t.get(&format!("pool{k}_pixels")));
        }
    }
    for qi in 0..thresholds.len() {
        for k in EVENT_WINDOWS {
            let csi = |part: &str| t.get(&format!("csi#{qi}_w{k}_{part}"));
            r.insert(
                format!("csi#{qi}_w{k}"),
                csi("tp") / (csi("tp") + csi("fp") + csi("fn")),
            );
            let fss = |part: &str| t.get(&format!("fss#{qi}_w{k}_{part}"));
            r.insert(format!("fss#{qi}_w{k}"), 1.0 - fss("num") / fss("den"));
        }
    }
    let mse = t.get("sq") / pixels;
    let (rmse, spread) = (mse.sqrt(), (t.get("var") / pixels).sqrt());
    r.insert("rmse".to_string(), rmse);
    r.insert("mae".to_string(), t.get("abs") / pixels);
    r.insert("spread".to_string(), spread);
    r.insert("ssr".to_string(), spread / rmse);
    r.insert("psnr".to_string(), 10.0 * (range * range / mse).log10());
    r.insert("ssim".to_string(), t.get("ssim") / t.get("fields"));
    r
}

/// Scores overall and per lead.
struct Report {
    overall: BTreeMap<String, f64>,
    per_lead: Vec<BTreeMap<String, f64>>,
}

/// The reference report of forecast `x` against the scored truth `y`.
fn reference(x: &[f32], y: &[f32], thresholds: &[f64]) -> Report {
    let lo = y
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::INFINITY, f64::min);
    let hi = y
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    let range = hi - lo;
    let mut all = Sums::default();
    let mut per_lead = Vec::new();
    for s in 0..D.s {
        let mut lead = Sums::default();
        for n in 0..D.n {
            lead.merge(&slice_sums(x, y, n, s, thresholds, range));
        }
        all.merge(&lead);
        per_lead.push(scores(&lead, thresholds, range));
    }
    Report {
        overall: scores(&all, thresholds, range),
        per_lead,
    }
}

/// The `p`-quantile of `v`, linear between order statistics (numpy's default).
fn percentile(v: &[f32], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().map(|&v| f64::from(v)).collect();
    s.sort_by(f64::total_cmp);
    let pos = p * (s.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract());
    if f == 0.0 {
        s[i]
    } else {
        s[i] + (s[i + 1] - s[i]) * f
    }
}

// ---------------------------------------------------------------------------------------------
// Running `dydiff eval` and comparing

/// One report row with CSI and FSS keyed by the index of the threshold that their label
/// (`csi_q{label}_w{w}`) names: the nearest, within the label's six or more digits.
fn canonical(row: &Value, thresholds: &[f64], at: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in row.as_object().unwrap() {
        if k == "lead" {
            continue;
        }
        let v = v
            .as_f64()
            .unwrap_or_else(|| panic!("{at} {k}: not a number: {v}"));
        let event = ["csi", "fss"]
            .into_iter()
            .find_map(|f| Some((f, k.strip_prefix(f)?.strip_prefix("_q")?)));
        let key = match event {
            Some((family, rest)) => {
                let (label, w) = rest.rsplit_once("_w").unwrap();
                let q: f64 = label.parse().unwrap();
                let (qi, near) = thresholds
                    .iter()
                    .enumerate()
                    .min_by(|a, b| (a.1 - q).abs().total_cmp(&(b.1 - q).abs()))
                    .unwrap();
                assert!(
                    (near - q).abs() <= 1e-5 * near.abs() + 1e-12,
                    "{at} {k}: the label names none of the thresholds {thresholds:?}"
                );
                format!("{family}#{qi}_w{w}")
            }
            None => k.clone(),
        };
        assert!(
            out.insert(key, v).is_none(),
            "{at} {k}: two keys for one threshold"
        );
    }
    out
}

/// `|got − want| ≤ 1e-6·|want|` for every key but `skip`, with the same keys.
fn assert_close(
    got: &BTreeMap<String, f64>,
    want: &BTreeMap<String, f64>,
    skip: &[&str],
    at: &str,
) {
    let keys = |m: &BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "{at}: keys");
    for (k, &w) in want {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let g = got[k];
        assert!(w.is_finite(), "{at} {k}: the reference is {w}");
        assert!(
            (g - w).abs() <= 1e-6 * w.abs() + 1e-12,
            "{at} {k}: {g} vs {w} (relative {:e})",
            (g - w).abs() / w.abs()
        );
    }
}

/// Runs `dydiff eval` (default thresholds when `thresholds` is `None`) on `offset +` the
/// fields, checks every score against the reference and returns the report, keyed as the
/// reference keys it.
fn check(
    s: &Scratch,
    truth: &[f32],
    forecast: &[f32],
    thresholds: Option<&[f64]>,
    at: &str,
) -> Report {
    let (t, f, json) = (s.path("truth.npy"), s.path("fc.npy"), s.path("r.json"));
    write_npy(&t, &[D.n, HISTORY + D.s, D.c, D.h, D.w], truth);
    write_npy(&f, &[D.n, D.m, D.s, D.c, D.h, D.w], forecast);
    let y = scored(truth);
    let q: Vec<f64> = match thresholds {
        Some(q) => q.to_vec(),
        None => vec![percentile(&y, 0.75), percentile(&y, 0.95)],
    };
    let mut args: Vec<String> = ["eval", "--forecast", "", "--truth", "", "--json", ""]
        .map(String::from)
        .to_vec();
    args[2] = f.display().to_string();
    args[4] = t.display().to_string();
    args[6] = json.display().to_string();
    // the truth file holds the history frames first
    args.extend(["--truth-start".to_string(), HISTORY.to_string()]);
    if let Some(q) = thresholds {
        let list: Vec<String> = q.iter().map(|v| v.to_string()).collect();
        args.push(format!("--thresholds={}", list.join(",")));
    }
    let (ok, err) = dydiff(&args);
    assert!(ok, "{at}: {err}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let got = Report {
        overall: canonical(&report["overall"], &q, at),
        per_lead: report["per_lead"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| canonical(r, &q, at))
            .collect(),
    };
    let want = reference(forecast, &y, &q);
    assert_close(&got.overall, &want.overall, &[], &format!("{at} overall"));
    assert_eq!(got.per_lead.len(), D.s, "{at}: leads");
    for (i, (g, w)) in got.per_lead.iter().zip(&want.per_lead).enumerate() {
        assert_close(g, w, &[], &format!("{at} lead {}", i + 1));
    }
    got
}

#[test]
fn every_score_is_exact_and_offset_invariant() {
    let s = Scratch::new("eval-offsets");
    for (kind, name) in [(Kind::Smooth, "smooth"), (Kind::Wide, "wide")] {
        let (truth, forecast) = fields(kind, true, 7);
        // A value the truth takes (members equal to it: ties) and one between grid values.
        let tie = truth[(HISTORY * D.c * D.h + 5) * D.w + 7];
        let given = [tie, tie + 0.3];
        let mut at_zero: Vec<Report> = Vec::new();
        for offset in [0.0, 1e4, 5e4, 1e6] {
            let (t, f) = (
                shifted(&truth, offset, true),
                shifted(&forecast, offset, true),
            );
            let q = given.map(|q| q + offset);
            for (i, thresholds) in [None, Some(&q[..])].into_iter().enumerate() {
                let mode = if i == 0 { "default" } else { "given" };
                let at = format!("{name} field, offset {offset}, {mode} thresholds");
                let got = check(&s, &t, &f, thresholds, &at);
                if offset == 0.0 {
                    at_zero.push(got);
                    continue;
                }
                let base = &at_zero[i];
                let at = format!("{at}, against offset 0");
                assert_close(&got.overall, &base.overall, &["ssim"], &at);
                for (g, b) in got.per_lead.iter().zip(&base.per_lead) {
                    assert_close(g, b, &["ssim"], &at);
                }
            }
        }
    }
}

#[test]
fn every_score_is_exact_on_rounded_inputs() {
    let s = Scratch::new("eval-offsets-rounded");
    for (kind, name) in [(Kind::Smooth, "smooth"), (Kind::Wide, "wide")] {
        let (truth, forecast) = fields(kind, false, 11);
        for offset in [273.15, 5e4, 1e6] {
            let (t, f) = (
                shifted(&truth, offset, false),
                shifted(&forecast, offset, false),
            );
            let q = [offset + 0.2, offset + 0.9];
            for thresholds in [None, Some(&q[..])] {
                let at = format!("{name} field rounded at offset {offset}");
                check(&s, &t, &f, thresholds, &at);
            }
        }
    }
}
