//! The evaluation protocol of Dynamical Diffusion's reference implementation for turbulence
//! (`dydiff eval --protocol reference-turbulence`; docs/metrics.md, "The reference's turbulence
//! protocol"), as `core/evaluation/evaluate_turbulence.py` and `core/evaluation/metrics_vid_pred.py`
//! of thuml/dynamical-diffusion compute it (commit 2b677fb):
//!
//! - values in the reference's units, data / 4 (`core/datasets/turbulence/torch_dataset.py`, line
//!   24), which scales every CRPS by ¼ and changes no mask or event;
//! - the fair CRPS per pixel, averaged per field `(n, s, c)` over the pixels whose truth is ≥ 0
//!   only (`CRPS_PWM`, lines 351–375);
//! - the pooled fair CRPS (`Pooled_CRPS_PWM`, lines 399–470), windows 2 and 8 (stride
//!   `(w + 2) // 4`, no padding), members and truth pooled separately, averaged per field over the
//!   windows whose truth is ≥ 0 throughout (line 426);
//! - a field without a scored pixel (or window) is undefined, and **a sample with an undefined
//!   field is left out** of that score at every lead (`cal_result`, lines 384–388, 466–469);
//! - each score is the mean over the kept samples of each field's value, then the plain mean over
//!   the lead times and channels (lines 750–752): not a pixel-pooled mean;
//! - CSI at threshold 0 (line 257), per member, windows 1, 3, 5 and 7 (the binarised fields
//!   max-pooled with kernel `w`, stride `w // 2`, padding `w // 2`; lines 22–33, 97–98), no mask:
//!   `ΣTP / Σ(TP + FP + FN)` over members, samples and cells per `(lead, channel)`, then the mean
//!   over them.
//!
//! The reference scores its first 20 test sequences with 8 members of 50 DDIM steps; here the
//! forecast and truth files decide.

use super::categorical::{events, pool2d};
use super::crps::crps_both;
use super::{Dims, SampleScores};
use rayon::prelude::*;
use serde_json::{json, Map, Value};

/// The reference's data units: data / 4.
const SCALE: f64 = 0.25;
/// The pooled CRPS windows the reference reports.
const POOL_WINDOWS: [usize; 2] = [2, 8];
/// The reference's CSI windows.
const CSI_WINDOWS: [usize; 4] = [1, 3, 5, 7];

/// The CRPS scores of the protocol, in report order: the pixels, then each window of
/// the reference's (2 and 8) with average and then maximum pooling (the order [`score`] computes
/// them in).
pub const CRPS_KEYS: [&str; 1 + 2 * POOL_WINDOWS.len()] = [
    "crps",
    "crps_pool2_avg",
    "crps_pool2_max",
    "crps_pool8_avg",
    "crps_pool8_max",
];

/// One sample's field values: `crps[k][s·C + c]` the masked mean of CRPS score `k` (NaN where
/// no pixel or window is scored), whether every field has score `k` (`defined[k]`: else the
/// sample is left out of it), `csi[(s·C + c)·W + w]` the CSI counts (TP, FP, FN) of window `w`
/// at each threshold in turn.
struct Sample {
    crps: Vec<Vec<f64>>,
    defined: Vec<bool>,
    csi: Vec<[f64; 3]>,
}

/// A forecast scored by the reference's protocol.
pub struct TurbulenceScores {
    samples: Vec<Sample>,
    d: Dims,
    thresholds: Vec<f64>,
}

/// The masked mean of the fair CRPS over a field's pixels: members and truth (relative to any
/// common value), the mask from the truth's own values.
fn masked_crps(members: &[Vec<f64>], truth: &[f64], keep: &[bool]) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    let mut vals = vec![0.0; members.len()];
    for (p, (&t, &k)) in truth.iter().zip(keep).enumerate() {
        if !k {
            continue;
        }
        for (v, m) in vals.iter_mut().zip(members) {
            *v = m[p];
        }
        sum += crps_both(&mut vals, t).0;
        count += 1;
    }
    if count == 0 {
        f64::NAN
    } else {
        SCALE * sum / count as f64
    }
}

