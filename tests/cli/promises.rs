//! What README.md and the `--help` texts promise, where no other test file checks it: the
//! defaults of every command, what `sample` reads, draws and prints, the generator's frames and
//! layout, the training recipe and log, the `eval` table, the `bench` reports, the conversions of
//! inputs and weights, the global flags, and the built-in model. Each case runs the binary on
//! small inputs and checks values, not only the exit status.

use crate::common::{assert_clean_failure, dydiff, fixture, rand_vec, Scratch};
use dydiff::io::npy;
use rustfft::num_complex::Complex64;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dydiff"))
}

fn st(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `dydiff args` in `cwd`, which must succeed; returns (stdout, stderr).
fn ok_in(cwd: &Path, args: &[&str]) -> (String, String) {
    let o = bin().current_dir(cwd).args(args).output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{args:?}: {err}");
    (out, err)
}

/// Whether two arrays hold the same bits.
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

// ---------------------------------------------------------------- sample

fn sampler(name: &str) -> PathBuf {
    fixture("sampler").join(name)
}

/// The fixture observations `(2, 5, 2, 16, 16)`: the model's 2 history and 3 future frames.
fn observations() -> npy::Array {
    npy::read(&sampler("obs.npy")).unwrap()
}

/// Values per frame of the fixture observations.
const FRAME: usize = 2 * 16 * 16;

/// `dydiff sample --model model_dyn --input INPUT --out OUT EXTRA…` in the scratch folder.
fn sample(s: &Scratch, input: &Path, out: &str, extra: &[&str]) -> npy::Array {
    let model = sampler("model_dyn");
    let mut a = vec!["sample", "--model", st(&model), "--input", st(input)];
    a.extend(["--out", out]);
    a.extend(extra);
    ok_in(&s.0, &a);
    npy::read(&s.path(out)).unwrap()
}

/// Writes `shape` of `data` as `name` in the scratch folder.
fn write(s: &Scratch, name: &str, shape: &[usize], data: &[f32]) -> PathBuf {
    let p = s.path(name);
    npy::write(&p, shape, data).unwrap();
    p
}

/// README, `sample`: `--members` 8, `--steps` 20, `--seed` 0, `--ddim-eta` 1, `--batch` 8,
/// `--out forecast.npy`; pictures only on request with a given model.
#[test]
fn sample_defaults_are_the_documented_values() {
    let s = Scratch::new("p-sample-defaults");
    let obs = observations();
    let one = write(&s, "one.npy", &[1, 5, 2, 16, 16], &obs.data[..5 * FRAME]);
    let model = sampler("model_dyn");
    ok_in(
        &s.0,
        &["sample", "--model", st(&model), "--input", st(&one)],
    );
    let got = npy::read(&s.path("forecast.npy")).unwrap();
    assert_eq!(got.shape, [1, 8, 3, 2, 16, 16], "8 members by default");
    assert!(
        !s.path("forecast_png").exists(),
        "pictures without --png with a given model"
    );
    let explicit = sample(
        &s,
        &one,
        "explicit.npy",
        &[
            "--members",
            "8",
            "--steps",
            "20",
            "--seed",
            "0",
            "--ddim-eta",
            "1",
            "--batch",
            "8",
        ],
    );
    assert!(
        same(&got.data, &explicit.data),
        "the defaults differ from --members 8 --steps 20 --seed 0 --ddim-eta 1 --batch 8"
    );
}

/// README, `sample`: “the first `P+1` frames are the history”; what follows them is not used
/// for the forecast, however many frames there are.
#[test]
fn the_history_is_the_first_frames_of_each_sequence() {
    let s = Scratch::new("p-sample-history");
    let obs = observations();
    let quick = ["--steps", "2", "--members", "2", "--ddim-eta", "0.5"];
    let full = sample(&s, &sampler("obs.npy"), "full.npy", &quick);
    let history: Vec<f32> = (0..2)
        .flat_map(|n| obs.data[n * 5 * FRAME..][..2 * FRAME].to_vec())
        .collect();
    let h = write(&s, "history.npy", &[2, 2, 2, 16, 16], &history);
    assert!(
        same(&sample(&s, &h, "a.npy", &quick).data, &full.data),
        "the history alone gives another forecast"
    );
    let other: Vec<f32> = (0..2)
        .flat_map(|n| {
            let mut v = history[n * 2 * FRAME..][..2 * FRAME].to_vec();
            v.extend(rand_vec(5 * FRAME, 30 + n as u64));
            v
        })
        .collect();
    let o = write(&s, "other.npy", &[2, 7, 2, 16, 16], &other);
    assert!(
        same(&sample(&s, &o, "b.npy", &quick).data, &full.data),
        "other frames after the history change the forecast"
    );
    // ... while the last history frame does matter.
    let mut changed = history.clone();
    changed[FRAME + 100] += 1.0;
    let c = write(&s, "changed.npy", &[2, 2, 2, 16, 16], &changed);
    let per = full.data.len() / 2;
    assert!(!same(
        &sample(&s, &c, "c.npy", &quick).data[..per],
        &full.data[..per]
    ));
}

/// A `.npz` archive holding `npy` as its one member `name`, stored (as `np.savez` writes it).
fn stored_npz(name: &str, npy: &[u8]) -> Vec<u8> {
    let crc = crc32fast::hash(npy);
    let (name, len) = (name.as_bytes(), npy.len() as u32);
    let mut z = Vec::new();
    let common = |z: &mut Vec<u8>| {
        z.extend(0u16.to_le_bytes()); // flags
        z.extend(0u16.to_le_bytes()); // method: stored
        z.extend(0u16.to_le_bytes()); // time
        z.extend(0x21u16.to_le_bytes()); // date
        z.extend(crc.to_le_bytes());
        z.extend(len.to_le_bytes());
        z.extend(len.to_le_bytes());
        z.extend((name.len() as u16).to_le_bytes());
        z.extend(0u16.to_le_bytes()); // extra field length
    };
    z.extend(0x0403_4b50u32.to_le_bytes());
    z.extend(20u16.to_le_bytes());
    common(&mut z);
    z.extend(name);
    z.extend(npy);
    let central = z.len();
    z.extend(0x0201_4b50u32.to_le_bytes());
    z.extend(20u16.to_le_bytes());
    z.extend(20u16.to_le_bytes());
    common(&mut z);
    z.extend([0u8; 10]); // comment length, disk, internal and external attributes
    z.extend([0u8; 4]); // the local header's offset
    z.extend(name);
    let size = (z.len() - central) as u32;
    z.extend(0x0605_4b50u32.to_le_bytes());
    z.extend([0u8; 4]); // disk numbers
    z.extend(1u16.to_le_bytes());
    z.extend(1u16.to_le_bytes());
    z.extend(size.to_le_bytes());
    z.extend((central as u32).to_le_bytes());
    z.extend(0u16.to_le_bytes());
    z
}

/// README, `sample`: observations in `.npy`, or `.npz` with one array.
#[test]
fn sample_reads_a_one_array_npz() {
    let s = Scratch::new("p-sample-npz");
    let obs = observations();
    let p = s.path("obs.npz");
    std::fs::write(
        &p,
        stored_npz("obs.npy", &npy::encode(&obs.shape, &obs.data)),
    )
    .unwrap();
    let quick = ["--steps", "2", "--members", "2"];
    let from_npz = sample(&s, &p, "a.npy", &quick);
    let from_npy = sample(&s, &sampler("obs.npy"), "b.npy", &quick);
    assert_eq!(from_npz.shape, [2, 2, 3, 2, 16, 16]);
    assert!(same(&from_npz.data, &from_npy.data));
}

/// `--ddim-eta`: “0 deterministic given the initial noise”: with `--init-noise` the seed then
/// changes nothing; with 1 it does.
#[test]
fn ddim_eta_zero_is_deterministic_given_the_initial_noise() {
    let s = Scratch::new("p-sample-eta0");
    let eps = sampler("eps.npy");
    let run = |seed: &str, eta: &str, out: &str| {
        let extra = [
            "--members",
            "3",
            "--steps",
            "3",
            "--init-noise",
            st(&eps),
            "--seed",
            seed,
            "--ddim-eta",
            eta,
        ];
        sample(&s, &sampler("obs.npy"), out, &extra).data
    };
    assert!(same(&run("1", "0", "a.npy"), &run("2", "0", "b.npy")));
    let (c, d) = (run("1", "1", "c.npy"), run("2", "1", "d.npy"));
    let differ = c.iter().zip(&d).filter(|(a, b)| a != b).count();
    assert!(differ > c.len() / 2, "eta 1: only {differ} values differ");
}

/// README, `sample`: each noise value is a pure function of (seed, sample, member, step,
/// element): a sequence's forecast does not depend on the sequences after it in the file.
#[test]
fn a_forecast_does_not_depend_on_the_sequences_after_it() {
    let s = Scratch::new("p-sample-index");
    let obs = observations();
    let extra = [
        "--steps",
        "3",
        "--members",
        "2",
        "--ddim-eta",
        "1",
        "--seed",
        "4",
    ];
    let both = sample(&s, &sampler("obs.npy"), "both.npy", &extra);
    let one = write(&s, "one.npy", &[1, 5, 2, 16, 16], &obs.data[..5 * FRAME]);
    let first = sample(&s, &one, "first.npy", &extra);
    assert!(same(&first.data, &both.data[..both.data.len() / 2]));
}

/// README, `sample`: without `--model`, the built-in model forecasts a given `--input` (its
/// pictures in forecast_png/), the same as it forecasts that sequence of its demo.
#[test]
fn the_built_in_model_forecasts_a_given_input() {
    let (_, demo) = dydiff::model::default_model::materialize().unwrap();
    let d = npy::read(&demo).unwrap();
    assert_eq!(d.shape, [4, 10, 2, 32, 32], "4 demo sequences");
    let s = Scratch::new("p-builtin-input");
    let one = write(
        &s,
        "one.npy",
        &[1, 10, 2, 32, 32],
        &d.data[..d.data.len() / 4],
    );
    ok_in(
        &s.0,
        &[
            "sample",
            "--input",
            st(&one),
            "--steps",
            "1",
            "--members",
            "2",
        ],
    );
    let got = npy::read(&s.path("forecast.npy")).unwrap();
    assert_eq!(got.shape, [1, 2, 6, 2, 32, 32]);
    assert!(s.path("forecast_png/sample_0000.png").is_file());
    assert!(!s.path("forecast_png/sample_0001.png").exists());
    let all = Scratch::new("p-builtin-demo");
    ok_in(&all.0, &["sample", "--steps", "1", "--members", "2"]);
    let demo_fc = npy::read(&all.path("forecast.npy")).unwrap();
    assert!(same(&got.data, &demo_fc.data[..got.data.len()]));
}

fn png_size(p: &Path) -> (u32, u32) {
    let bytes = std::fs::read(p).unwrap();
    let reader = png::Decoder::new(bytes.as_slice()).read_info().unwrap();
    (reader.info().width, reader.info().height)
}

/// README, `--png`: rows of history, truth (only when the input holds the future frames), up to
/// 8 members, mean and spread — per channel.
#[test]
fn pictures_show_the_truth_when_known_and_at_most_8_members() {
    let s = Scratch::new("p-sample-png");
    let obs = observations();
    let history: Vec<f32> = (0..2)
        .flat_map(|n| obs.data[n * 5 * FRAME..][..2 * FRAME].to_vec())
        .collect();
    let h = write(&s, "history.npy", &[2, 2, 2, 16, 16], &history);
    let size = |input: &Path, members: &str| {
        let extra = ["--steps", "1", "--members", members, "--png", "pics"];
        sample(&s, input, "f.npy", &extra);
        png_size(&s.path("pics/sample_0001.png"))
    };
    let full = sampler("obs.npy");
    let (w2, truth2) = size(&full, "2");
    let (w, no_truth2) = size(&h, "2");
    let (w8, truth8) = size(&full, "8");
    let (w10, truth10) = size(&full, "10");
    assert!(w2 == w && w2 == w8 && w2 == w10, "{w2} {w} {w8} {w10}");
    assert!(truth2 > no_truth2, "no truth row: {truth2} vs {no_truth2}");
    // Two channel blocks: the truth adds one row to each, six more members six rows.
    assert_eq!(truth8 - truth2, 6 * (truth2 - no_truth2));
    assert_eq!(truth10, truth8, "more than 8 members drawn");
}

/// README, `sample`: “a summary line ends the run”; the progress bar is drawn only on a
/// terminal, so with stderr a pipe the summary is all there is.
#[test]
fn sample_ends_with_a_summary_line_and_draws_no_bar_off_a_terminal() {
    let s = Scratch::new("p-sample-summary");
    let model = sampler("model_dyn");
    let obs = sampler("obs.npy");
    let args = [
        "sample",
        "--model",
        st(&model),
        "--input",
        st(&obs),
        "--out",
        "f.npy",
        "--members",
        "2",
        "--steps",
        "3",
    ];
    let (out, err) = ok_in(&s.0, &args);
    assert!(out.is_empty(), "stdout: {out}");
    // (the fixture's random network goes far beyond its data: a warning line comes first)
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("dydiff: warning: ")),
        "{err:?}"
    );
    let last = lines.last().unwrap();
    let prefix =
        "dydiff: wrote f.npy (2 samples × 2 members × 3 frames, 3 network calls per member) in ";
    assert!(last.starts_with(prefix), "{err:?}");
    for part in ["load", "network", "sampler other", "write"] {
        assert!(last.contains(part), "{err:?} lacks {part:?}");
    }
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
}

