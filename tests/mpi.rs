//! Many processes under Open MPI's `mpirun` on this machine (docs/distributed.md): data-parallel
//! training equals one process with the same global batch to reduction-order rounding, sharded
//! sampling writes the single process's forecast byte for byte, and a rank that fails or dies
//! takes the job down with its rank and cause. Needs the `mpi` feature and Open MPI's `mpirun`
//! (Debian: openmpi-bin, libopenmpi-dev); ranks are oversubscribed on the machine's cores.
#![cfg(feature = "mpi")]

mod common;

use common::training::{losses, run_flags, small_net, tensors, write_sequences};
use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Open MPI's `mpirun`, oversubscribed, allowed as root, its shared-memory transport without the
/// single-copy mechanism containers often forbid.
fn launcher() -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .arg("--oversubscribe");
    c
}

/// `mpirun -n ranks dydiff --threads 1 ARGS` in `dir`.
fn mpirun(ranks: usize, dir: &Path) -> Command {
    let mut c = launcher();
    c.current_dir(dir)
        .args(["-n", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_dydiff"))
        .args(["--threads", "1"]);
    c
}

/// A job of two ranks, each `dydiff ARGS` started in its own folder `(folder, ARGS)`.
fn two_programs(first: (&Path, &[&str]), second: (&Path, &[&str])) -> Output {
    let exe = env!("CARGO_BIN_EXE_dydiff");
    run(launcher()
        .args(["-n", "1", "--wdir"])
        .arg(first.0)
        .arg(exe)
        .args(first.1)
        .args([":", "-n", "1", "--wdir"])
        .arg(second.0)
        .arg(exe)
        .args(second.1))
}

/// Runs a job to its end: the output, or a failure naming mpirun when it is missing.
fn run(c: &mut Command) -> Output {
    c.output()
        .expect("mpirun (Open MPI) must be installed to test the mpi feature: apt-get install openmpi-bin libopenmpi-dev")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "job failed: {err}");
    err
}

/// The lines dydiff printed (mpirun adds lines of its own when a job fails).
fn dydiff_lines(err: &str) -> Vec<&str> {
    // the plain progress lines of a run without a terminal, warnings and the --val-data hint
    // are counted apart
    let apart = [
        "dydiff: step ",
        "dydiff: warning: ",
        "dydiff: pass --val-data",
    ];
    err.lines()
        .filter(|l| l.starts_with("dydiff:") && !apart.iter().any(|a| l.starts_with(a)))
        .collect()
}

/// The flags of a small DyDiff training run: 4 steps of a global batch of 5 (3 rows on rank 0,
/// 2 on rank 1), checkpoints every 2, dropout in the resnets so that its masks are keyed too.
fn train_args(s: &Scratch, out: &str, steps: &str) -> Vec<String> {
    let data = s.path("data.npy");
    if !data.exists() {
        write_sequences(&data);
    }
    let net = s.path("unet.json");
    if !net.exists() {
        let cfg = std::fs::read_to_string(small_net(s)).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        v["dropout"] = serde_json::json!(0.1);
        std::fs::write(&net, v.to_string()).unwrap();
    }
    let mut args: Vec<String> = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        s.path(out).to_str().unwrap(),
        "--unet-config",
        net.to_str().unwrap(),
        "--steps",
        steps,
    ]
    .map(String::from)
    .to_vec();
    args.extend(run_flags(5));
    args
}

