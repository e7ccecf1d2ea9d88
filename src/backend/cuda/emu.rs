//! The emulator behind the [`Gpu`] seam: the kernels of `kernels/` compiled for the host by
//! `build.rs` against `kernels/emu/emu.h`, run by the fiber scheduler of `kernels/emu/emu.cpp`.
//! Device memory is host memory between guard pages; a launch runs to completion before
//! [`Gpu::launch`] returns, and whatever a GPU would leave undefined — an out-of-bounds access, a
//! barrier not every thread reaches, a warp collective with a lane missing — is an error naming
//! the kernel, the block and the thread.

use super::gpu::{sum_times, DevicePtr, Gpu, KernelArg, KernelTime, LaunchShape};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;
use std::time::Instant;

/// The emulator's launch timings while timing is on (`None` when off).
static TIMES: Mutex<Option<Vec<(String, f64)>>> = Mutex::new(None);

extern "C" {
    fn dydiff_emu_alloc(bytes: usize) -> *mut c_void;
    fn dydiff_emu_free(ptr: *mut c_void) -> c_int;
    fn dydiff_emu_has_kernel(name: *const c_char) -> c_int;
    fn dydiff_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        args: *mut *mut c_void,
        arg_sizes: *const usize,
        nargs: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The CPU emulator of a GPU (no state of its own: allocations are tracked by the runtime).
#[derive(Clone, Copy, Debug, Default)]
pub struct Emulator;

impl Emulator {
    /// Whether the emulator holds kernel `name`.
    pub fn has_kernel(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        unsafe { dydiff_emu_has_kernel(c.as_ptr()) != 0 }
    }
}

fn emulated(what: String) -> Error {
    Error::Backend(format!("CUDA emulator: {what}"))
}

impl Gpu for Emulator {
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
        // SAFETY: the caller's `dst` is an allocation of at least `src.len()` bytes (the backend
        // sizes every copy from the buffer it copies into); an overrun hits a guard page.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: as in `copy_to_device`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()> {
        let c = CString::new(name).map_err(|_| emulated(format!("bad kernel name {name:?}")))?;
        let mut values: Vec<Vec<u8>> = args.iter().map(KernelArg::bytes).collect();
        let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v.as_mut_ptr().cast::<c_void>())
            .collect();
        let mut err = vec![0u8; 512];
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
                ptrs.as_mut_ptr(),
                sizes.as_ptr(),
                ptrs.len(),
                err.as_mut_ptr().cast::<c_char>(),
                err.len(),
            )
        };
        if rc == 0 {
            if let Some(t) = TIMES.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                t.push((name.to_string(), start.elapsed().as_secs_f64()));
            }
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(emulated(String::from_utf8_lossy(&err[..end]).into_owned()))
    }

    fn synchronize(&self) -> Result<()> {
        Ok(()) // every launch ran to completion
    }

    fn set_timing(&self, on: bool) {
        *TIMES.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    fn kernel_times(&self) -> Result<Vec<KernelTime>> {
        let t = TIMES.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sum_times(t.iter().flatten().cloned()))
    }
}
