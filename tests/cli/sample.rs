//! `dydiff sample` end to end (docs/process.md, docs/random.md, docs/model-folder.md, docs/cli.md),
//! against fixtures from `python/make_sampler_fixtures.py`: with `dyn_eta = 0` a loop over
//! diffusers' own `DDIMScheduler.step`, with `dyn_eta = 0.5` an independent float64 implementation
//! of docs/process.md; both must agree to 1e-3 of the forecast's largest magnitude. Then
//! reproducibility (batch, threads), seeds and members, pictures, and every kind of bad input.

use crate::common::{assert_clean_failure, dydiff, fixture, Scratch};
use dydiff::io::npy;
use std::path::{Path, PathBuf};

fn sampler(name: &str) -> PathBuf {
    fixture("sampler").join(name)
}

/// `dydiff sample` arguments for a fixture model and the fixture observations.
fn args(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["sample".into(), "--model".into(), model.into()];
    a.extend(["--input".into(), input.into(), "--out".into(), out.into()]);
    a.extend(extra.iter().map(|s| s.into()));
    a
}

fn run_ok(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> npy::Array {
    let (ok, err) = dydiff(args(model, input, out, extra));
    assert!(ok, "sample failed: {err}");
    npy::read(out).unwrap()
}

#[test]
fn forecasts_match_diffusers_and_the_spec_reference() {
    parity("sampler");
}

/// With the history diffused too (docs/process.md, “Diffusing the history”): fixtures from
/// `python/make_history_fixtures.py` (with `dyn_eta = 0` checked there against a loop over
/// diffusers' `DDIMScheduler.step` on all frames); the initial noise covers all frames.
#[test]
fn forecasts_with_the_history_diffused_match_the_reference() {
    parity("sampler_dh");
}

/// Every case of `tests/fixtures/DIR/cases.json` to 1e-3 of the forecast's largest magnitude.
fn parity(dir: &str) {
    let fx = |name: &str| fixture(dir).join(name);
    let s = Scratch::new(&format!("sample-parity-{dir}"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("cases.json")).unwrap()).unwrap();
    for (name, c) in cases.as_object().unwrap() {
        let model = fx(c["model"].as_str().unwrap());
        let steps = c["steps"].to_string();
        let seed = c["seed"].to_string();
        let eta = c["ddim_eta"].to_string();
        let eps = fx("eps.npy");
        let mut extra = vec![
            "--members",
            "3",
            "--steps",
            &steps,
            "--seed",
            &seed,
            "--ddim-eta",
            &eta,
        ];
        if c["init_noise"].as_bool().unwrap() {
            extra.extend(["--init-noise", eps.to_str().unwrap()]);
        }
        let out = s.path(&format!("{name}.npy"));
        let got = run_ok(&model, &fx("obs.npy"), &out, &extra);
        let want = npy::read(&fx(&format!("{name}.npy"))).unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        assert_eq!(got.shape, [2, 3, 3, 2, 16, 16]);
        let max = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{dir}/{name}: max |dydiff − reference| = {err:.3e}, {:.2e} of max {max:.1}",
            err / max
        );
        assert!(err <= 1e-3 * max, "{name}: error {err} > 1e-3 × {max}");
    }
}

#[test]
fn same_seed_same_forecast_for_any_batch_and_threads() {
    let s = Scratch::new("sample-repro");
    let model = sampler("model_dyn");
    let obs = sampler("obs.npy");
    let base = [
        "--members",
        "3",
        "--steps",
        "4",
        "--seed",
        "11",
        "--ddim-eta",
        "0.7",
    ];
    let reference = run_ok(&model, &obs, &s.path("a.npy"), &base);
    for (batch, threads) in [("1", "1"), ("4", "2"), ("5", "3"), ("64", "2")] {
        let mut extra = base.to_vec();
        extra.extend(["--batch", batch, "--threads", threads]);
        let got = run_ok(&model, &obs, &s.path("b.npy"), &extra);
        assert_eq!(got, reference, "--batch {batch} --threads {threads}");
    }
    // More members: the first three are the same forecasts.
    let mut extra = base.to_vec();
    extra[1] = "5";
    let more = run_ok(&model, &obs, &s.path("c.npy"), &extra);
    let per = 3 * 2 * 16 * 16;
    for n in 0..2 {
        assert_eq!(
            more.data[n * 5 * per..][..3 * per],
            reference.data[n * 3 * per..][..3 * per],
            "sample {n}: members do not depend on how many are drawn"
        );
    }
    // Members differ from each other; another seed differs.
    assert_ne!(reference.data[..per], reference.data[per..2 * per]);
    let mut extra = base.to_vec();
    extra[5] = "12";
    let other = run_ok(&model, &obs, &s.path("d.npy"), &extra);
    let diff = other
        .data
        .iter()
        .zip(&reference.data)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        diff > other.data.len() * 9 / 10,
        "seed 12 vs 11: only {diff} values differ"
    );
}

