//! Device memory owned by the CUDA backend: a buffer on one [`Gpu`], freed when dropped, with
//! the forms of its values that kernels derive from them kept while the values do not change
//! ([`Buffer::derived`]: a convolution's weights in its kernel's order).

use super::gpu::{DevicePtr, Gpu, KernelArg};
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// `bytes` bytes of a [`Gpu`]'s memory holding 4-byte values (`f32` or `u32`): an allocation of
/// its own, or a view of part of another buffer ([`Buffer::views`]), which it keeps alive.
pub struct Buffer {
    gpu: Arc<dyn Gpu>,
    ptr: DevicePtr,
    bytes: usize,
    parent: Option<Arc<Buffer>>,
    /// Counts the writes into the memory in place ([`Buffer::touch`]); one counter for an
    /// allocation and all its views.
    generation: Arc<AtomicU64>,
    /// [`Buffer::derived`]'s forms.
    derived: Mutex<Vec<Derived>>,
}

/// A form of a buffer's values ([`Buffer::derived`]): its key, the generation of the values it
/// was made from, the form.
type Derived = (Vec<i64>, u64, Arc<Buffer>);

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
            generation: Arc::default(),
            derived: Mutex::default(),
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
                    generation: whole.generation.clone(),
                    derived: Mutex::default(),
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
    /// Says that the values were written in place (by the optimizer, or a copy into the buffer):
    /// every derived form of this allocation and of its views is stale from now on.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
    /// The form of these values that `make` derives — `key` naming the form (its kernel's layout,
    /// precision, shape) — made once and kept with the buffer until the values change
    /// ([`touch`](Buffer::touch)) or the buffer is dropped. During a graph capture a form already
    /// made is used (the graph then reads it at each replay, and the buffer must outlive the
    /// graph, as its values must anyway) but a new one is not kept: its memory belongs to the
    /// capture. Errors: `make`'s.
    pub fn derived(
        &self,
        key: &[i64],
        make: impl FnOnce() -> Result<Buffer>,
    ) -> Result<Arc<Buffer>> {
        let generation = self.generation.load(Ordering::Acquire);
        let lock = || self.derived.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, form)) = lock()
            .iter()
            .find(|(k, g, _)| k.as_slice() == key && *g == generation)
        {
            return Ok(form.clone());
        }
        let form = Arc::new(make()?);
        if !self.gpu.capturing() {
            let mut forms = lock();
            forms.retain(|(k, g, _)| k.as_slice() != key && *g == generation);
            forms.push((key.to_vec(), generation, form.clone()));
        }
        Ok(form)
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

/// A kernel's pointer argument for an optional buffer: null where there is none.
pub(super) fn ptr(b: Option<&Buffer>) -> KernelArg {
    KernelArg::Ptr(b.map_or(DevicePtr(0), Buffer::ptr))
}
