//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod line;
pub mod training;

#[allow(unused_imports)]
pub(crate) use line::{refusal, Line};

use dydiff::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = dydiff::nn::InitRng::new(seed);
    (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
}

pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape, Device::Cpu).unwrap()
}

/// Asserts `|a − b| ≤ atol + rtol·|b|` elementwise (llm.c's convention, `b` the reference).
pub fn assert_close(a: &[f32], b: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A temporary directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("dydiff-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A copy of a fixture folder (recursively) that a test may damage.
    pub fn model_copy(&self, name: &str) -> PathBuf {
        let dst = self.path(name.rsplit('/').next().unwrap());
        copy_dir(&fixture(name), &dst);
        dst
    }
    /// Temporary files left in the scratch directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    stack.push(e.path());
                } else if name.contains(".tmp") {
                    found.push(name);
                }
            }
        }
        found
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the `dydiff` binary: (success, stderr).
pub fn dydiff<I, S>(args: I) -> (bool, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let o = Command::new(env!("CARGO_BIN_EXE_dydiff"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Checks a failed run: non-zero exit, one line on stderr naming every needle, no panic, no
/// `out` file and no temporary file left in the scratch directory.
pub fn assert_clean_failure(ok: bool, err: &str, needles: &[&str], out: &Path, s: &Scratch) {
    assert!(!ok, "expected failure, stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
    assert!(!out.exists(), "output file left behind");
    assert!(s.leftovers().is_empty(), "temporary files left behind");
}

/// The rule for the network at TF32 or bf16 (docs/devices.md, “Precision”): the largest and the
/// root-mean-square error of `got` against diffusers' float32 output `want` each at most twice
/// PyTorch's at the same precision on the same input (`pytorch`: a fixture's tf32.json or
/// bf16.json, case `k`).
pub fn assert_within_twice_pytorch(
    got: &[f32],
    want: &[f32],
    pytorch: &serde_json::Value,
    k: usize,
    what: &str,
) {
    let errs: Vec<f64> = got
        .iter()
        .zip(want)
        .map(|(a, b)| f64::from(a - b).abs())
        .collect();
    let max = errs.iter().fold(0.0f64, |m, &e| m.max(e));
    let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
    let (pt_max, pt_rms) = (
        pytorch["max_err"][k].as_f64().unwrap(),
        pytorch["rms_err"][k].as_f64().unwrap(),
    );
    assert!(
        max <= 2.0 * pt_max,
        "{what}: max error {max}, PyTorch's {pt_max}"
    );
    assert!(
        rms <= 2.0 * pt_rms,
        "{what}: RMS error {rms}, PyTorch's {pt_rms}"
    );
}

/// The device the CUDA kernel tests run on: the emulator, or GPU 0 through the driver when
/// `DYDIFF_TEST_DEVICE=cuda` (the same test bodies on a real GPU).
pub fn test_gpu() -> std::sync::Arc<dyn dydiff::backend::cuda::gpu::Gpu> {
    if std::env::var("DYDIFF_TEST_DEVICE").as_deref() == Ok("cuda") {
        dydiff::backend::cuda::device(0).expect("DYDIFF_TEST_DEVICE=cuda: GPU 0")
    } else {
        std::sync::Arc::new(dydiff::backend::cuda::emu::Emulator::default())
    }
}

/// `cuda:0` for the tests that go through [`Device`]: the emulator, or GPU 0 with
/// `DYDIFF_TEST_DEVICE=cuda`.
pub fn cuda_device() -> Device {
    if std::env::var("DYDIFF_TEST_DEVICE").as_deref() != Ok("cuda") {
        // set before any device is opened; every test sets the same value
        std::env::set_var(dydiff::backend::cuda::EMULATOR_VAR, "1");
    }
    Device::parse("cuda:0").unwrap()
}

/// The CUDA backend's process-wide state — its precision, and `cuda:0` with its counters — is
/// shared by the tests of a crate: each test that depends on it holds this while it runs.
pub fn cuda_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`cuda_lock`], with the precision set to `p`.
pub fn cuda_precision(p: dydiff::backend::cuda::Precision) -> std::sync::MutexGuard<'static, ()> {
    let g = cuda_lock();
    dydiff::backend::cuda::set_precision(p);
    g
}

/// A small network for whole-network gradient tests: two levels of 8 and 16 channels, attention
/// at the second, one resnet per level.
pub fn small_unet_config() -> dydiff::nn::UNet2DConfig {
    dydiff::nn::UNet2DConfig {
        in_channels: 3,
        out_channels: 2,
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 4,
        attention_head_dim: Some(8),
        time_embedding_dim: Some(16),
        ..dydiff::nn::UNet2DConfig::default()
    }
}
