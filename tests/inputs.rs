//! Degenerate inputs and flags of every subcommand — zero, negative, non-finite, empty, too
//! short, out of range, too large to fit in memory — are refused before any work with one line
//! on stderr naming the flag or file, what was expected and what was found; the exit status is
//! non-zero and no output file appears.

mod common;
use common::{assert_clean_failure, dydiff, fixture, rand_vec, Scratch};
use dydiff::io::npy;
use std::path::{Path, PathBuf};

fn st(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Runs `dydiff args`, which must be refused: non-zero exit, one line naming every needle, no
/// panic, no `out` and no temporary file.
fn refused(s: &Scratch, args: &[String], out: &Path, needles: &[&str]) {
    let (ok, err) = dydiff(args);
    assert_clean_failure(ok, &err, needles, out, s);
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

/// An empty `.npz` archive, as `np.savez(path)` writes it: only the zip end record.
fn empty_npz(s: &Scratch, name: &str) -> PathBuf {
    let p = s.path(name);
    let mut bytes = b"PK\x05\x06".to_vec();
    bytes.resize(22, 0);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn write(s: &Scratch, name: &str, shape: &[usize], data: &[f32]) -> PathBuf {
    let p = s.path(name);
    npy::write(&p, shape, data).unwrap();
    p
}

fn random(s: &Scratch, name: &str, shape: &[usize]) -> PathBuf {
    write(s, name, shape, &rand_vec(shape.iter().product(), 7))
}

// ---------------------------------------------------------------- global flags

#[test]
fn threads_zero() {
    let s = Scratch::new("in-threads0");
    let out = s.path("x.npy");
    let args = strings(&[
        "--threads",
        "0",
        "data",
        "navier-stokes",
        "--out",
        &st(&out),
        "--samples",
        "1",
        "--frames",
        "1",
    ]);
    refused(&s, &args, &out, &["--threads", "1 to 1024", "found 0"]);
}

#[test]
fn threads_too_many() {
    let s = Scratch::new("in-threads-big");
    let out = s.path("x.npy");
    let args = strings(&[
        "--threads",
        "100000",
        "data",
        "navier-stokes",
        "--out",
        &st(&out),
        "--samples",
        "1",
        "--frames",
        "1",
    ]);
    refused(&s, &args, &out, &["--threads", "1 to 1024", "found 100000"]);
}

// ---------------------------------------------------------------- sample

fn sampler(name: &str) -> PathBuf {
    fixture("sampler").join(name)
}

/// `dydiff sample --model MODEL --input INPUT --out forecast.npy EXTRA…`, refused.
fn sample_refused(s: &Scratch, model: &Path, input: &Path, extra: &[&str], needles: &[&str]) {
    let out = s.path("forecast.npy");
    let mut args = strings(&["sample", "--model", &st(model), "--input", &st(input)]);
    args.extend(strings(&["--out", &st(&out)]));
    args.extend(strings(extra));
    refused(s, &args, &out, needles);
}

/// A copy of the sampler's model with `file` (JSON) replaced by `edit` of it.
fn edited_model(s: &Scratch, file: &str, edit: &dyn Fn(&mut serde_json::Value)) -> PathBuf {
    let m = s.model_copy("sampler/model_dyn");
    let p = m.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    m
}

/// The sampler's model with `file` holding `text`.
fn model_with(s: &Scratch, file: &str, text: &str) -> PathBuf {
    let m = s.model_copy("sampler/model_dyn");
    std::fs::write(m.join(file), text).unwrap();
    m
}

#[test]
fn sample_members_beyond_the_counter() {
    let s = Scratch::new("in-s-members");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--members", "16777217"],
        &["--members", "1 to 16777216", "found 16777217"],
    );
}

/// A negative count reaches the range message (clap alone reads `-1` as an unknown flag), for
/// every flag: sample, train and data.
#[test]
fn negative_values_get_the_range_message() {
    let s = Scratch::new("in-negative");
    let out = s.path("out.npy");
    for (args, flag) in [
        (vec!["sample", "--members", "-1"], "--members"),
        (
            vec!["sample", "--steps", "-3", "--ddim-eta", "0"],
            "--steps",
        ),
        (
            vec![
                "train",
                "--data",
                "d.npy",
                "--out",
                "m",
                "--history",
                "1",
                "--future",
                "-2",
            ],
            "--future",
        ),
        (
            vec!["data", "spring-mesh", "--out", "x.npy", "--frames", "-40"],
            "--frames",
        ),
    ] {
        let (ok, err) = dydiff(&args);
        assert_clean_failure(ok, &err, &[flag, "at least 0", "found -"], &out, &s);
    }
}

/// Array outputs are .npy: a name ending in .npz is refused before any work, naming the flag.
#[test]
fn array_outputs_must_be_npy() {
    let s = Scratch::new("in-npz-out");
    for name in ["f.npz", "sub.npz"] {
        let out = s.path(name);
        let o = out.to_str().unwrap();
        for args in [
            vec!["sample", "--steps", "2", "--out", o],
            vec!["data", "spring-mesh", "--frames", "2", "--out", o],
        ] {
            let (ok, err) = dydiff(&args);
            assert_clean_failure(ok, &err, &["--out", ".npy"], &out, &s);
        }
    }
}

#[test]
fn sample_members_beyond_memory() {
    let s = Scratch::new("in-s-memory");
    // 64 sequences × 2^24 members × 3 frames × 2 × 16 × 16 float32: 12 TiB of forecast.
    let obs = random(&s, "obs.npy", &[64, 2, 2, 16, 16]);
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &obs,
        &["--members", "16777216"],
        &[
            "--members 16777216",
            "[64, 16777216, 3, 2, 16, 16]",
            "needs",
            "TiB",
        ],
    );
}

/// The memory check counts the address-space limit (`ulimit -v`), not only the system's
/// available memory: a run under a small limit is refused, not aborted by a failed allocation.
#[test]
fn sample_members_beyond_the_address_space_limit() {
    let s = Scratch::new("in-s-ulimit");
    let out = s.path("forecast.npy");
    let limit_kib = 2_000_000u64;
    let script = format!(
        "ulimit -v {limit_kib} && exec \"$0\" sample --model \"$1\" --input \"$2\" --out \"$3\" --members 100000 --steps 1",
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_dydiff")])
        .arg(sampler("model_dyn"))
        .arg(sampler("obs.npy"))
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // The forecast and its file alone need 2 × 1.2 GB; the limit is 2.0 GB.
    let needles = ["--members 100000", "needs", "is available"];
    let system = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))?
            .to_string();
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    assert_clean_failure(o.status.success(), &err, &needles, &out, &s);
    // The limit that applied is named: ulimit -v, unless the machine or its cgroup has less.
    if system.is_some_and(|kib| kib > limit_kib) {
        assert!(err.contains("ulimit -v") || err.contains("cgroup"), "{err}");
    }
}

