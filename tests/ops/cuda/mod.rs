//! The CUDA backend's operations, one module per family — as the kernels (`kernels/FAMILY.cu`)
//! and their launchers (`src/backend/cuda/FAMILY.rs`) are — each forward and backward side by
//! side, on the emulator (or GPU 0 with DYDIFF_TEST_DEVICE=cuda) against the CPU backend:
//! `attention`, `conv`, `elementwise`, `gemm`, `norm`, `optim` (the losses and AdamW) and
//! `process`. One test crate, so the library is linked once; `cargo test --release --features
//! cuda --test ops cuda::FAMILY` runs one family. Each module states its tolerances.

pub use crate::common::{cuda_device as device, cuda_precision as precision};

mod attention;
mod conv;
mod elementwise;
mod gemm;
mod norm;
mod optim;
mod process;
#[cfg(feature = "cuda")]
mod standin;

use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::Storage;
use dydiff::Device;
use std::sync::Arc;

/// The device the launcher-level tests run on (a fresh emulator, or GPU 0).
pub fn gpu() -> Arc<dyn Gpu> {
    crate::common::test_gpu()
}

/// Values on the CPU backend, the reference.
pub fn cpu(v: &[f32]) -> CpuStorage {
    CpuStorage::from_vec(v.to_vec())
}

/// The same values on the CPU and on the device.
pub fn both(v: &[f32]) -> (Storage, Storage) {
    (
        Device::Cpu.storage_from_vec(v.to_vec()).unwrap(),
        device().storage_from_vec(v.to_vec()).unwrap(),
    )
}

pub fn close(got: &Storage, want: &Storage, rel: f32, what: &str) {
    close_abs(got, want, rel, 0.0, what);
}

/// Within `rel` of the largest |cpu| value plus `abs`.
pub fn close_abs(got: &Storage, want: &Storage, rel: f32, abs: f32, what: &str) {
    let (g, w) = (got.to_vec().unwrap(), want.to_vec().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: length");
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rel * scale + abs,
        "{what}: worst difference {worst} against max |cpu| {scale} (allowed {rel} relative)"
    );
}
