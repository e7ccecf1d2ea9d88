//! The GPU behind the [`Gpu`] seam: the CUDA driver through cudarc (the library loaded at run
//! time), one context and one stream per device (a created stream: the legacy default stream
//! cannot be captured), every copy and launch ordered on it, the embedded fatbin loaded once.
//! Every failure is a one-line error: no driver library, no GPU with that ordinal, a driver or GPU
//! that cannot run the embedded code, out of device memory, a failed launch.

use super::gpu::{sum_times, DevicePtr, Gpu, GraphId, KernelArg, KernelTime, LaunchShape};
use super::kernels;
use crate::error::{Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

/// One GPU: its context, the stream every launch and copy goes to, and the loaded kernels.
pub struct Driver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Module,
    /// The kernels looked up so far, each with the dynamic shared memory it has been allowed.
    functions: Mutex<HashMap<String, (Function, u32)>>,
    /// While timing: each launch's kernel and the events recorded around it.
    timing: Mutex<Option<Vec<(String, Event, Event)>>>,
    /// The instantiated graphs, and the number of the next.
    graphs: Mutex<(HashMap<u64, Graph>, u64)>,
    /// The NCCL communicator of a many-process job, made by the first sum (`None` inside: NCCL
    /// is not available on every rank).
    #[cfg(feature = "mpi")]
    nccl: std::sync::OnceLock<Option<super::nccl::Communicator>>,
    /// [`Gpu::tile_counters`], allocated and zeroed when the device is opened.
    counters: DevicePtr,
    /// [`Gpu::max_shared_per_block`], the device's attribute.
    max_shared: usize,
}

/// An instantiated graph.
struct Graph(CudaGraph);
// SAFETY: a graph is used by one thread at a time (behind the driver's mutex), as the CUDA
// documentation requires of graph objects; its handles belong to the context, not to a thread.
unsafe impl Send for Graph {}

/// Driver handles, usable from any thread once the context is bound.
struct Module(sys::CUmodule);
#[derive(Clone, Copy)]
struct Function(sys::CUfunction);
struct Event(sys::CUevent);
// SAFETY: CUDA module and function handles may be used from any thread of the process (the
// context is bound to the calling thread before every use).
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}
// SAFETY: as above.
unsafe impl Send for Function {}
// SAFETY: events, like modules, belong to the context, not to a thread.
unsafe impl Send for Event {}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was created by `result::event::create` and is destroyed once.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

fn new_event() -> Result<Event> {
    result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
        .map(Event)
        .map_err(|e| cuda("cannot create an event", e))
}

fn cuda(what: impl std::fmt::Display, e: DriverError) -> Error {
    Error::Backend(format!("CUDA: {what}: {e}"))
}

/// A failed synchronisation, named by its cause: a kernel of the stream (the faults a kernel
/// leaves for the next synchronise, which lose the context), a synchronisation the stream's graph
/// capture does not permit (the driver then invalidates the capture), or any other error the
/// synchronise returns (an earlier asynchronous call's, the device's) under its own code.
fn sync_failed(e: DriverError) -> Error {
    use sys::cudaError_enum as E;
    match e.0 {
        E::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        | E::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        | E::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
        | E::CUDA_ERROR_CAPTURED_EVENT => cuda(
            "synchronising the stream while it captures a graph (not permitted; the capture is lost)",
            e,
        ),
        E::CUDA_ERROR_ILLEGAL_ADDRESS
        | E::CUDA_ERROR_LAUNCH_FAILED
        | E::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | E::CUDA_ERROR_MISALIGNED_ADDRESS
        | E::CUDA_ERROR_INVALID_ADDRESS_SPACE
        | E::CUDA_ERROR_INVALID_PC
        | E::CUDA_ERROR_HARDWARE_STACK_ERROR
        | E::CUDA_ERROR_ASSERT
        | E::CUDA_ERROR_LAUNCH_TIMEOUT => cuda("a kernel failed", e),
        _ => cuda(
            "synchronising the stream failed (not a kernel's fault: an earlier call's or the device's error)",
            e,
        ),
    }
}

/// Whether the CUDA driver library can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { sys::is_culib_present() }
}

