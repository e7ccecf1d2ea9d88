//! `dydiff info` and `--device cuda` on this machine, built with or without the `cuda` feature
//! (CI runs both): the devices are listed with the kernels' architectures, and a GPU that cannot
//! be used is refused in one line that says why — built without CUDA, no kernels, no driver.

use crate::common::training::{run_flags, same_run, small_net, write_sequences};
use crate::common::{assert_clean_failure, dydiff, Scratch};
use std::process::Command;

/// `dydiff` with `--device cuda` on the emulator, or on GPU 0 with DYDIFF_TEST_DEVICE=cuda.
fn on_device() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dydiff"));
    if std::env::var("DYDIFF_TEST_DEVICE").as_deref() != Ok("cuda") {
        c.env("DYDIFF_CUDA_EMULATOR", "1");
    }
    c
}

fn info() -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
        .args(["--device", "tpu", "info"]) // info checks no device
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn info_lists_the_cpu_and_what_cuda_has() {
    let (ok, out) = info();
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("cpu: ") && lines[0].contains(" core"),
        "{out}"
    );
    // the CPU's bf16 products, as the library detects them
    let bf16 = if dydiff::backend::cpu::amx::available() {
        "AMX-BF16 tiles (tdpbf16ps)"
    } else if dydiff::backend::cpu::bf16::available() {
        "AVX512-BF16 (vdpbf16ps)"
    } else {
        "none on this CPU (float32 instead)"
    };
    assert_eq!(
        lines[1],
        format!("cpu: bf16 products (--precision bf16): {bf16}"),
        "{out}"
    );
    if cfg!(feature = "cuda") {
        assert!(
            lines[2] == "cuda kernels: machine code for sm_80, sm_90, PTX for compute_90"
                || lines[2].starts_with("cuda kernels: machine code for sm_")
                || lines[2] == "cuda kernels: none (nvcc was not found when this binary was built)",
            "{out}"
        );
        assert!(
            lines.len() >= 4,
            "a line per GPU, or why there is none: {out}"
        );
    } else {
        assert_eq!(
            lines[2], "cuda: this binary was built without CUDA (--features cuda)",
            "{out}"
        );
    }
}

#[test]
fn a_gpu_that_cannot_be_used_is_refused_with_the_reason() {
    let (_, listing) = info();
    let s = Scratch::new("cuda-cli");
    let out = s.path("f.npy");
    let reason = if !cfg!(feature = "cuda") {
        "dydiff was built without CUDA (rebuild with --features cuda)"
    } else if listing.contains("cuda kernels: none") {
        "this dydiff holds no CUDA kernels"
    } else if listing.contains("no CUDA driver") {
        "no CUDA driver on this machine (libcuda not found)"
    } else {
        return; // a machine with a usable GPU (or the stand-in driver): nothing to refuse
    };
    for device in ["cuda", "cuda:1"] {
        let (ok, err) = dydiff(["--device", device, "sample", "--out", out.to_str().unwrap()]);
        assert_clean_failure(
            ok,
            &err,
            &[&format!("--device {device}: "), reason],
            &out,
            &s,
        );
    }
}

