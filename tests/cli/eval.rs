//! `dydiff eval` (docs/metrics.md) against `python/make_eval_fixtures.py`: CRPS from properscoring
//! (standard) and scoringrules (fair), the other metrics from an independent Python
//! implementation (torch pooling, numpy, a torch-convolution SSIM). Every key, overall and per
//! lead, to 1e-6 relative.

use crate::common::{dydiff, fixture, Scratch};
use serde_json::Value;
use std::path::Path;

fn compare(ours: &Value, want: &Value, at: &str) {
    let (o, w) = (ours.as_object().unwrap(), want.as_object().unwrap());
    let keys = |m: &serde_json::Map<String, Value>| {
        let mut k: Vec<String> = m.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(o), keys(w), "{at}: keys");
    for (k, wv) in w {
        match (o[k].as_f64(), wv.as_f64()) {
            (Some(a), Some(b)) => assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{at} {k}: {a} vs {b}"
            ),
            _ => assert_eq!(&o[k], wv, "{at} {k}"),
        }
    }
}

fn run_eval(s: &Scratch, forecast: &str, extra: &[&str]) -> Value {
    let json = s.path("report.json");
    let f = fixture("eval").join(forecast);
    let t = fixture("eval/truth.npy");
    let mut args = vec![
        "eval",
        "--forecast",
        f.to_str().unwrap(),
        "--truth",
        t.to_str().unwrap(),
    ];
    args.extend(["--json", json.to_str().unwrap()]);
    args.extend(extra);
    let (ok, err) = dydiff(&args);
    assert!(ok, "{err}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn metrics_match_the_python_references() {
    let s = Scratch::new("eval");
    for (forecast, want, extra) in [
        (
            "forecast.npy",
            "report.json",
            vec!["--thresholds", "0.3,1.1"],
        ),
        ("forecast_one.npy", "report_one.json", vec![]),
    ] {
        let ours = run_eval(&s, forecast, &extra);
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("eval").join(want)).unwrap())
                .unwrap();
        compare(
            &ours["overall"],
            &want["overall"],
            &format!("{forecast} overall"),
        );
        let (po, pw) = (
            ours["per_lead"].as_array().unwrap(),
            want["per_lead"].as_array().unwrap(),
        );
        assert_eq!(po.len(), pw.len());
        for (i, (a, b)) in po.iter().zip(pw).enumerate() {
            compare(a, b, &format!("{forecast} lead {}", i + 1));
        }
    }
}

