//! `dydiff train` end to end on a tiny generated turbulence set: the loss falls, a resumed run
//! is bit-identical to an uninterrupted one, the folder samples, a diverging run stops with the
//! last good checkpoint kept, and bad flags are one clear line.

use crate::common::{dydiff, Scratch};
use dydiff::io::npy;
use std::path::Path;

/// Sequences (8, 8, 2, 16, 16) from the generator (shared by the tests of this file).
fn data(s: &Scratch) -> std::path::PathBuf {
    let p = s.path("data.npy");
    let (ok, err) = dydiff([
        "data",
        "navier-stokes",
        "--out",
        p.to_str().unwrap(),
        "--samples",
        "8",
        "--frames",
        "8",
        "--resolution",
        "16",
        "--warmup",
        "500",
        "--seed",
        "3",
    ]);
    assert!(ok, "{err}");
    p
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut a = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--history",
        "2",
        "--future",
        "3",
        "--batch",
        "4",
        "--lr",
        "2e-3",
        "--warmup-steps",
        "3",
        "--log-every",
        "5",
        // constant after the warm-up, so that a run may be extended with --resume
        "--constant-lr",
    ];
    a.extend(extra);
    dydiff(&a)
}

/// Asserts that the last logged loss of the run in `out` is below 0.9 of the first.
fn assert_loss_falls(out: &Path) {
    let lines = log(out);
    let (first, last) = (
        lines[0]["loss"].as_f64().unwrap(),
        lines.last().unwrap()["loss"].as_f64().unwrap(),
    );
    assert!(last < 0.9 * first, "loss {first} -> {last}");
}

/// `dydiff train --out OUT --resume` with only the step count (30, checkpoints every 15) and
/// `extra`: every other flag the run's own.
fn resume_to_30(global: &[&str], out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = global.to_vec();
    args.extend([
        "train",
        "--out",
        out.to_str().unwrap(),
        "--resume",
        "--steps",
        "30",
        "--checkpoint-every",
        "15",
    ]);
    args.extend(extra);
    dydiff(&args)
}

/// The files of a run that a resumed run must reproduce byte for byte.
const RUN_FILES: [&str; 2] = [
    "train_state.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
];

/// Asserts that `files` are byte-identical in the uninterrupted run `a` and the resumed run `b`.
fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between the resumed and the uninterrupted run"
        );
    }
}

/// Samples model folder `model` on `data` (2 members, 4 steps, and `extra`) into `s/fc.npy`.
fn sample_folder(s: &Scratch, model: &Path, data: &Path, extra: &[&str]) -> npy::Array {
    let fc = s.path("fc.npy");
    let mut args = vec![
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
        "--out",
        fc.to_str().unwrap(),
        "--members",
        "2",
        "--steps",
        "4",
    ];
    args.extend(extra);
    let (ok, err) = dydiff(&args);
    assert!(ok, "{err}");
    npy::read(&fc).unwrap()
}