#[test]
fn pictures_one_per_sample() {
    let s = Scratch::new("sample-png");
    let dir = s.path("pics");
    let (ok, err) = dydiff(args(
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &s.path("f.npy"),
        &[
            "--members",
            "2",
            "--steps",
            "2",
            "--png",
            dir.to_str().unwrap(),
        ],
    ));
    assert!(ok, "{err}");
    for i in 0..2 {
        let bytes = std::fs::read(dir.join(format!("sample_{i:04}.png"))).unwrap();
        let decoder = png::Decoder::new(bytes.as_slice());
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        // 2 channel blocks of rows HIST, TRUTH, M1, M2, MEAN, SPREAD; 48-pixel cells.
        assert!(
            info.width > 3 * 48 && info.height > 2 * 6 * 48,
            "{}×{}",
            info.width,
            info.height
        );
    }
    assert!(!dir.join("sample_0002.png").exists());
}

/// docs/data.md, “Channel names”: the pictures name the channels from the input's channel
/// record (a longer name widens the label column), and a record naming another channel count is
/// refused before any work, naming the record.
#[test]
fn pictures_name_channels_from_the_input_record() {
    let s = Scratch::new("sample-png-names");
    let obs = s.path("obs.npy");
    std::fs::copy(sampler("obs.npy"), &obs).unwrap();
    let width = |tag: &str| {
        let dir = s.path(tag);
        let extra = [
            "--members",
            "2",
            "--steps",
            "1",
            "--png",
            dir.to_str().unwrap(),
        ];
        let (ok, err) = dydiff(args(&sampler("model_dyn"), &obs, &s.path("f.npy"), &extra));
        assert!(ok, "{err}");
        let bytes = std::fs::read(dir.join("sample_0000.png")).unwrap();
        let reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
        reader.info().width
    };
    let unnamed = width("plain");
    let record = s.path("obs.channels.json");
    let named = |names: &[&str]| {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("{{\"name\": \"{n}\"}}"))
            .collect();
        std::fs::write(&record, format!("{{\"channels\": [{}]}}", list.join(", "))).unwrap();
    };
    named(&["u", "v"]);
    assert_eq!(width("short"), unnamed);
    named(&["vorticity_at_500hpa", "v"]);
    assert!(width("long") > unnamed);
    named(&["u", "v", "w"]);
    fails(
        &s,
        &sampler("model_dyn"),
        &obs,
        &["--png", s.path("stale").to_str().unwrap()],
        &["obs.channels.json", "names 3 channels", "holds 2"],
    );
    assert!(!s.path("stale").exists());
}

/// A failing run: non-zero exit, one line naming `needles`, no panic, no output or temp file.
fn fails(s: &Scratch, model: &Path, input: &Path, extra: &[&str], needles: &[&str]) {
    let out = s.path("forecast.npy");
    let (ok, err) = dydiff(args(model, input, &out, extra));
    assert_clean_failure(ok, &err, needles, &out, s);
}