/// README, `sample`: “A progress bar with ETA and forecasts/s is drawn on a terminal” — stderr
/// on a pseudo-terminal; the summary line follows it.
#[test]
fn sample_draws_a_progress_bar_on_a_terminal() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let s = Scratch::new("p-sample-bar");
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the pointers are valid for the call; the two descriptors it opens are owned by
    // the files made of them below.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if r != 0 {
        eprintln!("note: no pseudo-terminal here; the progress bar is not exercised");
        return;
    }
    // SAFETY: both descriptors were just opened and are not owned elsewhere.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let model = sampler("model_dyn");
    let obs = sampler("obs.npy");
    let mut child = {
        // The command (and with it this process's copy of the terminal's slave side) is
        // dropped once the child runs, so that reading the master side ends with the child.
        let mut c = bin();
        c.current_dir(&s.0)
            .args(["sample", "--model", st(&model), "--input", st(&obs)])
            .args(["--out", "f.npy", "--members", "4", "--steps", "25"])
            .env("TERM", "xterm-256color")
            .stdout(Stdio::null())
            .stderr(Stdio::from(slave));
        c.spawn().unwrap()
    };
    let reader = std::thread::spawn(move || {
        let (mut master, mut seen, mut chunk) = (master, Vec::new(), [0u8; 4096]);
        // Reading fails (EIO) once the child, the last holder of the slave side, has ended.
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        seen
    });
    assert!(child.wait().unwrap().success());
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    for part in ["sampling", "forecasts/s", "ETA"] {
        assert!(seen.contains(part), "{seen:?} lacks {part:?}");
    }
    let summary = seen.rfind("dydiff: wrote f.npy").expect("no summary line");
    assert!(summary > seen.find("sampling").unwrap(), "{seen:?}");
}