/// Two training runs at `--lr 1e-3`, one on one rank and one on several, agree as data-parallel
/// training promises: the same losses within 1e-5 (relative) at every log line; Adam's moments
/// within `moments` of each tensor's largest value; every weight and EMA weight within Adam's
/// bound (2·lr per step apart), and all but 1% of each tensor's within 5% of lr per step. (The two
/// sum the batch's gradients in different orders; Adam turns that rounding into steps of up to ±lr
/// for elements whose gradient is near its rounding error, which then change what follows. A key
/// projection's bias has no gradient in exact arithmetic, so its moments are rounding noise and
/// are left out.)
fn same_training(a: &Path, b: &Path, state: &str, log: &str, moments: f64) {
    let (la, lb) = (losses(a, log), losses(b, log));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "loss {x} vs {y}");
    }
    let steps: f64 = dydiff::io::safetensors::read_metadata(&a.join(state)).unwrap()
        ["dydiff_train_step"]
        .parse()
        .unwrap();
    let step_move = 1e-3 * steps;
    let (ta, tb) = (tensors(&a.join(state)), tensors(&b.join(state)));
    assert_eq!(ta.len(), tb.len());
    for (name, (shape, va)) in &ta {
        let (shape_b, vb) = &tb[name];
        assert_eq!(shape, shape_b, "{name}");
        let diffs: Vec<f64> = va
            .iter()
            .zip(vb)
            .map(|(x, y)| f64::from((x - y).abs()))
            .collect();
        let worst = diffs.iter().fold(0f64, |m, &d| m.max(d));
        if name.starts_with("m/") || name.starts_with("v/") {
            let scale = f64::from(va.iter().fold(0f32, |m, v| m.max(v.abs())));
            assert!(
                name.ends_with("to_k.bias") || worst <= moments * scale,
                "{name}: worst difference {worst}, max |value| {scale}"
            );
        } else {
            assert!(worst <= 2.0 * step_move, "{name}: worst difference {worst}");
            let far = diffs.iter().filter(|&&d| d > 0.05 * step_move).count();
            assert!(
                far * 100 <= diffs.len(),
                "{name}: {far} of {} weights differ by more than 5% of lr per step",
                diffs.len()
            );
        }
    }
}

/// Two ranks, each drawing its share of every batch, train what one process trains with the same
/// global batch (`same_training`): after one step, when the two differ only by the order of the
/// batch's sum, the moments — the clipped gradient and its square — within 1e-5; after four,
/// within 1e-3. Rank 0 alone writes: one closing line, one log line per step, no temporaries. A
/// run stopped at step 2 on two ranks and resumed on one, or stopped on one and resumed on three,
/// continues alike.
#[test]
fn data_parallel_training_equals_one_process() {
    let s = Scratch::new("mpi-train");
    let (state, log) = ("train_state.safetensors", "train_log.jsonl");
    ok(&run(mpirun(1, &s.0).args(train_args(&s, "one1", "1"))));
    ok(&run(mpirun(2, &s.0).args(train_args(&s, "two1", "1"))));
    same_training(&s.path("one1"), &s.path("two1"), state, log, 1e-5);

    ok(&run(mpirun(1, &s.0).args(train_args(&s, "one", "4"))));
    let err = ok(&run(mpirun(2, &s.0).args(train_args(&s, "two", "4"))));
    assert_eq!(dydiff_lines(&err).len(), 1, "{err}");
    // one plain progress line per log line (every step), from rank 0 alone
    let progress = err
        .lines()
        .filter(|l| l.starts_with("dydiff: step "))
        .count();
    assert_eq!(progress, 4, "{err}");
    let (one, two) = (s.path("one"), s.path("two"));
    assert_eq!(losses(&two, log).len(), 4);
    same_training(&one, &two, state, log, 1e-3);
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());

    for (first, then) in [(2, 1), (1, 3)] {
        let out = format!("resumed{first}{then}");
        ok(&run(mpirun(first, &s.0).args(train_args(&s, &out, "2"))));
        let mut args = train_args(&s, &out, "4");
        args.push("--resume".into());
        ok(&run(mpirun(then, &s.0).args(args)));
        same_training(&one, &s.path(&out), state, log, 1e-3);
    }
}

/// DYffusion's two stages on two ranks equal one process (`same_training` after four steps): the interpolator's dropout masks are keyed by the row of the whole batch, and the
/// forecaster's look-ahead loss, a mean over the rows with n ≤ N−2, is weighed by each rank's
/// share of those rows.
#[test]
fn dyffusion_trains_data_parallel() {
    let s = Scratch::new("mpi-dyf");
    ok(&run(mpirun(1, &s.0).args(dyffusion_args(&s, "one", "4"))));
    ok(&run(mpirun(2, &s.0).args(dyffusion_args(&s, "two", "4"))));
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
        same_training(&s.path("one"), &s.path("two"), state, log, 1e-3);
    }
}

/// [`train_args`] for DYffusion: a horizon of 3, dropout 0.2 in the interpolator.
fn dyffusion_args(s: &Scratch, out: &str, steps: &str) -> Vec<String> {
    let mut args = train_args(s, out, steps);
    let at = args.iter().position(|a| a == "--future").unwrap();
    args[at + 1] = "3".into();
    args.extend(["--method", "dyffusion", "--interpolator-dropout", "0.2"].map(String::from));
    args
}

