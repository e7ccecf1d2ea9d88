//! The host path — `src/backend/cuda/driver.rs` through cudarc — on the stand-in driver library
//! (`kernels/emu/libcuda.cpp`, docs/devices.md, "The stand-in driver"): each test runs one of the
//! `child_*` tests below in a process of its own, with the stand-in on `LD_LIBRARY_PATH` (the
//! loader reads it when a process starts) and `cuda:0` opened through the driver, and checks what
//! it reports. The children are ignored in a plain run: they need that environment.
//!
//! Without the stand-in (a build without nvcc or off Linux) the parents say they are skipped.

use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::gpu::{Gpu, KernelArg, LaunchShape};
use dydiff::backend::cuda::kernels::names;
use std::process::Command;

/// Runs child test `name` (of this module) on the stand-in in `dir` with `env`; its success and
/// its output.
fn child(name: &str, dir: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        &format!("cuda::standin::{name}"),
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("LD_LIBRARY_PATH", dir)
    .env_remove(dydiff::backend::cuda::EMULATOR_VAR)
    .env_remove("DYDIFF_TEST_DEVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && text.contains("1 passed"), text)
}

/// A stand-in's folder as build.rs gave it, or `None` with the test's skip said.
fn built(dir: Option<&'static str>) -> Option<&'static str> {
    if dir.is_none() {
        eprintln!("skipped: no stand-in driver library in this build (it needs nvcc and Linux)");
    }
    dir
}

/// Runs child `name` on the full stand-in and asserts it passed; false where there is no
/// stand-in (the test is then skipped, and says so).
fn passes(name: &str, env: &[(&str, &str)]) -> bool {
    let Some(dir) = built(option_env!("DYDIFF_STANDIN_DIR")) else {
        return false;
    };
    let (ok, text) = child(name, dir, env);
    assert!(ok, "{name} on the stand-in:\n{text}");
    true
}

/// GPU 0 through the driver (the stand-in).
fn driver() -> std::sync::Arc<dyn Gpu> {
    dydiff::backend::cuda::device(0).expect("cuda:0 through the stand-in")
}

#[test]
fn the_device_opens_and_runs_a_kernel_through_the_driver() {
    passes("child_a_kernel_runs", &[]);
}

#[test]
#[ignore = "run by the_device_opens_and_runs_a_kernel_through_the_driver on the stand-in"]
fn child_a_kernel_runs() {
    let gpu = driver();
    let x = Buffer::from_f32(&gpu, &[-2.0, 0.0, 1.0, 3.0]).unwrap();
    let y = dydiff::backend::cuda::elementwise::silu(&x).unwrap();
    let got = y.to_f32().unwrap();
    for (v, g) in [-2.0f32, 0.0, 1.0, 3.0].iter().zip(&got) {
        assert!((g - v / (1.0 + (-v).exp())).abs() < 1e-6, "{got:?}");
    }
    let lines = dydiff::backend::cuda::info_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stand-in") && l.contains("compute capability 9.0")),
        "{lines:?}"
    );
}

/// A launch whose parameter block is not the kernel's (a 4-byte length where `silu_f32` takes
/// 8) is refused by the driver, not run with whatever follows the block.
#[test]
fn a_launch_with_a_wrong_argument_size_is_refused() {
    passes("child_wrong_argument_size", &[]);
}

#[test]
#[ignore = "run by a_launch_with_a_wrong_argument_size_is_refused on the stand-in"]
fn child_wrong_argument_size() {
    let gpu = driver();
    let x = gpu.alloc(16).unwrap();
    let y = gpu.alloc(16).unwrap();
    let args = [KernelArg::Ptr(x), KernelArg::Ptr(y), KernelArg::I32(4)];
    let err = gpu
        .launch(names::SILU_F32, LaunchShape::linear(4, 32), &args)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("silu_f32") && err.contains("CUDA_ERROR_INVALID_VALUE"),
        "{err}"
    );
}

/// A synchronisation the stream's capture forbids is named as such, not as a failed kernel.
#[test]
fn synchronising_while_capturing_is_named_for_what_it_is() {
    passes("child_synchronise_while_capturing", &[]);
}