// ---------------------------------------------------------------- data navier-stokes

/// `dydiff data navier-stokes --out OUT FLAGS…` in the scratch folder.
fn ns(s: &Scratch, out: &str, flags: &[&str]) -> npy::Array {
    let mut a = vec!["data", "navier-stokes", "--out", out];
    a.extend(flags);
    ok_in(&s.0, &a);
    npy::read(&s.path(out)).unwrap()
}

/// README and `--help`: `--resolution 64`, `--seed 0`, `--viscosity 1e-3`, `--drag 0.1`,
/// `--forcing 1`, `--forcing-wavenumber 4`, `--dt 0.01`, `--frame-stride 20`, `--warmup 4000`,
/// `--oversample 2`.
#[test]
fn navier_stokes_defaults_are_the_documented_values() {
    let s = Scratch::new("p-ns-defaults");
    let base = ["--samples", "1", "--frames", "2", "--resolution", "8"];
    let defaults = ns(&s, "a.npy", &base);
    let mut explicit = base.to_vec();
    explicit.extend([
        "--seed",
        "0",
        "--viscosity",
        "1e-3",
        "--drag",
        "0.1",
        "--forcing",
        "1",
        "--forcing-wavenumber",
        "4",
        "--dt",
        "0.01",
        "--frame-stride",
        "20",
        "--warmup",
        "4000",
        "--oversample",
        "2",
    ]);
    let given = ns(&s, "b.npy", &explicit);
    assert_eq!(defaults.shape, [1, 2, 2, 8, 8]);
    assert!(same(&defaults.data, &given.data));
    let r = ns(
        &s,
        "c.npy",
        &["--samples", "1", "--frames", "1", "--warmup", "0"],
    );
    assert_eq!(r.shape, [1, 1, 2, 64, 64], "--resolution 64 by default");
}

/// README: `--warmup` solver steps discarded, then a frame every `--frame-stride` steps; each
/// sample a pure function of (seed, sample), whatever the number of samples and threads.
#[test]
fn navier_stokes_frames_follow_warmup_and_stride_and_samples_are_independent() {
    let s = Scratch::new("p-ns-frames");
    let base = ["--resolution", "8", "--seed", "3", "--frame-stride", "5"];
    let run = |out: &str, extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        ns(&s, out, &a)
    };
    let a = run(
        "a.npy",
        &["--samples", "3", "--frames", "3", "--warmup", "0"],
    );
    let b = run(
        "b.npy",
        &[
            "--samples",
            "2",
            "--frames",
            "2",
            "--warmup",
            "5",
            "--threads",
            "1",
        ],
    );
    let c = run(
        "c.npy",
        &["--samples", "1", "--frames", "1", "--warmup", "10"],
    );
    let per = 2 * 8 * 8;
    let frame = |x: &npy::Array, n: usize, f: usize| {
        let l = x.shape[1];
        x.data[(n * l + f) * per..][..per].to_vec()
    };
    for n in 0..2 {
        for f in 0..2 {
            assert!(
                same(&frame(&a, n, f + 1), &frame(&b, n, f)),
                "sample {n} frame {f}"
            );
        }
    }
    assert!(same(&frame(&a, 0, 2), &frame(&c, 0, 0)));
    assert!(
        !same(&frame(&a, 0, 0), &frame(&a, 0, 1)),
        "frames must move"
    );
}

