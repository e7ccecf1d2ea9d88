//! Degenerate inputs and flags of every subcommand — zero, negative, non-finite, empty, too
//! short, out of range, too large to fit in memory — are refused before any work with one line
//! on stderr naming the flag or file, what was expected and what was found; the exit status is
//! non-zero and no output file appears. Each `refusal!` is one such case: a command line (a
//! [`Line`] built by `sample`, `train`, `denoise`, `eval`, `navier_stokes` or `bench` below) and
//! the words its error must contain.

use crate::common::{assert_clean_failure, dydiff, fixture, rand_vec, refusal, Line, Scratch};
use dydiff::io::npy;
use std::path::{Path, PathBuf};

fn st(p: &Path) -> String {
    p.to_str().unwrap().to_string()
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

refusal!(
    threads_zero,
    |s| Line::new(&["--threads", "0", "data", "navier-stokes"])
        .output("--out", &s.path("x.npy"))
        .words(&["--samples", "1", "--frames", "1"]),
    &["--threads", "1 to 1024", "found 0"]
);

refusal!(
    threads_too_many,
    |s| Line::new(&["--threads", "100000", "data", "navier-stokes"])
        .output("--out", &s.path("x.npy"))
        .words(&["--samples", "1", "--frames", "1"]),
    &["--threads", "1 to 1024", "found 100000"]
);

// ---------------------------------------------------------------- sample

fn sampler(name: &str) -> PathBuf {
    fixture("sampler").join(name)
}

/// `dydiff sample --model MODEL --input INPUT --out forecast.npy EXTRA…`.
fn sample(s: &Scratch, model: &Path, input: &Path, extra: &[&str]) -> Line {
    Line::new(&["sample"])
        .path("--model", model)
        .path("--input", input)
        .output("--out", &s.path("forecast.npy"))
        .words(extra)
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

refusal!(
    sample_members_beyond_the_counter,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--members", "16777217"]
    ),
    &["--members", "1 to 16777216", "found 16777217"]
);

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

refusal!(
    sample_members_beyond_memory,
    |s| {
        // 64 sequences × 2^24 members × 3 frames × 2 × 16 × 16 float32: 12 TiB of forecast.
        let obs = random(&s, "obs.npy", &[64, 2, 2, 16, 16]);
        sample(&s, &sampler("model_dyn"), &obs, &["--members", "16777216"])
    },
    &[
        "--members 16777216",
        "[64, 16777216, 3, 2, 16, 16]",
        "needs",
        "TiB",
    ]
);

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

refusal!(
    sample_ddim_eta_nan,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta", "nan"]
    ),
    &["--ddim-eta", "[0, 1]", "found NaN"]
);

refusal!(
    sample_ddim_eta_infinite,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta", "inf"]
    ),
    &["--ddim-eta", "[0, 1]", "found inf"]
);

refusal!(
    sample_ddim_eta_negative,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--ddim-eta=-0.5"]
    ),
    &["--ddim-eta", "[0, 1]", "found -0.5"]
);

refusal!(
    sample_steps_beyond_the_schedule,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--steps", "5000"]
    ),
    &["--steps", "1 to 999", "found 5000"]
);

refusal!(
    sample_no_sequences,
    |s| {
        let obs = write(&s, "obs.npy", &[0, 5, 2, 16, 16], &[]);
        sample(&s, &sampler("model_dyn"), &obs, &[])
    },
    &["obs.npy", "N ≥ 1", "[0, 5, 2, 16, 16]"]
);

refusal!(
    sample_empty_file,
    |s| {
        let obs = s.path("obs.npy");
        std::fs::write(&obs, b"").unwrap();
        sample(&s, &sampler("model_dyn"), &obs, &[])
    },
    &["obs.npy", "empty (0 bytes)", "expected a NumPy"]
);

refusal!(
    sample_empty_npz,
    |s| {
        let obs = empty_npz(&s, "obs.npz");
        sample(&s, &sampler("model_dyn"), &obs, &[])
    },
    &["obs.npz", "holds no array", "expected one"]
);

