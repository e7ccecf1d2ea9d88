//! Files: NumPy arrays, safetensors weights, and atomic writes.

pub mod atomic;
pub mod npy;
pub mod npz;
pub mod picture;
pub mod safetensors;