/// The flags of a sampling job on `model`: 3 members of every observed sequence in batches of 2
/// pairs (so the ranks' shares end inside a sample), `extra` added.
fn sample(ranks: usize, s: &Scratch, model: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let path = s.path(out);
    let mut c = mpirun(ranks, &s.0);
    c.args(["sample", "--model"])
        .arg(model)
        .arg("--input")
        .arg(s.path("data.npy"))
        .arg("--out")
        .arg(&path)
        .args(["--members", "3", "--batch", "2", "--seed", "9"])
        .args(extra);
    let err = ok(&run(&mut c));
    assert_eq!(dydiff_lines(&err).len(), 1, "{err}");
    path
}

/// Sharded sampling writes the forecast of one process byte for byte, for DDIM (one window, and a
/// roll-out over three windows with ancestral steps) and for DYffusion's cold sampling, with
/// two and three ranks; rank 0 alone writes the pictures.
#[test]
fn sharded_sampling_is_byte_identical() {
    let s = Scratch::new("mpi-sample");
    ok(&run(mpirun(1, &s.0).args(train_args(&s, "model", "2"))));
    let model = s.path("model");
    for extra in [
        &["--steps", "4"][..],
        &["--steps", "3", "--lead", "5", "--ddim-eta", "1"][..],
    ] {
        let one = sample(1, &s, &model, "one.npy", extra);
        // the same binary started without a launcher is one process of its own
        let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .args(["--threads", "1", "sample", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(s.path("data.npy"))
            .arg("--out")
            .arg(s.path("alone.npy"))
            .args(["--members", "3", "--batch", "2", "--seed", "9"])
            .args(extra)
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(
            std::fs::read(&one).unwrap(),
            std::fs::read(s.path("alone.npy")).unwrap()
        );
        for ranks in [2, 3] {
            let many = sample(ranks, &s, &model, &format!("many{ranks}.npy"), extra);
            assert_eq!(
                std::fs::read(&one).unwrap(),
                std::fs::read(&many).unwrap(),
                "{ranks} ranks, {extra:?}"
            );
        }
    }
    let png = s.path("png");
    sample(
        2,
        &s,
        &model,
        "pictures.npy",
        &["--steps", "2", "--png", png.to_str().unwrap()],
    );
    assert_eq!(std::fs::read_dir(&png).unwrap().count(), 5);

    ok(&run(mpirun(1, &s.0).args(dyffusion_args(&s, "dyf", "2"))));
    let one = sample(1, &s, &s.path("dyf"), "dyf1.npy", &[]);
    let two = sample(2, &s, &s.path("dyf"), "dyf2.npy", &[]);
    assert_eq!(std::fs::read(one).unwrap(), std::fs::read(two).unwrap());
}

/// A rank that cannot prepare the run — here rank 1, started in a folder without the data file,
/// as on a node that does not see the shared filesystem — stops every rank before any step: one
/// line naming the rank and the file, non-zero exit, nothing written. Ranks started with different
/// arguments are refused the same way.
#[test]
fn a_rank_that_fails_stops_the_job_with_its_rank_and_cause() {
    let s = Scratch::new("mpi-fail");
    let (a, b) = (s.path("a"), s.path("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    write_sequences(&a.join("data.npy"));
    let flags = "--threads 1 train --data data.npy --out run --history 2 --future 2 --batch 2";
    let args: Vec<&str> = flags.split(' ').chain(["--steps", "2"]).collect();
    let one_line = |o: Output, needles: &[&str]| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        let lines = dydiff_lines(&err);
        assert_eq!(lines.len(), 1, "{err}");
        for n in needles {
            assert!(lines[0].contains(n), "{err:?} does not mention {n:?}");
        }
    };
    one_line(
        two_programs((&a, &args), (&b, &args)),
        &["rank 1 of 2", "data.npy"],
    );
    assert!(!a.join("run").exists() && !b.join("run").exists());
    let other = [&args[..], &["--seed", "1"][..]].concat();
    one_line(
        two_programs((&a, &args), (&a, &other)),
        &["different arguments"],
    );
    assert!(!a.join("run").exists());
}

/// Errors every rank meets are printed once, by rank 0, naming it, with a non-zero exit: a
/// `--batch` smaller than the job, a command that runs as one process only, and a run that
/// diverges (found by every rank at the same log line, the summed loss being the same on all);
/// the diverging run keeps its last good checkpoint.
#[test]
fn errors_every_rank_meets_are_one_line() {
    let s = Scratch::new("mpi-errors");
    let fails = |c: &mut Command, needles: &[&str]| {
        let o = run(c);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{err}");
        let lines = dydiff_lines(&err);
        assert_eq!(lines.len(), 1, "{err}");
        for n in needles {
            assert!(lines[0].contains(n), "{err:?} does not mention {n:?}");
        }
    };
    let mut args = train_args(&s, "small", "2");
    let at = args.iter().position(|a| a == "--batch").unwrap();
    args[at + 1] = "2".into();
    fails(
        mpirun(3, &s.0).args(&args),
        &["rank 0 of 3", "--batch 2", "3 ranks"],
    );
    assert!(!s.path("small").exists());
    fails(mpirun(2, &s.0).arg("info"), &["rank 0 of 2", "one process"]);

    let mut args = train_args(&s, "nan", "12");
    for (flag, value) in [("--lr", "1e30"), ("--checkpoint-every", "1")] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.into();
    }
    args.extend(["--clip", "1e30"].map(String::from));
    fails(
        mpirun(2, &s.0).args(&args),
        &["rank 0 of 2", "the loss is", "last good checkpoint"],
    );
    assert!(s.path("nan").join("train_state.safetensors").exists());
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
}

/// A process whose launcher says it is one of several ranks while MPI initialises it as a job of
/// its own (an MPI library other than the launcher's, or srun without the matching --mpi
/// plugin) refuses: otherwise every process would do the whole job and write the same files.
/// Rank 0 says so in one line; the others exit silently.
#[test]
fn a_launcher_and_an_mpi_that_disagree_are_refused() {
    let s = Scratch::new("mpi-mismatch");
    let out = s.path("f.npy");
    for rank in ["0", "1"] {
        let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
            .current_dir(&s.0)
            .env("SLURM_PROCID", rank)
            .env("SLURM_STEP_NUM_TASKS", "2")
            .args(["--threads", "1", "sample", "--steps", "2", "--members", "1"])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        let lines = dydiff_lines(&err);
        if rank == "0" {
            assert_eq!(lines.len(), 1, "{err}");
            assert!(
                lines[0].contains("started 2 ranks") && lines[0].contains("SLURM_PROCID"),
                "{err}"
            );
        } else {
            assert!(lines.is_empty(), "{err}");
        }
        assert!(!out.exists());
    }
}

/// The process ids of the ranks of a job whose command line holds `marker`, by rank.
fn ranks_of(marker: &str) -> Vec<(usize, u32)> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains(marker)
            || String::from_utf8_lossy(&cmd).starts_with("mpirun")
        {
            continue;
        }
        let env = String::from_utf8_lossy(&env);
        if let Some(r) = env
            .split('\0')
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
        {
            found.push((r.parse().unwrap(), pid));
        }
    }
    found
}