/// `dydiff sample --device cuda` end to end (on the emulator: DYDIFF_CUDA_EMULATOR=1): the
/// observations copied in, the initial and step noise drawn on the device, the network and the
/// DDIM steps there (a CUDA graph replayed from the second step on), one copy out — equal to the
/// CPU's forecast with float32 products (the same noise: the device draws the CPU's numbers), and
/// within TF32 rounding with tensor-core products.
#[test]
fn sample_on_the_cuda_backend_equals_the_cpu() {
    let s = Scratch::new("cuda-sample");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler");
    let run = |device: &str, precision: &str, out: &str| {
        let o = on_device()
            .args([
                "--device",
                device,
                "--precision",
                precision,
                "sample",
                "--model",
            ])
            .arg(fixtures.join("model_dyn"))
            .arg("--input")
            .arg(fixtures.join("obs.npy"))
            .args([
                "--members",
                "2",
                "--steps",
                "4",
                "--ddim-eta",
                "0.5",
                "--seed",
                "9",
                "--out",
            ])
            .arg(s.path(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dydiff::io::npy::read(&s.path(out)).unwrap()
    };
    let cpu = run("cpu", "tf32", "cpu.npy");
    let scale = cpu.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (precision, bound) in [("fp32", 1e-4), ("tf32", 5e-3)] {
        let gpu = run("cuda", precision, &format!("{precision}.npy"));
        assert_eq!(gpu.shape, cpu.shape);
        let err = gpu
            .data
            .iter()
            .zip(&cpu.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= bound * scale,
            "{precision}: max |gpu − cpu| {err}, max |cpu| {scale}"
        );
    }
}

/// `dydiff train` on `device` (`cuda` runs on the emulator) with a small network: 4 steps,
/// checkpoints every 2.
fn train_on(s: &Scratch, device: &str, out: &str, extra: &[&str]) -> std::path::PathBuf {
    let data = s.path("data.npy");
    if !data.exists() {
        write_sequences(&data);
    }
    let net = small_net(s);
    let out = s.path(out);
    let o = on_device()
        .args(["--device", device, "--precision", "fp32", "train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--unet-config")
        .arg(&net)
        .args(run_flags(3))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{device} {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `dydiff train --device cuda` (float32 products, on the emulator) follows the CPU's run: the
/// same losses within 1e-4 and, after 4 steps of AdamW, the same state (see `same_run`: the two
/// backends sum in different orders, and Adam amplifies a gradient's rounding up to its sign);
/// a run stopped at step 2 and resumed equals the
/// uninterrupted one to the bit on the same device.
#[test]
fn training_on_the_cuda_backend_equals_the_cpu() {
    let s = Scratch::new("cuda-train");
    let cpu = train_on(&s, "cpu", "cpu", &["--steps", "4"]);
    let gpu = train_on(&s, "cuda", "gpu", &["--steps", "4"]);
    same_run(
        &cpu,
        &gpu,
        "train_state.safetensors",
        "train_log.jsonl",
        1e-4,
    );
    train_on(&s, "cuda", "split", &["--steps", "2"]);
    let split = train_on(&s, "cuda", "split", &["--steps", "4", "--resume"]);
    for f in [
        "train_state.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(gpu.join(f)).unwrap(),
            std::fs::read(split.join(f)).unwrap(),
            "{f}: the resumed run differs from the whole one"
        );
    }
}

/// Both stages of DYffusion train on the device as on the CPU (dropout in the interpolator, the
/// L1 loss of the forecaster's stage), within the same tolerance.
#[test]
fn dyffusion_training_on_the_cuda_backend_equals_the_cpu() {
    let s = Scratch::new("cuda-train-dyf");
    let extra = [
        "--method",
        "dyffusion",
        "--steps",
        "4",
        "--interpolator-steps",
        "2",
        "--interpolator-dropout",
        "0.2",
    ];
    let cpu = train_on(&s, "cpu", "cpu", &extra);
    let gpu = train_on(&s, "cuda", "gpu", &extra);
    for (state, log) in [
        (
            "train_state_interpolator.safetensors",
            "train_log_interpolator.jsonl",
        ),
        (
            "train_state_forecaster.safetensors",
            "train_log_forecaster.jsonl",
        ),
    ] {
        same_run(&cpu, &gpu, state, log, 1e-4);
    }
}

/// A diverging run on the device stops, naming the step and the last good checkpoint, which is
/// kept (the losses are read at every log line: here every step).
#[test]
fn a_diverging_run_on_the_cuda_backend_stops() {
    let s = Scratch::new("cuda-train-nan");
    let data = s.path("data.npy");
    write_sequences(&data);
    let out = s.path("m");
    let o = on_device()
        .args(["--device", "cuda", "train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--unet-config")
        .arg(small_net(&s))
        .args([
            "--history",
            "2",
            "--future",
            "2",
            "--batch",
            "2",
            "--steps",
            "12",
            "--lr",
            "1e30",
            "--warmup-steps",
            "1",
            "--clip",
            "1e30",
            "--checkpoint-every",
            "1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a learning rate of 1e30 must diverge");
    assert!(
        err.contains("the loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
}

/// `dydiff bench unet --device cuda` (on the emulator): the report names the precision and times
/// every kernel of the profiled forward, each launch counted.
#[test]
fn bench_on_the_cuda_backend_times_every_kernel() {
    let unet = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_a");
    let o = on_device()
        .args([
            "--device",
            "cuda",
            "--precision",
            "fp32",
            "bench",
            "unet",
            "--unet",
        ])
        .arg(&unet)
        .args([
            "--batch", "1", "--size", "16", "--reps", "1", "--warmup", "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["precision"], "fp32");
    let k = r["kernels"].as_object().expect("a kernels map");
    // unet_a: 3 levels of one resnet each, attention at two: convolutions (the resnet heads with
    // their norm fused, the weights prepared), products, attention
    for name in [
        "conv2d_f32_k3s1_norm_silu",
        "conv2d_weights_k3_f32",
        "gemm_f32",
        "attention_f32",
        "group_norm_stats_f32",
    ] {
        assert!(k[name]["launches"].as_u64().unwrap() > 0, "{name}: {r}");
        assert!(k[name]["seconds"].as_f64().unwrap() > 0.0, "{name}: {r}");
    }
    assert!(r["median_s"].as_f64().unwrap() > 0.0);
    // a training step: the backward kernels and the fused optimizer, and the memory it held
    let o = on_device()
        .args([
            "--device",
            "cuda",
            "--precision",
            "fp32",
            "bench",
            "train",
            "--unet",
        ])
        .arg(&unet)
        .args([
            "--batch", "1", "--size", "16", "--reps", "1", "--warmup", "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let k = r["kernels"].as_object().expect("a kernels map");
    for name in [
        // the downsamplers' input gradient (stride 2: columns gathered back) and every weight
        // gradient
        "conv2d_col2im_f32",
        "conv2d_wgrad_f32",
        "group_norm_bwd_dx_f32",
        "attention_bwd_dkv_f32",
        "loss_partial_f32",
        "adamw_fused_f32",
    ] {
        assert!(k[name]["launches"].as_u64().unwrap() > 0, "{name}: {r}");
    }
    assert_eq!(
        k["adamw_fused_f32"]["launches"], 1,
        "one optimizer launch per step"
    );
    assert!(r["peak_device_bytes"].as_u64().unwrap() > 0, "{r}");
}

/// On the device, as on the CPU, a forecast does not depend on `--batch` or on a re-run: every
/// kernel computes each value in an order that does not depend on the launch's size.
#[test]
fn a_forecast_on_the_cuda_backend_does_not_depend_on_the_batch() {
    let s = Scratch::new("cuda-batch");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler");
    let run = |batch: &str, out: &str| {
        let o = on_device()
            .args(["--device", "cuda", "sample", "--model"])
            .arg(fixtures.join("model_dyn"))
            .arg("--input")
            .arg(fixtures.join("obs.npy"))
            .args([
                "--members",
                "2",
                "--steps",
                "2",
                "--ddim-eta",
                "1",
                "--batch",
                batch,
                "--out",
            ])
            .arg(s.path(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(s.path(out)).unwrap()
    };
    let four = run("4", "b4.npy");
    assert_eq!(run("1", "b1.npy"), four, "--batch 1 and --batch 4 differ");
    assert_eq!(run("3", "b3.npy"), four, "--batch 3 and --batch 4 differ");
    assert_eq!(run("4", "again.npy"), four, "a re-run differs");
}

/// `dydiff sample --device cuda` on a DYffusion folder (docs/dyffusion.md, “Cold sampling”): the
/// interpolator's dropout masks are drawn by the device's kernel from the same Philox words, so
/// the members equal the CPU's to rounding (fp32), and the forecast does not depend on the batch.
#[test]
fn cold_sampling_on_the_cuda_backend_equals_the_cpu() {
    let s = Scratch::new("cuda-cold");
    let model = s.model_copy("dyffusion/model");
    let set = |file: &str, key: &str, value: serde_json::Value| {
        let p = model.join(file);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&p, v.to_string()).unwrap();
    };
    set("dydiff.json", "interpolator_dropout", 0.25.into());
    set("dydiff.json", "additional_steps", 1.into());
    set("interpolator/config.json", "dropout", 0.25.into());
    let obs = crate::common::fixture("dyffusion/obs.npy");
    let run = |device: &str, batch: &str, out: &str| {
        let o = on_device()
            .args([
                "--device",
                device,
                "--precision",
                "fp32",
                "sample",
                "--model",
            ])
            .arg(&model)
            .arg("--input")
            .arg(&obs)
            .args([
                "--members",
                "3",
                "--lead",
                "4",
                "--seed",
                "5",
                "--batch",
                batch,
                "--out",
            ])
            .arg(s.path(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dydiff::io::npy::read(&s.path(out)).unwrap()
    };
    let cpu = run("cpu", "4", "cpu.npy");
    let gpu = run("cuda", "4", "gpu.npy");
    let scale = cpu.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = gpu
        .data
        .iter()
        .zip(&cpu.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "max |gpu − cpu| {err}, max |cpu| {scale}"
    );
    assert_eq!(
        run("cuda", "1", "gpu1.npy").data,
        gpu.data,
        "--batch 1 and 4 differ"
    );
    let e = 4 * 2 * 8 * 8;
    assert_ne!(
        gpu.data[..e],
        gpu.data[e..2 * e],
        "members 0 and 1 are the same"
    );
}