refusal!(
    sample_observations_overflow_in_model_space,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = 1e-300.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["obs.npy", "model space", "data_scale = 1e-300", "float32"]
);

refusal!(
    sample_process_config_empty,
    |s| {
        let m = model_with(&s, "dydiff.json", "{}");
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["dydiff.json", "empty object", "history"]
);

refusal!(
    sample_process_config_wrong_type,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["history"] = "2".into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "dydiff.json",
        "history = \"2\"",
        "expected a positive integer",
    ]
);

refusal!(
    sample_process_config_zero_frames,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["future"] = 0.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["dydiff.json", "future = 0", "expected a positive integer"]
);

refusal!(
    sample_process_config_missing_key,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| {
            v.as_object_mut().unwrap().remove("channels");
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["dydiff.json", "channels is missing", "positive integer"]
);

refusal!(
    sample_process_config_data_scale_zero,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = 0.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "dydiff.json",
        "data_scale = 0",
        "expected a positive number",
    ]
);

refusal!(
    sample_process_config_data_scale_negative,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["data_scale"] = (-2.0).into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "dydiff.json",
        "data_scale = -2",
        "expected a positive number",
    ]
);

refusal!(
    sample_process_config_data_shift_not_a_number,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| v["data_shift"] = "zero".into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["dydiff.json", "data_shift = \"zero\"", "expected a number"]
);

