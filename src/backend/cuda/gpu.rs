//! The seam below the CUDA backend's launch code (docs/devices.md, “The emulator”): allocate, free,
//! copy, and launch a kernel by name with its grid, block, dynamic shared bytes and raw arguments.
//! Two implementations: the GPU through the CUDA driver, and the [emulator](super::emu), which runs
//! the same kernel sources compiled for the host. Everything above this trait — buffer sizes,
//! launch shapes, argument order, graph capture and replay — is the same code on both, so
//! `cargo test` exercises it.

use crate::error::Result;

/// An address in a [`Gpu`]'s memory (a `CUdeviceptr` on the GPU, a host address on the emulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevicePtr(pub u64);

/// A captured and instantiated graph of a [`Gpu`] (docs/devices.md, “CUDA graphs”).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub u64);

/// One kernel argument, passed by value as `cuLaunchKernel` reads it: a device pointer (8 bytes),
/// a 4- or 8-byte scalar, or a struct (its bytes and its alignment).
#[derive(Clone, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    Struct { bytes: Vec<u8>, align: usize },
}

impl KernelArg {
    /// A `#[repr(C)]` structure passed by value (the kernels' shape parameters).
    pub fn pod<T: bytemuck::Pod>(s: &T) -> KernelArg {
        KernelArg::Struct {
            bytes: bytemuck::bytes_of(s).to_vec(),
            align: std::mem::align_of::<T>(),
        }
    }

    /// The argument's alignment in the kernel's parameter block, in bytes.
    pub fn align(&self) -> usize {
        match self {
            KernelArg::Ptr(_) | KernelArg::I64(_) | KernelArg::U64(_) => 8,
            KernelArg::I32(_) | KernelArg::U32(_) | KernelArg::F32(_) => 4,
            KernelArg::Struct { align, .. } => *align,
        }
    }

    /// `args` laid out as a kernel's parameter block holds them (what `cuLaunchKernel` takes as
    /// `CU_LAUNCH_PARAM_BUFFER_POINTER`): each at the next multiple of its alignment, the block
    /// ending with the last argument.
    pub fn packed(args: &[KernelArg]) -> Vec<u8> {
        let mut block = Vec::new();
        for a in args {
            block.resize(block.len().next_multiple_of(a.align()), 0);
            block.extend_from_slice(&a.bytes());
        }
        block
    }

    /// The argument's bytes, as the kernel's parameter holds them.
    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            KernelArg::Ptr(p) => p.0.to_ne_bytes().to_vec(),
            KernelArg::I32(v) => v.to_ne_bytes().to_vec(),
            KernelArg::U32(v) => v.to_ne_bytes().to_vec(),
            KernelArg::I64(v) => v.to_ne_bytes().to_vec(),
            KernelArg::U64(v) => v.to_ne_bytes().to_vec(),
            KernelArg::F32(v) => v.to_ne_bytes().to_vec(),
            KernelArg::Struct { ref bytes, .. } => bytes.clone(),
        }
    }
}