/// `--help`: the velocity (u, v) with rows y and columns x, under the body force A·sin(k_f·y)
/// along x with drag μ and viscosity ν: from any start the flow settles on the laminar
/// Kolmogorov flow u = A/(ν·k_f² + μ)·sin(k_f·y), v = 0.
#[test]
fn navier_stokes_writes_u_v_in_rows_y_columns_x_with_the_forcing_along_x() {
    let s = Scratch::new("p-ns-layout");
    let r = 16;
    let (a, nu, mu, k) = (0.5, 0.01, 1.0, 2.0);
    let flow = ns(
        &s,
        "k.npy",
        &[
            "--samples",
            "1",
            "--frames",
            "1",
            "--resolution",
            "16",
            "--viscosity",
            "0.01",
            "--drag",
            "1",
            "--forcing",
            "0.5",
            "--forcing-wavenumber",
            "2",
            "--warmup",
            "3000",
        ],
    );
    let amplitude = a / (nu * k * k + mu);
    let (mut err_u, mut max_v) = (0.0f64, 0.0f64);
    for row in 0..r {
        let y = 2.0 * std::f64::consts::PI * row as f64 / r as f64;
        for col in 0..r {
            let u = f64::from(flow.data[row * r + col]);
            let v = f64::from(flow.data[r * r + row * r + col]);
            err_u = err_u.max((u - amplitude * (k * y).sin()).abs());
            max_v = max_v.max(v.abs());
        }
    }
    assert!(err_u < 1e-4 * amplitude, "u: error {err_u}");
    assert!(max_v < 1e-4 * amplitude, "v: {max_v}");
}

/// `--oversample`: the solver runs on oversample × R points and frames keep the Fourier modes
/// an R-point grid holds: R 8 oversampled twice is R 16 (the same solver grid) truncated to
/// the modes |m| < 4.
#[test]
fn navier_stokes_frames_keep_the_modes_of_the_written_grid() {
    let s = Scratch::new("p-ns-modes");
    let flags = [
        "--samples",
        "1",
        "--frames",
        "2",
        "--warmup",
        "200",
        "--frame-stride",
        "10",
        "--seed",
        "5",
        "--forcing-wavenumber",
        "3",
    ];
    let with = |extra: &[&str], out: &str| {
        let mut a = flags.to_vec();
        a.extend(extra);
        ns(&s, out, &a)
    };
    let coarse = with(&["--resolution", "8"], "coarse.npy");
    let fine = with(&["--resolution", "16", "--oversample", "1"], "fine.npy");
    let tau = 2.0 * std::f64::consts::PI;
    let mut scale = 0.0f64;
    let mut err = 0.0f64;
    for field in 0..4 {
        let f = &fine.data[field * 256..][..256];
        let c = &coarse.data[field * 64..][..64];
        // The fine field's modes |m_x|, |m_y| < 4, evaluated on the coarse grid.
        for a in 0..8 {
            for b in 0..8 {
                let mut v = Complex64::new(0.0, 0.0);
                for my in -3i32..=3 {
                    for mx in -3i32..=3 {
                        let mut coef = Complex64::new(0.0, 0.0);
                        for j in 0..16 {
                            for i in 0..16 {
                                let ph = -tau * f64::from(my * j as i32 + mx * i as i32) / 16.0;
                                coef += Complex64::from_polar(f64::from(f[j * 16 + i]), ph);
                            }
                        }
                        let ph = tau * f64::from(my * a as i32 + mx * b as i32) / 8.0;
                        v += coef * Complex64::from_polar(1.0 / 256.0, ph);
                    }
                }
                scale = scale.max(v.re.abs());
                err = err.max((v.re - f64::from(c[a * 8 + b])).abs());
            }
        }
    }
    assert!(scale > 0.1, "a weak flow ({scale})");
    assert!(err < 1e-5 * scale, "error {err} of {scale}");
}

// ---------------------------------------------------------------- train

/// Random training sequences `(4, 6, 1, 8, 8)`.
fn train_data(s: &Scratch, name: &str) -> PathBuf {
    write(s, name, &[4, 6, 1, 8, 8], &rand_vec(4 * 6 * 64, 21))
}

/// A one-level network, for runs of many steps.
const TINY: &str = r#"{"block_out_channels": [4], "norm_num_groups": 2, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"], "layers_per_block": 1, "add_attention": false}"#;

fn tiny(s: &Scratch) -> PathBuf {
    let p = s.path("tiny.json");
    std::fs::write(&p, TINY).unwrap();
    p
}

fn log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// README and `--help`, `train`: `--dyn-eta 0.5`, `--batch 16`, `--lr 1e-3`, `--warmup-steps 100`
/// or the run's length when shorter, cosine decay, `--weight-decay 0`, `--clip 1`, `--ema-decay
/// 0.999`, `--seed 0`, the default network (the 3-level network of the built-in model), the
/// cosine noise schedule; off a terminal a plain progress line at each log line, and the run
/// ends with one line naming the folder and the step, then the hint to pass `--val-data`.
#[test]
fn train_defaults_are_the_documented_values() {
    let s = Scratch::new("p-train-defaults");
    let d = train_data(&s, "data.npy");
    let base = [
        "train",
        "--data",
        st(&d),
        "--history",
        "2",
        "--future",
        "2",
        "--steps",
        "2",
    ];
    let mut a = base.to_vec();
    a.extend(["--out", "a"]);
    let (_, err) = ok_in(&s.0, &a);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with("dydiff: step 2/2, loss "), "{err}");
    assert_eq!(
        lines[1],
        "dydiff: trained a to step 2 (EMA weights in a/unet)"
    );
    assert!(lines[2].contains("--val-data"), "{err}");
    let mut b = base.to_vec();
    b.extend([
        "--out",
        "b",
        "--dyn-eta",
        "0.5",
        "--batch",
        "16",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--cosine",
        "--weight-decay",
        "0",
        "--clip",
        "1",
        "--ema-decay",
        "0.999",
        "--seed",
        "0",
        "--log-every",
        "50",
        "--checkpoint-every",
        "1000",
    ]);
    ok_in(&s.0, &b);
    for f in [
        "train_state.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "dydiff.json",
    ] {
        let same = std::fs::read(s.path("a").join(f)).unwrap()
            == std::fs::read(s.path("b").join(f)).unwrap();
        assert!(same, "{f}: the defaults differ from the documented values");
    }
    let p = json_file(&s.path("a/dydiff.json"));
    assert_eq!(p["dyn_eta"], 0.5);
    let t = &p["training"];
    for (key, want) in [
        ("batch", serde_json::json!(16)),
        ("lr", serde_json::json!(1e-3)),
        ("warmup_steps", serde_json::json!(2)),
        ("cosine", serde_json::json!(true)),
        ("weight_decay", serde_json::json!(0.0)),
        ("clip", serde_json::json!(1.0)),
        ("ema_decay", serde_json::json!(0.999)),
        ("seed", serde_json::json!(0)),
    ] {
        assert_eq!(t[key], want, "training.{key}");
    }
    // Logged at the last step (a checkpoint): the end of the 2-step warm-up, 1e-3.
    let lines = log(&s.path("a"));
    assert_eq!(lines.len(), 1);
    let lr = lines[0]["lr"].as_f64().unwrap();
    assert!((lr - 1e-3).abs() < 1e-18, "lr {lr}");
    // The default network is the built-in model's (README, reproduction: the default 3-level UNet).
    let (builtin, _) = dydiff::model::default_model::materialize().unwrap();
    let ours = json_file(&s.path("a/unet/config.json"));
    let theirs = json_file(&builtin.join("unet/config.json"));
    assert_eq!(ours["block_out_channels"].as_array().unwrap().len(), 3);
    for key in [
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "norm_num_groups",
        "attention_head_dim",
        "add_attention",
        "mid_block_type",
    ] {
        assert_eq!(ours[key], theirs[key], "unet/config.json {key}");
    }
    // The scheduler of the model folder (README, “Model folder”).
    let sched = json_file(&s.path("a/scheduler/scheduler_config.json"));
    assert_eq!(sched["beta_schedule"], "squaredcos_cap_v2");
    assert_eq!(sched["timestep_spacing"], "leading");
    assert_eq!(sched["steps_offset"], 1);
    assert_eq!(sched["clip_sample"], false);
}