#[test]
fn sample_ddim_eta_nan() {
    let s = Scratch::new("in-s-eta-nan");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta", "nan"],
        &["--ddim-eta", "[0, 1]", "found NaN"],
    );
}

#[test]
fn sample_ddim_eta_infinite() {
    let s = Scratch::new("in-s-eta-inf");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta", "inf"],
        &["--ddim-eta", "[0, 1]", "found inf"],
    );
}

#[test]
fn sample_ddim_eta_negative() {
    let s = Scratch::new("in-s-eta-neg");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta=-0.5"],
        &["--ddim-eta", "[0, 1]", "found -0.5"],
    );
}

#[test]
fn sample_steps_beyond_the_schedule() {
    let s = Scratch::new("in-s-steps");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--steps", "5000"],
        &["--steps", "1 to 999", "found 5000"],
    );
}

#[test]
fn sample_no_sequences() {
    let s = Scratch::new("in-s-n0");
    let obs = write(&s, "obs.npy", &[0, 5, 2, 16, 16], &[]);
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &obs,
        &[],
        &["obs.npy", "N ≥ 1", "[0, 5, 2, 16, 16]"],
    );
}

#[test]
fn sample_empty_file() {
    let s = Scratch::new("in-s-empty");
    let obs = s.path("obs.npy");
    std::fs::write(&obs, b"").unwrap();
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &obs,
        &[],
        &["obs.npy", "empty (0 bytes)", "expected a NumPy"],
    );
}

#[test]
fn sample_empty_npz() {
    let s = Scratch::new("in-s-npz");
    let obs = empty_npz(&s, "obs.npz");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &obs,
        &[],
        &["obs.npz", "holds no array", "expected one"],
    );
}

#[test]
fn sample_observations_overflow_in_model_space() {
    let s = Scratch::new("in-s-space");
    let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = 1e-300.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["obs.npy", "model space", "data_scale = 1e-300", "float32"],
    );
}

#[test]
fn sample_process_config_empty() {
    let s = Scratch::new("in-s-json-empty");
    let m = model_with(&s, "dydiff.json", "{}");
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["dydiff.json", "empty object", "history"],
    );
}

#[test]
fn sample_process_config_wrong_type() {
    let s = Scratch::new("in-s-json-type");
    let m = edited_model(&s, "dydiff.json", &|v| v["history"] = "2".into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "dydiff.json",
            "history = \"2\"",
            "expected a positive integer",
        ],
    );
}

#[test]
fn sample_process_config_zero_frames() {
    let s = Scratch::new("in-s-json-zero");
    let m = edited_model(&s, "dydiff.json", &|v| v["future"] = 0.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["dydiff.json", "future = 0", "expected a positive integer"],
    );
}

#[test]
fn sample_process_config_missing_key() {
    let s = Scratch::new("in-s-json-missing");
    let m = edited_model(&s, "dydiff.json", &|v| {
        v.as_object_mut().unwrap().remove("channels");
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["dydiff.json", "channels is missing", "positive integer"],
    );
}

#[test]
fn sample_process_config_data_scale_zero() {
    let s = Scratch::new("in-s-json-scale0");
    let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = 0.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "dydiff.json",
            "data_scale = 0",
            "expected a positive number",
        ],
    );
}

#[test]
fn sample_process_config_data_scale_negative() {
    let s = Scratch::new("in-s-json-scale-neg");
    let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = (-2.0).into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "dydiff.json",
            "data_scale = -2",
            "expected a positive number",
        ],
    );
}

#[test]
fn sample_process_config_data_shift_not_a_number() {
    let s = Scratch::new("in-s-json-shift");
    let m = edited_model(&s, "dydiff.json", &|v| v["data_shift"] = "zero".into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["dydiff.json", "data_shift = \"zero\"", "expected a number"],
    );
}

#[test]
fn sample_process_config_too_large() {
    let s = Scratch::new("in-s-json-huge");
    let m = edited_model(&s, "dydiff.json", &|v| {
        v["height"] = (1u64 << 40).into();
        v["width"] = (1u64 << 40).into();
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["dydiff.json", "height 1099511627776", "too large"],
    );
}

#[test]
fn sample_scheduler_config_empty() {
    let s = Scratch::new("in-s-sched-empty");
    let m = model_with(&s, "scheduler/scheduler_config.json", "{}");
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["scheduler_config.json", "empty object", "DDIMScheduler"],
    );
}

#[test]
fn sample_scheduler_too_many_timesteps() {
    let s = Scratch::new("in-s-sched-big");
    let m = edited_model(&s, "scheduler/scheduler_config.json", &|v| {
        v["num_train_timesteps"] = 1_000_000_000.into()
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "scheduler_config.json",
            "num_train_timesteps = 1000000000",
            "2 to 16777216",
        ],
    );
}

#[test]
fn sample_scheduler_beta_start_zero() {
    let s = Scratch::new("in-s-sched-beta");
    let m = edited_model(&s, "scheduler/scheduler_config.json", &|v| {
        v["beta_schedule"] = "linear".into();
        v["beta_start"] = 0.into();
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "scheduler_config.json",
            "beta_start = 0",
            "0 < beta_start ≤ beta_end < 1",
        ],
    );
}

#[test]
fn sample_unet_config_empty() {
    let s = Scratch::new("in-s-unet-empty");
    let m = model_with(&s, "unet/config.json", "{}");
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["unet/config.json", "empty object", "UNet2DModel"],
    );
}

#[test]
fn sample_unet_config_groups_do_not_divide() {
    let s = Scratch::new("in-s-unet-groups");
    let m = edited_model(&s, "unet/config.json", &|v| v["norm_num_groups"] = 5.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "unet/config.json",
            "norm_num_groups = 5",
            "divisor",
            "[32, 64]",
        ],
    );
}

#[test]
fn sample_unet_config_zero_groups() {
    let s = Scratch::new("in-s-unet-groups0");
    let m = edited_model(&s, "unet/config.json", &|v| v["norm_num_groups"] = 0.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["unet/config.json", "norm_num_groups = 0", "positive"],
    );
}

