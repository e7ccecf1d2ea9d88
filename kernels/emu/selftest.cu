// Kernels that exercise the emulator itself (tests/emulator.rs): the CUDA features the real kernels
// rely on, and the faults the emulator must catch. Compiled only for the emulator.

// out[block] = sum of in[block*blockDim.x .. +blockDim.x] by a shared-memory tree (blockDim.x a power
// of two); exercises static shared memory and __syncthreads.
extern "C" __global__ void emu_test_block_sum(const float* in, float* out) {
  __shared__ float buf[1024];
  unsigned t = threadIdx.x;
  buf[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Per warp: out[4*w + 0] = xor-butterfly sum, +1 = down-shuffle sum at lane 0, +2 = ballot of
// (value > 0), +3 = the value of lane (w % 32) broadcast, read back by lane 0.
extern "C" __global__ void emu_test_warp(const float* in, float* out) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned w = i / 32;
  float v = in[i];
  float a = v;
  for (int m = 16; m > 0; m /= 2) a += __shfl_xor_sync(0xffffffffu, a, m);
  float b = v;
  for (unsigned d = 16; d > 0; d /= 2) b += __shfl_down_sync(0xffffffffu, b, d);
  unsigned bits = __ballot_sync(0xffffffffu, v > 0.0f);
  float c = __shfl_sync(0xffffffffu, v, int(w % 32));
  if (threadIdx.x % 32 == 0) {
    out[4 * w + 0] = a;
    out[4 * w + 1] = b;
    out[4 * w + 2] = float(bits & 0xffffu) + 65536.0f * float(bits >> 16);
    out[4 * w + 3] = c;
  }
}

// Dynamic shared memory and 3-D indices: out[linear thread id of the grid] = the thread's
// (x + 10 y + 100 z) + 1000 (bx + 10 by + 100 bz), passed through shared memory in reverse order.
extern "C" __global__ void emu_test_indices(int* out) {
  DYDIFF_DYNAMIC_SHARED(int, sh);
  unsigned n = blockDim.x * blockDim.y * blockDim.z;
  unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  sh[n - 1 - t] = int(threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z) +
                  1000 * int(blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z);
  __syncthreads();
  unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  out[b * n + t] = sh[n - 1 - t];
}

// counts[v % buckets] += 1 for every v in in[0..n) (an atomic histogram).
extern "C" __global__ void emu_test_histogram(const int* in, int n, int buckets, int* counts) {
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) atomicAdd(&counts[in[i] % buckets], 1);
}

// Reads in[n] (one past the end) from the last thread: a planted out-of-bounds read.
extern "C" __global__ void emu_test_read_past_end(const float* in, int n, float* out) {
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i + (i == n - 1)];
}

// Writes out[n] (one element past the end) from the last thread.
extern "C" __global__ void emu_test_write_past_end(float* out, int n) {
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i + (i == n - 1)] = 1.0f;
}

// Thread 0 returns early; the others wait at __syncthreads.
extern "C" __global__ void emu_test_early_exit(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Lanes 0..15 shuffle with a full mask while lanes 16..31 wait at __syncthreads.
extern "C" __global__ void emu_test_divergent_shuffle(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else __syncthreads();
  out[threadIdx.x] = v;
}

// Half-warp collectives: lanes 0..15 and 16..31 sum separately with their own masks.
extern "C" __global__ void emu_test_half_warps(const float* in, float* out) {
  unsigned lane = threadIdx.x % 32;
  unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  float v = in[threadIdx.x];
  for (int m = 8; m > 0; m /= 2) v += __shfl_xor_sync(mask, v, m);
  out[threadIdx.x] = v;
}

// Unbounded recursion: a stack overflow.
__device__ float emu_test_deep(float x, int depth) {
  volatile float pad[256];
  pad[depth % 256] = x;
  return depth == 0 ? pad[0] : emu_test_deep(x + pad[depth % 256], depth + 1) + 1.0f;
}
extern "C" __global__ void emu_test_stack_overflow(float* out) { out[0] = emu_test_deep(1.0f, 1); }
