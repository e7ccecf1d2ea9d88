//! DYffusion (docs/dyffusion.md) against the independent Python implementation of
//! python/make_dyffusion_fixtures.py (diffusers networks with random weights, dropout 0): cold
//! sampling with `additional_steps` 0 and 2, with and without refinement, over a two-window
//! roll-out through `dydiff sample`; the stage-2 loss and its gradient at fixed `n`. Tolerance:
//! 1e-4 relative to the largest value (float32 networks, differently ordered sums). Then what the
//! fixtures cannot show: members differing through the interpolator's dropout, independent of
//! `--batch`, and the refusals.

use crate::common::{assert_clean_failure, dydiff, fixture, Scratch};
use dydiff::io::{npy, safetensors};
use dydiff::model::dyffusion::{forecaster_loss, CallKeys, Calls, DyffusionConfig};
use dydiff::rng::{NoiseRow, Purpose};
use dydiff::tensor::autograd::{backward, Tape};
use dydiff::{Device, Tensor};
use serde_json::Value;
use std::path::Path;

fn close(got: &[f32], want: &[f32], what: &str) {
    close_floor(got, want, 0.0, what)
}

/// [`close`] relative to the largest of `want` or `floor`, whichever is larger (a gradient that is
/// zero in exact arithmetic, such as an attention key's bias, is rounding noise in both).
fn close_floor(got: &[f32], want: &[f32], floor: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: {g} vs reference {w} (scale {scale})"
        );
    }
}