#[test]
fn sample_unet_config_norm_eps_zero() {
    let s = Scratch::new("in-s-unet-eps");
    let m = edited_model(&s, "unet/config.json", &|v| v["norm_eps"] = 0.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["unet/config.json", "norm_eps = 0", "positive number"],
    );
}

#[test]
fn sample_unet_config_head_wider_than_the_block() {
    let s = Scratch::new("in-s-unet-head");
    let m = edited_model(&s, "unet/config.json", &|v| {
        v["attention_head_dim"] = 100.into()
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "unet/config.json",
            "attention_head_dim = 100",
            "at most the 64",
        ],
    );
}

#[test]
fn sample_unet_config_no_levels() {
    let s = Scratch::new("in-s-unet-levels");
    let m = edited_model(&s, "unet/config.json", &|v| {
        v["block_out_channels"] = serde_json::json!([])
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "unet/config.json",
            "block_out_channels = []",
            "at least one level",
        ],
    );
}

#[test]
fn sample_unet_config_zero_time_embedding() {
    let s = Scratch::new("in-s-unet-temb");
    let m = edited_model(&s, "unet/config.json", &|v| {
        v["time_embedding_dim"] = 0.into()
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "unet/config.json",
            "time_embedding_dim = 0",
            "positive integer",
        ],
    );
}

#[test]
fn sample_unet_config_downsample_padding() {
    let s = Scratch::new("in-s-unet-pad");
    let m = edited_model(&s, "unet/config.json", &|v| {
        v["downsample_padding"] = 2.into()
    });
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &["unet/config.json", "downsample_padding = 2", "0 or 1"],
    );
}

#[test]
fn sample_non_finite_weights() {
    let s = Scratch::new("in-s-weights-nan");
    let m = s.model_copy("sampler/model_dyn");
    let w = m.join("unet/diffusion_pytorch_model.safetensors");
    let mut arrays = dydiff::io::safetensors::read(&w).unwrap();
    arrays.get_mut("conv_out.bias").unwrap().1[1] = f32::NAN;
    let mut tensors: Vec<_> = arrays
        .into_iter()
        .map(|(name, (shape, data))| (name, shape, data))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    dydiff::io::safetensors::write(&w, &tensors).unwrap();
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "diffusion_pytorch_model.safetensors",
            "tensor conv_out.bias",
            "1 NaN or infinite",
        ],
    );
}

#[test]
fn sample_empty_weights() {
    let s = Scratch::new("in-s-weights-empty");
    let m = model_with(&s, "unet/diffusion_pytorch_model.safetensors", "");
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &[],
        &[
            "diffusion_pytorch_model.safetensors",
            "not a valid safetensors",
        ],
    );
}

/// The sampler's library entry refuses what the command line cannot express.
#[test]
fn forecast_refuses_inconsistent_arguments() {
    use dydiff::pipelines::sample::{forecast, SamplerSettings};
    let model = dydiff::model::Model::load(&sampler("model_dyn"), dydiff::Device::Cpu).unwrap();
    let settings = SamplerSettings {
        members: 2,
        steps: 2,
        seed: 0,
        ddim_eta: 0.0,
        batch: 2,
        device: dydiff::Device::Cpu,
    };
    let e = forecast(&model, &settings, &[], (1 << 32) + 1, None, |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("4294967297 sequences") && e.contains("2^32"),
        "{e}"
    );
    let e = forecast(&model, &settings, &[0.0; 3], 1, None, |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hold 3 values") && e.contains("N 1"), "{e}");
    let e = forecast(&model, &settings, &[0.0; 1024], 1, Some(&[0.0; 5]), |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("noise holds 5 values") && e.contains("M 2"),
        "{e}"
    );
}

/// A sample run whose model folder's `data_scale` maps the forecast beyond float32 is refused;
/// no partly infinite forecast is written.
fn sample_scale_beyond_float32(tag: &str, scale: f64, needle: &str) {
    let s = Scratch::new(tag);
    let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = scale.into());
    sample_refused(
        &s,
        &m,
        &sampler("obs.npy"),
        &["--members", "2", "--steps", "2"],
        &[
            "the forecast holds",
            "infinite values",
            needle,
            "dydiff.json",
            "beyond float32",
        ],
    );
}

#[test]
fn sample_data_scale_makes_every_value_infinite() {
    sample_scale_beyond_float32("in-s-scale-1e300", 1e300, "data_scale 1e300");
}

#[test]
fn sample_data_scale_makes_some_values_infinite() {
    sample_scale_beyond_float32("in-s-scale-1e38", 1e38, "data_scale 1e38");
}

#[test]
fn sample_init_noise_not_standard_normal() {
    let s = Scratch::new("in-s-noise-huge");
    let shape = [2, 2, 3, 2, 16, 16];
    let noise = write(&s, "noise.npy", &shape, &vec![3e38; 2 * 2 * 3 * 2 * 256]);
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &[
            "--members",
            "2",
            "--steps",
            "2",
            "--init-noise",
            &st(&noise),
        ],
        &[
            "noise.npy",
            "values up to 3.000e38",
            "standard normal",
            "1e4",
        ],
    );
}

#[test]
fn forecast_refuses_non_finite_results() {
    use dydiff::pipelines::sample::{forecast, SamplerSettings};
    let model = dydiff::model::Model::load(&sampler("model_dyn"), dydiff::Device::Cpu).unwrap();
    let settings = SamplerSettings {
        members: 1,
        steps: 2,
        seed: 0,
        ddim_eta: 0.0,
        batch: 1,
        device: dydiff::Device::Cpu,
    };
    let e = 2 * 16 * 16;
    let noise = vec![3e38f32; 3 * e];
    let err = forecast(
        &model,
        &settings,
        &vec![0.0; 2 * e],
        1,
        Some(&noise),
        |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("the forecast holds")
            && err.contains("non-finite values")
            && err.contains("initial noise reaches 3.000e38"),
        "{err}"
    );
}

// ---------------------------------------------------------------- denoise

/// `dydiff denoise --unet unet_a --input INPUT --timestep T`, refused.
fn denoise_refused(s: &Scratch, input: &Path, t: &str, needles: &[&str]) {
    let out = s.path("y.npy");
    let args = strings(&[
        "denoise",
        "--unet",
        &st(&fixture("unet_a")),
        "--input",
        &st(input),
        "--timestep",
        t,
        "--out",
        &st(&out),
    ]);
    refused(s, &args, &out, needles);
}

