//! Peak memory of the `dydiff` process, in a test crate of its own: Linux carries a process's
//! high-water mark of resident memory across `exec`, so a child forked from a large parent (the
//! `cli` crate, with its tests' threads running) reports at least the parent's resident size, and
//! only a small parent measures the child's own.

mod common;

use common::{fixture, Scratch};
use std::process::{Command, Stdio};

/// The peak resident memory (KiB) of `dydiff args`, which must succeed.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports its memory
fn peak_memory_kib(args: &[&str]) -> i64 {
    let child = Command::new(env!("CARGO_BIN_EXE_dydiff"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, and wait4 fills it for this child, ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{args:?} failed"
    );
    usage.ru_maxrss
}

/// README, `--batch`: “bounds memory”: the (sample, member) pairs per network call set the
/// peak memory, not the number of members.
#[test]
fn the_batch_bounds_the_memory() {
    let s = Scratch::new("p-sample-memory");
    let sampler = |name: &str| fixture("sampler").join(name);
    let (model, obs, out) = (sampler("model_dyn"), sampler("obs.npy"), s.path("f.npy"));
    let run = |members: &str, batch: &str| {
        peak_memory_kib(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--input",
            obs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
            "--members",
            members,
            "--batch",
            batch,
        ])
    };
    let (one, many, wide) = (run("1", "1"), run("64", "1"), run("64", "128"));
    assert!(
        many - one < 16 * 1024,
        "--batch 1: {one} KiB for 1 member, {many} KiB for 64"
    );
    assert!(
        wide - many > 48 * 1024,
        "64 members: {many} KiB with --batch 1, {wide} KiB with --batch 128"
    );
}