#[test]
fn bad_input_is_one_clear_line() {
    let s = Scratch::new("sample-bad");
    let model = sampler("model_dyn");
    let obs = npy::read(&sampler("obs.npy")).unwrap();
    let write = |name: &str, shape: &[usize], data: &[f32]| {
        let p = s.path(name);
        npy::write(&p, shape, data).unwrap();
        p
    };
    let good = write("obs.npy", &obs.shape, &obs.data);
    let quick = ["--steps", "2", "--members", "2"];
    // Missing, not NumPy, truncated, unreadable.
    fails(&s, &model, &s.path("nope.npy"), &quick, &["nope.npy"]);
    let junk = s.path("junk.npy");
    std::fs::write(&junk, b"hello, world").unwrap();
    fails(&s, &model, &junk, &quick, &["junk.npy", "not a NumPy"]);
    let bytes = std::fs::read(&good).unwrap();
    let trunc = s.path("trunc.npy");
    std::fs::write(&trunc, &bytes[..bytes.len() - 10]).unwrap();
    fails(&s, &model, &trunc, &quick, &["trunc.npy", "truncated"]);
    fails(&s, &model, &s.0, &quick, &[s.0.to_str().unwrap()]);
    // Wrong shapes and channel counts, naming expected and found.
    let hist_only = write("short.npy", &[2, 1, 2, 16, 16], &obs.data[..2 * 512]);
    fails(
        &s,
        &model,
        &hist_only,
        &quick,
        &["short.npy", "L ≥ 2", "[2, 1, 2, 16, 16]"],
    );
    let chans = write("chans.npy", &[2, 5, 1, 32, 16], &obs.data);
    fails(
        &s,
        &model,
        &chans,
        &quick,
        &[
            "chans.npy",
            "(N ≥ 1, L ≥ 2, 2, 16, 16)",
            "[2, 5, 1, 32, 16]",
        ],
    );
    let flat = write("flat.npy", &[obs.data.len()], &obs.data);
    fails(&s, &model, &flat, &quick, &["flat.npy", "(N, L, C, H, W)"]);
    // Non-finite values: count and first index.
    let mut bad = obs.data.clone();
    bad[700] = f32::NAN;
    bad[900] = f32::INFINITY;
    let nan = write("nan.npy", &obs.shape, &bad);
    fails(
        &s,
        &model,
        &nan,
        &quick,
        &["nan.npy", "2 NaN or infinite", "[0, 1, 0, 11, 12]"],
    );
    // Flags.
    fails(
        &s,
        &model,
        &good,
        &["--members", "0"],
        &["--members", "found 0"],
    );
    fails(
        &s,
        &model,
        &good,
        &["--steps", "0"],
        &["--steps", "found 0"],
    );
    fails(
        &s,
        &model,
        &good,
        &["--steps", "1000"],
        &["--steps", "found 1000"],
    );
    fails(
        &s,
        &model,
        &good,
        &["--ddim-eta", "1.5"],
        &["--ddim-eta", "1.5"],
    );
    fails(
        &s,
        &model,
        &good,
        &["--batch", "0"],
        &["--batch", "found 0"],
    );
    // Initial noise of the wrong shape, or not finite.
    let eps = write(
        "eps.npy",
        &[2, 2, 3, 2, 16, 16],
        &vec![0.5; 2 * 2 * 3 * 512],
    );
    fails(
        &s,
        &model,
        &good,
        &[
            "--steps",
            "2",
            "--members",
            "3",
            "--init-noise",
            eps.to_str().unwrap(),
        ],
        &["eps.npy", "[2, 3, 3, 2, 16, 16]", "[2, 2, 3, 2, 16, 16]"],
    );
    let mut e = vec![0.5; 2 * 2 * 3 * 512];
    e[3] = f32::NAN;
    let eps_nan = write("eps_nan.npy", &[2, 2, 3, 2, 16, 16], &e);
    fails(
        &s,
        &model,
        &good,
        &[
            "--steps",
            "2",
            "--members",
            "2",
            "--init-noise",
            eps_nan.to_str().unwrap(),
        ],
        &["eps_nan.npy", "1 NaN"],
    );
}

#[test]
fn float64_observations_are_converted() {
    let s = Scratch::new("sample-f64");
    let obs = npy::read(&sampler("obs.npy")).unwrap();
    // A float64 .npy with the same values.
    let mut bytes = npy::encode(&obs.shape, &obs.data);
    let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[at + 2] = b'8';
    bytes.truncate(header_end);
    for v in &obs.data {
        bytes.extend(f64::from(*v).to_le_bytes());
    }
    let p64 = s.path("obs64.npy");
    std::fs::write(&p64, bytes).unwrap();
    let model = sampler("model_dpm");
    let quick = ["--steps", "3", "--members", "2"];
    let a = run_ok(&model, &sampler("obs.npy"), &s.path("a.npy"), &quick);
    let b = run_ok(&model, &p64, &s.path("b.npy"), &quick);
    assert_eq!(a, b);
}