#[test]
fn denoise_timestep_infinite() {
    let s = Scratch::new("in-d-t-inf");
    denoise_refused(
        &s,
        &fixture("unet_a").join("x.npy"),
        "inf",
        &["--timestep", "finite", "found inf"],
    );
}

#[test]
fn denoise_timestep_beyond_float32() {
    let s = Scratch::new("in-d-t-big");
    denoise_refused(
        &s,
        &fixture("unet_a").join("x.npy"),
        "1e39",
        &["--timestep", "finite", "found inf"],
    );
}

#[test]
fn denoise_no_samples() {
    let s = Scratch::new("in-d-n0");
    let x = write(&s, "x.npy", &[0, 3, 16, 24], &[]);
    denoise_refused(&s, &x, "5", &["x.npy", "N ≥ 1", "[0, 3, 16, 24]"]);
}

#[test]
fn denoise_zero_size_field() {
    let s = Scratch::new("in-d-h0");
    let x = write(&s, "x.npy", &[1, 3, 0, 24], &[]);
    denoise_refused(
        &s,
        &x,
        "5",
        &["x.npy", "positive multiples of 4", "[1, 3, 0, 24]"],
    );
}

#[test]
fn denoise_field_smaller_than_the_downsampling() {
    let s = Scratch::new("in-d-small");
    let x = random(&s, "x.npy", &[1, 3, 2, 2]);
    denoise_refused(
        &s,
        &x,
        "5",
        &["x.npy", "positive multiples of 4", "[1, 3, 2, 2]"],
    );
}

#[test]
fn denoise_empty_npz() {
    let s = Scratch::new("in-d-npz");
    let x = empty_npz(&s, "x.npz");
    denoise_refused(&s, &x, "5", &["x.npz", "holds no array"]);
}

#[test]
fn denoise_truncated_header() {
    let s = Scratch::new("in-d-header");
    let x = s.path("x.npy");
    std::fs::write(&x, b"\x93NUMPY\x02\x00\x10\x00\x00").unwrap();
    denoise_refused(&s, &x, "5", &["x.npy", "truncated .npy header"]);
}

#[test]
fn denoise_shape_beyond_64_bits() {
    let s = Scratch::new("in-d-shape");
    let x = s.path("x.npy");
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 3, 4), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    std::fs::write(&x, bytes).unwrap();
    denoise_refused(
        &s,
        &x,
        "5",
        &["x.npy", "[4294967296, 4294967296, 3, 4]", "too large"],
    );
}

#[test]
fn denoise_fortran_order_neither_true_nor_false() {
    let s = Scratch::new("in-d-fortran");
    let x = s.path("x.npy");
    let header = "{'descr': '<f4', 'fortran_order': 1, 'shape': (1, 4, 8, 8), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; 4 * 4 * 8 * 8]);
    std::fs::write(&x, bytes).unwrap();
    denoise_refused(
        &s,
        &x,
        "5",
        &["x.npy", "'fortran_order' is 1", "expected True or False"],
    );
}

#[test]
fn denoise_file_larger_than_memory() {
    let s = Scratch::new("in-d-huge");
    let x = s.path("x.npy");
    // A sparse file of 1 TiB: no disk space used, but more than any test machine's memory.
    std::fs::File::create(&x).unwrap().set_len(1 << 40).unwrap();
    denoise_refused(
        &s,
        &x,
        "5",
        &["x.npy", "reading the file", "needs 1.0 TiB of memory"],
    );
}

#[test]
fn denoise_input_beyond_the_network() {
    let s = Scratch::new("in-d-huge-values");
    let x = write(&s, "x.npy", &[2, 3, 16, 24], &vec![3.4e38; 2 * 3 * 16 * 24]);
    denoise_refused(
        &s,
        &x,
        "5",
        &[
            "the network output holds",
            "non-finite values",
            "x.npy",
            "values up to 3.400e38",
        ],
    );
}

// ---------------------------------------------------------------- train

/// Random sequences `(4, 8, 1, 8, 8)`.
fn train_data(s: &Scratch) -> PathBuf {
    random(s, "data.npy", &[4, 8, 1, 8, 8])
}

/// `dydiff train --data DATA --out m --history 2 --future 2 EXTRA…`, refused: no model folder.
fn train_refused(s: &Scratch, data: &Path, extra: &[&str], needles: &[&str]) {
    let out = s.path("m");
    let mut args = strings(&["train", "--data", &st(data), "--out", &st(&out)]);
    args.extend(strings(&["--history", "2", "--future", "2"]));
    args.extend(strings(extra));
    refused(s, &args, &out, needles);
}

#[test]
fn train_constant_data() {
    let s = Scratch::new("in-t-const");
    let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &[3.0; 4 * 8 * 64]);
    train_refused(
        &s,
        &d,
        &[],
        &[
            "data.npy",
            "every value is 3",
            "constant",
            "data_scale",
            "expected sequences that vary",
        ],
    );
}

#[test]
fn train_constant_data_with_a_given_scale() {
    let s = Scratch::new("in-t-const-scale");
    let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &[0.0; 4 * 8 * 64]);
    train_refused(
        &s,
        &d,
        &["--data-scale", "1"],
        &["data.npy", "every value is 0", "constant"],
    );
}

#[test]
fn train_data_scale_zero() {
    let s = Scratch::new("in-t-scale0");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale", "0"],
        &["--data-scale", "positive", "found 0"],
    );
}

#[test]
fn train_data_scale_negative() {
    let s = Scratch::new("in-t-scale-neg");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale=-1"],
        &["--data-scale", "positive", "found -1"],
    );
}

#[test]
fn train_data_scale_nan() {
    let s = Scratch::new("in-t-scale-nan");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale", "NaN"],
        &["--data-scale", "positive finite", "found NaN"],
    );
}

#[test]
fn train_data_scale_infinite() {
    let s = Scratch::new("in-t-scale-inf");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale", "inf"],
        &["--data-scale", "positive finite", "found inf"],
    );
}

#[test]
fn train_data_scale_too_small_for_float32() {
    let s = Scratch::new("in-t-scale-tiny");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale", "1e-300"],
        &["data.npy", "model space", "--data-scale", "float32"],
    );
}

#[test]
fn train_data_shift_nan() {
    let s = Scratch::new("in-t-shift-nan");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-shift", "nan"],
        &["--data-shift", "finite", "found NaN"],
    );
}