refusal!(
    sample_process_config_too_large,
    |s| {
        let m = edited_model(&s, "dydiff.json", &|v| {
            v["height"] = (1u64 << 40).into();
            v["width"] = (1u64 << 40).into();
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["dydiff.json", "height 1099511627776", "too large"]
);

refusal!(
    sample_scheduler_config_empty,
    |s| {
        let m = model_with(&s, "scheduler/scheduler_config.json", "{}");
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["scheduler_config.json", "empty object", "DDIMScheduler"]
);

refusal!(
    sample_scheduler_too_many_timesteps,
    |s| {
        let m = edited_model(&s, "scheduler/scheduler_config.json", &|v| {
            v["num_train_timesteps"] = 1_000_000_000.into()
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "scheduler_config.json",
        "num_train_timesteps = 1000000000",
        "2 to 16777216",
    ]
);

refusal!(
    sample_scheduler_beta_start_zero,
    |s| {
        let m = edited_model(&s, "scheduler/scheduler_config.json", &|v| {
            v["beta_schedule"] = "linear".into();
            v["beta_start"] = 0.into();
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "scheduler_config.json",
        "beta_start = 0",
        "0 < beta_start ≤ beta_end < 1",
    ]
);

refusal!(
    sample_unet_config_empty,
    |s| {
        let m = model_with(&s, "unet/config.json", "{}");
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["unet/config.json", "empty object", "UNet2DModel"]
);

refusal!(
    sample_unet_config_groups_do_not_divide,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| v["norm_num_groups"] = 5.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "unet/config.json",
        "norm_num_groups = 5",
        "divisor",
        "[32, 64]",
    ]
);

refusal!(
    sample_unet_config_zero_groups,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| v["norm_num_groups"] = 0.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["unet/config.json", "norm_num_groups = 0", "positive"]
);

refusal!(
    sample_unet_config_norm_eps_zero,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| v["norm_eps"] = 0.into());
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["unet/config.json", "norm_eps = 0", "positive number"]
);

refusal!(
    sample_unet_config_head_wider_than_the_block,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| {
            v["attention_head_dim"] = 100.into()
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "unet/config.json",
        "attention_head_dim = 100",
        "at most the 64",
    ]
);

refusal!(
    sample_unet_config_no_levels,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| {
            v["block_out_channels"] = serde_json::json!([])
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "unet/config.json",
        "block_out_channels = []",
        "at least one level",
    ]
);

refusal!(
    sample_unet_config_zero_time_embedding,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| {
            v["time_embedding_dim"] = 0.into()
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "unet/config.json",
        "time_embedding_dim = 0",
        "positive integer",
    ]
);

refusal!(
    sample_unet_config_downsample_padding,
    |s| {
        let m = edited_model(&s, "unet/config.json", &|v| {
            v["downsample_padding"] = 2.into()
        });
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &["unet/config.json", "downsample_padding = 2", "0 or 1"]
);

refusal!(
    sample_non_finite_weights,
    |s| {
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
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "diffusion_pytorch_model.safetensors",
        "tensor conv_out.bias",
        "1 NaN or infinite",
    ]
);

refusal!(
    sample_empty_weights,
    |s| {
        let m = model_with(&s, "unet/diffusion_pytorch_model.safetensors", "");
        sample(&s, &m, &sampler("obs.npy"), &[])
    },
    &[
        "diffusion_pytorch_model.safetensors",
        "not a valid safetensors",
    ]
);

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
    sample(
        &s,
        &m,
        &sampler("obs.npy"),
        &["--members", "2", "--steps", "2"],
    )
    .refused(
        &s,
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

refusal!(
    sample_init_noise_not_standard_normal,
    |s| {
        let shape = [2, 2, 3, 2, 16, 16];
        let noise = write(&s, "noise.npy", &shape, &vec![3e38; 2 * 2 * 3 * 2 * 256]);
        sample(
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
        )
    },
    &[
        "noise.npy",
        "values up to 3.000e38",
        "standard normal",
        "1e4",
    ]
);

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

/// `dydiff denoise --unet unet_a --input INPUT --timestep T --out y.npy`.
fn denoise(s: &Scratch, input: &Path, t: &str) -> Line {
    Line::new(&["denoise"])
        .path("--unet", &fixture("unet_a"))
        .path("--input", input)
        .flag("--timestep", t)
        .output("--out", &s.path("y.npy"))
}

refusal!(
    denoise_timestep_infinite,
    |s| denoise(&s, &fixture("unet_a").join("x.npy"), "inf"),
    &["--timestep", "finite", "found inf"]
);

refusal!(
    denoise_timestep_beyond_float32,
    |s| denoise(&s, &fixture("unet_a").join("x.npy"), "1e39"),
    &["--timestep", "finite", "found inf"]
);

refusal!(
    denoise_no_samples,
    |s| {
        let x = write(&s, "x.npy", &[0, 3, 16, 24], &[]);
        denoise(&s, &x, "5")
    },
    &["x.npy", "N ≥ 1", "[0, 3, 16, 24]"]
);

refusal!(
    denoise_zero_size_field,
    |s| {
        let x = write(&s, "x.npy", &[1, 3, 0, 24], &[]);
        denoise(&s, &x, "5")
    },
    &["x.npy", "positive multiples of 4", "[1, 3, 0, 24]"]
);

refusal!(
    denoise_field_smaller_than_the_downsampling,
    |s| {
        let x = random(&s, "x.npy", &[1, 3, 2, 2]);
        denoise(&s, &x, "5")
    },
    &["x.npy", "positive multiples of 4", "[1, 3, 2, 2]"]
);

refusal!(
    denoise_empty_npz,
    |s| {
        let x = empty_npz(&s, "x.npz");
        denoise(&s, &x, "5")
    },
    &["x.npz", "holds no array"]
);

refusal!(
    denoise_truncated_header,
    |s| {
        let x = s.path("x.npy");
        std::fs::write(&x, b"\x93NUMPY\x02\x00\x10\x00\x00").unwrap();
        denoise(&s, &x, "5")
    },
    &["x.npy", "truncated .npy header"]
);

refusal!(
    denoise_shape_beyond_64_bits,
    |s| {
        let x = s.path("x.npy");
        let header =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 3, 4), }\n";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        std::fs::write(&x, bytes).unwrap();
        denoise(&s, &x, "5")
    },
    &["x.npy", "[4294967296, 4294967296, 3, 4]", "too large"]
);

refusal!(
    denoise_fortran_order_neither_true_nor_false,
    |s| {
        let x = s.path("x.npy");
        let header = "{'descr': '<f4', 'fortran_order': 1, 'shape': (1, 4, 8, 8), }\n";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; 4 * 4 * 8 * 8]);
        std::fs::write(&x, bytes).unwrap();
        denoise(&s, &x, "5")
    },
    &["x.npy", "'fortran_order' is 1", "expected True or False"]
);

refusal!(
    denoise_file_larger_than_memory,
    |s| {
        let x = s.path("x.npy");
        // A sparse file of 1 TiB: no disk space used, but more than any test machine's memory.
        std::fs::File::create(&x).unwrap().set_len(1 << 40).unwrap();
        denoise(&s, &x, "5")
    },
    &["x.npy", "reading the file", "needs 1.0 TiB of memory"]
);

refusal!(
    denoise_input_beyond_the_network,
    |s| {
        let x = write(&s, "x.npy", &[2, 3, 16, 24], &vec![3.4e38; 2 * 3 * 16 * 24]);
        denoise(&s, &x, "5")
    },
    &[
        "the network output holds",
        "non-finite values",
        "x.npy",
        "values up to 3.400e38",
    ]
);

// ---------------------------------------------------------------- train

/// Random sequences `(4, 8, 1, 8, 8)`.
fn train_data(s: &Scratch) -> PathBuf {
    random(s, "data.npy", &[4, 8, 1, 8, 8])
}

/// `dydiff train --data DATA --out m --history 2 --future 2 EXTRA…` (a refusal leaves no model
/// folder).
fn train(s: &Scratch, data: &Path, extra: &[&str]) -> Line {
    Line::new(&["train"])
        .path("--data", data)
        .output("--out", &s.path("m"))
        .words(&["--history", "2", "--future", "2"])
        .words(extra)
}

refusal!(
    train_constant_data,
    |s| {
        let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &[3.0; 4 * 8 * 64]);
        train(&s, &d, &[])
    },
    &[
        "data.npy",
        "every value is 3",
        "constant",
        "data_scale",
        "expected sequences that vary",
    ]
);

refusal!(
    train_constant_data_with_a_given_scale,
    |s| {
        let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &[0.0; 4 * 8 * 64]);
        train(&s, &d, &["--data-scale", "1"])
    },
    &["data.npy", "every value is 0", "constant"]
);

refusal!(
    train_data_scale_zero,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale", "0"])
    },
    &["--data-scale", "positive", "found 0"]
);

refusal!(
    train_data_scale_negative,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale=-1"])
    },
    &["--data-scale", "positive", "found -1"]
);

refusal!(
    train_data_scale_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale", "NaN"])
    },
    &["--data-scale", "positive finite", "found NaN"]
);