#[test]
fn pictures_and_bad_input() {
    let s = Scratch::new("eval-bad");
    let dir = s.path("pics");
    run_eval(&s, "forecast.npy", &["--png", dir.to_str().unwrap()]);
    for name in ["crps.png", "spread_skill.png"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert!(
            png::Decoder::new(bytes.as_slice()).read_info().is_ok(),
            "{name}"
        );
    }
    let f = fixture("eval/forecast.npy");
    let t = fixture("eval/truth.npy");
    let out = s.path("r.json");
    let fails = |args: &[&str], needles: &[&str]| {
        let mut a = vec!["eval", "--json", out.to_str().unwrap()];
        a.extend(args);
        let (ok, err) = dydiff(&a);
        assert!(!ok && err.trim_end().lines().count() == 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
        assert!(!out.exists());
    };
    // the truth passed as the forecast: not 6-d
    fails(
        &[
            "--forecast",
            t.to_str().unwrap(),
            "--truth",
            t.to_str().unwrap(),
        ],
        &["truth.npy", "(N, M, S, C, H, W)"],
    );
    // the forecast passed as the truth: wrong shape, named
    fails(
        &[
            "--forecast",
            f.to_str().unwrap(),
            "--truth",
            f.to_str().unwrap(),
        ],
        &["forecast.npy", "(3, 4, 2, 20, 24)"],
    );
    fails(
        &[
            "--forecast",
            f.to_str().unwrap(),
            "--truth",
            t.to_str().unwrap(),
            "--thresholds",
            "0.3,abc",
        ],
        &["--thresholds"],
    );
    let missing = s.path("missing.npy");
    fails(
        &[
            "--forecast",
            missing.to_str().unwrap(),
            "--truth",
            t.to_str().unwrap(),
        ],
        &["missing.npy"],
    );
}

/// `--thresholds 0,-0` is one threshold: one key `q0`, no `q-0`.
#[test]
fn negative_zero_is_the_threshold_zero() {
    let s = Scratch::new("eval-neg-zero");
    let report = run_eval(&s, "forecast.npy", &["--thresholds=0,-0"]);
    let keys: Vec<&String> = report["overall"].as_object().unwrap().keys().collect();
    assert!(keys.iter().any(|k| k.starts_with("csi_q0_")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("q-0")), "{keys:?}");
}

/// Channels of different units are scored one by one as well (`per_channel`, each with its own
/// default thresholds): a channel's scores are those of a file holding that channel alone, and
/// do not change when the other channel's values are scaled a thousandfold.
#[test]
fn each_channel_is_scored_alone_too() {
    use dydiff::io::npy;
    let s = Scratch::new("eval-channels");
    let f = npy::read(&fixture("eval/forecast.npy")).unwrap();
    let t = npy::read(&fixture("eval/truth.npy")).unwrap();
    let plane = 20 * 24;
    let pick = |a: &[f32], k: usize, scale1: f32| -> (Vec<f32>, Vec<f32>) {
        let mut one = Vec::new();
        let mut both = Vec::new();
        for frame in a.chunks(2 * plane) {
            one.extend_from_slice(&frame[k * plane..(k + 1) * plane]);
            both.extend_from_slice(&frame[..plane]);
            both.extend(frame[plane..].iter().map(|v| v * scale1));
        }
        (one, both)
    };
    let eval = |fc: &Path, truth: &Path| -> Value {
        let json = s.path("r.json");
        let (ok, err) = dydiff([
            "eval",
            "--forecast",
            fc.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--truth-start",
            "2",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let write = |name: &str, shape: &[usize], data: &[f32]| {
        let p = s.path(name);
        std::fs::write(&p, npy::encode(shape, data)).unwrap();
        p
    };
    let (f0, f_scaled) = pick(&f.data, 0, 1000.0);
    let (t0, t_scaled) = pick(&t.data, 0, 1000.0);
    let alone = eval(
        &write("f0.npy", &[3, 5, 4, 1, 20, 24], &f0),
        &write("t0.npy", &[3, 6, 1, 20, 24], &t0),
    );
    assert!(alone.get("per_channel").is_none());
    let scaled = eval(
        &write("fs.npy", &[3, 5, 4, 2, 20, 24], &f_scaled),
        &write("ts.npy", &[3, 6, 2, 20, 24], &t_scaled),
    );
    let ch0 = &scaled["per_channel"][0];
    assert_eq!(ch0["channel"], 0);
    compare(&ch0["overall"], &alone["overall"], "channel 0 overall");
    for (i, (a, b)) in ch0["per_lead"]
        .as_array()
        .unwrap()
        .iter()
        .zip(alone["per_lead"].as_array().unwrap())
        .enumerate()
    {
        compare(a, b, &format!("channel 0 lead {}", i + 1));
    }
    // the pooled scores are dominated by the scaled channel; channel 0's are not
    let pooled = scaled["overall"]["crps"].as_f64().unwrap();
    assert!(pooled > 10.0 * ch0["overall"]["crps"].as_f64().unwrap());
}

/// `--protocol reference-turbulence` against `python/make_turbulence_protocol_fixture.py` (the
/// reference implementation's evaluation written independently in torch): every score overall and
/// per lead, the samples each score kept, and `--compare`'s paired bootstrap (the same resamples:
/// change and interval of every score) — all to 1e-6 relative.
#[test]
fn the_reference_turbulence_protocol_and_the_paired_bootstrap() {
    let s = Scratch::new("eval-reference");
    let dir = fixture("turbulence_protocol");
    let json = s.path("r.json");
    let (ok, err) = dydiff([
        "eval",
        "--forecast",
        dir.join("forecast.npy").to_str().unwrap(),
        "--truth",
        dir.join("truth.npy").to_str().unwrap(),
        "--protocol",
        "reference-turbulence",
        "--compare",
        dir.join("forecast_b.npy").to_str().unwrap(),
        "--resamples",
        "300",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let report = &want["report"];
    compare(&ours["overall"], &report["overall"], "overall");
    for (i, (a, b)) in ours["per_lead"]
        .as_array()
        .unwrap()
        .iter()
        .zip(report["per_lead"].as_array().unwrap())
        .enumerate()
    {
        compare(a, b, &format!("lead {}", i + 1));
    }
    assert_eq!(ours["scored_samples"], report["scored_samples"]);
    let (got, expected) = (
        ours["compare"]["scores"].as_object().unwrap(),
        want["compare"].as_object().unwrap(),
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, w) in expected {
        let g = &got[k];
        for field in ["this", "other", "change"] {
            let (a, b) = (g[field].as_f64().unwrap(), w[field].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{k} {field}: {a} vs {b}"
            );
        }
        for i in 0..2 {
            let (a, b) = (
                g["ci95"][i].as_f64().unwrap(),
                w["ci95"][i].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{k} ci95[{i}]: {a} vs {b}"
            );
        }
        assert_eq!(g["resamples"], w["resamples"], "{k}");
    }
}

/// `--per-sample`: each sample's overall scores, whose CRPS and pooled CRPS average to the
/// overall ones; `--compare` of a forecast with itself changes nothing, with an interval of 0.
#[test]
fn per_sample_scores_and_a_forecast_against_itself() {
    let s = Scratch::new("eval-per-sample");
    let f = fixture("eval/forecast.npy");
    let report = run_eval(
        &s,
        "forecast.npy",
        &[
            "--per-sample",
            "--compare",
            f.to_str().unwrap(),
            "--resamples",
            "50",
        ],
    );
    let samples = report["per_sample"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    for key in [
        "crps",
        "crps_standard",
        "crps_pool2_avg",
        "crps_pool8_max",
        "mae",
    ] {
        let mean = samples
            .iter()
            .map(|r| r[key].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        let overall = report["overall"][key].as_f64().unwrap();
        assert!(
            (mean - overall).abs() <= 1e-12 * overall.abs(),
            "{key}: {mean} vs {overall}"
        );
    }
    for (k, c) in report["compare"]["scores"].as_object().unwrap() {
        assert_eq!(c["change"].as_f64(), Some(0.0), "{k}");
        assert_eq!(c["ci95"], serde_json::json!([0.0, 0.0]), "{k}");
    }
}
