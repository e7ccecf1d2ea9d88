//! End-to-end tests of the `dydiff` binary: `denoise` reproduces diffusers, and every kind of
//! bad input gives one line on stderr naming the problem, a non-zero exit, no panic and no
//! output file.

use crate::common::{assert_clean_failure, assert_within_twice_pytorch, fixture, Scratch};
use dydiff::io::npy;
use std::path::Path;
use std::process::Command;

fn denoise(unet: &Path, input: &Path, t: &str, out: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
        .args(["denoise", "--unet"])
        .arg(unet)
        .arg("--input")
        .arg(input)
        .args(["--timestep", t, "--out"])
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a failing case: non-zero exit, one line naming `needles`, no panic, no output file.
fn fails(unet: &Path, input: &Path, t: &str, s: &Scratch, needles: &[&str]) {
    let out = s.path("y.npy");
    let (ok, err) = denoise(unet, input, t, &out);
    assert_clean_failure(ok, &err, needles, &out, s);
}

#[test]
fn denoise_matches_diffusers() {
    let s = Scratch::new("ok");
    let out = s.path("y.npy");
    let dir = fixture("unet_a");
    let (ok, err) = denoise(&dir, &dir.join("x.npy"), "500", &out);
    assert!(ok, "{err}");
    let got = npy::read(&out).unwrap();
    let want = npy::read(&dir.join("out2.npy")).unwrap();
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "max error {err}");
}

/// `--precision bf16` on a CPU with AVX512-BF16 (docs/devices.md, “Precision”): the products'
/// operands rounded to bf16 — the output differs from float32's — and the error against
/// diffusers' float32 output at most twice PyTorch's own bf16 error on the same input (largest
/// and root-mean-square, bf16.json: python/make_precision_fixtures.py), for every fixture and
/// the timesteps given to all samples alike. Elsewhere the flag computes in float32, which the
/// note on stderr says.
#[test]
fn bf16_products_stay_within_pytorchs_bf16_error() {
    let s = Scratch::new("bf16");
    let run = |dir: &Path, t: &str, precision: &str, out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .args(["--precision", precision, "denoise", "--unet"])
            .arg(dir)
            .arg("--input")
            .arg(dir.join("x.npy"))
            .args(["--timestep", t, "--out"])
            .arg(out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        (npy::read(out).unwrap(), err)
    };
    if !dydiff::backend::cpu::bf16::available() {
        let dir = fixture("unet_a");
        let (_, note) = run(&dir, "500", "bf16", &s.path("y.npy"));
        assert!(
            note.contains("no AVX512-BF16") && note.contains("float32"),
            "{note}"
        );
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    for name in ["unet_a", "unet_b", "unet_c", "unet_d", "unet_e"] {
        let dir = fixture(name);
        let pytorch: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("bf16.json")).unwrap()).unwrap();
        for (k, t) in [(0, "0"), (1, "1"), (2, "500"), (3, "999")] {
            let (bf16, note) = run(&dir, t, "bf16", &s.path("b.npy"));
            assert!(note.is_empty(), "{note}");
            let (fp32, _) = run(&dir, t, "fp32", &s.path("f.npy"));
            let want = npy::read(&dir.join(format!("out{k}.npy"))).unwrap();
            assert_ne!(
                bf16.data, fp32.data,
                "{name} t={t}: bf16 gave float32's bits"
            );
            let what = format!("{name} t={t}");
            assert_within_twice_pytorch(&bf16.data, &want.data, &pytorch, k, &what);
        }
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let s = Scratch::new("threads");
    let dir = fixture("unet_d");
    let mut outputs = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = s.path(&format!("y{threads}.npy"));
        let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .args(["--threads", threads, "denoise", "--unet"])
            .arg(&dir)
            .arg("--input")
            .arg(dir.join("x.npy"))
            .args(["--timestep", "500", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1], "1 and 2 threads differ");
    assert_eq!(outputs[0], outputs[2], "1 and 3 threads differ");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let s = Scratch::new("bad-input");
    let unet = fixture("unet_a");
    let x = npy::read(&unet.join("x.npy")).unwrap();

    fails(
        &unet,
        &s.path("missing.npy"),
        "5",
        &s,
        &["missing.npy", "No such file"],
    );
    std::fs::write(s.path("text.npy"), "hello, not numpy").unwrap();
    fails(
        &unet,
        &s.path("text.npy"),
        "5",
        &s,
        &["text.npy", "not a NumPy"],
    );
    let full = npy::encode(&x.shape, &x.data);
    std::fs::write(s.path("trunc.npy"), &full[..full.len() - 10]).unwrap();
    fails(
        &unet,
        &s.path("trunc.npy"),
        "5",
        &s,
        &["trunc.npy", "truncated"],
    );
    npy::write(
        &s.path("chan.npy"),
        &[2, 4, 16, 24],
        &vec![0.0; 2 * 4 * 16 * 24],
    )
    .unwrap();
    fails(
        &unet,
        &s.path("chan.npy"),
        "5",
        &s,
        &["chan.npy", "(N, 3, H, W)", "[2, 4, 16, 24]"],
    );
    npy::write(&s.path("ndim.npy"), &[3, 16, 24], &vec![0.0; 3 * 16 * 24]).unwrap();
    fails(
        &unet,
        &s.path("ndim.npy"),
        "5",
        &s,
        &["ndim.npy", "[3, 16, 24]"],
    );
    npy::write(&s.path("odd.npy"), &[1, 3, 15, 24], &vec![0.0; 3 * 15 * 24]).unwrap();
    fails(
        &unet,
        &s.path("odd.npy"),
        "5",
        &s,
        &["odd.npy", "multiples of 4"],
    );
    let mut nan = x.data.clone();
    nan[7] = f32::NAN;
    nan[100] = f32::INFINITY;
    npy::write(&s.path("nan.npy"), &x.shape, &nan).unwrap();
    fails(
        &unet,
        &s.path("nan.npy"),
        "5",
        &s,
        &["nan.npy", "2 NaN or infinite", "[0, 0, 0, 7]"],
    );
    // float64 input is converted
    let mut f64_bytes = npy::encode(&x.shape, &x.data);
    let hdr = f64_bytes.windows(3).position(|w| w == b"<f4").unwrap();
    f64_bytes[hdr + 2] = b'8';
    let header_len = f64_bytes.len() - x.data.len() * 4;
    f64_bytes.truncate(header_len);
    for v in &x.data {
        f64_bytes.extend_from_slice(&(*v as f64).to_le_bytes());
    }
    std::fs::write(s.path("f64.npy"), &f64_bytes).unwrap();
    let (ok, err) = denoise(&unet, &s.path("f64.npy"), "5", &s.path("y64.npy"));
    assert!(ok, "float64 input: {err}");
    fails(&unet, &unet.join("x.npy"), "nan", &s, &["--timestep"]);
}

