//! The emulator behind the [`Gpu`] seam: the kernels of `kernels/` compiled for the host by
//! `build.rs` against `kernels/emu/emu.h`, run by the fiber scheduler of `kernels/emu/emu.cpp`.
//! Device memory is host memory between guard pages; a launch runs to completion before
//! [`Gpu::launch`] returns, and whatever a GPU would leave undefined — an out-of-bounds access, a
//! barrier not every thread reaches, a warp collective with a lane missing — is an error naming
//! the kernel, the block and the thread. Graphs are recorded lists of launches and copies, run
//! again at every replay; what CUDA forbids while capturing (a copy to or from the host, a
//! synchronisation) is an error here too.

use super::gpu::{sum_times, DevicePtr, Gpu, GraphId, KernelArg, KernelTime, LaunchShape};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Instant;

extern "C" {
    fn dydiff_emu_alloc(bytes: usize) -> *mut c_void;
    fn dydiff_emu_free(ptr: *mut c_void) -> c_int;
    fn dydiff_emu_has_kernel(name: *const c_char) -> c_int;
    fn dydiff_emu_resources(name: *const c_char, out: *mut [u32; 3]) -> c_int;
    fn dydiff_emu_set_order(mode: c_int, seed: u64);
    fn dydiff_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        max_shared: usize,
        args: *mut *mut c_void,
        arg_sizes: *const usize,
        nargs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The order in which the emulator runs a block's threads between barriers
/// (docs/devices.md, “The emulator”). A GPU keeps no order: a kernel that reads, within one
/// barrier interval, what another thread wrote is wrong whatever order shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// `DYDIFF_EMU_ORDER`'s (`reverse`, `random[:SEED]`; index order without it).
    FromEnvironment,
    /// Index order: a thread runs after every lower-numbered one has reached the barrier.
    Index,
    /// Reverse index order.
    Reverse,
    /// A random order per pass and block, from the seed.
    Random(u64),
}

/// Sets the order of the emulator's passes for the launches of the calling thread (a launch runs
/// on the thread that makes it): tests run the same kernel in every order.
pub fn set_thread_order(order: ThreadOrder) {
    let (mode, seed) = match order {
        ThreadOrder::FromEnvironment => (-1, 0),
        ThreadOrder::Index => (0, 0),
        ThreadOrder::Reverse => (1, 0),
        ThreadOrder::Random(seed) => (2, seed),
    };
    // SAFETY: sets two thread-local values of the runtime; no pointers.
    unsafe { dydiff_emu_set_order(mode, seed) }
}

/// The CPU emulator of a GPU: launch timings and graphs (allocations are tracked by the
/// runtime of `kernels/emu/emu.cpp`).
#[derive(Debug)]
pub struct Emulator {
    state: Mutex<State>,
    /// [`Gpu::tile_counters`], zeroed; null if the allocation failed (split-K then finishes with
    /// a launch).
    counters: DevicePtr,
    /// Held while a launch runs: launches from several threads run one after another, as a GPU's
    /// one stream orders them (split-K launches share the tile counters).
    stream: Mutex<()>,
    /// [`Gpu::max_shared_per_block`]: an H100's 227 KiB unless made otherwise.
    max_shared: usize,
}