/// README, `train`: `--steps 4000` by default (the run is stopped after its first checkpoint).
#[test]
fn train_runs_4000_steps_unless_told() {
    let s = Scratch::new("p-train-steps");
    let d = train_data(&s, "data.npy");
    let net = tiny(&s);
    let mut child = bin()
        .current_dir(&s.0)
        .args(["train", "--data", st(&d), "--out", "m", "--history", "2"])
        .args(["--future", "2", "--unet-config", st(&net), "--batch", "1"])
        .args(["--checkpoint-every", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let clock = Instant::now();
    while !s.path("m").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(clock.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill has no memory preconditions; the child is ours and still running.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    child.wait().unwrap();
    let p = json_file(&s.path("m/dydiff.json"));
    assert_eq!(p["training"]["steps"], 4000);
}

/// README, `train`: one log line every `--log-every 50` steps with `step`, `loss`, `lr`,
/// `grad_norm`, `steps_per_s`, and `val_loss` (with `--val-data`) at each checkpoint, every
/// `--checkpoint-every 1000` steps and at the last step.
#[test]
fn train_logs_every_50_steps_and_checkpoints_every_1000_by_default() {
    let s = Scratch::new("p-train-log");
    let d = train_data(&s, "data.npy");
    let v = write(&s, "val.npy", &[2, 3, 1, 8, 8], &rand_vec(2 * 3 * 64, 22));
    let net = tiny(&s);
    ok_in(
        &s.0,
        &[
            "train",
            "--data",
            st(&d),
            "--val-data",
            st(&v),
            "--out",
            "m",
            "--history",
            "1",
            "--future",
            "1",
            "--unet-config",
            st(&net),
            "--batch",
            "1",
            "--steps",
            "1001",
        ],
    );
    let lines = log(&s.path("m"));
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = (1..=20).map(|k| 50 * k).collect();
    want.push(1001);
    assert_eq!(steps, want);
    for l in &lines {
        for key in ["loss", "lr", "grad_norm", "steps_per_s"] {
            let x = l[key].as_f64();
            assert!(x.is_some_and(|x| x.is_finite() && x >= 0.0), "{key}: {l}");
        }
        assert!(l["steps_per_s"].as_f64().unwrap() > 0.0, "{l}");
        let checkpoint = [1000, 1001].contains(&l["step"].as_u64().unwrap());
        let val = l.get("val_loss").and_then(Value::as_f64);
        assert_eq!(val.is_some(), checkpoint, "{l}");
        assert!(val.is_none_or(|v| v.is_finite() && v > 0.0), "{l}");
        assert_eq!(l.as_object().unwrap().len(), 5 + usize::from(checkpoint));
    }
}

/// `--help`, `train`: linear warm-up over `--warmup-steps` to `--lr`, then a cosine decay to 0 at
/// `--steps` (the default; `--cosine` accepted), or with `--constant-lr` constant.
#[test]
fn train_learning_rate_warms_up_then_stays_or_decays_to_zero() {
    let s = Scratch::new("p-train-lr");
    let d = train_data(&s, "data.npy");
    let net = tiny(&s);
    let run = |out: &str, cosine: bool| -> Vec<f64> {
        let mut a = vec![
            "train",
            "--data",
            st(&d),
            "--out",
            out,
            "--history",
            "2",
            "--future",
            "2",
            "--unet-config",
            st(&net),
            "--batch",
            "1",
            "--steps",
            "12",
            "--warmup-steps",
            "4",
            "--lr",
            "1e-3",
            "--log-every",
            "1",
        ];
        a.push(if cosine { "--cosine" } else { "--constant-lr" });
        ok_in(&s.0, &a);
        log(&s.path(out))
            .iter()
            .map(|l| l["lr"].as_f64().unwrap())
            .collect()
    };
    let (constant, cosine) = (run("c", false), run("d", true));
    assert_eq!(constant.len(), 12);
    for (i, (&c, &d)) in constant.iter().zip(&cosine).enumerate() {
        let step = (i + 1) as f64;
        let warm = 1e-3 * (step / 4.0).min(1.0);
        let decayed = if step <= 4.0 {
            warm
        } else {
            1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * (step - 4.0) / 8.0).cos())
        };
        assert!(
            (c - warm).abs() <= 1e-15,
            "step {step}: lr {c}, want {warm}"
        );
        assert!(
            (d - decayed).abs() <= 1e-15,
            "step {step}: {d}, want {decayed}"
        );
    }
    assert_eq!(cosine[11], 0.0, "the cosine ends at 0");
}

/// README, `train`: the saved weights are the weight average (EMA); `data_scale` and
/// `data_shift` are the training data's standard deviation and mean unless given.
#[test]
fn train_saves_the_weight_average_and_the_data_statistics() {
    let s = Scratch::new("p-train-ema");
    let d = train_data(&s, "data.npy");
    let net = tiny(&s);
    let run = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            st(&d),
            "--out",
            out,
            "--history",
            "2",
            "--future",
            "2",
            "--unet-config",
            st(&net),
            "--batch",
            "2",
            "--steps",
            "5",
            "--warmup-steps",
            "1",
            "--lr",
            "1e-2",
        ];
        a.extend(extra);
        ok_in(&s.0, &a);
        let dir = s.path(out);
        let read = dydiff::io::safetensors::read;
        (
            read(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
            read(&dir.join("train_state.safetensors")).unwrap(),
        )
    };
    let (weights, state) = run("a", &[]);
    let mut moved = 0;
    for (name, (shape, w)) in &weights {
        let (es, ema) = &state[&format!("ema/{name}")];
        let (_, param) = &state[&format!("param/{name}")];
        assert!(es == shape && same(w, ema), "{name}: not the EMA");
        moved += w.iter().zip(param).filter(|(a, b)| a != b).count();
    }
    assert!(
        moved > 0,
        "the EMA equals the weights: the test sees nothing"
    );
    // With a decay of 0 the average is the last weights.
    let (weights, state) = run("b", &["--ema-decay", "0"]);
    for (name, (_, w)) in &weights {
        assert!(same(w, &state[&format!("param/{name}")].1), "{name}");
    }
    // data_scale and data_shift: the data's standard deviation and mean, or the flags.
    let x: Vec<f64> = npy::read(&d)
        .unwrap()
        .data
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let p = json_file(&s.path("a/dydiff.json"));
    let (scale, shift) = (
        p["data_scale"].as_f64().unwrap(),
        p["data_shift"].as_f64().unwrap(),
    );
    assert!((scale - std).abs() <= 1e-12 * std, "{scale} vs {std}");
    assert!((shift - mean).abs() <= 1e-12, "{shift} vs {mean}");
    run("c", &["--data-scale", "2.5", "--data-shift=-1"]);
    let p = json_file(&s.path("c/dydiff.json"));
    assert_eq!(
        (p["data_scale"].as_f64(), p["data_shift"].as_f64()),
        (Some(2.5), Some(-1.0))
    );
}

