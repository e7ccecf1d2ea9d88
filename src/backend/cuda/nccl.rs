//! Sums over the GPUs of a many-process job with NCCL (docs/distributed.md, “GPU ranks”): one
//! communicator per process, made on the first sum from a unique id that rank 0 draws and MPI
//! broadcasts; each sum is one `ncclAllReduce`, enqueued on the device's one stream, so
//! it is ordered with the launches before and after it and the host does not wait for it.
//! NCCL is loaded at run time (cudarc's dynamic loading). NCCL needs a GPU of its own per rank
//! and the library on every rank: if any rank cannot load it, or two ranks share a GPU (more
//! ranks than GPUs), no rank uses it and the sums go through the host and MPI instead (rank 0
//! says so once).

use super::gpu::DevicePtr;
use crate::distributed::{fingerprint, world};
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use std::sync::Arc;

/// A communicator of every rank of the job.
pub struct Communicator(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread, one call at a time (the driver's
// calls are serialised by its owner).
unsafe impl Send for Communicator {}
// SAFETY: as above.
unsafe impl Sync for Communicator {}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: the communicator was made by `comm_init_rank` and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.0) };
    }
}

fn nccl(what: &str, e: result::NcclError) -> Error {
    Error::Backend(format!("NCCL: {what}: {e:?}"))
}

impl Communicator {
    /// The communicator of every rank, whose GPU has the UUID `gpu` (a collective: every rank
    /// calls it at the same point); `None` on every rank when some rank cannot load NCCL or two
    /// ranks share a GPU.
    pub fn new(gpu: [u8; 16]) -> Result<Option<Communicator>> {
        let w = world();
        // SAFETY: only tries to open the shared library.
        let here = unsafe { sys::is_culib_present() };
        let loaded = w.min_usize(usize::from(here))? == 1;
        let mut gpus = w.all_gather_u64(fingerprint(&gpu))?;
        gpus.sort_unstable();
        let shared = gpus.windows(2).any(|p| p[0] == p[1]);
        if !loaded || shared {
            if w.is_root() {
                eprintln!(
                    "dydiff: {}; gradients are summed through the host with MPI",
                    if loaded {
                        "ranks share a GPU, and NCCL needs one per rank"
                    } else {
                        "NCCL (libnccl.so.2) could not be loaded on every rank"
                    }
                );
            }
            return Ok(None);
        }
        let mut id = [0u8; 128];
        if w.is_root() {
            let unique = result::get_uniqueid().map_err(|e| nccl("cannot draw a unique id", e))?;
            for (d, s) in id.iter_mut().zip(unique.internal.iter()) {
                *d = *s as u8;
            }
        }
        w.broadcast(&mut id, 0)?;
        let unique = sys::ncclUniqueId {
            internal: id.map(|b| b as ::core::ffi::c_char),
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` receives the new communicator; every rank passes the same id and size.
        unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), w.size() as i32, unique, w.rank() as i32)
        }
        .map_err(|e| nccl(&format!("cannot join rank {} of {}", w.rank(), w.size()), e))?;
        // SAFETY: initialised by the successful call above.
        Ok(Some(Communicator(unsafe { comm.assume_init() })))
    }

    /// Writes to `dst` the sums over every rank of the `len` float32 values at `src`, enqueued
    /// on `stream`.
    pub fn sum(
        &self,
        src: DevicePtr,
        dst: DevicePtr,
        len: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        // SAFETY: `src` and `dst` are allocations of at least `len` float32 values on this
        // communicator's device; NCCL reads and writes them in stream order.
        unsafe {
            result::all_reduce(
                src.0 as *const ::core::ffi::c_void,
                dst.0 as *mut ::core::ffi::c_void,
                len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.0,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(|_| ())
        .map_err(|e| nccl(&format!("sum of {len} values"), e))
    }
}
