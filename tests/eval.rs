//! `dydiff eval` (docs/metrics.md) against `python/make_eval_fixtures.py`: CRPS from properscoring
//! (standard) and scoringrules (fair), the other metrics from an independent Python
//! implementation (torch pooling, numpy, a torch-convolution SSIM). Every key, overall and per
//! lead, to 1e-6 relative.

mod common;
use common::{dydiff, fixture, Scratch};
use serde_json::Value;

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
