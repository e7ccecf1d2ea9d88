//! A caching allocator in front of a [`Gpu`]: freed buffers are kept per exact byte size and
//! handed out again, so that a sampler, which allocates the same shapes at every step, reaches a
//! steady state with no device allocation or free at all (cudaMalloc and cudaFree synchronise the
//! device; the emulator's guard pages stay exact because sizes are never rounded). When the device
//! runs out of memory the cache is released and the allocation tried once more — except while a
//! graph is captured, where freeing is not permitted (the allocation fails instead).
//!
//! Graphs (docs/devices.md, “CUDA graphs”): the buffers a capture allocates form the graph's
//! pool. A replay writes them again, so none of them is handed to an allocation outside the
//! graph while it lives — a freed one waits in the pool — and they return to the cache when the
//! graph is dropped. While one thread captures, the other threads' calls wait (they would land in
//! the graph: the device has one stream).

use super::gpu::{DevicePtr, Gpu, GraphId, KernelArg, KernelTime, LaunchShape};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;

pub use super::gpu::MemoryStats;

/// `G` with a cache of freed buffers.
pub struct Cached<G: Gpu> {
    inner: G,
    state: Mutex<State>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<DevicePtr>>,
    sizes: HashMap<DevicePtr, usize>,
    stats: MemoryStats,
    /// The pool of the capture under way.
    capturing: Option<Pool>,
    /// The pool of every live graph.
    graphs: HashMap<GraphId, Pool>,
}

/// The buffers of one graph, and which of them are free (for the graph's capture only).
#[derive(Default)]
struct Pool {
    blocks: HashSet<DevicePtr>,
    free: HashMap<usize, Vec<DevicePtr>>,
}

/// Who captures, and how many calls of other threads are under way.
#[derive(Default)]
struct Gate {
    owner: Option<ThreadId>,
    others: usize,
}

/// A call under way on the device (see [`Cached::enter`]).
struct Entered<'a, G: Gpu> {
    cache: &'a Cached<G>,
    counted: bool,
}

impl<G: Gpu> Drop for Entered<'_, G> {
    fn drop(&mut self) {
        if self.counted {
            let mut g = self.cache.gate();
            g.others -= 1;
            self.cache.gate_changed.notify_all();
        }
    }
}

impl<G: Gpu> Cached<G> {
    pub fn new(inner: G) -> Cached<G> {
        Cached {
            inner,
            state: Mutex::new(State::default()),
            gate: Mutex::new(Gate::default()),
            gate_changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while another thread captures, then counts this call as under way until the
    /// returned guard drops (a capture waits for those).
    fn enter(&self) -> Entered<'_, G> {
        let me = std::thread::current().id();
        let mut g = self.gate();
        loop {
            match g.owner {
                Some(owner) if owner == me => {
                    return Entered {
                        cache: self,
                        counted: false,
                    }
                }
                Some(_) => g = self.gate_changed.wait(g).unwrap_or_else(|e| e.into_inner()),
                None => {
                    g.others += 1;
                    return Entered {
                        cache: self,
                        counted: true,
                    };
                }
            }
        }
    }

    /// Ends this thread's capture (the gate opens).
    fn open_gate(&self) {
        self.gate().owner = None;
        self.gate_changed.notify_all();
    }

    /// A pool whose graph is gone: its free buffers return to the cache; the others will when
    /// freed.
    fn dissolve(s: &mut State, pool: Pool) {
        for (bytes, ptrs) in pool.free {
            s.stats.cached_bytes += bytes * ptrs.len();
            s.free.entry(bytes).or_default().extend(ptrs);
        }
    }

    /// Returns every cached buffer to the device.
    pub fn release(&self) -> Result<()> {
        let mut s = self.lock();
        let free = std::mem::take(&mut s.free);
        for (_, ptrs) in free {
            for p in ptrs {
                if let Some(bytes) = s.sizes.remove(&p) {
                    s.stats.reserved_bytes -= bytes;
                }
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
        let _in = self.enter();
        {
            let mut s = self.lock();
            let s = &mut *s;
            if let Some(p) = s
                .capturing
                .as_mut()
                .and_then(|pool| pool.free.get_mut(&bytes)?.pop())
            {
                s.stats.reused += 1;
                return Ok(p);
            }
            if let Some(p) = s.free.get_mut(&bytes).and_then(Vec::pop) {
                s.stats.reused += 1;
                s.stats.cached_bytes -= bytes;
                if let Some(pool) = s.capturing.as_mut() {
                    pool.blocks.insert(p);
                }
                return Ok(p);
            }
        }
        let p = match self.inner.alloc(bytes) {
            Ok(p) => p,
            Err(e) => {
                let s = self.lock();
                if s.capturing.is_some() {
                    // freeing synchronises the device, which a capture does not permit (it would
                    // be invalidated): the cache stays until the capture ends
                    return Err(Error::Backend(format!(
                        "{e} (while a graph is captured the {} cached bytes are not returned to the device)",
                        s.stats.cached_bytes
                    )));
                }
                drop(s);
                self.release()?;
                self.inner.alloc(bytes)?
            }
        };
        let mut s = self.lock();
        s.sizes.insert(p, bytes);
        s.stats.device_allocs += 1;
        s.stats.reserved_bytes += bytes;
        s.stats.peak_reserved_bytes = s.stats.peak_reserved_bytes.max(s.stats.reserved_bytes);
        if let Some(pool) = s.capturing.as_mut() {
            pool.blocks.insert(p);
        }
        Ok(p)
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        let _in = self.enter();
        let mut s = self.lock();
        let s = &mut *s;
        match s.sizes.get(&ptr).copied() {
            Some(bytes) => {
                // a graph's buffer stays in its pool
                let pool = s
                    .capturing
                    .iter_mut()
                    .chain(s.graphs.values_mut())
                    .find(|pool| pool.blocks.contains(&ptr));
                match pool {
                    Some(pool) => pool.free.entry(bytes).or_default().push(ptr),
                    None => {
                        s.free.entry(bytes).or_default().push(ptr);
                        s.stats.cached_bytes += bytes;
                    }
                }
                Ok(())
            }
            None => self.inner.free(ptr),
        }
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let _in = self.enter();
        self.inner.copy_to_device(dst, src)
    }

    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let _in = self.enter();
        self.lock().stats.host_waits += 1;
        self.inner.copy_from_device(src, dst)
    }

    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        let _in = self.enter();
        self.inner.launch(name, shape, args)
    }

    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        let _in = self.enter();
        self.inner.copy_on_device(dst, src, bytes)
    }

