//! Device memory owned by the CUDA backend: a buffer on one [`Gpu`], freed when dropped.

use super::gpu::{DevicePtr, Gpu};
use crate::error::Result;
use std::sync::Arc;

/// `bytes` bytes of a [`Gpu`]'s memory holding 4-byte values (`f32` or `u32`): an allocation of
/// its own, or a view of part of another buffer ([`Buffer::views`]), which it keeps alive.
pub struct Buffer {
    gpu: Arc<dyn Gpu>,
    ptr: DevicePtr,
    bytes: usize,
    parent: Option<Arc<Buffer>>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer(0x{:x}, {} bytes)", self.ptr.0, self.bytes)
    }
}

impl Buffer {
    /// `len` 4-byte values, contents undefined.
    pub fn alloc(gpu: &Arc<dyn Gpu>, len: usize) -> Result<Buffer> {
        let bytes = len * 4;
        Ok(Buffer {
            gpu: gpu.clone(),
            ptr: gpu.alloc(bytes)?,
            bytes,
            parent: None,
        })
    }
    /// Consecutive views of `whole`, of `lens` values each (summing to at most its length): the
    /// parameters of a network inside one contiguous allocation.
    pub fn views(whole: &Arc<Buffer>, lens: &[usize]) -> Result<Vec<Buffer>> {
        let total: usize = lens.iter().sum();
        if total > whole.len() {
            return Err(crate::error::Error::shape(
                "split",
                format!("parts of {total} values in a buffer of {}", whole.len()),
            ));
        }
        let mut at = 0u64;
        Ok(lens
            .iter()
            .map(|&n| {
                let b = Buffer {
                    gpu: whole.gpu.clone(),
                    ptr: DevicePtr(whole.ptr.0 + at),
                    bytes: n * 4,
                    parent: Some(whole.clone()),
                };
                at += 4 * n as u64;
                b
            })
            .collect())
    }
    /// A copy of `data` on the device.
    pub fn from_f32(gpu: &Arc<dyn Gpu>, data: &[f32]) -> Result<Buffer> {
        let b = Buffer::alloc(gpu, data.len())?;
        gpu.copy_to_device(b.ptr, bytemuck::cast_slice(data))?;
        Ok(b)
    }
    /// The values, copied to the host as `f32`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.len()];
        self.gpu
            .copy_from_device(self.ptr, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
    /// The values, copied to the host as `u32`.
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        let mut v = vec![0u32; self.len()];
        self.gpu
            .copy_from_device(self.ptr, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
    /// Number of 4-byte values.
    pub fn len(&self) -> usize {
        self.bytes / 4
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }
    pub fn gpu(&self) -> &Arc<dyn Gpu> {
        &self.gpu
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.parent.is_some() {
            return; // a view: its parent frees the memory
        }
        // A failed free (a lost context) leaves nothing the caller could do.
        let _ = self.gpu.free(self.ptr);
    }
}