impl Default for Emulator {
    fn default() -> Emulator {
        let bytes = 4 * super::gpu::TILE_COUNTERS;
        // SAFETY: plain allocation call; a null result is handled; the memory is the host's.
        let p = unsafe { dydiff_emu_alloc(bytes) };
        if !p.is_null() {
            // SAFETY: `p` holds `bytes` bytes.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
        }
        Emulator {
            state: Mutex::default(),
            counters: DevicePtr(p as u64),
            stream: Mutex::default(),
            max_shared: 227 * 1024,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The launch timings while timing is on.
    times: Option<Vec<(String, f64)>>,
    /// What is being captured, while capturing.
    capture: Option<Vec<Recorded>>,
    graphs: HashMap<u64, Arc<[Recorded]>>,
    next_graph: u64,
}

/// A launch or a device-to-device copy, as a graph holds it.
#[derive(Clone, Debug)]
enum Recorded {
    Launch(String, LaunchShape, Vec<KernelArg>),
    Copy(DevicePtr, DevicePtr, usize),
}

impl Emulator {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error if a graph is being captured: `what` would break the capture on a GPU.
    fn not_capturing(&self, what: &str) -> Result<()> {
        match self.lock().capture {
            Some(_) => Err(emulated(format!(
                "{what} while a graph is being captured (CUDA would invalidate the capture)"
            ))),
            None => Ok(()),
        }
    }

    /// Appends the launch to the launch log when `DYDIFF_LAUNCH_LOG` names a file: one JSON line
    /// `{"kernel", "grid", "block", "shared", "args"}`, the arguments as numbers (pointers as
    /// `"ptr"`, null ones as `null`, a structure as its 4-byte words, integers). python/sass_model.py reads it: the
    /// launch plan of a network on the emulator is the plan a GPU runs.
    fn log_launch(name: &str, shape: &LaunchShape, args: &[KernelArg]) -> Result<()> {
        static LOG: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
        let Some(path) = LOG.get_or_init(|| std::env::var_os("DYDIFF_LAUNCH_LOG").map(Into::into))
        else {
            return Ok(());
        };
        let args: Vec<serde_json::Value> = args
            .iter()
            .map(|a| match a {
                KernelArg::Ptr(p) if p.0 == 0 => serde_json::Value::Null,
                KernelArg::Ptr(_) => "ptr".into(),
                KernelArg::I32(v) => (*v).into(),
                KernelArg::U32(v) => (*v).into(),
                KernelArg::I64(v) => (*v).into(),
                KernelArg::U64(v) => (*v).into(),
                KernelArg::F32(v) => f64::from(*v).into(),
                KernelArg::Struct { bytes, .. } => bytes
                    .chunks(4)
                    .map(|w| {
                        let mut word = [0u8; 4];
                        word[..w.len()].copy_from_slice(w);
                        i32::from_ne_bytes(word)
                    })
                    .collect::<Vec<i32>>()
                    .into(),
            })
            .collect();
        let line = serde_json::json!({
            "kernel": name, "grid": shape.grid, "block": shape.block,
            "shared": shape.shared_bytes, "args": args,
        });
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| Error::io(path, e))
    }

    /// Runs one launch now.
    fn run(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        Self::log_launch(name, &shape, args)?;
        let c = CString::new(name).map_err(|_| emulated(format!("bad kernel name {name:?}")))?;
        let mut values: Vec<Vec<u8>> = args.iter().map(KernelArg::bytes).collect();
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v.as_mut_ptr().cast::<c_void>())
            .collect();
        let mut err = vec![0u8; 512];
        let _in_order = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        // SAFETY: every pointer is valid for the call: the name and error buffer are owned here,
        // `ptrs[i]` points at `sizes[i]` bytes of `values[i]`, which outlive the call, and the
        // runtime checks the argument count and sizes against the kernel before calling it.
        let rc = unsafe {
            dydiff_emu_launch(
                c.as_ptr(),
                shape.grid.as_ptr(),
                shape.block.as_ptr(),
                shape.shared_bytes as usize,
                self.max_shared,
                ptrs.as_mut_ptr(),
                sizes.as_ptr(),
                ptrs.len(),
                err.as_mut_ptr().cast::<c_char>(),
                err.len(),
            )
        };
        if rc == 0 {
            if let Some(t) = self.lock().times.as_mut() {
                t.push((name.to_string(), start.elapsed().as_secs_f64()));
            }
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(emulated(String::from_utf8_lossy(&err[..end]).into_owned()))
    }

    /// Whether the emulator holds kernel `name`.
    pub fn has_kernel(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        unsafe { dydiff_emu_has_kernel(c.as_ptr()) != 0 }
    }

    /// What the GPU holds a launch of kernel `name` to, as the emulator enforces it (`None`: no
    /// such kernel).
    pub fn resources(&self, name: &str) -> Option<KernelResources> {
        let c = CString::new(name).ok()?;
        let mut out = [0u32; 3];
        // SAFETY: `c` is a valid NUL-terminated string and `out` three writable u32s.
        let found = unsafe { dydiff_emu_resources(c.as_ptr(), &mut out) } != 0;
        found.then_some(KernelResources {
            max_threads: out[0],
            registers: out[1],
            static_shared: out[2],
        })
    }
}

/// A kernel's resource figures, 0 where not known (docs/devices.md, “The emulator”): the most
/// threads per block its `__launch_bounds__` allow, and its machine code's registers per thread
/// and static shared memory in bytes (the most over the architectures nvcc built; unknown in a
/// build without nvcc). A launch beyond them is refused, as the GPU refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub max_threads: u32,
    pub registers: u32,
    pub static_shared: u32,
}

fn emulated(what: String) -> Error {
    Error::Backend(format!("CUDA emulator: {what}"))
}