#[test]
#[ignore = "run by synchronising_while_capturing_is_named_for_what_it_is on the stand-in"]
fn child_synchronise_while_capturing() {
    let gpu = driver();
    gpu.begin_capture().unwrap();
    let err = gpu.synchronize().unwrap_err().to_string();
    assert!(
        err.contains("while it captures a graph") && !err.contains("a kernel failed"),
        "{err}"
    );
    assert!(gpu.end_capture().is_err(), "the capture is invalidated");
}

/// A synchronise that fails with an error no kernel left (here the stand-in's injected
/// CUDA_ERROR_UNKNOWN) is reported under its own code, not as a failed kernel.
#[test]
fn a_synchronise_error_that_no_kernel_left_is_not_called_a_kernel_fault() {
    passes(
        "child_synchronise_fails",
        &[("DYDIFF_STANDIN_FAIL", "cuStreamSynchronize")],
    );
}

#[test]
#[ignore = "run by a_synchronise_error_that_no_kernel_left_is_not_called_a_kernel_fault on the stand-in"]
fn child_synchronise_fails() {
    let gpu = driver();
    let err = gpu.synchronize().unwrap_err().to_string();
    assert!(
        err.contains("not a kernel's fault") && err.contains("CUDA_ERROR_UNKNOWN"),
        "{err}"
    );
    gpu.synchronize()
        .expect("the injected error does not stick");
}

/// Running out of device memory while a graph is captured returns nothing to the device (a free
/// is not permitted during a capture, and would invalidate it): the allocation fails with its own
/// message and the capture goes on.
#[test]
fn running_out_of_memory_while_capturing_frees_nothing() {
    passes(
        "child_out_of_memory_while_capturing",
        &[("DYDIFF_STANDIN_MEMORY", "67108864")],
    );
}

#[test]
#[ignore = "run by running_out_of_memory_while_capturing_frees_nothing on the stand-in"]
fn child_out_of_memory_while_capturing() {
    let gpu = driver();
    let big = gpu.alloc(40 << 20).unwrap();
    gpu.free(big).unwrap(); // kept in the cache: the device has 24 MiB left
    gpu.begin_capture().unwrap();
    let err = gpu.alloc(30 << 20).unwrap_err().to_string();
    assert!(err.contains("out of device memory"), "{err}");
    assert!(gpu.capturing());
    gpu.end_capture().expect("the capture is intact");
    // outside a capture the cache is returned to the device and the allocation fits
    let p = gpu.alloc(30 << 20).unwrap();
    gpu.free(p).unwrap();
}

/// A graph whose destruction fails says so when it is dropped, and the next call is unaffected.
#[test]
fn a_failed_graph_destruction_is_reported_where_it_happens() {
    passes(
        "child_graph_destruction_fails",
        &[("DYDIFF_STANDIN_FAIL", "cuGraphExecDestroy")],
    );
}

#[test]
#[ignore = "run by a_failed_graph_destruction_is_reported_where_it_happens on the stand-in"]
fn child_graph_destruction_fails() {
    let gpu = driver();
    let a = Buffer::from_f32(&gpu, &[1.0, 2.0]).unwrap();
    let b = Buffer::from_f32(&gpu, &[0.0, 0.0]).unwrap();
    gpu.begin_capture().unwrap();
    gpu.copy_on_device(b.ptr(), a.ptr(), 8).unwrap();
    let graph = gpu.end_capture().unwrap();
    gpu.replay(graph).unwrap();
    assert_eq!(b.to_f32().unwrap(), [1.0, 2.0]);
    let err = gpu.drop_graph(graph).unwrap_err().to_string();
    assert!(err.contains("destroying graph"), "{err}");
    let p = gpu.alloc(64).expect("the next call is not blamed");
    gpu.free(p).unwrap();
}

/// A driver library without an entry point the backend calls is refused when the device is
/// opened, naming it (cudarc would panic at the first call).
#[test]
fn a_driver_without_an_entry_point_is_refused_when_opened() {
    let Some(dir) = built(option_env!("DYDIFF_STANDIN_PARTIAL_DIR")) else {
        return;
    };
    let (ok, text) = child("child_missing_entry_point", dir, &[]);
    assert!(ok, "{text}");
}

#[test]
#[ignore = "run by a_driver_without_an_entry_point_is_refused_when_opened on the stand-in"]
fn child_missing_entry_point() {
    let err = dydiff::backend::cuda::device(0)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks cuGraphLaunch"), "{err}");
}