refusal!(
    train_data_scale_infinite,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale", "inf"])
    },
    &["--data-scale", "positive finite", "found inf"]
);

refusal!(
    train_data_scale_too_small_for_float32,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale", "1e-300"])
    },
    &["data.npy", "model space", "--data-scale", "float32"]
);

refusal!(
    train_data_shift_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-shift", "nan"])
    },
    &["--data-shift", "finite", "found NaN"]
);

refusal!(
    train_data_shift_infinite,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-shift=-inf"])
    },
    &["--data-shift", "finite", "found -inf"]
);

refusal!(
    train_sequence_shorter_than_the_window,
    |s| {
        let d = random(&s, "data.npy", &[4, 3, 1, 8, 8]);
        train(&s, &d, &[])
    },
    &["data.npy", "L ≥ 4", "[4, 3, 1, 8, 8]"]
);

refusal!(
    train_validation_shorter_than_the_window,
    |s| {
        let d = train_data(&s);
        let v = random(&s, "val.npy", &[4, 3, 1, 8, 8]);
        train(&s, &d, &["--val-data", &st(&v)])
    },
    &["val.npy", "L ≥ 4", "[4, 3, 1, 8, 8]"]
);

refusal!(
    train_no_sequences,
    |s| {
        let d = write(&s, "data.npy", &[0, 8, 1, 8, 8], &[]);
        train(&s, &d, &[])
    },
    &["data.npy", "N, C, H, W ≥ 1", "[0, 8, 1, 8, 8]"]
);

refusal!(
    train_zero_size_fields,
    |s| {
        let d = write(&s, "data.npy", &[4, 8, 1, 0, 8], &[]);
        train(&s, &d, &[])
    },
    &["data.npy", "N, C, H, W ≥ 1", "[4, 8, 1, 0, 8]"]
);

