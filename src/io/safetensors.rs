//! safetensors weight files as diffusers writes them: little-endian tensors by name, with
//! `{"format": "pt"}` metadata. Reading accepts F32, and converts F16, BF16 and F64 to f32.

use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Arrays by name: shape and row-major data.
pub type NamedArrays = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// A file's bytes: mapped read-only into memory (no copy, no zero-filled buffer; loading the
/// benchmark UNet's 64 MB took about 10 ms less than reading it), or read when mapping fails.
enum FileBytes {
    Mapped { ptr: *mut libc::c_void, len: usize },
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<FileBytes> {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
        if len > 0 {
            // SAFETY: a private read-only mapping of a file we opened; unmapped on drop. The file
            // could change underneath; safetensors bounds-checks every tensor against `len`.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if ptr != libc::MAP_FAILED {
                return Ok(FileBytes::Mapped { ptr, len });
            }
        }
        std::fs::read(path)
            .map(FileBytes::Read)
            .map_err(|e| Error::io(path, e))
    }
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping lives as long as self and spans len bytes.
            FileBytes::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts(*ptr as *const u8, *len)
            },
            FileBytes::Read(v) => v,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { ptr, len } = *self {
            // SAFETY: ptr and len are the mapping created in `open`.
            unsafe { libc::munmap(ptr, len) };
        }
    }
}

/// The metadata of a safetensors file (empty if it has none).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file = FileBytes::open(path)?;
    let (_, meta) = SafeTensors::read_metadata(file.bytes()).map_err(|e| {
        Error::bad_file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<NamedArrays> {
    let file = FileBytes::open(path)?;
    let bytes = file.bytes();
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let values = st.tensors().iter().try_fold(0u64, |a, (_, view)| {
        a.checked_add(crate::memory::array(view.shape(), 1)?)
    });
    crate::memory::ensure(
        &format!("{}: the tensors as float32", path.display()),
        values.and_then(|v| v.checked_mul(4)),
    )?;
    // Converted in parallel: most of the time is faulting in the new arrays' pages.
    let arrays: NamedArrays = st
        .tensors()
        .into_par_iter()
        .map(|(name, view)| {
            let d = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => d
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => d
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")) as f32)
                    .collect(),
                other => {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "tensor {name}: expected dtype F32, F16, BF16 or F64, found {other:?}"
                        ),
                    ))
                }
            };
            Ok((name, (view.shape().to_vec(), data)))
        })
        .collect::<Result<_>>()?;
    // Weights with NaN or infinite values (a diverged run) would poison every output.
    let first_bad = arrays
        .par_iter()
        .filter_map(|(name, (_, d))| {
            let bad = d.iter().filter(|v| !v.is_finite()).count();
            (bad > 0).then_some((name, bad))
        })
        .min();
    if let Some((name, bad)) = first_bad {
        return Err(Error::bad_file(
            path,
            format!("tensor {name}: {bad} NaN or infinite values; expected finite numbers"),
        ));
    }
    Ok(arrays)
}

/// The metadata diffusers writes in its weight files.
pub const DIFFUSERS_METADATA: &[(&str, &str)] = &[("format", "pt")];

/// Writes F32 tensors atomically, with diffusers' metadata.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    write_with_metadata(path, tensors, DIFFUSERS_METADATA)
}

/// Writes F32 tensors atomically with the given metadata.
pub fn write_with_metadata(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    super::atomic::write(path, &encode(path, tensors, metadata)?)
}

/// The bytes of a safetensors file holding F32 `tensors` and `metadata`; `path`, the file they
/// are meant for, names it in errors.
pub fn encode(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice::<f32, u8>(d).to_vec())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = Some(
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    );
    safetensors::serialize(views, &meta).map_err(|e| Error::bad_file(path, format!("{e:?}")))
}
