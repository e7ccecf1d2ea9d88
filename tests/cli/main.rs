//! The `dydiff` binary, one module per command or contract: each runs the binary on small inputs
//! and checks values, files and messages. One test crate, so the library is linked once;
//! `cargo test --release --test cli MODULE` runs one module.
//!
//! `refusals` holds the degenerate inputs and flags of every command (the `refusal!` cases),
//! `outputs` what a command leaves behind, `promises` what README.md and the `--help` texts
//! promise; `cuda` the `--device cuda` paths (on the emulator) and `dydiff info`.

#[path = "../common/mod.rs"]
mod common;

mod batch_invariance;
mod cuda;
mod denoise;
mod docs;
mod dyffusion;
mod eval;
mod eval_offsets;
mod navier_stokes;
mod outputs;
mod promises;
mod refusals;
mod sample;
mod spring_mesh;
mod train;