refusal!(
    train_no_channels,
    |s| {
        let d = write(&s, "data.npy", &[4, 8, 0, 8, 8], &[]);
        train(&s, &d, &[])
    },
    &["data.npy", "N, C, H, W ≥ 1", "[4, 8, 0, 8, 8]"]
);

refusal!(
    train_empty_npz,
    |s| {
        let d = empty_npz(&s, "data.npz");
        train(&s, &d, &[])
    },
    &["data.npz", "holds no array"]
);

refusal!(
    train_non_finite_data,
    |s| {
        let mut v = rand_vec(4 * 8 * 64, 3);
        v[70] = f32::NEG_INFINITY;
        let d = write(&s, "data.npy", &[4, 8, 1, 8, 8], &v);
        train(&s, &d, &[])
    },
    &["data.npy", "1 NaN or infinite", "[0, 1, 0, 0, 6]"]
);

#[test]
fn train_fields_smaller_than_the_downsampling() {
    let s = Scratch::new("in-t-small");
    let d = random(&s, "data.npy", &[4, 8, 1, 6, 6]);
    let cfg = s.path("unet.json");
    std::fs::write(&cfg, r#"{"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"]}"#).unwrap();
    train(&s, &d, &["--unet-config", &st(&cfg)]).refused(
        &s,
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

refusal!(
    train_unet_config_empty,
    |s| {
        let d = train_data(&s);
        let cfg = s.path("unet.json");
        std::fs::write(&cfg, "{}").unwrap();
        train(&s, &d, &["--unet-config", &st(&cfg)])
    },
    &["unet.json", "empty object", "UNet2DModel"]
);

refusal!(
    train_unet_config_groups_name_the_file,
    |s| {
        let d = train_data(&s);
        let cfg = s.path("unet.json");
        std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 5, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
        train(&s, &d, &["--unet-config", &st(&cfg)])
    },
    &["unet.json", "norm_num_groups = 5", "divisor", "[16, 32]"]
);

refusal!(
    train_unet_config_dropout_names_the_file,
    |s| {
        let d = train_data(&s);
        let cfg = s.path("unet.json");
        std::fs::write(&cfg, r#"{"block_out_channels": [16, 32], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "dropout": -0.1}"#).unwrap();
        train(&s, &d, &["--unet-config", &st(&cfg)])
    },
    &["unet.json", "dropout = -0.1", "expected 0 ≤ dropout < 1"]
);

refusal!(
    train_unet_config_beyond_memory,
    |s| {
        let d = train_data(&s);
        let cfg = s.path("unet.json");
        std::fs::write(&cfg, r#"{"block_out_channels": [1000000, 1000000], "norm_num_groups": 8, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
        train(&s, &d, &["--unet-config", &st(&cfg)])
    },
    &["--batch 16", "parameters", "needs", "of memory"]
);

refusal!(
    train_batch_beyond_memory,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--batch", "4294967295"])
    },
    &["--batch 4294967295", "needs", "of memory"]
);

refusal!(
    train_batch_beyond_the_counter,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--batch", "4294967296"])
    },
    &["--batch", "1 to 4294967295", "found 4294967296"]
);

refusal!(
    train_steps_beyond_the_counter,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--steps", "4294967296"])
    },
    &["--steps", "1 to 4294967295", "found 4294967296"]
);

refusal!(
    train_window_overflows,
    |s| Line::new(&["train"])
        .path("--data", &train_data(&s))
        .output("--out", &s.path("m"))
        .words(&["--history", "18446744073709551615", "--future", "2"]),
    &["--history", "--future", "overflows"]
);

#[test]
fn train_zero_flags() {
    for flag in ["--steps", "--batch", "--log-every", "--checkpoint-every"] {
        let s = Scratch::new(&format!("in-t-zero{flag}"));
        let d = train_data(&s);
        train(&s, &d, &[flag, "0"]).refused(&s, &[flag, "at least 1", "found 0"]);
    }
}

refusal!(
    train_zero_history,
    |s| Line::new(&["train"])
        .path("--data", &train_data(&s))
        .output("--out", &s.path("m"))
        .words(&["--history", "0", "--future", "2"]),
    &["--history", "at least 1", "found 0"]
);

refusal!(
    train_dyn_eta_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--dyn-eta", "nan"])
    },
    &["--dyn-eta", "[0, 1]", "found NaN"]
);

refusal!(
    train_dyn_eta_negative,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--dyn-eta=-0.1"])
    },
    &["--dyn-eta", "[0, 1]", "found -0.1"]
);

