//! The whole network: parity with diffusers on the CPU (`parity`) and on the CUDA backend
//! (`cuda_parity`), training on the CUDA backend (`cuda_training`), and the CUDA graphs of a
//! repeated step (`cuda_graph`). One test crate, so the library is linked once; the CUDA modules
//! share one device (`cuda:0`), so each of their tests holds `common::cuda_precision`'s lock.

#[path = "../common/mod.rs"]
mod common;

mod cuda_graph;
mod cuda_parity;
mod cuda_training;
mod parity;
