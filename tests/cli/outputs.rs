//! Outputs are all or nothing, for every subcommand and output flag: each output location is
//! checked before any work, a refusal is one line naming the flag, the path, what was expected
//! and what was found, and a failed or interrupted command leaves every folder as it was (no new
//! file, no temporary); a successful one adds exactly its outputs.

use crate::common::{fixture, Scratch};
use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every path under `dir` (hidden ones included) with the content of each file.
fn listing(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_symlink() {
                // A link is listed by its target, not followed.
                let to = std::fs::read_link(&p).unwrap();
                found.insert(rel, Some(to.to_string_lossy().as_bytes().to_vec()));
            } else if p.is_dir() {
                stack.push(p);
                found.insert(rel, None);
            } else {
                found.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    found
}

/// The paths of a listing that name a temporary.
fn temporaries(l: &BTreeMap<PathBuf, Option<Vec<u8>>>) -> Vec<&PathBuf> {
    l.keys()
        .filter(|p| p.to_string_lossy().contains(".tmp"))
        .collect()
}

/// A command running `dydiff args` in the folder `cwd`.
fn command(cwd: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dydiff"));
    c.current_dir(cwd).args(args);
    c
}

/// `dydiff args` in `cwd`: its output and how long it ran.
fn run(cwd: &Path, args: &[String]) -> (Output, Duration) {
    let clock = Instant::now();
    let o = command(cwd, args).output().unwrap();
    (o, clock.elapsed())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A scratch folder holding `afile` (a plain file), `adir` (an empty directory) and
/// `existing.npy`.
fn scratch(tag: &str) -> Scratch {
    let s = Scratch::new(&format!("outputs-{tag}"));
    std::fs::write(s.path("afile"), b"not a directory").unwrap();
    std::fs::create_dir(s.path("adir")).unwrap();
    std::fs::write(s.path("existing.npy"), b"kept as it is").unwrap();
    s
}

/// Checks a refused command: non-zero exit, one line on stderr naming every needle, no panic,
/// and nothing under the scratch folder created, removed or changed. Returns how long it ran.
fn assert_refused(
    o: &Output,
    took: Duration,
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    s: &Scratch,
    needles: &[&str],
) -> Duration {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a refusal, stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
    let after = listing(&s.0);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the folder changed: {err}"
    );
    assert!(after == *before, "a file's content changed: {err}");
    took
}

/// The model, observations and arrays of the fixtures, by role.
struct Inputs {
    model: String,
    obs: String,
    unet: String,
    x: String,
    forecast: String,
    truth: String,
}

fn inputs() -> Inputs {
    let f = |p: &str| path_str(&fixture(p));
    Inputs {
        model: f("sampler/model_dyn"),
        obs: f("sampler/obs.npy"),
        unet: f("unet_a"),
        x: f("unet_a/x.npy"),
        forecast: f("eval/forecast.npy"),
        truth: f("eval/truth.npy"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    File,
    Dir,
}

/// Every output flag of every subcommand: (flag, kind, the command with `@` where the flag's
/// path goes). The other inputs are valid and small, so only the output location is at fault.
fn output_flags(i: &Inputs) -> Vec<(&'static str, Kind, Vec<String>)> {
    let sample = |rest: &[&str]| {
        let mut a = strings(&[
            "sample",
            "--model",
            &i.model,
            "--input",
            &i.obs,
            "--steps",
            "1",
            "--members",
            "1",
        ]);
        a.extend(strings(rest));
        a
    };
    let eval = |rest: &[&str]| {
        let mut a = strings(&["eval", "--forecast", &i.forecast, "--truth", &i.truth]);
        a.extend(strings(rest));
        a
    };
    vec![
        ("--out", Kind::File, sample(&["--out", "@"])),
        (
            "--png",
            Kind::Dir,
            sample(&["--out", "fc.npy", "--png", "@"]),
        ),
        (
            "--out",
            Kind::File,
            strings(&[
                "denoise",
                "--unet",
                &i.unet,
                "--input",
                &i.x,
                "--timestep",
                "10",
                "--out",
                "@",
            ]),
        ),
        ("--json", Kind::File, eval(&["--json", "@"])),
        (
            "--png",
            Kind::Dir,
            eval(&["--json", "report.json", "--png", "@"]),
        ),
        (
            "--out",
            Kind::File,
            strings(&[
                "data",
                "navier-stokes",
                "--out",
                "@",
                "--samples",
                "1",
                "--frames",
                "2",
                "--resolution",
                "8",
                "--warmup",
                "10",
            ]),
        ),
        (
            "--out",
            Kind::Dir,
            strings(&[
                "train",
                "--data",
                &i.obs,
                "--out",
                "@",
                "--history",
                "2",
                "--future",
                "3",
                "--steps",
                "2",
                "--batch",
                "2",
            ]),
        ),
    ]
}

fn with_path(args: &[String], path: &str) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a == "@" {
                path.to_string()
            } else {
                a.clone()
            }
        })
        .collect()
}