refusal!(
    train_lr_zero,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--lr", "0"])
    },
    &["--lr", "positive", "found 0"]
);

refusal!(
    train_lr_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--lr", "NaN"])
    },
    &["--lr", "positive", "found NaN"]
);

refusal!(
    train_lr_infinite,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--lr", "inf"])
    },
    &["--lr", "positive", "found inf"]
);

refusal!(
    train_lr_vanishes_in_float32,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--lr", "1e-50"])
    },
    &["--lr", "within float32", "found 1e-50"]
);

refusal!(
    train_lr_negative,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--lr=-0.001"])
    },
    &["--lr", "positive", "found -0.001"]
);

refusal!(
    train_clip_zero,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--clip", "0"])
    },
    &["--clip", "positive", "found 0"]
);

refusal!(
    train_clip_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--clip", "nan"])
    },
    &["--clip", "positive", "found NaN"]
);

refusal!(
    train_weight_decay_negative,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--weight-decay=-0.01"])
    },
    &["--weight-decay", "≥ 0", "found -0.01"]
);

refusal!(
    train_weight_decay_infinite,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--weight-decay", "inf"])
    },
    &["--weight-decay", "≥ 0", "found inf"]
);

refusal!(
    train_ema_decay_one,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--ema-decay", "1"])
    },
    &["--ema-decay", "[0, 1)", "found 1"]
);

refusal!(
    train_ema_decay_nan,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--ema-decay", "nan"])
    },
    &["--ema-decay", "[0, 1)", "found NaN"]
);

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

refusal!(
    train_data_scale_makes_the_data_constant,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-scale=1e300"])
    },
    &[
        "data.npy",
        "data_scale 1e300",
        "from --data-scale",
        "constant training data in model space",
    ]
);

refusal!(
    train_data_shift_makes_the_data_constant,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--data-shift=1e30"])
    },
    &[
        "data.npy",
        "data_shift 1e30",
        "from --data-shift",
        "constant training data in model space",
    ]
);

refusal!(
    train_weight_decay_beyond_the_step,
    |s| {
        let d = train_data(&s);
        train(&s, &d, &["--weight-decay=1e30", "--lr", "1e-4"])
    },
    &["--lr 0.0001", "--weight-decay 1e30", "expected less than 1"]
);

// ---------------------------------------------------------------- eval

/// `dydiff eval --forecast FORECAST --truth TRUTH --json report.json EXTRA…`.
fn eval(s: &Scratch, forecast: &Path, truth: &Path, extra: &[&str]) -> Line {
    Line::new(&["eval"])
        .path("--forecast", forecast)
        .path("--truth", truth)
        .output("--json", &s.path("report.json"))
        .words(extra)
}

fn eval_fixture(name: &str) -> PathBuf {
    fixture("eval").join(name)
}

refusal!(
    /// The reference protocol has no spread or standard CRPS to draw.
    eval_reference_protocol_without_pictures,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--protocol", "reference-turbulence"]
    )
    .path("--png", &s.path("pics")),
    &["--png", "reference-turbulence"]
);

refusal!(
    eval_unknown_protocol,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--protocol", "wmo"]
    ),
    &["--protocol", "reference-turbulence"]
);

refusal!(
    /// The reference protocol's fair CRPS needs two members.
    eval_reference_protocol_one_member,
    |s| eval(
        &s,
        &eval_fixture("forecast_one.npy"),
        &eval_fixture("truth.npy"),
        &["--protocol", "reference-turbulence"]
    ),
    &["forecast_one.npy", "at least 2 members", "found 1"]
);