#[test]
fn train_data_shift_infinite() {
    let s = Scratch::new("in-t-shift-inf");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-shift=-inf"],
        &["--data-shift", "finite", "found -inf"],
    );
}

#[test]
fn train_sequence_shorter_than_the_window() {
    let s = Scratch::new("in-t-short");
    let d = random(&s, "data.npy", &[4, 3, 1, 8, 8]);
    train_refused(&s, &d, &[], &["data.npy", "L ≥ 4", "[4, 3, 1, 8, 8]"]);
}

#[test]
fn train_validation_shorter_than_the_window() {
    let s = Scratch::new("in-t-val-short");
    let d = train_data(&s);
    let v = random(&s, "val.npy", &[4, 3, 1, 8, 8]);
    train_refused(
        &s,
        &d,
        &["--val-data", &st(&v)],
        &["val.npy", "L ≥ 4", "[4, 3, 1, 8, 8]"],
    );
}

#[test]
fn train_no_sequences() {
    let s = Scratch::new("in-t-n0");
    let d = write(&s, "data.npy", &[0, 8, 1, 8, 8], &[]);
    train_refused(
        &s,
        &d,
        &[],
        &["data.npy", "N, C, H, W ≥ 1", "[0, 8, 1, 8, 8]"],
    );
}

#[test]
fn train_zero_size_fields() {
    let s = Scratch::new("in-t-h0");
    let d = write(&s, "data.npy", &[4, 8, 1, 0, 8], &[]);
    train_refused(
        &s,
        &d,
        &[],
        &["data.npy", "N, C, H, W ≥ 1", "[4, 8, 1, 0, 8]"],
    );
}

#[test]
fn train_no_channels() {
    let s = Scratch::new("in-t-c0");
    let d = write(&s, "data.npy", &[4, 8, 0, 8, 8], &[]);
    train_refused(
        &s,
        &d,
        &[],
        &["data.npy", "N, C, H, W ≥ 1", "[4, 8, 0, 8, 8]"],
    );
}

#[test]
fn train_empty_npz() {
    let s = Scratch::new("in-t-npz");
    let d = empty_npz(&s, "data.npz");
    train_refused(&s, &d, &[], &["data.npz", "holds no array"]);
}

#[test]
fn train_non_finite_data() {
    let s = Scratch::new("in-t-nan");
    let mut v = rand_vec(4 * 8 * 64, 3);
    v[70] = f32::NEG_INFINITY;
    let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &v);
    train_refused(
        &s,
        &d,
        &[],
        &["data.npy", "1 NaN or infinite", "[0, 1, 0, 0, 6]"],
    );
}

#[test]
fn train_fields_smaller_than_the_downsampling() {
    let s = Scratch::new("in-t-small");
    let d = random(&s, "data.npy", &[4, 8, 1, 6, 6]);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"]}"#).unwrap();
    train_refused(
        &s,
        &d,
        &["--unet-config", &st(&cfg)],
        &[
            "data.npy",
            "frames of 6×6",
            "multiples of 4",
            "unet.json",
            "2 entries in block_out_channels",
        ],
    );
    // the default network fits the frames it is given (the spring mesh's 10 × 10: two levels;
    // odd sides: one)
    for (side, levels) in [(10, 2), (5, 1)] {
        let d = random(&s, &format!("d{side}.npy"), &[4, 8, 1, side, side]);
        let out = s.path(&format!("m{side}"));
        let (ok, err) = dydiff(strings(&[
            "train",
            "--data",
            &st(&d),
            "--out",
            &st(&out),
            "--history",
            "2",
            "--future",
            "2",
            "--steps",
            "1",
            "--batch",
            "2",
        ]));
        assert!(ok, "{err}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["block_out_channels"].as_array().unwrap().len(), levels);
    }
}

#[test]
fn train_unet_config_empty() {
    let s = Scratch::new("in-t-cfg-empty");
    let d = train_data(&s);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, "{}").unwrap();
    train_refused(
        &s,
        &d,
        &["--unet-config", &st(&cfg)],
        &["unet.json", "empty object", "UNet2DModel"],
    );
}

#[test]
fn train_unet_config_groups_name_the_file() {
    let s = Scratch::new("in-t-cfg-groups");
    let d = train_data(&s);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 5, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    train_refused(
        &s,
        &d,
        &["--unet-config", &st(&cfg)],
        &["unet.json", "norm_num_groups = 5", "divisor", "[16, 32]"],
    );
}

#[test]
fn train_unet_config_dropout_names_the_file() {
    let s = Scratch::new("in-t-cfg-dropout");
    let d = train_data(&s);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "dropout": -0.1}"#).unwrap();
    train_refused(
        &s,
        &d,
        &["--unet-config", &st(&cfg)],
        &["unet.json", "dropout = -0.1", "expected 0 ≤ dropout < 1"],
    );
}

#[test]
fn train_unet_config_beyond_memory() {
    let s = Scratch::new("in-t-cfg-huge");
    let d = train_data(&s);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [1000000, 1000000], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    train_refused(
        &s,
        &d,
        &["--unet-config", &st(&cfg)],
        &["--batch 16", "parameters", "needs", "of memory"],
    );
}

#[test]
fn train_batch_beyond_memory() {
    let s = Scratch::new("in-t-batch-mem");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--batch", "4294967295"],
        &["--batch 4294967295", "needs", "of memory"],
    );
}

#[test]
fn train_batch_beyond_the_counter() {
    let s = Scratch::new("in-t-batch-u32");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--batch", "4294967296"],
        &["--batch", "1 to 4294967295", "found 4294967296"],
    );
}

#[test]
fn train_steps_beyond_the_counter() {
    let s = Scratch::new("in-t-steps-u32");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--steps", "4294967296"],
        &["--steps", "1 to 4294967295", "found 4294967296"],
    );
}

#[test]
fn train_window_overflows() {
    let s = Scratch::new("in-t-window");
    let d = train_data(&s);
    let out = s.path("m");
    let args = strings(&[
        "train",
        "--data",
        &st(&d),
        "--out",
        &st(&out),
        "--history",
        "18446744073709551615",
        "--future",
        "2",
    ]);
    refused(&s, &args, &out, &["--history", "--future", "overflows"]);
}

#[test]
fn train_zero_flags() {
    for flag in ["--steps", "--batch", "--log-every", "--checkpoint-every"] {
        let s = Scratch::new(&format!("in-t-zero{flag}"));
        let d = train_data(&s);
        train_refused(&s, &d, &[flag, "0"], &[flag, "at least 1", "found 0"]);
    }
}