#[test]
fn bad_model_folders_are_one_clear_line() {
    let s = Scratch::new("sample-model");
    let obs = sampler("obs.npy");
    let quick = ["--steps", "2", "--members", "2"];
    fails(
        &s,
        &s.path("missing"),
        &obs,
        &quick,
        &["missing", "model folder not found"],
    );
    let edit = |file: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let m = s.model_copy("sampler/model_dyn");
        let p = m.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        m
    };
    let m = edit("dydiff.json", &|v| v["dyn_eta"] = 1.5.into());
    fails(&s, &m, &obs, &quick, &["dydiff.json", "dyn_eta = 1.5"]);
    let m = edit("dydiff.json", &|v| v["future"] = 4.into());
    fails(&s, &m, &obs, &quick, &["in_channels = 10", "future 4"]);
    let m = edit("dydiff.json", &|v| v["colour"] = "red".into());
    fails(&s, &m, &obs, &quick, &["dydiff.json", "colour"]);
    let m = edit("dydiff.json", &|v| v["method"] = "dyffusion".into());
    fails(&s, &m, &obs, &quick, &["dydiff.json", "dyffusion"]);
    let m = edit("scheduler/scheduler_config.json", &|v| {
        v["clip_sample"] = true.into()
    });
    fails(
        &s,
        &m,
        &obs,
        &quick,
        &["scheduler_config.json", "clip_sample"],
    );
    let m = edit("unet/config.json", &|v| v["act_fn"] = "gelu".into());
    fails(&s, &m, &obs, &quick, &["config.json", "act_fn"]);
    let m = s.model_copy("sampler/model_dyn");
    std::fs::remove_file(m.join("scheduler/scheduler_config.json")).unwrap();
    fails(&s, &m, &obs, &quick, &["scheduler_config.json"]);
    let m = s.model_copy("sampler/model_dyn");
    let w = m.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &s,
        &m,
        &obs,
        &quick,
        &["diffusion_pytorch_model.safetensors"],
    );
    std::fs::remove_file(&w).unwrap();
    fails(
        &s,
        &m,
        &obs,
        &quick,
        &["diffusion_pytorch_model.safetensors"],
    );
}

