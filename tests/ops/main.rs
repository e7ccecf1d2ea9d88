//! The operations, one module per family: the CPU kernels against their plain references (`cpu`),
//! the backward rules against finite differences (`grad`), the process operations (`process`),
//! dropout and the L1 loss (`dropout`), NumPy archives (`npz`), the CUDA emulator's own checks
//! (`emulator`) and every CUDA kernel family against the CPU backend (`cuda::FAMILY`). One test
//! crate, so the library is linked once; `cargo test --release --test ops MODULE` runs one
//! module. Each module states its tolerances.

#[path = "../common/mod.rs"]
mod common;

mod cpu;
mod cuda;
mod dropout;
mod emulator;
mod grad;
mod npz;
mod process;
