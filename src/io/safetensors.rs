//! safetensors weight files as diffusers writes them: little-endian tensors by name, with
//! `{"format": "pt"}` metadata. Reading accepts F32, and converts F16, BF16 and F64 to f32.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Arrays by name: shape and row-major data.
pub type NamedArrays = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<NamedArrays> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
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
                    format!("tensor {name}: expected dtype F32, F16, BF16 or F64, found {other:?}"),
                ))
            }
        };
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes F32 tensors atomically, with diffusers' metadata.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
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
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let out = safetensors::serialize(views, &meta)
        .map_err(|e| Error::bad_file(path, format!("{e:?}")))?;
    super::atomic::write(path, &out)
}