/// Scores the forecast `x (N, M, S, C, H, W)` against the truth `y (N, S, C, H, W)` (data space)
/// by the reference's protocol, with the CSI thresholds `thresholds` (the reference's: `[0]`,
/// in data / 4 units, so the same in data units).
pub fn score(x: &[f32], y: &[f32], d: &Dims, thresholds: &[f64]) -> TurbulenceScores {
    let (hw, fields) = (d.h * d.w, d.s * d.c);
    let samples = (0..d.n)
        .into_par_iter()
        .map(|n| {
            // per field: its CRPS scores (NaN where undefined) and its CSI counts
            let per_field: Vec<(Vec<f64>, Vec<[f64; 3]>)> = (0..fields)
                .map(|f| {
                    let (s, c) = (f / d.c, f % d.c);
                    let at = |m: usize| (((n * d.m + m) * d.s + s) * d.c + c) * hw;
                    let truth = &y[((n * d.s + s) * d.c + c) * hw..][..hw];
                    let raw: Vec<&[f32]> = (0..d.m).map(|m| &x[at(m)..][..hw]).collect();
                    let t: Vec<f64> = truth.iter().map(|&v| f64::from(v)).collect();
                    let members: Vec<Vec<f64>> = raw
                        .iter()
                        .map(|m| m.iter().map(|&v| f64::from(v)).collect())
                        .collect();
                    let keep: Vec<bool> = t.iter().map(|&v| v >= 0.0).collect();
                    let mut crps = vec![masked_crps(&members, &t, &keep)];
                    // windows whose truth is ≥ 0 throughout: their minimum, by max-pooling −y
                    let neg: Vec<f64> = t.iter().map(|&v| -v).collect();
                    for &w in &POOL_WINDOWS {
                        if w > d.h || w > d.w {
                            crps.extend([f64::NAN; 2]);
                            continue;
                        }
                        let stride = ((w + 2) / 4).max(1);
                        let (lowest, _, _) = pool2d(&neg, d.h, d.w, w, stride, 0, true);
                        let keep: Vec<bool> = lowest.iter().map(|&v| v <= 0.0).collect();
                        for max in [false, true] {
                            let pool = |a: &[f64]| pool2d(a, d.h, d.w, w, stride, 0, max).0;
                            let pm: Vec<Vec<f64>> = members.iter().map(|m| pool(m)).collect();
                            crps.push(masked_crps(&pm, &pool(&t), &keep));
                        }
                    }
                    let counts = events(&raw, truth, (d.h, d.w), thresholds, &CSI_WINDOWS).csi;
                    (crps, counts)
                })
                .collect();
            let crps: Vec<Vec<f64>> = (0..CRPS_KEYS.len())
                .map(|k| per_field.iter().map(|p| p.0[k]).collect())
                .collect();
            let defined = crps
                .iter()
                .map(|f| f.iter().all(|v| v.is_finite()))
                .collect();
            let csi = per_field.into_iter().flat_map(|p| p.1).collect();
            Sample { crps, defined, csi }
        })
        .collect();
    TurbulenceScores {
        samples,
        d: *d,
        thresholds: thresholds.to_vec(),
    }
}

impl TurbulenceScores {
    /// The scores of the samples `idx` over the fields `fields` (indices `s·C + c`), and how many
    /// samples each CRPS score kept.
    fn scores(&self, idx: &[usize], fields: &[usize]) -> (Map<String, Value>, Vec<usize>) {
        let mut r = Map::new();
        let mut kept = Vec::new();
        for (k, key) in CRPS_KEYS.iter().enumerate() {
            let keep: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&n| self.samples[n].defined[k])
                .collect();
            kept.push(keep.len());
            if keep.is_empty() {
                r.insert(key.to_string(), Value::Null);
                continue;
            }
            // the mean over kept samples of each field, then over the fields
            let per_field = |f: usize| {
                keep.iter()
                    .map(|&n| self.samples[n].crps[k][f])
                    .sum::<f64>()
                    / keep.len() as f64
            };
            let v = fields.iter().map(|&f| per_field(f)).sum::<f64>() / fields.len() as f64;
            r.insert(
                key.to_string(),
                if v.is_finite() { json!(v) } else { Value::Null },
            );
        }
        let labels = super::threshold_labels(&self.thresholds);
        let nw = CSI_WINDOWS.len();
        for (qi, label) in labels.iter().enumerate() {
            for (wi, w) in CSI_WINDOWS.iter().enumerate() {
                // one ratio per field over members and samples, then the mean over the fields
                let ratios: Vec<f64> = fields
                    .iter()
                    .filter_map(|&f| {
                        let at = (f * self.thresholds.len() + qi) * nw + wi;
                        let [tp, fp, fn_] = idx.iter().fold([0.0; 3], |mut a, &n| {
                            super::add_into(&mut a, &self.samples[n].csi[at]);
                            a
                        });
                        (tp + fp + fn_ > 0.0).then(|| tp / (tp + fp + fn_))
                    })
                    .collect();
                let v = if ratios.len() == fields.len() && !ratios.is_empty() {
                    json!(ratios.iter().sum::<f64>() / ratios.len() as f64)
                } else {
                    Value::Null
                };
                r.insert(format!("csi_q{label}_w{w}"), v);
            }
        }
        (r, kept)
    }
}

impl SampleScores for TurbulenceScores {
    fn samples(&self) -> usize {
        self.d.n
    }

    fn overall_of(&self, idx: &[usize]) -> Map<String, Value> {
        let all: Vec<usize> = (0..self.d.s * self.d.c).collect();
        self.scores(idx, &all).0
    }

    fn report(&self) -> Value {
        let idx: Vec<usize> = (0..self.d.n).collect();
        let all: Vec<usize> = (0..self.d.s * self.d.c).collect();
        let (overall, kept) = self.scores(&idx, &all);
        let per_lead: Vec<Value> = (0..self.d.s)
            .map(|s| {
                let fields: Vec<usize> = (0..self.d.c).map(|c| s * self.d.c + c).collect();
                let mut r = self.scores(&idx, &fields).0;
                r.insert("lead".into(), json!(s + 1));
                Value::Object(r)
            })
            .collect();
        let scored: Map<String, Value> = CRPS_KEYS
            .iter()
            .zip(kept)
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        json!({
            "protocol": "reference-turbulence",
            "overall": Value::Object(overall),
            "per_lead": per_lead,
            "scored_samples": Value::Object(scored),
        })
    }
}