/// A rank killed in the middle of a run takes the job down — no rank waits for it for ever — and
/// the launcher names the rank and the signal; the folder holds the last whole checkpoint (rank
/// 0 writes each one atomically), no temporary, and a resumed run continues from it.
#[test]
fn a_rank_that_dies_takes_the_job_down() {
    let s = Scratch::new("mpi-kill");
    let mut args = train_args(&s, "run", "100000");
    let at = args.iter().position(|a| a == "--checkpoint-every").unwrap();
    args[at + 1] = "1".into();
    let mut child = mpirun(2, &s.0)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let state = s.path("run").join("train_state.safetensors");
    let start = Instant::now();
    while !state.exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let marker = s.path("run").to_string_lossy().into_owned();
    let victim = ranks_of(&marker)
        .into_iter()
        .find(|&(r, _)| r == 1)
        .expect("rank 1 is running")
        .1;
    kill_9(victim);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job still runs 60 s after a rank died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    let step = dydiff::io::safetensors::read_metadata(&state).unwrap()["dydiff_train_step"]
        .parse::<usize>()
        .unwrap();
    let mut resume = train_args(&s, "run", &(step + 1).to_string());
    resume.push("--resume".into());
    ok(&run(mpirun(2, &s.0).args(resume)));
}

/// Sends SIGKILL to `pid`.
fn kill_9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// GPU ranks (here on the emulator, which has no NCCL: the gradients are summed through the host
/// with MPI, the path of GPUs without NCCL) train as one GPU process does — `same_training` after
/// one step, float32 products — and shard sampling byte for byte.
#[cfg(feature = "cuda")]
#[test]
fn gpu_ranks_train_and_sample_as_one() {
    let s = Scratch::new("mpi-gpu");
    let on_gpu = |ranks: usize| {
        let mut c = mpirun(ranks, &s.0);
        c.env(dydiff::backend::cuda::EMULATOR_VAR, "1").args([
            "--device",
            "cuda",
            "--precision",
            "fp32",
        ]);
        c
    };
    ok(&run(on_gpu(1).args(train_args(&s, "one", "1"))));
    ok(&run(on_gpu(2).args(train_args(&s, "two", "1"))));
    let (state, log) = ("train_state.safetensors", "train_log.jsonl");
    same_training(&s.path("one"), &s.path("two"), state, log, 1e-5);
    let forecast = |ranks: usize, out: &str| {
        let path = s.path(out);
        ok(&run(on_gpu(ranks)
            .args(["sample", "--model"])
            .arg(s.path("one"))
            .arg("--input")
            .arg(s.path("data.npy"))
            .arg("--out")
            .arg(&path)
            .args(["--members", "3", "--batch", "2", "--steps", "2"])));
        std::fs::read(path).unwrap()
    };
    assert_eq!(forecast(1, "one.npy"), forecast(2, "two.npy"));
}