/// A copy of the fixture model with `dydiff.json` edited by `edit`.
fn model(s: &Scratch, name: &str, edit: impl Fn(&mut Value)) -> std::path::PathBuf {
    let dir = s.model_copy("dyffusion/model");
    let dst = s.path(name);
    std::fs::rename(&dir, &dst).unwrap();
    let path = dst.join("dydiff.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dst
}

fn sample(model: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let obs = fixture("dyffusion/obs.npy");
    let mut args = vec![
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--input",
        obs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    dydiff(args)
}

#[test]
fn cold_sampling_matches_the_reference_implementation() {
    let s = Scratch::new("dyf-cold");
    for k in [0u64, 2] {
        for refine in [true, false] {
            let m = model(&s, &format!("m{k}{refine}"), |v| {
                v["additional_steps"] = k.into();
                v["refine"] = refine.into();
            });
            let out = s.path(&format!("f{k}{refine}.npy"));
            let (ok, err) = sample(&m, &out, &["--members", "2", "--lead", "6", "--batch", "3"]);
            assert!(ok, "{err}");
            // forecaster calls N = 3 + k, interpolator calls 2N − 3, refinement 2, per window
            let calls = (3 + k) + (2 * (3 + k) - 3) + if refine { 2 } else { 0 };
            assert!(
                err.contains(&format!("{} network calls per member", 2 * calls)),
                "{err}"
            );
            let got = npy::read(&out).unwrap();
            assert_eq!(got.shape, vec![2, 2, 6, 2, 8, 8]);
            let tag = if refine { "refine" } else { "plain" };
            let want = npy::read(&fixture(&format!("dyffusion/cold_k{k}_{tag}.npy"))).unwrap();
            let e = 6 * 2 * 8 * 8;
            for n in 0..2 {
                for member in 0..2 {
                    close(
                        &got.data[(n * 2 + member) * e..][..e],
                        &want.data[n * e..][..e],
                        &format!("k {k}, {tag}, sample {n}, member {member}"),
                    );
                }
            }
        }
    }
}

#[test]
fn the_stage_2_loss_and_its_gradient_match_the_reference() {
    let dir = fixture("dyffusion/model");
    for k in [0usize, 2] {
        let m = dydiff::model::load_dyffusion(&dir, Device::Cpu).unwrap();
        let config = DyffusionConfig {
            additional_steps: k,
            ..m.config.clone()
        };
        let arrays =
            safetensors::read(&fixture(&format!("dyffusion/loss_k{k}.safetensors"))).unwrap();
        let get = |name: &str| arrays[name].clone();
        let (s0, x0) = get("x0");
        let (sh, xh) = get("xh");
        let n: Vec<usize> = get("n").1.iter().map(|&v| v as usize).collect();
        let rows: Vec<NoiseRow> = (0..n.len() as u32)
            .map(|b| NoiseRow {
                sample: b,
                member: 0,
            })
            .collect();
        let interpolator = m.interpolator.frozen().unwrap();
        let forecaster = m.forecaster.as_ref().unwrap();
        let keys = CallKeys {
            seed: 0,
            dropout: Purpose::TrainDropout,
            noise: Purpose::TrainNoise,
            base: 4,
        };
        let calls = Calls::new(
            &config,
            &interpolator,
            forecaster,
            &rows,
            keys,
            true,
            Device::Cpu,
        )
        .unwrap();
        let x0 = Tensor::from_vec(x0, &s0, Device::Cpu).unwrap();
        let xh = Tensor::from_vec(xh, &sh, Device::Cpu).unwrap();
        {
            let _tape = Tape::start();
            let loss = forecaster_loss(&calls, &x0, &xh, &n, [1.0, 1.0]).unwrap();
            close(
                &[loss.scalar().unwrap()],
                &get("loss").1,
                &format!("k {k}: loss"),
            );
            backward(&loss).unwrap();
        }
        let largest = forecaster
            .params()
            .iter()
            .flat_map(|(name, _)| get(&format!("grad/{name}")).1)
            .fold(0f32, |m, v| m.max(v.abs()));
        for (name, p) in forecaster.params() {
            let want = get(&format!("grad/{name}")).1;
            let got = p.grad().map(|g| g.to_vec().unwrap()).unwrap_or_default();
            let what = format!("k {k}: gradient of {name}");
            close_floor(&got, &want, 1e-4 * largest, &what);
            p.zero_grad();
        }
        for (name, p) in interpolator.params() {
            assert!(
                p.grad().is_none(),
                "the frozen interpolator's {name} got a gradient"
            );
        }
    }
}

#[test]
fn members_differ_by_the_interpolators_dropout_whatever_the_batch() {
    let s = Scratch::new("dyf-drop");
    let m = model(&s, "m", |v| v["interpolator_dropout"] = 0.25.into());
    let cfg = m.join("interpolator/config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["dropout"] = 0.25.into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = s.path(name);
        let (ok, err) = sample(
            &m,
            &out,
            &[&["--members", "3", "--lead", "5"], extra].concat(),
        );
        assert!(ok, "{err}");
        std::fs::read(out).unwrap()
    };
    let a = run("a.npy", &["--batch", "1"]);
    assert_eq!(
        a,
        run("b.npy", &["--batch", "4"]),
        "--batch changed the forecast"
    );
    assert_eq!(a, run("c.npy", &["--batch", "6", "--threads", "1"]));
    assert_ne!(
        a,
        run("d.npy", &["--batch", "4", "--seed", "1"]),
        "the seed had no effect"
    );
    let f = npy::read(&s.path("a.npy")).unwrap();
    let e = 5 * 2 * 8 * 8;
    assert_ne!(
        f.data[..e],
        f.data[e..2 * e],
        "members 0 and 1 are the same"
    );
    // dropout 0 in dydiff.json but not in the network: refused, naming the file
    let bad = model(&s, "bad", |_| {});
    std::fs::write(bad.join("interpolator/config.json"), c.to_string()).unwrap();
    let out = s.path("x.npy");
    let (ok, err) = sample(&bad, &out, &[]);
    assert_clean_failure(
        ok,
        &err,
        &[
            "interpolator/config.json",
            "dropout = 0.25",
            "interpolator_dropout = 0",
        ],
        &out,
        &s,
    );
}

#[test]
fn ddim_options_and_half_trained_folders_are_refused() {
    let s = Scratch::new("dyf-refuse");
    let m = model(&s, "m", |_| {});
    let out = s.path("f.npy");
    for (flag, value) in [("--steps", "10"), ("--ddim-eta", "0.5")] {
        let (ok, err) = sample(&m, &out, &[flag, value]);
        assert_clean_failure(ok, &err, &[flag, "DYffusion", "leave"], &out, &s);
    }
    std::fs::remove_dir_all(m.join("forecaster")).unwrap();
    let (ok, err) = sample(&m, &out, &[]);
    assert_clean_failure(ok, &err, &["forecaster/", "--stage forecaster"], &out, &s);
    let m2 = model(&s, "m2", |v| v["future"] = 1.into());
    let (ok, err) = sample(&m2, &out, &[]);
    assert_clean_failure(
        ok,
        &err,
        &["dydiff.json", "future = 1", "at least 2"],
        &out,
        &s,
    );
}

/// Sequences with temporal structure, `(6, 10, 2, 8, 8)`.
fn train_data(s: &Scratch) -> std::path::PathBuf {
    let (n, l, e) = (6, 10, 2 * 8 * 8);
    let noise = crate::common::rand_vec(n * l * e, 17);
    let mut x = vec![0.0f32; n * l * e];
    for i in 0..n {
        for f in 0..l {
            for j in 0..e {
                let prev = if f > 0 {
                    x[(i * l + f - 1) * e + j]
                } else {
                    0.0
                };
                x[(i * l + f) * e + j] = 0.9 * prev + noise[(i * l + f) * e + j];
            }
        }
    }
    let p = s.path("data.npy");
    std::fs::write(&p, npy::encode(&[n, l, 2, 8, 8], &x)).unwrap();
    p
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let net = r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8}"#;
    let cfg = out.with_extension("unet.json");
    std::fs::write(&cfg, net).unwrap();
    let mut a = vec![
        "train",
        "--method",
        "dyffusion",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--history",
        "2",
        "--future",
        "3",
        "--batch",
        "3",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        // constant after the warm-up, so that a stage may be extended with --resume
        "--constant-lr",
        "--log-every",
        "2",
        "--unet-config",
        cfg.to_str().unwrap(),
    ];
    a.extend(extra);
    dydiff(a)
}

/// Both stages train into one folder that diffusers-style loading and `dydiff sample` read; a run
/// split into `--stage interpolator`, `--stage forecaster` and a `--resume` that extends it gives
/// the same weights to the bit as the uninterrupted run.
#[test]
fn both_stages_train_resume_exactly_and_sample() {
    let s = Scratch::new("dyf-train");
    let d = train_data(&s);
    let (a, b) = (s.path("a"), s.path("b"));
    let common = [
        "--interpolator-steps",
        "4",
        "--interpolator-dropout",
        "0.2",
        "--additional-steps",
        "1",
        "--checkpoint-every",
        "2",
    ];
    let (ok, err) = train(&d, &a, &[&common[..], &["--steps", "6"]].concat());
    assert!(ok, "{err}");
    let (ok, err) = train(
        &d,
        &b,
        &[&common[..], &["--steps", "4", "--stage", "interpolator"]].concat(),
    );
    assert!(ok, "{err}");
    assert!(!b.join("forecaster").exists());
    let (ok, err) = train(
        &d,
        &b,
        &[&common[..], &["--steps", "3", "--stage", "forecaster"]].concat(),
    );
    assert!(ok, "{err}");
    let (ok, err) = train(
        &d,
        &b,
        &[&common[..], &["--steps", "6", "--resume"]].concat(),
    );
    assert!(ok, "{err}");
    for f in [
        "interpolator/diffusion_pytorch_model.safetensors",
        "forecaster/diffusion_pytorch_model.safetensors",
        "train_state_forecaster.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between the whole and the split run"
        );
    }
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("dydiff.json")).unwrap()).unwrap();
    assert_eq!(v["method"], "dyffusion");
    assert_eq!(v["additional_steps"], 1);
    let icfg: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("interpolator/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (icfg["in_channels"].as_u64(), icfg["out_channels"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(icfg["dropout"], 0.2);
    let log = std::fs::read_to_string(a.join("train_log_forecaster.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    let out = s.path("f.npy");
    let obs = d.to_str().unwrap();
    let (ok, err) = dydiff([
        "sample",
        "--model",
        a.to_str().unwrap(),
        "--input",
        obs,
        "--out",
        out.to_str().unwrap(),
        "--members",
        "2",
        "--lead",
        "4",
    ]);
    assert!(ok, "{err}");
    assert_eq!(npy::read(&out).unwrap().shape, vec![6, 2, 4, 2, 8, 8]);
    // refusals: an existing run without --resume; stage 2 without an interpolator; horizon 1
    let (ok, err) = train(&d, &a, &["--steps", "6"]);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, err) = train(&d, &s.path("c"), &["--steps", "2", "--stage", "forecaster"]);
    assert!(!ok && err.contains("trained interpolator"), "{err}");
    let (ok, err) = dydiff([
        "train",
        "--method",
        "dyffusion",
        "--data",
        d.to_str().unwrap(),
        "--out",
        s.path("e").to_str().unwrap(),
        "--history",
        "2",
        "--future",
        "1",
    ]);
    assert!(
        !ok && err.contains("--future 1") && err.lines().count() == 1,
        "{err}"
    );
}

/// The forecaster's other conditions: `none` (input `x̃` alone) and `data+noise` (the history
/// blended with noise drawn per call, keyed like the masks): the folder's channels follow, and
/// the forecast does not depend on `--batch`; with `data+noise` the members differ even without
/// dropout.
#[test]
fn the_other_forecaster_conditions_train_and_sample() {
    let s = Scratch::new("dyf-cond");
    let d = train_data(&s);
    for (cond, in_ch) in [("none", 2u64), ("data+noise", 6)] {
        let m = s.path(cond);
        let (ok, err) = train(
            &d,
            &m,
            &[
                "--steps",
                "2",
                "--forecaster-condition",
                cond,
                "--interpolator-dropout",
                "0",
            ],
        );
        assert!(ok, "{err}");
        let f: Value = serde_json::from_str(
            &std::fs::read_to_string(m.join("forecaster/config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(f["in_channels"].as_u64(), Some(in_ch), "{cond}");
        let run = |batch: &str| {
            let out = s.path(&format!("{cond}-{batch}.npy"));
            let (ok, err) = dydiff([
                "sample",
                "--model",
                m.to_str().unwrap(),
                "--input",
                d.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--members",
                "2",
                "--batch",
                batch,
            ]);
            assert!(ok, "{err}");
            npy::read(&out).unwrap().data
        };
        let a = run("1");
        assert_eq!(a, run("5"), "{cond}: --batch changed the forecast");
        let e = 3 * 2 * 8 * 8;
        assert_eq!(
            a[..e] != a[e..2 * e],
            cond == "data+noise",
            "{cond}: members 0 and 1 (no dropout)"
        );
    }
}

/// Every file of a folder, by path, for comparing it before and after a refused command.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A forecaster stays paired with the interpolator it was trained on (Rose-STL-Lab/dyffusion#7):
/// an unfinished interpolator (here: planned for 4 steps, stopped at 2) is named by `sample`
/// with the command that finishes it, and a forecaster started on it says so; once a forecaster
/// is trained, training its interpolator further is refused before any work (the folder is left
/// as it was), with `--stage interpolator` or `--interpolator-steps`, and so is a forecaster
/// already at `--steps`.
#[test]
fn a_forecaster_stays_paired_with_its_interpolator() {
    let s = Scratch::new("dyf-pairs");
    let d = train_data(&s);
    let m = s.path("m");
    let common = ["--checkpoint-every", "2"];
    let (ok, err) = train(
        &d,
        &m,
        &[&common[..], &["--steps", "2", "--stage", "interpolator"]].concat(),
    );
    assert!(ok, "{err}");
    let json = m.join("dydiff.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    v["training"]["interpolator"]["steps"] = 4.into();
    std::fs::write(&json, serde_json::to_string(&v).unwrap()).unwrap();
    let out = s.path("f.npy");
    let (ok, err) = sample(&m, &out, &[]);
    assert_clean_failure(
        ok,
        &err,
        &["unfinished (step 2 of 4)", "--stage interpolator --resume"],
        &out,
        &s,
    );
    let (ok, err) = train(
        &d,
        &m,
        &[&common[..], &["--steps", "2", "--stage", "forecaster"]].concat(),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("step 2 of its 4"),
        "{err}"
    );
    let before = snapshot(&m);
    for (extra, needles) in [
        (
            vec!["--steps", "4", "--stage", "interpolator", "--resume"],
            vec!["--steps 4", "forecaster", "never trained with"],
        ),
        (
            vec!["--interpolator-steps", "4", "--steps", "4", "--resume"],
            vec!["--interpolator-steps 4", "forecaster", "never trained with"],
        ),
        (
            vec!["--steps", "2", "--stage", "forecaster", "--resume"],
            vec!["--steps 2", "already at step 2"],
        ),
    ] {
        let (ok, err) = train(&d, &m, &[&common[..], &extra].concat());
        assert!(
            !ok && err.trim_end().lines().count() == 1,
            "{extra:?}: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{extra:?}: {err} lacks {n}");
        }
        assert!(snapshot(&m) == before, "{extra:?} changed the folder");
    }
}