#[test]
fn train_zero_history() {
    let s = Scratch::new("in-t-hist0");
    let d = train_data(&s);
    let out = s.path("m");
    let args = strings(&[
        "train",
        "--data",
        &st(&d),
        "--out",
        &st(&out),
        "--history",
        "0",
        "--future",
        "2",
    ]);
    refused(&s, &args, &out, &["--history", "at least 1", "found 0"]);
}

#[test]
fn train_dyn_eta_nan() {
    let s = Scratch::new("in-t-eta-nan");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--dyn-eta", "nan"],
        &["--dyn-eta", "[0, 1]", "found NaN"],
    );
}

#[test]
fn train_dyn_eta_negative() {
    let s = Scratch::new("in-t-eta-neg");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--dyn-eta=-0.1"],
        &["--dyn-eta", "[0, 1]", "found -0.1"],
    );
}

#[test]
fn train_lr_zero() {
    let s = Scratch::new("in-t-lr0");
    let d = train_data(&s);
    train_refused(&s, &d, &["--lr", "0"], &["--lr", "positive", "found 0"]);
}

#[test]
fn train_lr_nan() {
    let s = Scratch::new("in-t-lr-nan");
    let d = train_data(&s);
    train_refused(&s, &d, &["--lr", "NaN"], &["--lr", "positive", "found NaN"]);
}

#[test]
fn train_lr_infinite() {
    let s = Scratch::new("in-t-lr-inf");
    let d = train_data(&s);
    train_refused(&s, &d, &["--lr", "inf"], &["--lr", "positive", "found inf"]);
}

#[test]
fn train_lr_vanishes_in_float32() {
    let s = Scratch::new("in-t-lr-tiny");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--lr", "1e-50"],
        &["--lr", "within float32", "found 1e-50"],
    );
}

#[test]
fn train_lr_negative() {
    let s = Scratch::new("in-t-lr-neg");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--lr=-0.001"],
        &["--lr", "positive", "found -0.001"],
    );
}

#[test]
fn train_clip_zero() {
    let s = Scratch::new("in-t-clip0");
    let d = train_data(&s);
    train_refused(&s, &d, &["--clip", "0"], &["--clip", "positive", "found 0"]);
}

#[test]
fn train_clip_nan() {
    let s = Scratch::new("in-t-clip-nan");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--clip", "nan"],
        &["--clip", "positive", "found NaN"],
    );
}

#[test]
fn train_weight_decay_negative() {
    let s = Scratch::new("in-t-wd-neg");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--weight-decay=-0.01"],
        &["--weight-decay", "≥ 0", "found -0.01"],
    );
}

#[test]
fn train_weight_decay_infinite() {
    let s = Scratch::new("in-t-wd-inf");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--weight-decay", "inf"],
        &["--weight-decay", "≥ 0", "found inf"],
    );
}

#[test]
fn train_ema_decay_one() {
    let s = Scratch::new("in-t-ema1");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--ema-decay", "1"],
        &["--ema-decay", "[0, 1)", "found 1"],
    );
}

#[test]
fn train_ema_decay_nan() {
    let s = Scratch::new("in-t-ema-nan");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--ema-decay", "nan"],
        &["--ema-decay", "[0, 1)", "found NaN"],
    );
}

/// A one-step run of a small network on `data` into `s/m`, for the resume cases.
fn trained(s: &Scratch, data: &Path) -> PathBuf {
    let out = s.path("m");
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [8, 8], "norm_num_groups": 4, "attention_head_dim": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    let (ok, err) = dydiff(strings(&[
        "train",
        "--data",
        &st(data),
        "--out",
        &st(&out),
        "--history",
        "2",
        "--future",
        "2",
        "--steps",
        "1",
        "--batch",
        "2",
        // constant after the warm-up, so that the run may be extended with --resume
        "--constant-lr",
        "--unet-config",
        &st(&cfg),
    ]));
    assert!(ok, "{err}");
    out
}

/// `--resume` with `data` and `extra` flags (the same recipe otherwise), refused: the
/// checkpoint stays as it was.
fn resume_refused(s: &Scratch, out: &Path, data: &Path, extra: &[&str], needles: &[&str]) {
    let state = out.join("train_state.safetensors");
    let before = std::fs::read(&state).unwrap();
    let mut args = strings(&["train", "--data", &st(data), "--out", &st(out)]);
    args.extend(strings(&[
        "--history",
        "2",
        "--future",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
        "--constant-lr",
        "--resume",
    ]));
    args.extend(strings(extra));
    let (ok, err) = dydiff(&args);
    assert_clean_failure(ok, &err, needles, &s.path("nothing"), s);
    assert_eq!(std::fs::read(&state).unwrap(), before, "checkpoint changed");
}

#[test]
fn train_resume_with_other_frames() {
    let s = Scratch::new("in-t-resume-frames");
    let d = train_data(&s);
    let out = trained(&s, &d);
    let other = random(&s, "other.npy", &[4, 8, 2, 8, 8]);
    resume_refused(
        &s,
        &out,
        &other,
        &[],
        &["other.npy", "--resume", "(2, 8, 8)", "(1, 8, 8)"],
    );
}

#[test]
fn train_resume_with_another_scale() {
    let s = Scratch::new("in-t-resume-scale");
    let d = train_data(&s);
    let out = trained(&s, &d);
    resume_refused(
        &s,
        &out,
        &d,
        &["--data-scale", "7"],
        &["--data-scale 7", "uses", "the same value"],
    );
}

#[test]
fn train_data_scale_makes_the_data_constant() {
    let s = Scratch::new("in-t-scale-1e300");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-scale=1e300"],
        &[
            "data.npy",
            "data_scale 1e300",
            "from --data-scale",
            "constant training data in model space",
        ],
    );
}

#[test]
fn train_data_shift_makes_the_data_constant() {
    let s = Scratch::new("in-t-shift-1e30");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--data-shift=1e30"],
        &[
            "data.npy",
            "data_shift 1e30",
            "from --data-shift",
            "constant training data in model space",
        ],
    );
}

#[test]
fn train_weight_decay_beyond_the_step() {
    let s = Scratch::new("in-t-wd-huge");
    let d = train_data(&s);
    train_refused(
        &s,
        &d,
        &["--weight-decay=1e30", "--lr", "1e-4"],
        &["--lr 0.0001", "--weight-decay 1e30", "expected less than 1"],
    );
}