/// README, `train`: gradient clipping (`--clip`) by the global norm before the AdamW step: with
/// a bound far below the gradient's norm the first step barely moves the initial weights (those
/// of `--seed`), without one it moves them by about the learning rate.
#[test]
fn train_clips_the_global_gradient_norm() {
    let s = Scratch::new("p-train-clip");
    let d = train_data(&s, "data.npy");
    let net = tiny(&s);
    let moved = |out: &str, clip: &str| -> f32 {
        ok_in(
            &s.0,
            &[
                "train",
                "--data",
                st(&d),
                "--out",
                out,
                "--history",
                "2",
                "--future",
                "2",
                "--unet-config",
                st(&net),
                "--batch",
                "2",
                "--steps",
                "1",
                "--warmup-steps",
                "1",
                "--lr",
                "1e-2",
                "--clip",
                clip,
            ],
        );
        let dir = s.path(out);
        let config = json_file(&dir.join("unet/config.json"));
        let config = dydiff::nn::UNet2DConfig::from_json(&config).unwrap();
        let init = dydiff::nn::UNet2D::init(config, 0, dydiff::Device::Cpu).unwrap();
        let state = dydiff::io::safetensors::read(&dir.join("train_state.safetensors")).unwrap();
        let mut most = 0.0f32;
        for (name, t) in init.params() {
            let after = &state[&format!("param/{name}")].1;
            for (a, b) in after.iter().zip(t.to_vec().unwrap()) {
                most = most.max((a - b).abs());
            }
        }
        most
    };
    let free = moved("free", "1e30");
    let clipped = moved("clipped", "1e-12");
    assert!(free > 5e-3, "an unclipped step moved the weights by {free}");
    assert!(
        clipped < 1e-5,
        "a step clipped to 1e-12 moved them by {clipped}"
    );
}

/// README: NaN or infinite values in any input array are refused — the validation sequences
/// too.
#[test]
fn train_refuses_non_finite_validation_data() {
    let s = Scratch::new("p-train-val-nan");
    let d = train_data(&s, "data.npy");
    let mut v = rand_vec(2 * 5 * 64, 23);
    v[70] = f32::INFINITY;
    let val = write(&s, "val.npy", &[2, 5, 1, 8, 8], &v);
    let out = s.path("m");
    let (ok, err) = dydiff([
        "train",
        "--data",
        st(&d),
        "--val-data",
        st(&val),
        "--out",
        st(&out),
        "--history",
        "2",
        "--future",
        "2",
        "--steps",
        "2",
    ]);
    assert_clean_failure(ok, &err, &["val.npy", "1 NaN or infinite"], &out, &s);
}

// ---------------------------------------------------------------- eval

/// `--help`, `eval`: the scores are printed as a table on stdout (after the files are
/// written): a row per lead time and one for all, with the values of the JSON report.
#[test]
fn eval_prints_the_table_of_the_report() {
    let s = Scratch::new("p-eval-table");
    let (f, t) = (fixture("eval/forecast.npy"), fixture("eval/truth.npy"));
    let (out, _) = ok_in(
        &s.0,
        &[
            "eval",
            "--forecast",
            st(&f),
            "--truth",
            st(&t),
            "--json",
            "r.json",
            "--thresholds",
            "0.3,1.1",
        ],
    );
    let report = json_file(&s.path("r.json"));
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header[0], "lead");
    let keys = &header[1..];
    for k in [
        "crps",
        "crps_standard",
        "rmse",
        "mae",
        "spread",
        "ssr",
        "psnr",
        "ssim",
    ] {
        assert!(keys.contains(&k), "the table lacks {k}: {out}");
    }
    let per_lead = report["per_lead"].as_array().unwrap();
    assert_eq!(per_lead.len(), 4);
    // the leads, all, each of the 2 channels alone, the other overall scores
    assert_eq!(lines.len(), 1 + 4 + 1 + 2 + 1, "{out}");
    let check = |line: &str, name: &str, o: &Value| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], name, "{line}");
        for (k, cell) in keys.iter().zip(&cells[1..]) {
            assert_eq!(
                *cell,
                format!("{:.4}", o[*k].as_f64().unwrap()),
                "{name} {k}"
            );
        }
    };
    for (i, o) in per_lead.iter().enumerate() {
        check(lines[1 + i], &(i + 1).to_string(), o);
    }
    check(lines[5], "all", &report["overall"]);
    for k in 0..2 {
        let line = lines[6 + k]
            .trim_start()
            .strip_prefix("ch ")
            .expect(lines[6 + k]);
        check(line, &k.to_string(), &report["per_channel"][k]["overall"]);
    }
    let rest = lines[8].strip_prefix("overall: ").expect(lines[8]);
    for (k, v) in report["overall"].as_object().unwrap() {
        if !keys.contains(&k.as_str()) {
            let cell = format!("{k} {:.4}", v.as_f64().unwrap());
            assert!(rest.split(", ").any(|c| c == cell), "{cell} not in {rest}");
        }
    }
}

