//! dydiff: probabilistic spatiotemporal forecasting with diffusion models.
//!
//! Layers, from the bottom: [`backend`] (the primitive op set on the CPU and on CUDA devices),
//! [`tensor`] (shape-checked tensors on a device, their tape for training and the repeated
//! step a CUDA graph replays), [`nn`] (diffusers-compatible `UNet2DModel`), [`io`] (NumPy and
//! model files), [`model`] (the model folders of both methods and the built-in model), and
//! [`pipelines`] (what the `dydiff` binary runs). The math, the file formats and the command-line
//! contracts are described in the repository's `docs/` folder, starting at docs/README.md.

/// `clap::ValueEnum` for an enum whose command-line values are its `name()`s (`--method`,
/// `--stage`, `--padding-mode`, …): the flag lists the names and parses them back.
macro_rules! value_enum_by_name {
    ($t:ty, [$($v:expr),+ $(,)?]) => {
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($v),+]
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()))
            }
        }
    };
}

pub mod backend;
pub mod data;
pub mod diffusion;
pub mod distributed;
pub mod error;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod pipelines;
pub mod profile;
pub mod rng;
pub mod tensor;

pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::Tensor;