refusal!(
    eval_compare_another_truths_forecast,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &[]
    )
    .path("--compare", &fixture("turbulence_protocol/forecast.npy")),
    &["forecast.npy", "same truth", "(3, M, 4, 2, 20, 24)"]
);

refusal!(
    /// For a truth longer than the forecasts, which frames a compared forecast predicts is its
    /// window record's: one without is refused.
    eval_compare_without_window_record,
    |s| {
        let bare = s.path("bare.npy");
        std::fs::copy(eval_fixture("forecast.npy"), &bare).unwrap();
        eval(
            &s,
            &eval_fixture("forecast.npy"),
            &eval_fixture("truth.npy"),
            &[],
        )
        .path("--compare", &bare)
    },
    &["bare.npy", "no window record", "--truth-start"]
);

refusal!(
    eval_compare_missing,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &[]
    )
    .path("--compare", &s.path("missing.npy")),
    &["missing.npy"]
);

refusal!(
    eval_resamples_zero,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--resamples", "0"]
    )
    .path("--compare", &eval_fixture("forecast.npy")),
    &["--resamples"]
);

refusal!(
    eval_resamples_without_compare,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--resamples", "50"]
    ),
    &["--compare"]
);

refusal!(
    eval_thresholds_nan,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds", "0.5,nan"]
    ),
    &["--thresholds", "finite", "found NaN"]
);

refusal!(
    eval_thresholds_infinite,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds=-inf"]
    ),
    &["--thresholds", "finite", "found -inf"]
);

refusal!(
    eval_thresholds_empty,
    |s| eval(
        &s,
        &eval_fixture("forecast.npy"),
        &eval_fixture("truth.npy"),
        &["--thresholds", ""]
    ),
    &["--thresholds", "''"]
);

refusal!(
    eval_empty_forecast,
    |s| {
        let f = write(&s, "forecast.npy", &[3, 0, 4, 2, 20, 24], &[]);
        eval(&s, &f, &eval_fixture("truth.npy"), &[])
    },
    &["forecast.npy", "empty forecast", "[3, 0, 4, 2, 20, 24]"]
);

refusal!(
    eval_empty_npz_forecast,
    |s| {
        let f = empty_npz(&s, "forecast.npz");
        eval(&s, &f, &eval_fixture("truth.npy"), &[])
    },
    &["forecast.npz", "holds no array"]
);

refusal!(
    eval_truth_shorter_than_the_forecast,
    |s| {
        let t = random(&s, "truth.npy", &[3, 3, 2, 20, 24]);
        eval(&s, &eval_fixture("forecast.npy"), &t, &[])
    },
    &["truth.npy", "L ≥ S", "[3, 3, 2, 20, 24]"]
);

refusal!(
    eval_non_finite_truth,
    |s| {
        let mut v = rand_vec(3 * 6 * 2 * 20 * 24, 5);
        v[5] = f32::NAN;
        let t = write(&s, "truth.npy", &[3, 6, 2, 20, 24], &v);
        eval(&s, &eval_fixture("forecast.npy"), &t, &[])
    },
    &["truth.npy", "1 NaN or infinite", "[0, 0, 0, 0, 5]"]
);

refusal!(
    eval_non_finite_forecast,
    |s| {
        let mut v = rand_vec(3 * 5 * 4 * 2 * 20 * 24, 5);
        v[1] = f32::INFINITY;
        let f = write(&s, "forecast.npy", &[3, 5, 4, 2, 20, 24], &v);
        eval(&s, &f, &eval_fixture("truth.npy"), &[])
    },
    &["forecast.npy", "1 NaN or infinite", "[0, 0, 0, 0, 0, 1]"]
);

// ---------------------------------------------------------------- data navier-stokes

/// `dydiff data navier-stokes --out x.npy` with `--samples 1 --frames 2 --resolution 16`
/// unless `flags` give them.
fn navier_stokes(s: &Scratch, flags: &[&str]) -> Line {
    let mut line = Line::new(&["data", "navier-stokes"]).output("--out", &s.path("x.npy"));
    for (f, v) in [
        ("--samples", "1"),
        ("--frames", "2"),
        ("--resolution", "16"),
    ] {
        if !flags.iter().any(|g| g.starts_with(f)) {
            line = line.flag(f, v);
        }
    }
    line.words(flags)
}