fn log(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn loss_falls_resume_is_exact_and_the_model_samples() {
    let s = Scratch::new("train");
    let d = data(&s);
    let a = s.path("a");
    let (ok, err) = train(&d, &a, &["--steps", "40", "--checkpoint-every", "20"]);
    assert!(ok, "{err}");
    let lines = log(&a);
    assert_eq!(lines.len(), 8);
    for l in &lines {
        assert!(
            l["step"].is_u64() && l["loss"].is_f64() && l["lr"].is_f64(),
            "{l}"
        );
    }
    let (first, last) = (
        lines[0]["loss"].as_f64().unwrap(),
        lines[7]["loss"].as_f64().unwrap(),
    );
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    // 20 steps, then resumed to 40: the same bytes as the uninterrupted run.
    let b = s.path("b");
    let (ok, err) = train(&d, &b, &["--steps", "20", "--checkpoint-every", "20"]);
    assert!(ok, "{err}");
    let (ok, err) = train(
        &d,
        &b,
        &["--steps", "40", "--checkpoint-every", "20", "--resume"],
    );
    assert!(ok, "{err}");
    assert_same_files(
        &a,
        &b,
        &[
            "train_state.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "dydiff.json",
        ],
    );
    let strip = |v: Vec<serde_json::Value>| -> Vec<(u64, f64)> {
        v.iter()
            .map(|l| (l["step"].as_u64().unwrap(), l["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(strip(log(&a)), strip(log(&b)));
    // Resuming with other flags is refused; starting over an existing run too.
    let (ok, err) = train(&d, &b, &["--steps", "60", "--seed", "9", "--resume"]);
    assert!(
        !ok && err.contains("--resume") && err.contains("--seed 9 (the run: 0)"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (ok, err) = train(&d, &b, &["--steps", "10"]);
    assert!(!ok && err.contains("--resume"), "{err}");
    // The folder is a model for dydiff sample.
    let fc = s.path("fc.npy");
    let (ok, err) = dydiff([
        "sample",
        "--model",
        a.to_str().unwrap(),
        "--input",
        d.to_str().unwrap(),
        "--out",
        fc.to_str().unwrap(),
        "--members",
        "2",
        "--steps",
        "5",
    ]);
    assert!(ok, "{err}");
    assert_eq!(npy::read(&fc).unwrap().shape, [8, 2, 3, 2, 16, 16]);
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_checkpoint() {
    let s = Scratch::new("train-nan");
    let d = data(&s);
    let out = s.path("m");
    let (ok, err) = dydiff([
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--history",
        "2",
        "--future",
        "3",
        "--batch",
        "4",
        "--steps",
        "20",
        "--lr",
        "1e30",
        "--warmup-steps",
        "1",
        "--clip",
        "1e30",
        "--checkpoint-every",
        "1",
    ]);
    assert!(!ok, "a learning rate of 1e30 must diverge");
    assert!(
        err.contains("the loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    let meta =
        dydiff::io::safetensors::read_metadata(&out.join("train_state.safetensors")).unwrap();
    let step: usize = meta[dydiff::pipelines::train::STEP_KEY].parse().unwrap();
    assert!(
        err.contains(&format!("step {step}")),
        "{err} (checkpoint at {step})"
    );
    assert!(s.leftovers().is_empty());
}

#[test]
fn bad_training_input_is_one_clear_line() {
    let s = Scratch::new("train-bad");
    let d = data(&s);
    let out = s.path("m");
    let one_line = |r: (bool, String), needles: &[&str]| {
        let (ok, err) = r;
        assert!(!ok && err.trim_end().lines().count() == 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
    };
    one_line(train(&d, &out, &["--steps", "0"]), &["--steps"]);
    one_line(
        train(&d, &out, &["--steps", "5", "--dyn-eta", "2"]),
        &["--dyn-eta"],
    );
    one_line(
        train(&s.path("none.npy"), &out, &["--steps", "5"]),
        &["none.npy"],
    );
    // 8 frames cannot hold 6 history + 3 future.
    let (ok, err) = dydiff([
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--history",
        "6",
        "--future",
        "3",
        "--steps",
        "5",
        "--warmup-steps",
        "1",
    ]);
    one_line((ok, err), &["data.npy", "L ≥ 9", "[8, 8, 2, 16, 16]"]);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"in_channels": 7, "block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    one_line(
        train(
            &d,
            &out,
            &["--steps", "5", "--unet-config", cfg.to_str().unwrap()],
        ),
        &["unet.json", "in_channels = 7", "10"],
    );
    std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "dropout": 1.5}"#).unwrap();
    one_line(
        train(
            &d,
            &out,
            &["--steps", "5", "--unet-config", cfg.to_str().unwrap()],
        ),
        &["unet.json", "dropout = 1.5", "expected 0 ≤ dropout < 1"],
    );
    // A given config trains.
    std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    let (ok, err) = train(
        &d,
        &s.path("ok"),
        &["--steps", "3", "--unet-config", cfg.to_str().unwrap()],
    );
    assert!(ok, "{err}");
}

/// A network with dropout trains: its masks are keyed by (seed, step, row), so two runs give the
/// same weights, and the weights differ from the same network trained without dropout.
#[test]
fn dropout_trains_reproducibly() {
    let s = Scratch::new("train-dropout");
    let d = data(&s);
    let net = |p: f64| {
        let cfg = s.path(&format!("unet-{p}.json"));
        std::fs::write(&cfg, format!(r#"{{"block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "dropout": {p}}}"#)).unwrap();
        cfg
    };
    let weights = |name: &str, p: f64| {
        let out = s.path(name);
        let cfg = net(p);
        let (ok, err) = train(
            &d,
            &out,
            &["--steps", "4", "--unet-config", cfg.to_str().unwrap()],
        );
        assert!(ok, "{err}");
        std::fs::read(out.join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    };
    let a = weights("a", 0.3);
    assert_eq!(a, weights("b", 0.3), "the same run, other weights");
    assert_ne!(a, weights("c", 0.0), "dropout had no effect");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("a/unet/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["dropout"], 0.3);
}

/// `--diffuse-history` (docs/process.md, “Diffusing the history”): the network takes the clean
/// history and all frames and predicts the noise of all frames, the folder says so, the loss
/// falls, a resumed run is bit-identical, resuming without the flag is refused, and the folder
/// samples (the forecast keeps the future frames).
#[test]
fn diffusing_the_history_trains_resumes_and_samples() {
    let s = Scratch::new("train-dh");
    let d = data(&s);
    let (a, b) = (s.path("a"), s.path("b"));
    let dh = ["--diffuse-history", "--checkpoint-every", "15"];
    let (ok, err) = train(&d, &a, &[&dh[..], &["--steps", "30"]].concat());
    assert!(ok, "{err}");
    let process: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("dydiff.json")).unwrap()).unwrap();
    assert_eq!(process["diffuse_history"], true);
    let unet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("unet/config.json")).unwrap())
            .unwrap();
    // history 2 + all 5 frames in, all 5 frames out, 2 channels each
    assert_eq!(
        (unet["in_channels"].as_u64(), unet["out_channels"].as_u64()),
        (Some(14), Some(10))
    );
    assert_loss_falls(&a);
    let (ok, err) = train(&d, &b, &[&dh[..], &["--steps", "15"]].concat());
    assert!(ok, "{err}");
    // `--resume` alone continues the run with its recorded flags (data, frames, process and
    // recipe: --diffuse-history among them), here to the 30 steps of the uninterrupted run
    let (ok, err) = resume_to_30(&[], &b, &[]);
    assert!(ok, "{err}");
    assert_same_files(&a, &b, &RUN_FILES);
    let f = sample_folder(&s, &a, &d, &["--ddim-eta", "0.5"]);
    assert_eq!(f.shape, [8, 2, 3, 2, 16, 16]);
}

/// `--prediction-type v_prediction` (docs/process.md, “What the network predicts”): the scheduler
/// config says so as diffusers does, the recipe names the loss, the loss falls, `--resume` alone
/// continues bit-identically, resuming with the other prediction type is refused naming both, the
/// folder samples, and DYffusion refuses the flag.
#[test]
fn velocity_prediction_trains_resumes_and_samples() {
    let s = Scratch::new("train-v");
    let d = data(&s);
    let (a, b) = (s.path("a"), s.path("b"));
    let v = [
        "--prediction-type",
        "v_prediction",
        "--checkpoint-every",
        "15",
    ];
    let (ok, err) = train(&d, &a, &[&v[..], &["--steps", "30"]].concat());
    assert!(ok, "{err}");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let sched = read(&a.join("scheduler/scheduler_config.json"));
    assert_eq!(sched["prediction_type"], "v_prediction");
    assert_eq!(
        read(&a.join("dydiff.json"))["training"]["loss"],
        "mse(v_hat, v)"
    );
    assert_loss_falls(&a);
    let (ok, err) = train(&d, &b, &[&v[..], &["--steps", "15"]].concat());
    assert!(ok, "{err}");
    let (ok, err) = resume_to_30(&[], &b, &["--prediction-type", "epsilon"]);
    assert!(
        !ok && err.contains("--prediction-type epsilon (the run: v_prediction)"),
        "{err}"
    );
    // global flags before the command do not hide the recorded ones
    let (ok, err) = resume_to_30(&["--threads", "2", "--device=cpu"], &b, &[]);
    assert!(ok, "{err}");
    assert_same_files(&a, &b, &RUN_FILES);
    let f = sample_folder(&s, &a, &d, &[]);
    assert_eq!(f.shape, [8, 2, 3, 2, 16, 16]);
    assert!(f.data.iter().all(|x| x.is_finite()));
    let c = s.path("c");
    let (ok, err) = train(
        &d,
        &c,
        &[
            "--method",
            "dyffusion",
            "--prediction-type",
            "v_prediction",
            "--steps",
            "4",
        ],
    );
    crate::common::assert_clean_failure(ok, &err, &["--prediction-type", "DYffusion"], &c, &s);
}

/// `dydiff bench noise`: with a network whose output is exactly zero (`conv_out` zeroed) the
/// error per frame is the mean square of `ε̃`, which is standard normal per frame for any
/// `dyn_eta` and either process: about 1. One entry per diffused frame; `mse_future` is the mean
/// over the future frames; the report is the same on a rerun.
#[test]
fn noise_error_of_a_silent_network_is_the_noise_variance() {
    use dydiff::io::safetensors;
    let s = Scratch::new("train-noise-error");
    for (fixture, diffused) in [
        ("sampler/model_dpm", 3),
        ("sampler/model_dyn", 3),
        ("sampler_dh/model_dyn", 5),
    ] {
        let model = s.model_copy(fixture);
        let w = model.join("unet/diffusion_pytorch_model.safetensors");
        let mut arrays: Vec<(String, Vec<usize>, Vec<f32>)> = safetensors::read(&w)
            .unwrap()
            .into_iter()
            .map(|(name, (shape, mut data))| {
                if name.starts_with("conv_out.") {
                    data.iter_mut().for_each(|v| *v = 0.0);
                }
                (name, shape, data)
            })
            .collect();
        arrays.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::write(&w, &arrays).unwrap();
        let obs =
            crate::common::fixture(&format!("{}/obs.npy", fixture.split('/').next().unwrap()));
        let run = || {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_dydiff"))
                .args(["bench", "noise", "--model", model.to_str().unwrap()])
                .args(["--data", obs.to_str().unwrap(), "--timesteps", "10,500,990"])
                .args(["--batch", "16", "--batches", "4"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
        };
        let report = run();
        let rows = report["timesteps"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        for r in rows {
            let per: Vec<f64> = r["mse_per_frame"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(per.len(), diffused, "{fixture}: {r}");
            // 16·4 windows × 512 values per frame: the mean of ε̃² has a standard error of 0.008
            for v in &per {
                assert!((v - 1.0).abs() < 0.05, "{fixture} t {}: {v}", r["t"]);
            }
            let future = per[diffused - 3..].iter().sum::<f64>() / 3.0;
            assert!(
                (r["mse_future"].as_f64().unwrap() - future).abs() < 1e-12,
                "{r}"
            );
        }
        assert_eq!(run(), report, "{fixture}: a rerun differs");
    }
}

/// The defaults are the built-in model's recipe (lr 1e-3, 100 warm-up steps, cosine decay); a
/// warm-up longer than the run is refused; `--padding-mode` is stored in dydiff.json and the
/// sampler follows it; without a terminal the run prints plain progress lines; with
/// `--val-data` it closes with a skill check against persistence.
#[test]
fn defaults_padding_progress_and_skill() {
    let s = Scratch::new("train-defaults");
    let d = data(&s);
    let out = s.path("m");
    let base = [
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--history",
        "2",
        "--future",
        "3",
    ];
    let mut short = base.to_vec();
    short.extend(["--steps", "50", "--warmup-steps", "100"]);
    let (ok, err) = dydiff(&short);
    crate::common::assert_clean_failure(ok, &err, &["--warmup-steps 100", "--steps 50"], &out, &s);
    let mut run = base.to_vec();
    run.extend([
        "--steps",
        "100",
        "--batch",
        "4",
        "--log-every",
        "50",
        "--padding-mode",
        "circular",
        "--val-data",
        d.to_str().unwrap(),
    ]);
    let (ok, err) = dydiff(&run);
    assert!(ok, "{err}");
    assert!(err.contains("step 50/100, loss"), "{err}");
    assert!(
        err.contains("validation skill") && err.contains("against persistence"),
        "{err}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dydiff.json")).unwrap()).unwrap();
    assert_eq!(json["padding_mode"], "circular");
    let t = &json["training"];
    assert_eq!(
        (&t["lr"], &t["warmup_steps"], &t["cosine"], &t["steps"]),
        (
            &serde_json::json!(1e-3),
            &serde_json::json!(100),
            &serde_json::json!(true),
            &serde_json::json!(100)
        )
    );
    // the sampler follows the folder's padding mode
    let circular = sample_folder(&s, &out, &d, &[]);
    let edited = |mode: &str| {
        let text = serde_json::to_string(&serde_json::Value::Object({
            let mut m = json.as_object().unwrap().clone();
            m.insert("padding_mode".into(), mode.into());
            m
        }))
        .unwrap();
        std::fs::write(out.join("dydiff.json"), text).unwrap();
    };
    edited("zeros");
    assert_ne!(sample_folder(&s, &out, &d, &[]).data, circular.data);
    edited("reflect");
    let fc = s.path("reflect.npy");
    let (ok, err) = dydiff([
        "sample",
        "--model",
        out.to_str().unwrap(),
        "--input",
        d.to_str().unwrap(),
        "--out",
        fc.to_str().unwrap(),
    ]);
    crate::common::assert_clean_failure(
        ok,
        &err,
        &["dydiff.json", "padding_mode", "circular"],
        &fc,
        &s,
    );
}