const FILE_EXPECTED: &str = "expected a file in an existing, writable directory";
const DIR_EXPECTED: &str = "expected a writable directory (or a path whose parent is a directory)";

#[test]
fn every_output_flag_refuses_a_bad_location_and_leaves_nothing() {
    let s = scratch("refuse");
    let i = inputs();
    for (flag, kind, args) in output_flags(&i) {
        let cases: &[(&str, &str)] = match kind {
            Kind::File => &[
                ("afile/x.npy", "found that afile is a plain file"),
                ("missing/x.npy", "found that missing does not exist"),
                ("adir", "found a directory"),
                ("adir/", "found a directory"),
            ],
            Kind::Dir => &[
                ("afile", "found a plain file"),
                ("afile/pictures", "found that afile is a plain file"),
                ("missing/pictures", "found that missing does not exist"),
                (
                    "missing/deeper/pictures",
                    "found that missing/deeper does not exist",
                ),
            ],
        };
        let expected = if kind == Kind::File {
            FILE_EXPECTED
        } else {
            DIR_EXPECTED
        };
        for (path, found) in cases {
            let before = listing(&s.0);
            let a = with_path(&args, path);
            let (o, took) = run(&s.0, &a);
            let named = format!("{flag} {path}: {expected}, {found}");
            assert_refused(&o, took, &before, &s, &[&named]);
        }
    }
}

/// A directory this process can write but the child cannot: as root, the child runs as the
/// unprivileged user 65534 (root passes every permission check); otherwise the folder's write
/// bits are cleared. `None` when neither can be arranged here.
fn unwritable(s: &Scratch) -> Option<(PathBuf, Option<u32>)> {
    let ro = s.path("ro");
    std::fs::create_dir(&ro).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let probe = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .arg("--version")
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::null())
            .status();
        match probe {
            Ok(st) if st.success() => {
                // The other outputs of a command go in the scratch folder, which the child may
                // write; `ro` stays root's.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&s.0, std::fs::Permissions::from_mode(0o777)).unwrap();
                Some((ro, Some(65534)))
            }
            _ => {
                eprintln!("note: cannot run the binary as user 65534 here; the unwritable-location refusals are not exercised");
                None
            }
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        Some((ro, None))
    }
}