// ---------------------------------------------------------------- denoise and weights

/// The `.npy` bytes of `data` as float16.
fn npy_f16(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut bytes = npy::encode(shape, data);
    let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[at + 2] = b'2';
    bytes.truncate(bytes.len() - 4 * data.len());
    for v in data {
        bytes.extend(half::f16::from_f32(*v).to_le_bytes());
    }
    bytes
}

fn denoise(s: &Scratch, unet: &Path, input: &Path, out: &str) -> Vec<f32> {
    let args = ["denoise", "--unet", st(unet), "--input", st(input)];
    let mut a = args.to_vec();
    a.extend(["--timestep", "500", "--out", out]);
    ok_in(&s.0, &a);
    npy::read(&s.path(out)).unwrap().data
}

/// README, `denoise`: a float16 input is converted (to the float32 of the same values).
#[test]
fn denoise_converts_float16_input() {
    let s = Scratch::new("p-denoise-f16");
    let unet = fixture("unet_a");
    let x = npy::read(&unet.join("x.npy")).unwrap();
    let rounded: Vec<f32> = x
        .data
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert!(!same(&rounded, &x.data), "float16 changes nothing here");
    let p32 = write(&s, "x32.npy", &x.shape, &rounded);
    let p16 = s.path("x16.npy");
    std::fs::write(&p16, npy_f16(&x.shape, &x.data)).unwrap();
    assert!(same(
        &denoise(&s, &unet, &p16, "a.npy"),
        &denoise(&s, &unet, &p32, "b.npy")
    ));
}

/// `v` rounded to `dtype` (F64, F16 or BF16): its float32 value and its bytes in `dtype`.
fn in_dtype(dtype: safetensors::Dtype, v: f32) -> (f32, Vec<u8>) {
    use safetensors::Dtype;
    match dtype {
        Dtype::F64 => (v, f64::from(v).to_le_bytes().to_vec()),
        Dtype::F16 => {
            let h = half::f16::from_f32(v);
            (h.to_f32(), h.to_le_bytes().to_vec())
        }
        Dtype::BF16 => {
            let h = half::bf16::from_f32(v);
            (h.to_f32(), h.to_le_bytes().to_vec())
        }
        other => unreachable!("{other:?}"),
    }
}

/// README, “Supported network”: weights load from F32, and F16, BF16 and F64 converted; they are
/// written as F32 with the same names.
#[test]
fn weights_load_from_f16_bf16_and_f64_and_are_written_as_f32() {
    use safetensors::{tensor::TensorView, Dtype};
    let s = Scratch::new("p-weights");
    let src = fixture("unet_a");
    let file = "diffusion_pytorch_model.safetensors";
    let weights = dydiff::io::safetensors::read(&src.join(file)).unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let x = src.join("x.npy");
    let cases = [
        (Dtype::F64, "f64"),
        (Dtype::F16, "f16"),
        (Dtype::BF16, "bf16"),
    ];
    for (dtype, tag) in cases {
        // The same (rounded) values as F32 and as `dtype`.
        let (as_f32, as_dtype) = (s.path(&format!("{tag}_f32")), s.path(tag));
        for dir in [&as_f32, &as_dtype] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        }
        let rounded: Vec<(String, Vec<usize>, Vec<f32>)> = names
            .iter()
            .map(|n| {
                let (shape, data) = &weights[*n];
                (
                    (*n).clone(),
                    shape.clone(),
                    data.iter().map(|&v| in_dtype(dtype, v).0).collect(),
                )
            })
            .collect();
        dydiff::io::safetensors::write(&as_f32.join(file), &rounded).unwrap();
        let bytes: Vec<Vec<u8>> = rounded
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|&v| in_dtype(dtype, v).1).collect())
            .collect();
        let views: Vec<(String, TensorView)> = rounded
            .iter()
            .zip(&bytes)
            .map(|((n, shape, _), b)| {
                (n.clone(), TensorView::new(dtype, shape.clone(), b).unwrap())
            })
            .collect();
        std::fs::write(
            as_dtype.join(file),
            safetensors::serialize(views, &None).unwrap(),
        )
        .unwrap();
        let a = denoise(&s, &as_dtype, &x, &format!("{tag}.npy"));
        let b = denoise(&s, &as_f32, &x, &format!("{tag}_f32.npy"));
        assert!(
            same(&a, &b),
            "{tag} weights differ from their float32 values"
        );
    }
    // Written back: F32, the same names.
    let net = dydiff::nn::UNet2D::from_pretrained(&s.path("bf16"), dydiff::Device::Cpu).unwrap();
    let out = s.path("saved");
    net.save_pretrained(&out).unwrap();
    let bytes = std::fs::read(out.join(file)).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut saved_names: Vec<String> = saved.names().into_iter().cloned().collect();
    saved_names.sort();
    assert_eq!(saved_names.iter().collect::<Vec<_>>(), names);
    for (name, view) in saved.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
    }
}

// ---------------------------------------------------------------- bench