    fn synchronize(&self) -> Result<()> {
        let _in = self.enter();
        self.lock().stats.host_waits += 1;
        self.inner.synchronize()
    }

    fn begin_capture(&self) -> Result<()> {
        let me = std::thread::current().id();
        {
            let mut g = self.gate();
            while g.owner.is_some() || g.others > 0 {
                g = self.gate_changed.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.owner = Some(me);
        }
        if let Err(e) = self.inner.begin_capture() {
            self.open_gate();
            return Err(e);
        }
        self.lock().capturing = Some(Pool::default());
        Ok(())
    }

    fn capturing(&self) -> bool {
        self.lock().capturing.is_some()
    }

    fn end_capture(&self) -> Result<GraphId> {
        let result = self.inner.end_capture();
        {
            let mut s = self.lock();
            let pool = s.capturing.take().unwrap_or_default();
            match result {
                Ok(id) => {
                    s.stats.captures += 1;
                    s.graphs.insert(id, pool);
                }
                Err(_) => Self::dissolve(&mut s, pool),
            }
        }
        self.open_gate();
        result
    }

    fn replay(&self, graph: GraphId) -> Result<()> {
        let _in = self.enter();
        self.inner.replay(graph)?;
        self.lock().stats.replays += 1;
        Ok(())
    }

    fn drop_graph(&self, graph: GraphId) -> Result<()> {
        let _in = self.enter();
        let result = self.inner.drop_graph(graph);
        let mut s = self.lock();
        if let Some(pool) = s.graphs.remove(&graph) {
            Self::dissolve(&mut s, pool);
        }
        result
    }

    fn set_timing(&self, on: bool) {
        self.inner.set_timing(on)
    }

    fn timing(&self) -> bool {
        self.inner.timing()
    }

    fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        self.inner.kernel_times()
    }

    fn sum_over_ranks(&self, src: DevicePtr, dst: DevicePtr, len: usize) -> Result<bool> {
        self.inner.sum_over_ranks(src, dst, len)
    }

    fn tile_counters(&self) -> Option<DevicePtr> {
        self.inner.tile_counters()
    }

    fn max_shared_per_block(&self) -> usize {
        self.inner.max_shared_per_block()
    }

    fn memory_stats(&self) -> MemoryStats {
        self.lock().stats
    }
}