/// The driver entry points this backend calls through cudarc (with its `cuda-13000` bindings;
/// `cuDeviceGetUuid_v2` for NCCL's many-process jobs). cudarc looks each up at its first call
/// and panics where the library lacks it, so they are all looked up first, when the driver is.
const ENTRY_POINTS: [&str; 39] = [
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetUuid_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuLaunchKernel",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamBeginCapture_v2",
    "cuStreamIsCapturing",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventElapsedTime_v2",
    "cuEventDestroy_v2",
];

/// The driver library, loaded and holding every entry point of [`ENTRY_POINTS`]; otherwise the
/// one-line reason (checked once).
fn driver_library() -> Result<()> {
    static CHECKED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            if !driver_present() {
                return Err(
                    "no CUDA driver on this machine (libcuda not found); use --device cpu".into(),
                );
            }
            // SAFETY: the library is present (above); loading it runs no code of ours.
            let lib = unsafe { sys::culib() };
            let missing: Vec<&str> = ENTRY_POINTS
                .into_iter()
                .filter(|name| {
                    let symbol = format!("{name}\0");
                    // SAFETY: only looks the name up; the symbol is not called.
                    unsafe { lib.get::<unsafe extern "C" fn()>(symbol.as_bytes()) }.is_err()
                })
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "the CUDA driver library lacks {} (a driver older than CUDA 13.0?); use --device cpu",
                    missing.join(", ")
                ))
            }
        })
        .clone()
        .map_err(Error::Backend)
}

/// The number of GPUs the driver sees.
pub fn device_count() -> Result<usize> {
    driver_library()?;
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| cuda("cannot initialise the driver", e))
}

