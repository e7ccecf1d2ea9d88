//! A caching allocator in front of a [`Gpu`]: freed buffers are kept per exact byte size and
//! handed out again, so that a sampler, which allocates the same shapes at every step, reaches a
//! steady state with no device allocation or free at all (cudaMalloc and cudaFree synchronise the
//! device; the emulator's guard pages stay exact because sizes are never rounded). When the device
//! runs out of memory the cache is released and the allocation tried once more.

use super::gpu::{DevicePtr, Gpu, KernelArg, KernelTime, LaunchShape};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Mutex;

/// How often the device itself was asked to allocate and free, and what the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub device_allocs: u64,
    pub device_frees: u64,
    pub reused: u64,
    pub cached_bytes: usize,
}

/// `G` with a cache of freed buffers.
pub struct Cached<G: Gpu> {
    inner: G,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<DevicePtr>>,
    sizes: HashMap<DevicePtr, usize>,
    stats: MemoryStats,
}

impl<G: Gpu> Cached<G> {
    pub fn new(inner: G) -> Cached<G> {
        Cached {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns every cached buffer to the device.
    pub fn release(&self) -> Result<()> {
        let mut s = self.lock();
        let free = std::mem::take(&mut s.free);
        for (_, ptrs) in free {
            for p in ptrs {
                s.sizes.remove(&p);
                s.stats.device_frees += 1;
                self.inner.free(p)?;
            }
        }
        s.stats.cached_bytes = 0;
        Ok(())
    }
}

impl<G: Gpu> Gpu for Cached<G> {
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        {
            let mut s = self.lock();
            if let Some(p) = s.free.get_mut(&bytes).and_then(Vec::pop) {
                s.stats.reused += 1;
                s.stats.cached_bytes -= bytes;
                return Ok(p);
            }
        }
        let p = match self.inner.alloc(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.release()?;
                self.inner.alloc(bytes)?
            }
        };
        let mut s = self.lock();
        s.sizes.insert(p, bytes);
        s.stats.device_allocs += 1;
        Ok(p)
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        let mut s = self.lock();
        match s.sizes.get(&ptr).copied() {
            Some(bytes) => {
                s.free.entry(bytes).or_default().push(ptr);
                s.stats.cached_bytes += bytes;
                Ok(())
            }
            None => {
                drop(s);
                self.inner.free(ptr)
            }
        }
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.inner.copy_to_device(dst, src)
    }

    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.inner.copy_from_device(src, dst)
    }

    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        self.inner.launch(name, shape, args)
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn set_timing(&self, on: bool) {
        self.inner.set_timing(on)
    }

    fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        self.inner.kernel_times()
    }

    fn memory_stats(&self) -> MemoryStats {
        self.lock().stats
    }
}