// ---------------------------------------------------------------- eval

fn eval_refused(s: &Scratch, forecast: &Path, truth: &Path, extra: &[&str], needles: &[&str]) {
    let out = s.path("report.json");
    let mut args = strings(&["eval", "--forecast", &st(forecast), "--truth", &st(truth)]);
    args.extend(strings(&["--json", &st(&out)]));
    args.extend(strings(extra));
    refused(s, &args, &out, needles);
}

fn eval_fixture(name: &str) -> PathBuf {
    fixture("eval").join(name)
}

#[test]
fn eval_thresholds_nan() {
    let s = Scratch::new("in-e-q-nan");
    eval_refused(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds", "0.5,nan"],
        &["--thresholds", "finite", "found NaN"],
    );
}

#[test]
fn eval_thresholds_infinite() {
    let s = Scratch::new("in-e-q-inf");
    eval_refused(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds=-inf"],
        &["--thresholds", "finite", "found -inf"],
    );
}

#[test]
fn eval_thresholds_empty() {
    let s = Scratch::new("in-e-q-empty");
    eval_refused(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds", ""],
        &["--thresholds", "''"],
    );
}

#[test]
fn eval_empty_forecast() {
    let s = Scratch::new("in-e-f-empty");
    let f = write(&s, "forecast.npy", &[3, 0, 4, 2, 20, 24], &[]);
    eval_refused(
        &s,
        &f,
        &eval_fixture("truth.npy"),
        &[],
        &["forecast.npy", "empty forecast", "[3, 0, 4, 2, 20, 24]"],
    );
}

#[test]
fn eval_empty_npz_forecast() {
    let s = Scratch::new("in-e-f-npz");
    let f = empty_npz(&s, "forecast.npz");
    eval_refused(
        &s,
        &f,
        &eval_fixture("truth.npy"),
        &[],
        &["forecast.npz", "holds no array"],
    );
}

#[test]
fn eval_truth_shorter_than_the_forecast() {
    let s = Scratch::new("in-e-t-short");
    let t = random(&s, "truth.npy", &[3, 3, 2, 20, 24]);
    eval_refused(
        &s,
        &eval_fixture("forecast.npy"),
        &t,
        &[],
        &["truth.npy", "L ≥ S", "[3, 3, 2, 20, 24]"],
    );
}

#[test]
fn eval_non_finite_truth() {
    let s = Scratch::new("in-e-t-nan");
    let mut v = rand_vec(3 * 6 * 2 * 20 * 24, 5);
    v[5] = f32::NAN;
    let t = write(&s, "truth.npy", &[3, 6, 2, 20, 24], &v);
    eval_refused(
        &s,
        &eval_fixture("forecast.npy"),
        &t,
        &[],
        &["truth.npy", "1 NaN or infinite", "[0, 0, 0, 0, 5]"],
    );
}

#[test]
fn eval_non_finite_forecast() {
    let s = Scratch::new("in-e-f-nan");
    let mut v = rand_vec(3 * 5 * 4 * 2 * 20 * 24, 5);
    v[1] = f32::INFINITY;
    let f = write(&s, "forecast.npy", &[3, 5, 4, 2, 20, 24], &v);
    eval_refused(
        &s,
        &f,
        &eval_fixture("truth.npy"),
        &[],
        &["forecast.npy", "1 NaN or infinite", "[0, 0, 0, 0, 0, 1]"],
    );
}

// ---------------------------------------------------------------- data navier-stokes

/// `dydiff data navier-stokes --out x.npy` with `--samples 1 --frames 2 --resolution 16`
/// unless `flags` give them, refused.
fn ns_refused(s: &Scratch, flags: &[&str], needles: &[&str]) {
    let out = s.path("x.npy");
    let mut args = strings(&["data", "navier-stokes", "--out", &st(&out)]);
    for (f, v) in [
        ("--samples", "1"),
        ("--frames", "2"),
        ("--resolution", "16"),
    ] {
        if !flags.iter().any(|g| g.starts_with(f)) {
            args.extend(strings(&[f, v]));
        }
    }
    args.extend(strings(flags));
    refused(s, &args, &out, needles);
}

#[test]
fn ns_zero_flags() {
    for flag in ["--samples", "--frames", "--oversample", "--frame-stride"] {
        let s = Scratch::new(&format!("in-ns-zero{flag}"));
        ns_refused(
            &s,
            &[&format!("{flag}=0")],
            &[flag, "at least 1", "found 0"],
        );
    }
}

#[test]
fn ns_resolution_zero() {
    let s = Scratch::new("in-ns-res0");
    ns_refused(
        &s,
        &["--resolution=0"],
        &["--resolution", "even number ≥ 8", "found 0"],
    );
}

#[test]
fn ns_time_step_zero() {
    let s = Scratch::new("in-ns-dt0");
    ns_refused(&s, &["--dt=0"], &["--dt", "positive", "found 0"]);
}

#[test]
fn ns_time_step_nan() {
    let s = Scratch::new("in-ns-dt-nan");
    ns_refused(&s, &["--dt=nan"], &["--dt", "positive", "found NaN"]);
}

#[test]
fn ns_viscosity_infinite() {
    let s = Scratch::new("in-ns-nu-inf");
    ns_refused(
        &s,
        &["--viscosity=inf"],
        &["--viscosity", "≥ 0", "found inf"],
    );
}

#[test]
fn ns_drag_negative() {
    let s = Scratch::new("in-ns-drag");
    ns_refused(&s, &["--drag=-1"], &["--drag", "≥ 0", "found -1"]);
}

#[test]
fn ns_forcing_nan() {
    let s = Scratch::new("in-ns-forcing");
    ns_refused(
        &s,
        &["--forcing=nan"],
        &["--forcing", "finite", "found NaN"],
    );
}

#[test]
fn ns_forcing_wavenumber_zero() {
    let s = Scratch::new("in-ns-kf0");
    ns_refused(
        &s,
        &["--forcing-wavenumber=0"],
        &["--forcing-wavenumber", "expected 1 to 10", "found 0"],
    );
}

#[test]
fn ns_samples_beyond_memory() {
    let s = Scratch::new("in-ns-memory");
    ns_refused(
        &s,
        &["--samples=1000000000", "--resolution=4096"],
        &[
            "--samples 1000000000",
            "--resolution 4096",
            "needs",
            "of memory",
        ],
    );
}