/// README and `--help`, `bench`: a JSON report on stdout with the median seconds, GFLOP/s and a
/// per-operation breakdown; `--batch 8`, `--size 32`, `--reps 5` by default; no file written.
#[test]
fn bench_reports_are_json_with_the_documented_defaults() {
    let s = Scratch::new("p-bench");
    let unet = fixture("unet_a");
    let params = dydiff::nn::UNet2D::from_pretrained(&unet, dydiff::Device::Cpu)
        .unwrap()
        .num_params();
    for (kind, must) in [
        ("unet", &["conv2d", "attention", "group_norm"][..]),
        ("train", &["conv2d", "conv2d_backward", "adamw"][..]),
    ] {
        let (out, _) = ok_in(
            &s.0,
            &["--threads", "2", "bench", kind, "--unet", st(&unet)],
        );
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (&r["batch"], &r["height"], &r["width"], &r["threads"]),
            (&8.into(), &32.into(), &32.into(), &2.into()),
            "{kind}"
        );
        assert_eq!(r["params"], params);
        let mut times: Vec<f64> = r["times_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert_eq!(times.len(), 5, "{kind}: --reps 5 by default");
        times.sort_by(f64::total_cmp);
        assert_eq!(r["median_s"].as_f64(), Some(times[2]));
        assert_eq!(r["min_s"].as_f64(), Some(times[0]));
        let gflop = r["gflop"].as_f64().unwrap();
        let rate = r["gflops_per_s"].as_f64().unwrap();
        assert!(
            gflop > 0.0 && (rate - gflop / times[2]).abs() <= 1e-9 * rate,
            "{kind}"
        );
        let ops = r["ops"].as_object().unwrap();
        for op in must {
            assert!(ops.contains_key(*op), "{kind}: no {op} in {ops:?}");
        }
        let mut sum = 0.0;
        for (name, o) in ops {
            assert!(o["calls"].as_u64().is_some_and(|c| c >= 1), "{name}");
            for key in ["seconds", "gflop", "gflops_per_s"] {
                assert!(o[key].as_f64().is_some_and(|v| v >= 0.0), "{name} {key}");
            }
            sum += o["gflop"].as_f64().unwrap();
        }
        assert!(
            (sum - gflop).abs() <= 1e-9 * gflop,
            "{kind}: {sum} vs {gflop}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&s.0).unwrap().count(),
        0,
        "bench wrote a file"
    );
}

/// README: `bench peak` measures the FMA peak on one thread and on all; `--threads N`
/// (default: all cores).
#[test]
fn bench_peak_runs_on_every_core_unless_told() {
    let cores = std::thread::available_parallelism().unwrap().get();
    for (threads, want) in [(None, cores), (Some("1"), 1)] {
        let mut c = bin();
        c.env_remove("RAYON_NUM_THREADS");
        if let Some(n) = threads {
            c.args(["--threads", n]);
        }
        let o = c.args(["bench", "peak"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["threads"], want, "{r}");
        assert!(r["isa"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        for key in ["gflops_per_s_one_thread", "gflops_per_s_all_threads"] {
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{r}");
        }
    }
}

// ---------------------------------------------------------------- global flags

/// `--help`: `-V, --version` prints the version; `--help` lists every command.
#[test]
fn version_and_help() {
    let o = bin().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("dydiff {}\n", env!("CARGO_PKG_VERSION"))
    );
    let o = bin().arg("--help").output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "sample",
        "denoise",
        "train",
        "eval",
        "data",
        "bench",
        "--threads",
        "--device",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
}

/// README, global flags: `--device cpu`; `cuda:N` is refused in this version (one line naming the
/// flag and the device), and so is anything else.
#[test]
fn only_the_cpu_device_is_accepted() {
    let s = Scratch::new("p-device");
    let out = s.path("x.npy");
    let run = |device: &str| {
        dydiff([
            "--device",
            device,
            "data",
            "navier-stokes",
            "--out",
            st(&out),
            "--samples",
            "1",
            "--frames",
            "1",
            "--resolution",
            "8",
            "--warmup",
            "0",
        ])
    };
    for device in ["cuda", "cuda:0", "cuda:3"] {
        let (ok, err) = run(device);
        assert_clean_failure(
            ok,
            &err,
            &[&format!("--device {device}: "), "CUDA"],
            &out,
            &s,
        );
    }
    let (ok, err) = run("tpu");
    assert_clean_failure(
        ok,
        &err,
        &["--device", "cpu or cuda:N", "found tpu"],
        &out,
        &s,
    );
    let (ok, err) = run("cpu");
    assert!(ok, "{err}");
    assert_eq!(npy::read(&out).unwrap().shape, [1, 1, 2, 8, 8]);
}

// ---------------------------------------------------------------- the built-in model

/// README: the built-in model is the built-in recipe at the dyn_eta chosen on validation data
/// (dyn_eta 0, the standard diffusion model; seed 0, 4 000 steps of batch 16, lr 1e-3 with cosine
/// decay, EMA weights; 4 history and 6 future frames of (u, v) at 32×32; the default 3-level UNet
/// of 1.2 M parameters, 4.7 MB).
#[test]
fn the_built_in_model_is_the_one_described() {
    let (model, _) = dydiff::model::default_model::materialize().unwrap();
    let p = json_file(&model.join("dydiff.json"));
    for (key, want) in [
        ("method", serde_json::json!("dydiff")),
        ("dyn_eta", serde_json::json!(0.0)),
        ("history", serde_json::json!(4)),
        ("future", serde_json::json!(6)),
        ("channels", serde_json::json!(2)),
        ("height", serde_json::json!(32)),
        ("width", serde_json::json!(32)),
    ] {
        assert_eq!(p[key], want, "{key}");
    }
    let t = &p["training"];
    assert_eq!(
        (&t["seed"], &t["steps"], &t["batch"], &t["lr"], &t["cosine"]),
        (
            &0.into(),
            &4000.into(),
            &16.into(),
            &1e-3.into(),
            &true.into()
        )
    );
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::metadata(&weights).unwrap().len();
    assert!((4_650_000..4_750_000).contains(&bytes), "{bytes} bytes");
    let net =
        dydiff::nn::UNet2D::from_pretrained(&model.join("unet"), dydiff::Device::Cpu).unwrap();
    let n = net.num_params();
    assert!((1_150_000..1_250_000).contains(&n), "{n} parameters");
    assert_eq!(net.config.block_out_channels.len(), 3);
}

// ---------------------------------------------------------------- the repository

/// README: the files and folders it names (scripts, fixtures generators, the CI script, the
/// layout) are in the repository.
#[test]
fn paths_the_readme_names_exist() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let folders = [
        "src/",
        "tests/",
        "benches/",
        "python/",
        "experiments/",
        "docs/",
        ".ci/",
        "assets/",
    ];
    let mut named = std::collections::BTreeSet::new();
    for token in readme.split(|c: char| c.is_whitespace() || "`()[],;\"'".contains(c)) {
        let path = token
            .split('#')
            .next()
            .unwrap()
            .trim_end_matches(['.', ':']);
        if folders.iter().any(|f| path.starts_with(f)) && !path.contains('*') {
            named.insert(path);
        }
    }
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<&&str> = named.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "README.md names missing paths: {missing:?}"
    );
}