#[test]
fn unwritable_locations_are_refused_before_any_work() {
    let s = scratch("readonly");
    let Some((ro, uid)) = unwritable(&s) else {
        return;
    };
    let i = inputs();
    for (flag, kind, args) in output_flags(&i) {
        let mut cases = vec![(
            "ro/out",
            "found that ro is not writable (Permission denied)",
        )];
        if kind == Kind::Dir {
            cases.push(("ro", "found that it is not writable (Permission denied)"));
        }
        let expected = if kind == Kind::File {
            FILE_EXPECTED
        } else {
            DIR_EXPECTED
        };
        for (path, found) in cases {
            let before = listing(&s.0);
            let mut c = command(&s.0, &with_path(&args, path));
            if let Some(uid) = uid {
                c.uid(uid).gid(uid);
            }
            let clock = Instant::now();
            let o = c.output().unwrap();
            let named = format!("{flag} {path}: {expected}, {found}");
            assert_refused(&o, clock.elapsed(), &before, &s, &[&named]);
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The cases the output checks were made for: each fails at once, before reading the inputs
/// (which here do not even exist, or would take hours to process), and writes nothing.
#[test]
fn output_locations_are_checked_before_anything_is_read_or_computed() {
    let s = scratch("early");
    let i = inputs();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // The forecast used to be written before the pictures' folder was found to be a file.
        (
            strings(&[
                "sample", "--model", &i.model, "--input", &i.obs, "--out", "fc.npy", "--png",
                "afile/pictures",
            ]),
            vec!["--png afile/pictures: expected a writable directory", "found that afile is a plain file"],
        ),
        // The JSON used to be written before the pictures' folder was found to be a file.
        (
            strings(&[
                "eval", "--forecast", &i.forecast, "--truth", &i.truth, "--json", "report.json",
                "--png", "afile",
            ]),
            vec!["--png afile: expected a", "found a plain file"],
        ),
        // A missing model is never looked at: the output location is checked first.
        (
            strings(&["sample", "--model", "no-model", "--input", "no.npy", "--out", "missing_dir/fc.npy"]),
            vec!["--out missing_dir/fc.npy:", "found that missing_dir does not exist"],
        ),
        (
            strings(&["sample", "--steps", "1000", "--members", "64", "--out", "missing_dir/fc.npy"]),
            vec!["--out missing_dir/fc.npy:", "found that missing_dir does not exist"],
        ),
        // Hours of simulation are never started.
        (
            strings(&[
                "data", "navier-stokes", "--out", "missing/x.npy", "--samples", "64",
                "--frames", "100", "--resolution", "64", "--warmup", "100000000",
            ]),
            vec!["--out missing/x.npy:", "found that missing does not exist"],
        ),
        (
            strings(&["denoise", "--unet", "no-unet", "--input", "no.npy", "--timestep", "1", "--out", "adir"]),
            vec!["--out adir:", "found a directory"],
        ),
        (
            strings(&["eval", "--forecast", "no.npy", "--truth", "no.npy", "--json", "missing/r.json"]),
            vec!["--json missing/r.json:", "found that missing does not exist"],
        ),
        (
            strings(&["train", "--data", "no.npy", "--out", "afile/model", "--history", "2", "--future", "3"]),
            vec!["--out afile/model:", "found that afile is a plain file"],
        ),
        // Two outputs at one path.
        (
            strings(&["sample", "--model", &i.model, "--input", &i.obs, "--out", "same", "--png", "./same"]),
            vec!["--png ./same: expected a path of its own, found the path of --out as well"],
        ),
        // A run to resume must be there.
        (
            strings(&["train", "--data", &i.obs, "--out", "adir", "--history", "2", "--future", "3", "--resume"]),
            vec!["--out adir: expected a folder holding a training run to continue (--resume), found no train_state.safetensors in it"],
        ),
    ];
    for (args, needles) in cases {
        let before = listing(&s.0);
        let (o, took) = run(&s.0, &args);
        assert_refused(&o, took, &before, &s, &needles);
        assert!(
            took < Duration::from_secs(10),
            "{args:?} took {took:?}: it did work first"
        );
    }
}

/// `dydiff sample` with no arguments writes forecast.npy and forecast_png/ in the current folder:
/// both are checked first.
#[test]
fn default_outputs_are_checked_first() {
    let s = Scratch::new("outputs-default");
    std::fs::write(s.path("forecast_png"), b"a file").unwrap();
    let args = strings(&["sample", "--steps", "1", "--members", "1"]);
    let before = listing(&s.0);
    let (o, took) = run(&s.0, &args);
    assert_refused(
        &o,
        took,
        &before,
        &s,
        &["--png forecast_png: expected a", "found a plain file"],
    );
    std::fs::remove_file(s.path("forecast_png")).unwrap();
    std::fs::create_dir(s.path("forecast.npy")).unwrap();
    let before = listing(&s.0);
    let (o, took) = run(&s.0, &args);
    assert_refused(
        &o,
        took,
        &before,
        &s,
        &["--out forecast.npy: expected a file", "found a directory"],
    );
}

/// What a successful run adds to `s`: exactly `added` (paths relative to the scratch folder),
/// nothing else changed, no temporary.
fn assert_adds(s: &Scratch, args: &[String], added: &[&str]) {
    let before = listing(&s.0);
    let (o, _) = run(&s.0, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let after = listing(&s.0);
    assert!(temporaries(&after).is_empty(), "{:?}", temporaries(&after));
    for (p, content) in &before {
        if !added.iter().any(|a| p.starts_with(a)) {
            assert_eq!(after.get(p), Some(content), "{args:?} changed {p:?}");
        }
    }
    let mut new: Vec<String> = after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    new.sort();
    let mut want: Vec<String> = added
        .iter()
        .map(|a| a.to_string())
        .filter(|a| !before.contains_key(Path::new(a)))
        .collect();
    want.sort();
    assert_eq!(new, want, "{args:?}");
}

#[test]
fn successful_runs_add_exactly_their_outputs() {
    let s = scratch("success");
    let i = inputs();
    // An existing pictures folder keeps its other files.
    std::fs::create_dir(s.path("pics")).unwrap();
    std::fs::write(s.path("pics/notes.txt"), b"mine").unwrap();
    assert_adds(
        &s,
        &strings(&[
            "sample",
            "--model",
            &i.model,
            "--input",
            &i.obs,
            "--out",
            "fc.npy",
            "--png",
            "pics",
            "--steps",
            "2",
            "--members",
            "2",
        ]),
        // the forecast's window record beside it (docs/cli.md, “The forecast's window”)
        &[
            "fc.npy",
            "fc.window.json",
            "pics/sample_0000.png",
            "pics/sample_0001.png",
        ],
    );
    assert_eq!(std::fs::read(s.path("pics/notes.txt")).unwrap(), b"mine");
    // An existing forecast is replaced.
    assert_adds(
        &s,
        &strings(&[
            "sample",
            "--model",
            &i.model,
            "--input",
            &i.obs,
            "--out",
            "existing.npy",
            "--steps",
            "1",
            "--members",
            "1",
        ]),
        &["existing.npy", "existing.window.json"],
    );
    std::fs::create_dir(s.path("plots")).unwrap();
    std::fs::write(s.path("plots/notes.txt"), b"mine too").unwrap();
    assert_adds(
        &s,
        &strings(&[
            "eval",
            "--forecast",
            &i.forecast,
            "--truth",
            &i.truth,
            "--json",
            "r.json",
            "--png",
            "plots",
        ]),
        &[
            "r.json",
            "plots",
            "plots/crps.png",
            "plots/spread_skill.png",
        ],
    );
    assert_eq!(
        std::fs::read(s.path("plots/notes.txt")).unwrap(),
        b"mine too"
    );
    assert_adds(
        &s,
        &strings(&[
            "denoise",
            "--unet",
            &i.unet,
            "--input",
            &i.x,
            "--timestep",
            "10",
            "--out",
            "adir/y.npy",
        ]),
        &["adir/y.npy"],
    );
    assert_adds(
        &s,
        &strings(&[
            "data",
            "navier-stokes",
            "--out",
            "ns.npy",
            "--samples",
            "1",
            "--frames",
            "2",
            "--resolution",
            "8",
            "--warmup",
            "10",
        ]),
        // the data and its channel record (docs/data.md, “Channel names”)
        &["ns.npy", "ns.channels.json"],
    );
    let train = |steps: &str, extra: &[&str]| {
        let mut a = strings(&[
            "train",
            "--data",
            &i.obs,
            "--out",
            "model",
            "--history",
            "2",
            "--future",
            "3",
            "--batch",
            "2",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
            // constant after the warm-up, so that the run may be extended with --resume
            "--constant-lr",
            "--steps",
            steps,
        ]);
        a.extend(strings(extra));
        a
    };
    let model = [
        "model",
        "model/dydiff.json",
        "model/scheduler",
        "model/scheduler/scheduler_config.json",
        "model/unet",
        "model/unet/config.json",
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/train_state.safetensors",
        "model/train_log.jsonl",
    ];
    assert_adds(&s, &train("3", &[]), &model);
    assert_adds(&s, &train("4", &["--resume"]), &model);
    assert_whole_checkpoint(&s.path("model"));
    // bench prints its report and writes no file.
    assert_adds(
        &s,
        &strings(&[
            "bench", "unet", "--unet", &i.unet, "--batch", "1", "--size", "8", "--reps", "1",
            "--warmup", "0",
        ]),
        &[],
    );
}

/// The folder holds one whole checkpoint: every file of the model folder and the training
/// state, and the log ends at the state's step.
fn assert_whole_checkpoint(m: &Path) {
    let model = dydiff::model::Model::load(m, dydiff::Device::Cpu);
    assert!(model.is_ok(), "{:?}", model.err());
    let meta = dydiff::io::safetensors::read_metadata(&m.join("train_state.safetensors")).unwrap();
    let step: u64 = meta[dydiff::pipelines::train::STEP_KEY].parse().unwrap();
    let log = std::fs::read_to_string(m.join("train_log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["step"].as_u64(),
        Some(step),
        "log and state disagree in {m:?}"
    );
}

/// Sends `signal` to a running child and waits for it: it must end by that signal, as without
/// a handler (a shell reports status 128 + the signal's number: 130 for SIGINT).
fn interrupt(mut child: std::process::Child, signal: i32) {
    // SAFETY: kill has no memory preconditions; the child is ours and still running.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(status.signal(), Some(signal), "{status:?}");
}

#[test]
fn an_interrupted_command_leaves_no_file() {
    let s = Scratch::new("outputs-interrupt");
    let before = listing(&s.0);
    let child = command(
        &s.0,
        &strings(&[
            "data",
            "navier-stokes",
            "--out",
            "x.npy",
            "--samples",
            "2",
            "--frames",
            "2",
            "--resolution",
            "32",
            "--warmup",
            "100000000",
        ]),
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    interrupt(child, libc::SIGINT);
    assert_eq!(listing(&s.0), before);
}

/// Interrupts training (SIGINT, SIGTERM, SIGHUP) at several moments while it writes a
/// checkpoint at every step: the folder is absent or holds one whole checkpoint, and no
/// temporary is left.
#[test]
fn an_interrupted_training_keeps_one_whole_checkpoint() {
    let s = Scratch::new("outputs-interrupt-train");
    let obs = path_str(&fixture("sampler/obs.npy"));
    let moments = [
        (0u64, libc::SIGINT),
        (40, libc::SIGINT),
        (150, libc::SIGTERM),
        (400, libc::SIGHUP),
    ];
    for (k, (delay_ms, signal)) in moments.into_iter().enumerate() {
        let out = format!("m{k}");
        let child = command(
            &s.0,
            &strings(&[
                "train",
                "--data",
                &obs,
                "--out",
                &out,
                "--history",
                "2",
                "--future",
                "3",
                "--batch",
                "2",
                "--steps",
                "1000000",
                "--checkpoint-every",
                "1",
            ]),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        if k > 0 {
            // Wait for the first checkpoint, then interrupt during a later one or the steps.
            let clock = Instant::now();
            while !s.path(&out).exists() {
                assert!(clock.elapsed() < Duration::from_secs(120), "no checkpoint");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        interrupt(child, signal);
        let after = listing(&s.0);
        assert!(temporaries(&after).is_empty(), "{:?}", temporaries(&after));
        if k > 0 || s.path(&out).exists() {
            assert_whole_checkpoint(&s.path(&out));
        }
    }
}

/// `dydiff args` in the scratch folder `s`, refused: see [`assert_refused`].
fn assert_run_refused(s: &Scratch, args: &[String], needles: &[&str]) {
    let before = listing(&s.0);
    let (o, took) = run(&s.0, args);
    assert_refused(&o, took, &before, s, needles);
}

fn sample_args(i: &Inputs, rest: &[&str]) -> Vec<String> {
    let mut a = strings(&[
        "sample",
        "--model",
        &i.model,
        "--input",
        &i.obs,
        "--steps",
        "1",
        "--members",
        "1",
    ]);
    a.extend(strings(rest));
    a
}

fn eval_args(i: &Inputs, rest: &[&str]) -> Vec<String> {
    let mut a = strings(&["eval", "--forecast", &i.forecast, "--truth", &i.truth]);
    a.extend(strings(rest));
    a
}

fn train_args(i: &Inputs, out: &str) -> Vec<String> {
    strings(&[
        "train",
        "--data",
        &i.obs,
        "--out",
        out,
        "--history",
        "2",
        "--future",
        "3",
        "--steps",
        "2",
        "--batch",
        "2",
    ])
}

#[test]
fn an_output_inside_a_directory_output_is_refused() {
    let s = scratch("nested");
    let i = inputs();
    std::fs::create_dir(s.path("pics")).unwrap();
    let cases: [(Vec<String>, [&str; 4]); 5] = [
        (
            sample_args(&i, &["--out", "pics/sample_0000.png", "--png", "pics"]),
            ["--out", "pics/sample_0000.png", "--png", "pics"],
        ),
        (
            eval_args(&i, &["--json", "adir/crps.png", "--png", "adir"]),
            ["--json", "adir/crps.png", "--png", "adir"],
        ),
        (
            eval_args(&i, &["--json", "./adir/../adir/r.json", "--png", "adir/"]),
            ["--json", "./adir/../adir/r.json", "--png", "adir/"],
        ),
        (
            eval_args(&i, &["--json", "adir/sub/r.json", "--png", "adir/."]),
            [
                "--json",
                "adir/sub/r.json",
                "found that adir/sub does not exist",
                "",
            ],
        ),
        (
            sample_args(&i, &["--out", "fc.npy", "--png", "."]),
            ["--out", "fc.npy", "--png", "."],
        ),
    ];
    for (args, needles) in cases {
        assert_run_refused(&s, &args, &needles);
    }
}

#[test]
fn a_symbolic_link_to_a_missing_target_is_refused_as_a_directory_output() {
    let s = scratch("dangling");
    let i = inputs();
    std::os::unix::fs::symlink("nowhere", s.path("dl")).unwrap();
    for args in [
        sample_args(&i, &["--out", "fc.npy", "--png", "dl"]),
        eval_args(&i, &["--json", "r.json", "--png", "dl"]),
        train_args(&i, "dl"),
    ] {
        assert_run_refused(
            &s,
            &args,
            &["dl", "found a symbolic link to a missing target"],
        );
    }
    // A link to an existing directory is a directory output like any other.
    std::os::unix::fs::symlink("adir", s.path("linked")).unwrap();
    assert_adds(
        &s,
        &eval_args(&i, &["--png", "linked"]),
        &["adir/crps.png", "adir/spread_skill.png"],
    );
}

#[test]
fn a_directory_in_the_way_of_a_file_of_a_directory_output_is_refused_before_any_work() {
    let s = scratch("clash");
    let i = inputs();
    std::fs::create_dir_all(s.path("pics/sample_0001.png")).unwrap();
    assert_run_refused(
        &s,
        &sample_args(&i, &["--out", "fc.npy", "--png", "pics"]),
        &["--png pics", "pics/sample_0001.png is a directory"],
    );
    std::fs::create_dir_all(s.path("ev/crps.png")).unwrap();
    assert_run_refused(
        &s,
        &eval_args(&i, &["--json", "r.json", "--png", "ev"]),
        &["--png ev", "ev/crps.png is a directory"],
    );
    // A plain file where the model folder's subdirectory goes, before training.
    std::fs::create_dir(s.path("mo")).unwrap();
    std::fs::write(s.path("mo/unet"), b"in the way").unwrap();
    assert_run_refused(
        &s,
        &train_args(&i, "mo"),
        &["--out mo", "mo/unet is a plain file"],
    );
    std::fs::create_dir_all(s.path("mo2/train_log.jsonl")).unwrap();
    assert_run_refused(
        &s,
        &train_args(&i, "mo2"),
        &["--out mo2", "mo2/train_log.jsonl is a directory"],
    );
}

#[test]
fn a_name_too_long_for_its_temporary_is_refused() {
    let s = scratch("long");
    let i = inputs();
    let long = "a".repeat(240);
    for (flag, _, args) in output_flags(&i) {
        assert_run_refused(&s, &with_path(&args, &long), &[flag, "too long"]);
    }
    // The longest name that leaves room is accepted.
    let fits = "b".repeat(200);
    assert_adds(&s, &eval_args(&i, &["--json", &fits]), &[&fits]);
}

#[test]
fn an_output_that_is_an_input_is_refused() {
    let s = scratch("input");
    let i = inputs();
    std::fs::copy(&i.forecast, s.path("fc.npy")).unwrap();
    std::fs::copy(&i.obs, s.path("obs.npy")).unwrap();
    let cases = [
        (
            strings(&[
                "eval",
                "--forecast",
                "fc.npy",
                "--truth",
                &i.truth,
                "--json",
                "./fc.npy",
            ]),
            ["--json ./fc.npy", "--forecast fc.npy"],
        ),
        (
            strings(&[
                "sample", "--model", &i.model, "--input", "obs.npy", "--out", "obs.npy",
            ]),
            ["--out obs.npy", "--input obs.npy"],
        ),
        (
            strings(&[
                "denoise",
                "--unet",
                &i.unet,
                "--input",
                "fc.npy",
                "--timestep",
                "1",
                "--out",
                "fc.npy",
            ]),
            ["--out fc.npy", "--input fc.npy"],
        ),
    ];
    for (args, needles) in cases {
        assert_run_refused(&s, &args, &needles);
    }
}

/// Checks a command whose stdout failed: status 1, one line on stderr naming stdout, no panic,
/// and nothing under `s` changed.
fn assert_stdout_failed(o: &Output, before: &BTreeMap<PathBuf, Option<Vec<u8>>>, s: &Scratch) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("stdout") && !err.contains("panicked"), "{err}");
    assert!(listing(&s.0) == *before, "the folder changed: {err}");
}

#[test]
fn a_result_that_cannot_be_printed_is_one_error_and_leaves_no_file() {
    let s = scratch("stdout");
    let i = inputs();
    let commands = [
        eval_args(&i, &["--json", "r.json", "--png", "pics"]),
        strings(&["bench", "peak"]),
        strings(&[
            "bench", "unet", "--unet", &i.unet, "--batch", "1", "--size", "8", "--reps", "1",
            "--warmup", "0",
        ]),
    ];
    for args in &commands {
        // A closed pipe: the reading end is closed before the command writes anything.
        let before = listing(&s.0);
        let mut child = command(&s.0, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_stdout_failed(&o, &before, &s);
        // A full device.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = command(&s.0, args).stdout(full).output().unwrap();
        assert_stdout_failed(&o, &before, &s);
    }
}