/// The stand-in's own checks, through cudarc: a host read of memory that queued work uses
/// without a synchronise is a race (on a GPU it may read the old values), and a kernel's invalid
/// access is sticky, as on a GPU.
#[test]
fn the_standin_catches_a_read_without_a_synchronise_and_a_faulting_kernel() {
    passes("child_race_and_fault", &[]);
}

#[test]
#[ignore = "run by the_standin_catches_a_read_without_a_synchronise_and_a_faulting_kernel"]
fn child_race_and_fault() {
    use cudarc::driver::{result, sys};
    let gpu = driver();
    let p = gpu.alloc(64).unwrap();
    gpu.copy_to_device(p, &[7u8; 64]).unwrap();
    let mut back = [0u8; 64];
    // SAFETY: `p` holds 64 bytes; the context is current (the driver bound it above).
    let raced = unsafe { result::memcpy_dtoh_sync(&mut back, p.0) };
    assert_eq!(
        raced.unwrap_err().0,
        sys::cudaError_enum::CUDA_ERROR_ILLEGAL_STATE
    );
    gpu.copy_from_device(p, &mut back).unwrap();
    assert_eq!(back, [7u8; 64]);
    // `silu_f32` over 64 floats of a 64-byte allocation: an access outside it
    let args = [KernelArg::Ptr(p), KernelArg::Ptr(p), KernelArg::I64(64)];
    gpu.launch(names::SILU_F32, LaunchShape::linear(64, 64), &args)
        .unwrap();
    let err = gpu.synchronize().unwrap_err().to_string();
    assert!(
        err.contains("a kernel failed") && err.contains("CUDA_ERROR_ILLEGAL_ADDRESS"),
        "{err}"
    );
    assert!(gpu.alloc(16).is_err(), "the failure is sticky");
}

/// The same commands through the driver on the stand-in and through the emulator seam
/// (`DYDIFF_CUDA_EMULATOR=1`) write the same bytes: a forecast (its DDIM steps replayed as a CUDA
/// graph from the second on) and a training run's checkpoints. Both run the same kernel code, so
/// anything else is a fault of the host path: an argument, a copy, an ordering.
#[test]
fn the_driver_and_the_emulator_seam_write_the_same_bytes() {
    use crate::common::training::{run_flags, small_net, write_sequences};
    let Some(dir) = built(option_env!("DYDIFF_STANDIN_DIR")) else {
        return;
    };
    let s = crate::common::Scratch::new("standin-same");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler");
    let data = s.path("data.npy");
    write_sequences(&data);
    let net = small_net(&s);
    let run = |driver: bool, out: &str| -> std::path::PathBuf {
        let out = s.path(out);
        std::fs::create_dir_all(&out).unwrap();
        let dydiff = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_dydiff"));
            c.env_remove("DYDIFF_TEST_DEVICE");
            if driver {
                c.env("LD_LIBRARY_PATH", dir)
                    .env_remove(dydiff::backend::cuda::EMULATOR_VAR);
            } else {
                c.env(dydiff::backend::cuda::EMULATOR_VAR, "1");
            }
            c.args(["--device", "cuda", "--precision", "tf32"]);
            c
        };
        let mut sample = dydiff();
        sample
            .args(["sample", "--model"])
            .arg(fixtures.join("model_dyn"))
            .arg("--input")
            .arg(fixtures.join("obs.npy"))
            .args(["--members", "2", "--steps", "4", "--ddim-eta", "0.5"])
            .args(["--seed", "9", "--out"])
            .arg(out.join("forecast.npy"));
        let mut train = dydiff();
        train
            .args(["train", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out.join("run"))
            .arg("--unet-config")
            .arg(&net)
            .args(run_flags(3))
            .args(["--steps", "4"]);
        for mut c in [sample, train] {
            let o = c.output().unwrap();
            assert!(
                o.status.success(),
                "driver {driver}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        out
    };
    let (a, b) = (run(true, "driver"), run(false, "emulator"));
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    assert!(
        read(a.join("forecast.npy")) == read(b.join("forecast.npy")),
        "the forecasts differ"
    );
    let mut compared = 0;
    for entry in std::fs::read_dir(a.join("run")).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().ends_with(".safetensors") {
            assert!(
                read(a.join("run").join(&name)) == read(b.join("run").join(&name)),
                "{name:?} differs"
            );
            compared += 1;
        }
    }
    assert!(compared >= 1, "no checkpoint was written");
}