impl Emulator {
    /// An emulator without [`Gpu::tile_counters`]: split-K launches finish with a launch of their
    /// own, as on a device whose counters do not cover a launch's tiles (tests compare the two).
    pub fn without_tile_counters() -> Emulator {
        let mut e = Emulator::default();
        if e.counters.0 != 0 {
            // SAFETY: the allocation made in `default`, freed once (the field is cleared).
            unsafe { dydiff_emu_free(e.counters.0 as *mut c_void) };
            e.counters = DevicePtr(0);
        }
        e
    }

    /// An emulator of a device that gives a block `bytes` of shared memory (static and dynamic
    /// together; sm_86 and sm_89 give 99 KiB) and refuses launches that ask for more.
    pub fn with_max_shared(bytes: usize) -> Emulator {
        let mut e = Emulator::default();
        e.max_shared = bytes;
        e
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.counters.0 != 0 {
            // SAFETY: the allocation made in `default`, freed once.
            unsafe { dydiff_emu_free(self.counters.0 as *mut c_void) };
        }
    }
}

impl Gpu for Emulator {
    fn tile_counters(&self) -> Option<DevicePtr> {
        (self.counters.0 != 0).then_some(self.counters)
    }

    fn max_shared_per_block(&self) -> usize {
        self.max_shared
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        // SAFETY: plain allocation call; a null result is handled.
        let p = unsafe { dydiff_emu_alloc(bytes) };
        if p.is_null() {
            return Err(emulated(format!("out of memory allocating {bytes} bytes")));
        }
        Ok(DevicePtr(p as u64))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        // SAFETY: the runtime checks that `ptr` is one of its allocations before unmapping it.
        match unsafe { dydiff_emu_free(ptr.0 as *mut c_void) } {
            0 => Ok(()),
            _ => Err(emulated(format!(
                "free of 0x{:x}, which is not an allocation",
                ptr.0
            ))),
        }
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.not_capturing("a copy to the device")?;
        // SAFETY: the caller's `dst` is an allocation of at least `src.len()` bytes (the backend
        // sizes every copy from the buffer it copies into); an overrun hits a guard page.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("a copy from the device")?;
        // SAFETY: as in `copy_to_device`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        if let Some(list) = self.lock().capture.as_mut() {
            if !self.has_kernel(name) {
                return Err(emulated(format!("no kernel {name}")));
            }
            list.push(Recorded::Launch(name.to_string(), shape, args.to_vec()));
            return Ok(());
        }
        self.run(name, shape, args)
    }

    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        if let Some(list) = self.lock().capture.as_mut() {
            list.push(Recorded::Copy(dst, src, bytes));
            return Ok(());
        }
        // SAFETY: both are allocations of at least `bytes` bytes (the backend sizes every copy
        // from its buffers); an overrun hits a guard page. `copy` allows overlap.
        unsafe { std::ptr::copy(src.0 as *const u8, dst.0 as *mut u8, bytes) };
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing("a synchronisation")?;
        Ok(()) // every launch ran to completion
    }

    fn begin_capture(&self) -> Result<()> {
        let mut s = self.lock();
        if s.capture.is_some() {
            return Err(emulated(
                "a capture began while another was under way".into(),
            ));
        }
        s.capture = Some(Vec::new());
        Ok(())
    }

    fn capturing(&self) -> bool {
        self.lock().capture.is_some()
    }

    fn end_capture(&self) -> Result<GraphId> {
        let mut s = self.lock();
        let Some(list) = s.capture.take() else {
            return Err(emulated("end of a capture that did not begin".into()));
        };
        s.next_graph += 1;
        let id = s.next_graph;
        s.graphs.insert(id, list.into());
        Ok(GraphId(id))
    }

    fn replay(&self, graph: GraphId) -> Result<()> {
        self.not_capturing("a graph replay")?;
        let list = self.lock().graphs.get(&graph.0).cloned().ok_or_else(|| {
            emulated(format!("replay of graph {}, which does not exist", graph.0))
        })?;
        for r in list.iter() {
            match r {
                Recorded::Launch(name, shape, args) => self.run(name, *shape, args)?,
                Recorded::Copy(dst, src, bytes) => self.copy_on_device(*dst, *src, *bytes)?,
            }
        }
        Ok(())
    }

    fn drop_graph(&self, graph: GraphId) -> Result<()> {
        match self.lock().graphs.remove(&graph.0) {
            Some(_) => Ok(()),
            None => Err(emulated(format!("graph {} does not exist", graph.0))),
        }
    }

    fn set_timing(&self, on: bool) {
        self.lock().times = on.then(Vec::new);
    }

    fn timing(&self) -> bool {
        self.lock().times.is_some()
    }

    fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        Ok(sum_times(self.lock().times.iter().flatten().cloned()))
    }
}
