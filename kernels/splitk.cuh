// The end of a split-K launch without a finishing launch: every block of a tile writes its partial
// sums to a plane of its own, then the block that arrives last for its tile — the others' planes
// all visible to it — adds the planes in order (z = 0, 1, …: the same sum whatever the order the
// blocks ran in) and applies the epilogue. One counter per tile, zero between launches (the last
// block puts it back), from the device's table (src/backend/cuda/gpu.rs, `Gpu::tile_counters`);
// the pattern of CUDA's threadFenceReduction sample.
#pragma once
#include "ptx.cuh"

// Called by every thread of the block after it stored its partial sums; true in the block that
// arrives last among the `splits` blocks counting on `counter`.
__device__ __forceinline__ bool splitk_arrive_last(unsigned* counter, unsigned splits) {
  DYDIFF_SHARED(int, last, );
  __threadfence();  // this thread's partial sums visible to the whole device first
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    last = atomicAdd(counter, 1u) == splits - 1;
    if (last) *counter = 0u;  // every block of the tile has counted: ready for the next launch
  }
  __syncthreads();
  if (last) __threadfence();  // and the other blocks' partial sums read only after the count
  return last;
}

// A partial sum of another block, read past the SM's L1 (which does not see other SMs' stores).
__device__ __forceinline__ float splitk_load(const float* p) { return __ldcg(p); }
