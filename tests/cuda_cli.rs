//! `dydiff info` and `--device cuda` on this machine, built with or without the `cuda` feature
//! (CI runs both): the devices are listed with the kernels' architectures, and a GPU that cannot
//! be used is refused in one line that says why — built without CUDA, no kernels, no driver.

mod common;

use common::{assert_clean_failure, dydiff, Scratch};
use std::process::Command;

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
    if cfg!(feature = "cuda") {
        assert!(
            lines[1] == "cuda kernels: machine code for sm_80, sm_90, PTX for compute_90"
                || lines[1].starts_with("cuda kernels: machine code for sm_")
                || lines[1] == "cuda kernels: none (nvcc was not found when this binary was built)",
            "{out}"
        );
        assert!(
            lines.len() >= 3,
            "a line per GPU, or why there is none: {out}"
        );
    } else {
        assert_eq!(
            lines[1], "cuda: this binary was built without CUDA (--features cuda)",
            "{out}"
        );
    }
}

#[test]
fn a_gpu_that_cannot_be_used_is_refused_with_the_reason() {
    let (_, listing) = info();
    let s = Scratch::new("cuda-cli");
    let out = s.path("f.npy");
    for device in ["cuda", "cuda:1"] {
        let (ok, err) = dydiff(["--device", device, "sample", "--out", out.to_str().unwrap()]);
        let reason = if !cfg!(feature = "cuda") {
            "dydiff was built without CUDA (rebuild with --features cuda)"
        } else if listing.contains("cuda kernels: none") {
            "this dydiff holds no CUDA kernels"
        } else if listing.contains("no CUDA driver") {
            "no CUDA driver on this machine (libcuda not found)"
        } else {
            // a machine with a GPU: the network does not run there yet
            "CUDA"
        };
        assert_clean_failure(
            ok,
            &err,
            &[&format!("--device {device}: "), reason],
            &out,
            &s,
        );
    }
}