#[test]
fn bad_models_are_one_line_errors() {
    let s = Scratch::new("bad-model");
    let x = fixture("unet_b").join("x.npy");
    fails(
        &s.path("nowhere"),
        &x,
        "5",
        &s,
        &["nowhere", "model folder not found"],
    );

    let m = s.model_copy("unet_b");
    let w = m.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &m,
        &x,
        "5",
        &s,
        &["diffusion_pytorch_model.safetensors", "truncated"],
    );
    std::fs::remove_file(&w).unwrap();
    fails(
        &m,
        &x,
        "5",
        &s,
        &["diffusion_pytorch_model.safetensors", "No such file"],
    );

    let cfg_text = std::fs::read_to_string(fixture("unet_b").join("config.json")).unwrap();
    for (from, to, needles) in [
        (
            "\"act_fn\": \"silu\"",
            "\"act_fn\": \"gelu\"",
            vec!["act_fn", "gelu"],
        ),
        (
            "\"center_input_sample\": false",
            "\"center_input_sample\": true",
            vec!["center_input_sample", "true"],
        ),
        (
            "\"add_attention\": false",
            "\"add_attention\": false, \"shiny_new_key\": 3",
            vec!["shiny_new_key", "unknown key"],
        ),
        (
            "\"UpBlock2D\"",
            "\"CrossAttnUpBlock2D\"",
            vec!["up_block_types", "CrossAttnUpBlock2D"],
        ),
        (
            "\"norm_num_groups\": 4",
            "\"norm_num_groups\": 5",
            vec!["norm_num_groups = 5"],
        ),
        (
            "\"in_channels\": 4",
            "\"in_channels\": 5",
            vec!["conv_in.weight", "[16, 5, 3, 3]", "[16, 4, 3, 3]"],
        ),
    ] {
        let m = s.model_copy("unet_b");
        assert!(cfg_text.contains(from), "fixture config lacks {from}");
        std::fs::write(m.join("config.json"), cfg_text.replace(from, to)).unwrap();
        fails(&m, &x, "5", &s, &needles);
    }
    let m = s.model_copy("unet_b");
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    fails(&m, &x, "5", &s, &["config.json", "not valid JSON"]);
}

/// A build without the `mpi` feature started as one of several ranks by an MPI launcher refuses
/// to run (every rank would do the whole job and write the same files): rank 0 says so in one
/// line naming the launcher's variable and the feature, the other ranks exit silently, nothing is
/// written. A launcher's job of one rank runs as usual.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_ranks_without_the_mpi_feature_are_refused() {
    let s = Scratch::new("no-mpi");
    let out = s.path("f.npy");
    let run = |vars: &[(&str, &str)]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .current_dir(&s.0)
            .envs(vars.iter().copied())
            .args(["sample", "--steps", "2", "--members", "1"])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (rank, var) in [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
    ] {
        let (ok, err) = run(&[(rank, "0"), (var, "2")]);
        assert_clean_failure(ok, &err, &[rank, "--features mpi", "rank 0 of 2"], &out, &s);
        let (ok, err) = run(&[(rank, "1"), (var, "2")]);
        assert!(!ok && err.is_empty(), "rank 1: {err}");
        assert!(!out.exists());
    }
    // a rank above 0 where the launcher gives no size (PMIx without Slurm, say) is one of several
    for rank in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK"] {
        let (ok, err) = run(&[(rank, "1")]);
        assert!(!ok && err.is_empty(), "{rank}=1: {err}");
        assert!(!out.exists());
    }
    let (ok, err) = run(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "1")]);
    assert!(ok, "{err}");
    assert!(out.exists());
}