/// A model folder written by `Model::save` loads again and forecasts the same bits, and the
/// scheduler config it writes is the one of docs/model-folder.md, “Scheduler configuration”.
#[test]
fn model_folder_roundtrip() {
    let s = Scratch::new("sample-save");
    let m = dydiff::model::Model::load(&sampler("model_dyn"), dydiff::Device::Cpu).unwrap();
    let saved = s.path("saved");
    m.save(&saved).unwrap();
    let back = dydiff::model::Model::load(&saved, dydiff::Device::Cpu).unwrap();
    assert_eq!(back.process, m.process);
    assert_eq!(back.scheduler, m.scheduler);
    let sched: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(saved.join("scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sched["clip_sample"], false);
    assert_eq!(sched["timestep_spacing"], "leading");
    let quick = ["--steps", "3", "--members", "2", "--seed", "4"];
    let a = run_ok(
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &s.path("a.npy"),
        &quick,
    );
    let b = run_ok(&saved, &sampler("obs.npy"), &s.path("b.npy"), &quick);
    assert_eq!(a, b);
    assert!(s.leftovers().is_empty());
}

/// `dydiff sample` with no model or input forecasts the built-in demo with the built-in model
/// and draws its pictures.
#[test]
fn built_in_default_forecasts_the_demo() {
    let s = Scratch::new("sample-default");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dydiff"))
        .current_dir(&s.0)
        .args(["sample", "--steps", "3", "--members", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fc = npy::read(&s.path("forecast.npy")).unwrap();
    assert_eq!(fc.shape, [4, 2, 6, 2, 32, 32]);
    assert!(fc.data.iter().all(|v| v.is_finite()));
    for i in 0..4 {
        assert!(s
            .path("forecast_png")
            .join(format!("sample_{i:04}.png"))
            .exists());
    }
    // With a model, the input must be given.
    let (ok, err) = dydiff(["sample", "--model", sampler("model_dyn").to_str().unwrap()]);
    assert!(!ok && err.contains("--input"), "{err}");
}

/// `--lead` (docs/process.md, “Forecasting beyond one window”): two windows and a part of a
/// third; the first window is the plain forecast; the second equals a second call done by hand
/// on each member's own history (its observations, then its first window), with the noise of
/// that member's second window (step `1 << 24`) given as `--init-noise`; and the roll-out does
/// not depend on `--batch` or `--threads`.
#[test]
fn a_roll_out_is_chained_windows() {
    use dydiff::rng::{NoiseKey, NoiseRow, Purpose};
    use dydiff::{Device, Tensor};
    let s = Scratch::new("sample-lead");
    let model = sampler("model_dyn");
    let obs = npy::read(&sampler("obs.npy")).unwrap();
    let (n, l, c, h, w) = (2, 5, 2, 16, 16);
    let (hist, fut, m, e) = (2, 3, 3, c * h * w);
    assert_eq!(obs.shape, [n, l, c, h, w]);
    let base = ["--members", "3", "--steps", "4", "--seed", "5"];
    let run = |name: &str, input: &Path, extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        run_ok(&model, input, &s.path(name), &a)
    };
    // deterministic given the initial noise (σ-noise would be keyed by the by-hand call's rows)
    let plain = run("plain.npy", &sampler("obs.npy"), &["--ddim-eta", "0"]);
    let lead = 2 * fut + 1;
    let rolled = run(
        "rolled.npy",
        &sampler("obs.npy"),
        &["--lead", "7", "--ddim-eta", "0"],
    );
    assert_eq!(rolled.shape, [n, m, lead, c, h, w]);
    for pair in 0..n * m {
        assert_eq!(
            rolled.data[pair * lead * e..][..fut * e],
            plain.data[pair * fut * e..][..fut * e],
            "pair {pair}: the first window is the plain forecast"
        );
    }
    // The second window by hand: one sequence per (sample, member), member 0 of its own call.
    let mut hist2 = Vec::new();
    for pair in 0..n * m {
        let traj: Vec<f32> = obs.data[(pair / m) * l * e..][..hist * e]
            .iter()
            .chain(&rolled.data[pair * lead * e..][..fut * e])
            .copied()
            .collect();
        hist2.extend_from_slice(&traj[(hist + fut - hist) * e..][..hist * e]);
    }
    let obs2 = s.path("obs2.npy");
    npy::write(&obs2, &[n * m, hist, c, h, w], &hist2).unwrap();
    let rows: Vec<NoiseRow> = (0..n * m)
        .map(|pair| NoiseRow {
            sample: (pair / m) as u32,
            member: (pair % m) as u32,
        })
        .collect();
    let key = NoiseKey {
        seed: 5,
        purpose: Purpose::InitNoise,
        step: 1 << 24,
    };
    let eps = Tensor::randn(key, &rows, &[n * m, fut * e], Device::Cpu).unwrap();
    let eps_file = s.path("eps2.npy");
    npy::write(&eps_file, &[n * m, 1, fut, c, h, w], &eps.to_vec().unwrap()).unwrap();
    let second = run_ok(
        &model,
        &obs2,
        &s.path("second.npy"),
        &[
            "--members",
            "1",
            "--steps",
            "4",
            "--ddim-eta",
            "0",
            "--init-noise",
            eps_file.to_str().unwrap(),
        ],
    );
    for pair in 0..n * m {
        assert!(
            rolled.data[pair * lead * e + fut * e..][..fut * e]
                == second.data[pair * fut * e..][..fut * e],
            "pair {pair}: the second window differs from the call by hand"
        );
    }
    // Batch and threads, with step noise too.
    let noisy = run(
        "noisy1.npy",
        &sampler("obs.npy"),
        &["--lead", "7", "--ddim-eta", "0.6"],
    );
    let other = run(
        "noisy2.npy",
        &sampler("obs.npy"),
        &[
            "--lead",
            "7",
            "--ddim-eta",
            "0.6",
            "--batch",
            "4",
            "--threads",
            "3",
        ],
    );
    assert_eq!(noisy, other);
    assert_ne!(
        noisy.data[fut * e..][..fut * e],
        rolled.data[fut * e..][..fut * e]
    );
}

/// `sample` records the forecast's window beside it (`FORECAST.window.json`) and `eval` scores
/// the truth frames that were forecast: an input longer than the window is scored at frames
/// `P+1 … P+S` (the same report as a truth of exactly those frames), not its last `S` frames;
/// without a record a longer truth is refused naming `--truth-start`, which selects frames; a
/// record of another forecast is refused.
#[test]
fn eval_scores_the_frames_the_window_record_names() {
    let s = Scratch::new("sample-window");
    let obs = npy::read(&sampler("obs.npy")).unwrap();
    let (n, l, e) = (2, 5, 2 * 16 * 16);
    // the observations followed by 3 frames of other values: a longer truth file
    let extra = 3;
    let mut long = Vec::new();
    for i in 0..n {
        long.extend_from_slice(&obs.data[i * l * e..][..l * e]);
        long.extend((0..extra * e).map(|k| ((k % 7) as f32 - 3.0) * 0.5));
    }
    let input = s.path("long.npy");
    std::fs::write(&input, npy::encode(&[n, l + extra, 2, 16, 16], &long)).unwrap();
    let fc = s.path("fc.npy");
    run_ok(
        &sampler("model_dyn"),
        &input,
        &fc,
        &["--steps", "3", "--members", "3"],
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("fc.window.json")).unwrap()).unwrap();
    assert_eq!(
        (
            &record["first_forecast_frame"],
            &record["lead"],
            &record["input_frames"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(8)
        )
    );
    // the forecast frames 2..5, cut out by hand
    let mut cut = Vec::new();
    for i in 0..n {
        cut.extend_from_slice(&long[(i * (l + extra) + 2) * e..][..3 * e]);
    }
    let truth = s.path("truth.npy");
    std::fs::write(&truth, npy::encode(&[n, 3, 2, 16, 16], &cut)).unwrap();
    let eval = |truth: &Path, extra: &[&str]| {
        let json = s.path("report.json");
        let _ = std::fs::remove_file(&json);
        let mut a = vec![
            "eval",
            "--forecast",
            fc.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ];
        a.extend(extra);
        let (ok, err) = dydiff(&a);
        (ok, err, std::fs::read_to_string(&json).unwrap_or_default())
    };
    let (ok, err, want) = eval(&truth, &[]);
    assert!(ok, "{err}");
    let (ok, err, got) = eval(&input, &[]);
    assert!(ok, "{err}");
    assert_eq!(
        got, want,
        "the long truth is not scored at the forecast's frames"
    );
    let (ok, err, got) = eval(&input, &["--truth-start", "2"]);
    assert!(ok, "{err}");
    assert_eq!(got, want);
    let (ok, err, _) = eval(&input, &["--truth-start", "6"]);
    assert_clean_failure(
        ok,
        &err,
        &["long.npy", "--truth-start"],
        &s.path("report.json"),
        &s,
    );
    // without the record, a longer truth is refused; a truth of S frames still scores
    std::fs::remove_file(s.path("fc.window.json")).unwrap();
    let (ok, err, _) = eval(&input, &[]);
    assert_clean_failure(
        ok,
        &err,
        &["long.npy", "8 frames", "--truth-start"],
        &s.path("report.json"),
        &s,
    );
    let (ok, err, got) = eval(&truth, &[]);
    assert!(ok, "{err}");
    assert_eq!(got, want);
    // a record that belongs to another forecast
    std::fs::write(
        s.path("fc.window.json"),
        r#"{"first_forecast_frame": 2, "lead": 6, "samples": 2}"#,
    )
    .unwrap();
    let (ok, err, _) = eval(&input, &[]);
    assert_clean_failure(
        ok,
        &err,
        &["fc.window.json", "another forecast"],
        &s.path("report.json"),
        &s,
    );
}