#[test]
fn ns_samples_beyond_the_counter() {
    let s = Scratch::new("in-ns-samples-u32");
    ns_refused(
        &s,
        &["--samples=4294967297"],
        &["--samples", "1 to 4294967296", "found 4294967297"],
    );
}

#[test]
fn ns_grid_beyond_64_bits() {
    let s = Scratch::new("in-ns-grid");
    ns_refused(
        &s,
        &["--resolution=4294967296", "--oversample=4294967296"],
        &[
            "--resolution 4294967296",
            "--oversample 4294967296",
            "overflows",
        ],
    );
}

#[test]
fn ns_solver_steps_overflow() {
    let s = Scratch::new("in-ns-steps");
    ns_refused(
        &s,
        &["--warmup=18446744073709551615"],
        &["--warmup", "--frame-stride", "overflows"],
    );
}

// ---------------------------------------------------------------- bench

/// `dydiff bench KIND --unet unet_a FLAGS…`, refused (nothing is written).
fn bench_refused(s: &Scratch, kind: &str, flags: &[&str], needles: &[&str]) {
    let mut args = strings(&["bench", kind, "--unet", &st(&fixture("unet_a"))]);
    args.extend(strings(flags));
    refused(s, &args, &s.path("nothing"), needles);
}

#[test]
fn bench_zero_flags() {
    for kind in ["unet", "train"] {
        for flag in ["--batch", "--size", "--reps"] {
            let s = Scratch::new(&format!("in-b-{kind}{flag}"));
            bench_refused(&s, kind, &[flag, "0"], &[flag, "at least 1", "found 0"]);
        }
    }
}

/// docs/cli.md, “bench”: a folder holding only a diffusers `config.json` is timed with seeded
/// random weights (the same parameter count as the folder with its weights).
#[test]
fn bench_times_a_config_without_weights() {
    let s = Scratch::new("in-b-config-only");
    let dir = s.path("net");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("unet_a/config.json"), dir.join("config.json")).unwrap();
    let report = |unet: &Path| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .args([
                "bench",
                "unet",
                "--unet",
                &st(unet),
                "--batch",
                "1",
                "--size",
                "8",
            ])
            .args(["--reps", "1", "--warmup", "0"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (random, given) = (report(&dir), report(&fixture("unet_a")));
    assert_eq!(random["params"], given["params"]);
    assert!(random["median_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_size_not_a_multiple_of_the_downsampling() {
    let s = Scratch::new("in-b-size");
    bench_refused(
        &s,
        "unet",
        &["--size", "6"],
        &["--size 6", "multiple of 4", "unet_a"],
    );
}

#[test]
fn bench_beyond_memory() {
    let s = Scratch::new("in-b-memory");
    bench_refused(
        &s,
        "train",
        &["--batch", "1000000", "--size", "4096"],
        &["--batch 1000000 --size 4096", "needs", "of memory"],
    );
}

#[test]
fn sample_lead_zero() {
    let s = Scratch::new("in-s-lead0");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--lead", "0"],
        &["--lead", "1 to 768", "found 0"],
    );
}

#[test]
fn sample_lead_beyond_256_windows() {
    let s = Scratch::new("in-s-lead-big");
    sample_refused(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--lead", "769"],
        &["--lead", "256 windows of 3", "found 769"],
    );
}

/// diffusers-side folders: `--model MODEL/unet` names the folder above; a bare network folder is
/// not a model folder; pickled weights alone get the converter's command; the fp16 variant of
/// the weights loads (as float32, the same forecast to fp16's rounding); a `DDPMScheduler` config
/// (its `variance_type`) is accepted for DDIM sampling, with the same forecast as the DDIM config.
#[test]
fn diffusers_side_folders() {
    let s = Scratch::new("in-diffusers-side");
    let m = s.model_copy("sampler/model_dyn");
    let obs = sampler("obs.npy");
    let quick = ["--steps", "3", "--members", "2", "--seed", "1"];
    let run = |model: &Path, out: &Path| {
        let mut a = strings(&["sample", "--model", &st(model), "--input", &st(&obs)]);
        a.extend(strings(&["--out", &st(out)]));
        a.extend(strings(&quick));
        dydiff(a)
    };
    let out = s.path("f.npy");
    let (ok, err) = run(&m.join("unet"), &out);
    assert_clean_failure(
        ok,
        &err,
        &["unet", "point --model at the folder above"],
        &out,
        &s,
    );
    let bare = s.path("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(m.join("unet/config.json"), bare.join("config.json")).unwrap();
    let (ok, err) = run(&bare, &out);
    assert_clean_failure(
        ok,
        &err,
        &["bare", "not a model folder", "dydiff.json"],
        &out,
        &s,
    );
    let (ok, err) = run(&m, &s.path("want.npy"));
    assert!(ok, "{err}");
    let want = npy::read(&s.path("want.npy")).unwrap();
    // DDPMScheduler config
    let sched = m.join("scheduler/scheduler_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sched).unwrap()).unwrap();
    v["_class_name"] = "DDPMScheduler".into();
    v["variance_type"] = "fixed_small".into();
    std::fs::write(&sched, v.to_string()).unwrap();
    let (ok, err) = run(&m, &s.path("ddpm.npy"));
    assert!(ok, "{err}");
    assert_eq!(npy::read(&s.path("ddpm.npy")).unwrap().data, want.data);
    // the fp16 variant alone
    let weights = m.join("unet/diffusion_pytorch_model.safetensors");
    let arrays = dydiff::io::safetensors::read(&weights).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = arrays
        .iter()
        .map(|(name, (shape, data))| {
            let bytes = data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(n, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), b)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        &None,
        &m.join("unet/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(&weights).unwrap();
    let (ok, err) = run(&m, &s.path("half.npy"));
    assert!(ok, "{err}");
    let got = npy::read(&s.path("half.npy")).unwrap();
    let scale = want.data.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let worst = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        worst > 0.0 && worst < 0.05 * scale,
        "fp16 weights: {worst} of {scale}"
    );
    // pickled weights alone
    std::fs::remove_file(m.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    std::fs::write(
        m.join("unet/diffusion_pytorch_model.bin"),
        b"\x80\x02pickle",
    )
    .unwrap();
    let (ok, err) = run(&m, &out);
    assert_clean_failure(
        ok,
        &err,
        &[
            "diffusion_pytorch_model.bin",
            "python/convert_bin_weights.py",
        ],
        &out,
        &s,
    );
}