/// The driver's CUDA version as `major.minor`.
pub fn driver_version() -> Result<String> {
    driver_library()?;
    let mut v = 0i32;
    // SAFETY: writes one integer.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| cuda("cannot read the driver version", e))?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

impl Driver {
    /// Opens GPU `ordinal` and loads the embedded kernels.
    pub fn open(ordinal: usize) -> Result<Driver> {
        if kernels::FATBIN.is_empty() {
            return Err(Error::Backend(
                "this dydiff holds no CUDA kernels (nvcc was not found when it was built; see docs/cli.md, \"Devices\"); use --device cpu".into(),
            ));
        }
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Backend(format!(
                "cuda:{ordinal}: this machine has {count} GPU{}",
                if count == 1 { "" } else { "s" }
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda(format!("cuda:{ordinal}"), e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda(format!("cuda:{ordinal}: cannot create a stream"), e))?;
        // SAFETY: the fatbin is a complete image embedded at build time; the context is bound.
        let module = unsafe { result::module::load_data(kernels::FATBIN.as_ptr().cast()) }
            .map_err(|e| {
                let cc = ctx
                    .compute_capability()
                    .map(|(a, b)| format!("{a}.{b}"))
                    .unwrap_or_else(|_| "?".into());
                Error::Backend(format!(
                    "CUDA: cuda:{ordinal} (compute capability {cc}, driver {}) cannot run this binary's kernels (built for sm_{} and PTX of the highest): {e}",
                    driver_version().unwrap_or_else(|_| "?".into()),
                    kernels::architectures().unwrap_or("?").replace(';', ", sm_"),
                ))
            })?;
        let mut driver = Driver {
            ctx,
            stream,
            module: Module(module),
            functions: Mutex::new(HashMap::new()),
            timing: Mutex::new(None),
            graphs: Mutex::new((HashMap::new(), 0)),
            #[cfg(feature = "mpi")]
            nccl: std::sync::OnceLock::new(),
            counters: DevicePtr(0),
            max_shared: 0,
        };
        driver.max_shared = driver
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| cuda("cannot read the device's shared memory per block", e))?
            as usize;
        // the split-K tile counters, zeroed once here (the kernels leave them zero)
        let bytes = 4 * super::gpu::TILE_COUNTERS;
        driver.counters = driver.alloc(bytes)?;
        driver.copy_to_device(driver.counters, &vec![0u8; bytes])?;
        Ok(driver)
    }

    /// The device's name, compute capability and memory in bytes.
    pub fn describe(&self) -> Result<(String, (i32, i32), usize)> {
        let name = self.ctx.name().map_err(|e| cuda("device name", e))?;
        let cc = self
            .ctx
            .compute_capability()
            .map_err(|e| cuda("compute capability", e))?;
        let mem = self.ctx.total_mem().map_err(|e| cuda("device memory", e))?;
        Ok((name, cc, mem))
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda("cannot bind the context", e))
    }

    /// Kernel `name`, allowed at least `shared_bytes` of dynamic shared memory: without opting in
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`) a block's static and dynamic shared
    /// memory together must fit in 48 KiB, so a kernel with static shared memory opts in below
    /// 48 KiB of dynamic.
    fn function(&self, name: &str, shared_bytes: u32) -> Result<Function> {
        const DEFAULT_SHARED: u32 = 48 * 1024;
        let mut cache = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let (f, allowed) = match cache.get(name) {
            Some(&entry) => entry,
            None => {
                let c = CString::new(name)
                    .map_err(|_| Error::Backend(format!("bad kernel name {name:?}")))?;
                // SAFETY: the module is loaded and stays loaded for the driver's lifetime.
                let f = unsafe { result::module::get_function(self.module.0, c) }
                    .map_err(|e| cuda(format!("kernel {name}"), e))?;
                // SAFETY: `f` is a kernel of the loaded module.
                let static_bytes = unsafe {
                    result::function::get_function_attribute(
                        f,
                        sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                    )
                }
                .map_err(|e| cuda(format!("kernel {name}: its static shared memory"), e))?;
                let static_bytes = u32::try_from(static_bytes).unwrap_or(0);
                (Function(f), DEFAULT_SHARED.saturating_sub(static_bytes))
            }
        };
        let allowed = if shared_bytes > allowed {
            let what = format!("kernel {name}: {shared_bytes} bytes of shared memory");
            let bytes = i32::try_from(shared_bytes).map_err(|_| Error::Backend(what.clone()))?;
            // SAFETY: `f` is a kernel of the loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f.0,
                    sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
            }
            .map_err(|e| cuda(what, e))?;
            shared_bytes
        } else {
            allowed
        };
        cache.insert(name.to_string(), (f, allowed));
        Ok(f)
    }
}

impl Gpu for Driver {
    fn tile_counters(&self) -> Option<DevicePtr> {
        Some(self.counters)
    }

    fn max_shared_per_block(&self) -> usize {
        self.max_shared
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        // SAFETY: a plain allocation on the bound context.
        match unsafe { result::malloc_sync(bytes.max(1)) } {
            Ok(p) => Ok(DevicePtr(p)),
            Err(e) => {
                let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
                Err(Error::Backend(format!(
                    "CUDA: out of device memory allocating {bytes} bytes ({free} of {total} bytes free): {e}"
                )))
            }
        }
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.bind()?;
        // SAFETY: `ptr` came from `alloc` on this context and is freed once (Buffer's drop).
        unsafe { result::free_sync(ptr.0) }.map_err(|e| cuda("free", e))
    }

    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` is an allocation of at least `src.len()` bytes (the backend sizes every
        // copy from its buffer); from pageable memory the call returns once `src` is staged, so
        // the caller may reuse it.
        unsafe { result::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
            .map_err(|e| cuda("copy to the device", e))
    }

    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(sync_failed)?;
        // SAFETY: as in `copy_to_device`, with the roles swapped.
        unsafe { result::memcpy_dtoh_sync(dst, src.0) }.map_err(|e| cuda("copy from the device", e))
    }

    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        self.bind()?;
        let f = self.function(name, shape.shared_bytes)?;
        // one parameter block with its size, which the driver checks against the kernel's
        let mut block = KernelArg::packed(args);
        let mut size = block.len();
        // the driver's markers are small integers in pointer form (cuda.h's `CU_LAUNCH_PARAM_*`)
        let marker = |m: u32| std::ptr::without_provenance_mut::<c_void>(m as usize);
        let mut extra: [*mut c_void; 5] = [
            marker(sys::CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT),
            block.as_mut_ptr().cast(),
            marker(sys::CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT),
            (&mut size as *mut usize).cast(),
            marker(sys::CU_LAUNCH_PARAM_END_AS_INT),
        ];
        let g = shape.grid;
        let b = shape.block;
        let mut timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        let events = match timing.as_ref() {
            Some(_) => Some((new_event()?, new_event()?)),
            None => None,
        };
        if let Some((start, _)) = &events {
            // SAFETY: a live event of this context, recorded on its stream.
            unsafe { result::event::record(start.0, self.stream.cu_stream()) }
                .map_err(|e| cuda("event", e))?;
        }
        // SAFETY: `f` is a kernel of the loaded module; `extra` gives the parameter block and its
        // size (the driver refuses a block of another size than the kernel's parameters; the
        // launchers are tested against the same kernels on the emulator, which also checks each
        // argument's size); block and size outlive the call, which copies them.
        unsafe {
            sys::cuLaunchKernel(
                f.0,
                g[0],
                g[1],
                g[2],
                b[0],
                b[1],
                b[2],
                shape.shared_bytes,
                self.stream.cu_stream(),
                std::ptr::null_mut(),
                extra.as_mut_ptr(),
            )
        }
        .result()
        .map_err(|e| cuda(format!("kernel {name}"), e))?;
        if let (Some((start, end)), Some(list)) = (events, timing.as_mut()) {
            // SAFETY: as for the start event.
            unsafe { result::event::record(end.0, self.stream.cu_stream()) }
                .map_err(|e| cuda("event", e))?;
            list.push((name.to_string(), start, end));
        }
        Ok(())
    }

    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both are allocations of at least `bytes` bytes (the backend sizes every copy
        // from its buffers).
        unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }
            .map_err(|e| cuda("copy on the device", e))
    }

    #[cfg(feature = "mpi")]
    fn sum_over_ranks(&self, src: DevicePtr, dst: DevicePtr, len: usize) -> Result<bool> {
        self.bind()?;
        let comm = match self.nccl.get() {
            Some(c) => c,
            None => {
                let uuid = self
                    .ctx
                    .uuid()
                    .map_err(|e| cuda("cannot read the GPU's UUID", e))?;
                let bytes = uuid.bytes.map(|b| b as u8);
                let c = super::nccl::Communicator::new(bytes)?;
                self.nccl.get_or_init(|| c)
            }
        };
        match comm {
            Some(c) => c.sum(src, dst, len, &self.stream).map(|_| true),
            None => Ok(false),
        }
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(sync_failed)
    }

    fn begin_capture(&self) -> Result<()> {
        // relaxed: the caching allocator may still ask the device for memory while capturing
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| cuda("cannot begin a graph capture", e))
    }

    fn capturing(&self) -> bool {
        self.stream
            .capture_status()
            .is_ok_and(|s| s == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE)
    }

    fn end_capture(&self) -> Result<GraphId> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| cuda("graph capture", e))?
            .ok_or_else(|| Error::Backend("CUDA: graph capture: nothing was captured".into()))?;
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        graphs.1 += 1;
        let id = graphs.1;
        graphs.0.insert(id, Graph(graph));
        Ok(GraphId(id))
    }

    fn replay(&self, graph: GraphId) -> Result<()> {
        let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let g = graphs
            .0
            .get(&graph.0)
            .ok_or_else(|| Error::Backend(format!("CUDA: graph {} does not exist", graph.0)))?;
        g.0.launch().map_err(|e| cuda("graph launch", e))
    }

    fn drop_graph(&self, graph: GraphId) -> Result<()> {
        // the last replay may still run: destroy the graph once the stream is idle
        self.synchronize()?;
        let removed = self
            .graphs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .remove(&graph.0);
        match removed {
            Some(g) => {
                // cudarc's destructor keeps a failure for the context's next call: say it here
                drop(g);
                self.ctx
                    .check_err()
                    .map_err(|e| cuda(format!("destroying graph {}", graph.0), e))
            }
            None => Err(Error::Backend(format!(
                "CUDA: graph {} does not exist",
                graph.0
            ))),
        }
    }

    fn set_timing(&self, on: bool) {
        *self.timing.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    fn timing(&self) -> bool {
        self.timing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        self.synchronize()?;
        let timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        let mut records = Vec::new();
        for (name, start, end) in timing.iter().flatten() {
            // SAFETY: both events were recorded and the stream has been synchronised.
            let ms = unsafe { result::event::elapsed(start.0, end.0) }
                .map_err(|e| cuda("event timing", e))?;
            records.push((name.clone(), f64::from(ms) / 1e3));
        }
        Ok(sum_times(records))
    }
}