/// A launch's shape: `grid` blocks of `block` threads, `shared_bytes` of dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchShape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchShape {
    /// A 1-D launch covering `n` threads with blocks of `block` threads.
    pub fn linear(n: usize, block: u32) -> LaunchShape {
        let blocks = n.div_ceil(block as usize).max(1) as u32;
        LaunchShape {
            grid: [blocks, 1, 1],
            block: [block, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// Counters in a device's [`Gpu::tile_counters`] table: one per output tile of a split-K launch
/// that finishes in the kernel (`kernels/splitk.cuh`); a launch with more tiles finishes with a
/// launch of its own.
pub const TILE_COUNTERS: usize = 1 << 16;

/// A device that runs dydiff's kernels. Errors are one line naming the kernel or the request.
pub trait Gpu: Send + Sync {
    /// [`TILE_COUNTERS`] 32-bit counters, zero between launches (each split-K launch that uses
    /// them puts back what it took), allocated when the device is opened — never during a
    /// capture; `None` where the device has none (split-K then finishes with a launch).
    fn tile_counters(&self) -> Option<DevicePtr> {
        None
    }
    /// The most shared memory one block may have, static and dynamic together, in bytes (the
    /// device's opt-in limit: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86 and sm_89,
    /// which run the sm_80 machine code).
    fn max_shared_per_block(&self) -> usize {
        227 * 1024
    }
    /// `bytes` of device memory (contents undefined).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    /// Returns memory from [`alloc`](Gpu::alloc).
    fn free(&self, ptr: DevicePtr) -> Result<()>;
    /// Copies `src` to device memory at `dst`.
    fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    /// Copies device memory at `src` into `dst`.
    fn copy_from_device(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Runs kernel `name` with `args` in the order of its parameters: on the GPU, enqueued on the
    /// device's one stream (ordered with the copies); on the emulator, at once.
    fn launch(&self, name: &str, shape: LaunchShape, args: &[KernelArg]) -> Result<()>;
    /// Copies `bytes` bytes of device memory from `src` to `dst`, in order with the launches.
    fn copy_on_device(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    /// Waits until everything enqueued so far has run (a launch's failure shows here).
    fn synchronize(&self) -> Result<()>;
    /// Starts capturing a graph (CUDA stream capture): until [`end_capture`](Gpu::end_capture),
    /// launches and device-to-device copies are recorded instead of run, and copies to or from
    /// the host and [`synchronize`](Gpu::synchronize) are errors (they would break the capture).
    /// Allocation and free stay allowed; the memory a graph uses must outlive it
    /// ([`super::cache::Cached`] keeps it).
    fn begin_capture(&self) -> Result<()>;
    /// Whether a graph is being captured ([`begin_capture`](Gpu::begin_capture) without its
    /// end yet).
    fn capturing(&self) -> bool;
    /// Ends the capture and instantiates what was recorded.
    fn end_capture(&self) -> Result<GraphId>;
    /// Runs a graph's launches and copies, in order with everything else.
    fn replay(&self, graph: GraphId) -> Result<()>;
    /// Destroys a graph.
    fn drop_graph(&self, graph: GraphId) -> Result<()>;
    /// Starts or stops timing every launch (and clears what was timed).
    fn set_timing(&self, on: bool);
    /// Whether launches are being timed.
    fn timing(&self) -> bool;
    /// What was timed since timing started, per kernel: `(name, launches, seconds)` — device time
    /// between events around each launch on the GPU, the emulation's wall time on the emulator.
    fn kernel_times(&self) -> Result<Vec<KernelTime>>;
    /// Writes to `dst` the sums of the `len` float32 values at `src` over every rank of the job
    /// (NCCL), in order with the launches; a collective, called by every rank at the same point.
    /// `Ok(false)` when the device has no collective library (the emulator, a build without MPI,
    /// or a rank without NCCL): nothing is written, and the caller sums through the host.
    fn sum_over_ranks(&self, _src: DevicePtr, _dst: DevicePtr, _len: usize) -> Result<bool> {
        Ok(false)
    }
    /// Allocation counts of a caching allocator ([`super::cache::Cached`]); zeros without one.
    fn memory_stats(&self) -> MemoryStats {
        MemoryStats::default()
    }
}

/// The launches of one kernel and their summed time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub name: String,
    pub launches: u64,
    pub seconds: f64,
}

/// Sums `(name, seconds)` records per name, in order of first appearance.
pub fn sum_times(records: impl IntoIterator<Item = (String, f64)>) -> Vec<KernelTime> {
    let mut out: Vec<KernelTime> = Vec::new();
    for (name, secs) in records {
        match out.iter_mut().find(|k| k.name == name) {
            Some(k) => {
                k.launches += 1;
                k.seconds += secs;
            }
            None => out.push(KernelTime {
                name,
                launches: 1,
                seconds: secs,
            }),
        }
    }
    out
}

/// How often the device itself was asked to allocate and free, what the cache holds, how many
/// graphs were captured and replayed, and how often the host waited for the device (a copy to
/// the host or a synchronisation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub device_allocs: u64,
    pub device_frees: u64,
    pub reused: u64,
    pub cached_bytes: usize,
    pub captures: u64,
    pub replays: u64,
    pub host_waits: u64,
    /// Device memory held now (in use or cached), and the most held at once.
    pub reserved_bytes: usize,
    pub peak_reserved_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter block of `(u32, ptr, f32, struct of two u32, u64, u32, struct of a u64)`:
    /// the pointer, the u64 and the 8-byte-aligned struct at multiples of 8 after padding, the
    /// 4-byte values packed, no padding after the last.
    #[test]
    fn arguments_are_packed_at_their_alignment() {
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Pair(u32, u32);
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Wide(u64);
        let block = KernelArg::packed(&[
            KernelArg::U32(7),
            KernelArg::Ptr(DevicePtr(0x1122_3344_5566_7788)),
            KernelArg::F32(1.5),
            KernelArg::pod(&Pair(9, 10)),
            KernelArg::U64(3),
            KernelArg::U32(5),
            KernelArg::pod(&Wide(11)),
        ]);
        let word = |at: usize| u32::from_ne_bytes(block[at..at + 4].try_into().unwrap());
        let long = |at: usize| u64::from_ne_bytes(block[at..at + 8].try_into().unwrap());
        assert_eq!(block.len(), 56);
        assert_eq!(word(0), 7);
        assert_eq!(word(4), 0, "padding before the pointer");
        assert_eq!(long(8), 0x1122_3344_5566_7788);
        assert_eq!(f32::from_bits(word(16)), 1.5);
        assert_eq!((word(20), word(24)), (9, 10));
        assert_eq!(long(32), 3);
        assert_eq!((word(40), word(44)), (5, 0));
        assert_eq!(long(48), 11);
    }
}
