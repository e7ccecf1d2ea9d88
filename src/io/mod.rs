//! Files: NumPy arrays, safetensors weights, atomic writes, and the all-or-nothing outputs of a
//! command.

pub mod atomic;
pub mod npy;
pub mod npz;
pub mod outputs;
pub mod picture;
pub mod safetensors;
