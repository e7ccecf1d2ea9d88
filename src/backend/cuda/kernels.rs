//! The kernels compiled for the GPU by `build.rs`: one fatbin, embedded in the binary, with
//! machine code for the architectures of `DYDIFF_CUDA_ARCHS` and PTX of the highest (docs/devices.md, “Building with CUDA”).
//! Empty when the binary was built without `nvcc` (or without the `cuda` feature).

/// The fatbin, or empty.
#[cfg(dydiff_kernels)]
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dydiff.fatbin"));
/// The fatbin, or empty.
#[cfg(not(dydiff_kernels))]
pub static FATBIN: &[u8] = &[];

/// The compute capabilities the fatbin holds machine code for (`80;90`), or `None` without it.
pub fn architectures() -> Option<&'static str> {
    if FATBIN.is_empty() {
        None
    } else {
        option_env!("DYDIFF_CUDA_ARCHS")
    }
}