/// Every collective of `dydiff::distributed` on three ranks, each rank holding values of its
/// own: this test runs itself under `mpirun -n 3`, and each copy checks what it receives.
#[test]
fn collectives_across_ranks() {
    if std::env::var_os("DYDIFF_TEST_MPI_CHILD").is_none() {
        let o = run(launcher()
            .env("DYDIFF_TEST_MPI_CHILD", "1")
            .args(["-n", "3"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "collectives_across_ranks", "--test-threads", "1"]));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(out.matches("1 passed").count(), 3, "{out}");
        return;
    }
    use dydiff::distributed::{init, world};
    use dydiff::Error;
    let _membership = init().unwrap();
    let w = world();
    let (r, n) = (w.rank(), w.size());
    assert_eq!(n, 3);
    assert_eq!(w.local_rank(), r, "one node");
    let mine = [r as f32, 1.0, 0.5 * r as f32];
    assert_eq!(w.sum_f32(&mine).unwrap(), [3.0, 3.0, 1.5]);
    let mut counts = [r as u64, 10];
    w.sum_u64(&mut counts).unwrap();
    assert_eq!(counts, [3, 30]);
    assert_eq!(w.max_f64(-(r as f64)).unwrap(), 0.0);
    assert_eq!(w.min_usize(5 + r).unwrap(), 5);
    assert_eq!(w.all_gather_u64(100 + r as u64).unwrap(), [100, 101, 102]);
    let mut id = [r as u8; 4];
    w.broadcast(&mut id, 2).unwrap();
    assert_eq!(id, [2; 4]);
    // items of 2 values in batches of 2: ranks hold items 0..4, 4..6, 6..7
    let parts = w.batch_shares(7, 2);
    assert_eq!(parts, [0..4, 4..6, 6..7]);
    let mut values = vec![-1.0f32; 14];
    for i in parts[r].clone() {
        values[2 * i] = i as f32;
        values[2 * i + 1] = -(i as f32);
    }
    w.all_gather_parts(&mut values, &parts, 2).unwrap();
    let want: Vec<f32> = (0..7).flat_map(|i| [i as f32, -(i as f32)]).collect();
    assert_eq!(values, want);
    // an error on ranks 1 and 2: rank 1 reports it, the others stop silently
    let outcome = if r == 0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!("failure {r}")))
    };
    match (r, w.agree(outcome)) {
        (
            1,
            Err(Error::OnRank {
                rank: 1,
                size: 3,
                source,
            }),
        ) => {
            assert_eq!(source.to_string(), "failure 1")
        }
        (0 | 2, Err(Error::OtherRank)) => {}
        (_, other) => panic!("rank {r}: {other:?}"),
    }
    assert!(w.agree(Ok(r)).is_ok());
    w.check_same("values", 7).unwrap();
    let e = w.check_same("values", r as u64).unwrap_err();
    assert!(e.to_string().contains("different values"), "{e}");
}