#[test]
fn ns_zero_flags() {
    for flag in ["--samples", "--frames", "--oversample", "--frame-stride"] {
        let s = Scratch::new(&format!("in-ns-zero{flag}"));
        navier_stokes(&s, &[&format!("{flag}=0")]).refused(&s, &[flag, "at least 1", "found 0"]);
    }
}

refusal!(
    ns_resolution_zero,
    |s| navier_stokes(&s, &["--resolution=0"]),
    &["--resolution", "even number ≥ 8", "found 0"]
);

refusal!(
    ns_time_step_zero,
    |s| navier_stokes(&s, &["--dt=0"]),
    &["--dt", "positive", "found 0"]
);

refusal!(
    ns_time_step_nan,
    |s| navier_stokes(&s, &["--dt=nan"]),
    &["--dt", "positive", "found NaN"]
);

refusal!(
    ns_viscosity_infinite,
    |s| navier_stokes(&s, &["--viscosity=inf"]),
    &["--viscosity", "≥ 0", "found inf"]
);

refusal!(
    ns_drag_negative,
    |s| navier_stokes(&s, &["--drag=-1"]),
    &["--drag", "≥ 0", "found -1"]
);

refusal!(
    ns_forcing_nan,
    |s| navier_stokes(&s, &["--forcing=nan"]),
    &["--forcing", "finite", "found NaN"]
);

refusal!(
    ns_forcing_wavenumber_zero,
    |s| navier_stokes(&s, &["--forcing-wavenumber=0"]),
    &["--forcing-wavenumber", "expected 1 to 10", "found 0"]
);

refusal!(
    ns_samples_beyond_memory,
    |s| navier_stokes(&s, &["--samples=1000000000", "--resolution=4096"]),
    &[
        "--samples 1000000000",
        "--resolution 4096",
        "needs",
        "of memory",
    ]
);

refusal!(
    ns_samples_beyond_the_counter,
    |s| navier_stokes(&s, &["--samples=4294967297"]),
    &["--samples", "1 to 4294967296", "found 4294967297"]
);

refusal!(
    ns_grid_beyond_64_bits,
    |s| navier_stokes(&s, &["--resolution=4294967296", "--oversample=4294967296"]),
    &[
        "--resolution 4294967296",
        "--oversample 4294967296",
        "overflows",
    ]
);

refusal!(
    ns_solver_steps_overflow,
    |s| navier_stokes(&s, &["--warmup=18446744073709551615"]),
    &["--warmup", "--frame-stride", "overflows"]
);

// ---------------------------------------------------------------- bench

/// `dydiff bench KIND --unet unet_a FLAGS…` (it writes nothing).
fn bench(kind: &str, flags: &[&str]) -> Line {
    Line::new(&["bench", kind])
        .path("--unet", &fixture("unet_a"))
        .words(flags)
}

#[test]
fn bench_zero_flags() {
    for kind in ["unet", "train"] {
        for flag in ["--batch", "--size", "--reps"] {
            let s = Scratch::new(&format!("in-b-{kind}{flag}"));
            bench(kind, &[flag, "0"]).refused(&s, &[flag, "at least 1", "found 0"]);
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

refusal!(
    bench_size_not_a_multiple_of_the_downsampling,
    |s| bench("unet", &["--size", "6"]),
    &["--size 6", "multiple of 4", "unet_a"]
);

refusal!(
    bench_beyond_memory,
    |s| bench("train", &["--batch", "1000000", "--size", "4096"]),
    &["--batch 1000000 --size 4096", "needs", "of memory"]
);

refusal!(
    sample_lead_zero,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--lead", "0"]
    ),
    &["--lead", "1 to 768", "found 0"]
);

refusal!(
    sample_lead_beyond_256_windows,
    |s| sample(
        &s,
        &sampler("model_dyn"),
        &sampler("obs.npy"),
        &["--lead", "769"]
    ),
    &["--lead", "256 windows of 3", "found 769"]
);

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
