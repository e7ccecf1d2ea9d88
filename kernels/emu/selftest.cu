// Kernels that exercise the emulator itself (tests/ops/emulator.rs): the CUDA features the real kernels
// rely on, the PTX instructions of kernels/ptx.cuh, and the faults the emulator must catch.
// Compiled only for the emulator.
#include "ptx.cuh"

// out[block] = sum of in[block*blockDim.x .. +blockDim.x] by a shared-memory tree (blockDim.x a power
// of two); exercises static shared memory and __syncthreads.
extern "C" __global__ void emu_test_block_sum(const float* in, float* out) {
  DYDIFF_SHARED(float, buf, [1024]);
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

// D = A·B + C with one m16n8k8 TF32 mma: A 16×8, B 8×8, C and D 16×8, all row-major f32, the
// fragments loaded by the PTX ISA's tables; operands rounded by cvt.rna.tf32 when round_operands,
// otherwise passed as raw f32 bits (the tensor cores then ignore the low 13 bits). One warp.
extern "C" __global__ void emu_test_mma_tf32(const float* A, const float* B, const float* C,
                                             float* D, int round_operands) {
  unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto op = [&](float x) { return round_operands ? f32_to_tf32(x) : __float_as_uint(x); };
  unsigned a[4] = {op(A[g * 8 + t]), op(A[(g + 8) * 8 + t]), op(A[g * 8 + t + 4]),
                   op(A[(g + 8) * 8 + t + 4])};
  unsigned b[2] = {op(B[t * 8 + g]), op(B[(t + 4) * 8 + g])};
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  mma_m16n8k8_tf32(d, a, b, c);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// D = A·B + C with one m16n8k16 bf16 mma: A 16×16 and B 16×8 row-major bf16 bits, C and D 16×8
// row-major f32; fragments by the PTX ISA's tables. One warp.
extern "C" __global__ void emu_test_mma_bf16(const unsigned short* A, const unsigned short* B,
                                             const float* C, float* D) {
  unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](unsigned short lo, unsigned short hi) { return unsigned(lo) | unsigned(hi) << 16; };
  unsigned a[4] = {pair(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                   pair(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                   pair(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                   pair(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
  unsigned b[2] = {pair(B[2 * t * 8 + g], B[(2 * t + 1) * 8 + g]),
                   pair(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
  float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  mma_m16n8k16_bf16(d, a, b, c);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// D (16×16 f32) = A·B for A, B 16×16 row-major bf16, staged in shared memory by cp.async and
// loaded into fragments by ldmatrix (A) and ldmatrix.trans (B): two m16n8k16 mmas. The layouts of
// ldmatrix and mma must agree for this to be the matrix product. One warp.
extern "C" __global__ void emu_test_ldmatrix_mma(const unsigned short* A, const unsigned short* B,
                                                 float* D) {
  DYDIFF_SHARED(unsigned short, sa, [16 * 16]);
  DYDIFF_SHARED(unsigned short, sb, [16 * 16]);
  unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
  // 512 bytes each: 32 copies of 16 bytes, one per lane and matrix
  cp_async_16(sa + 8 * lane, A + 8 * lane);
  cp_async_16(sb + 8 * lane, B + 8 * lane);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  unsigned i = lane / 8, r = lane % 8;
  unsigned a[4], b[4];
  ldmatrix_x4(a, sa + ((i % 2) * 8 + r) * 16 + (i / 2) * 8);
  ldmatrix_x4_trans(b, sb + ((i % 2) * 8 + r) * 16 + (i / 2) * 8);
  for (int n = 0; n < 2; ++n) {
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d[4];
    unsigned bn[2] = {b[2 * n], b[2 * n + 1]};
    mma_m16n8k16_bf16(d, a, bn, c);
    D[g * 16 + 8 * n + 2 * t] = d[0];
    D[g * 16 + 8 * n + 2 * t + 1] = d[1];
    D[(g + 8) * 16 + 8 * n + 2 * t] = d[2];
    D[(g + 8) * 16 + 8 * n + 2 * t + 1] = d[3];
  }
}

// cp.async groups: lane l copies 16 bytes (4 floats) of src into dynamic shared memory in group 0
// and the next 16 bytes in group 1 (the latter with only `tail` source bytes, the rest zeros),
// then records what shared memory holds before any wait, after wait_group 1 and after
// wait_group 0: out[(3·lane + stage)·8 + j], 8 floats per stage. One warp; 1 KiB dynamic shared.
extern "C" __global__ void emu_test_cp_async(const float* src, float* out, unsigned tail) {
  DYDIFF_DYNAMIC_SHARED(float, sh);
  unsigned lane = threadIdx.x;
  float* mine = sh + 8 * lane;
  cp_async_16(mine, src + 8 * lane);
  cp_async_commit();
  cp_async_16(mine + 4, src + 8 * lane + 4, tail);
  cp_async_commit();
  for (int j = 0; j < 8; ++j) out[(3 * lane + 0) * 8 + j] = mine[j];
  cp_async_wait<1>();
  for (int j = 0; j < 8; ++j) out[(3 * lane + 1) * 8 + j] = mine[j];
  cp_async_wait<0>();
  for (int j = 0; j < 8; ++j) out[(3 * lane + 2) * 8 + j] = mine[j];
}

// ldmatrix with a misaligned row address.
extern "C" __global__ void emu_test_ldmatrix_misaligned(float* out) {
  DYDIFF_SHARED(unsigned short, s, [16 * 16 + 8]);
  unsigned r[4];
  ldmatrix_x4(r, s + 16 * (threadIdx.x % 16) + 1);
  out[threadIdx.x] = float(r[0]);
}

// Vector accesses through load_vec / store_vec (kernels/ptx.cuh): aligned ones copy 16 bytes per
// thread; with `misalign` 1 the loads start one float late, which a GPU faults on.
extern "C" __global__ void emu_test_vector_access(const float* in, float* out, int misalign) {
  DYDIFF_SHARED(float, s, [4 * 32 + 4]);
  unsigned t = threadIdx.x;
  store_vec<float4>(s + 4 * t, load_vec<float4>(in + 4 * t));
  __syncthreads();
  store_vec<float4>(out + 4 * t, load_vec<float4>(s + 4 * t + misalign));
}

// out[t] = what thread t reads of thread t − 1's write to shared memory, without a barrier between
// them: a planted race. Index order hides it (thread t − 1 has finished when t runs); the reverse
// and random pass orders (DYDIFF_EMU_ORDER) show it: the read finds the poisoned NaN.
extern "C" __global__ void emu_test_unsynced_neighbour(float* out) {
  DYDIFF_DYNAMIC_SHARED(float, sh);
  unsigned t = threadIdx.x;
  sh[t] = float(t);
  out[t] = t ? sh[t - 1] : -1.0f;
}

// A planted fault: static shared memory read where no thread of the block wrote it — block 0
// fills the tile, the other blocks only read it (out[block·blockDim.x + t] = tile[t]). On a GPU
// they read whatever the SM's shared memory held; the emulator gives them NaN (static shared
// memory as a `static thread_local`, as it once was, kept block 0's values for them).
extern "C" __global__ void emu_test_static_shared_unwritten(float* out) {
  DYDIFF_SHARED(float, tile, [256]);
  if (blockIdx.x == 0) tile[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[threadIdx.x];
}

// A planted fault: thread 0 writes element i of a static shared array of 3 floats (i = 3 lies in
// the 16-byte rounding before the guard page, i = 4 on it).
extern "C" __global__ void emu_test_static_shared_past_end(int i, float* out) {
  DYDIFF_SHARED(float, small, [3]);
  if (threadIdx.x < 3) small[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) small[i] = 2.0f;
  __syncthreads();
  if (threadIdx.x < 3) out[threadIdx.x] = small[threadIdx.x];
}

// A planted fault: 52 KiB of static shared memory, more than a block may declare (48 KiB) — which
// ptxas refuses, so its device build (build.rs compiles this file for resource figures) leaves
// it out.
#if !defined(__CUDA_ARCH__)
extern "C" __global__ void emu_test_static_shared_too_much(float* out) {
  DYDIFF_SHARED(float, big, [13 * 1024]);
  big[threadIdx.x] = 1.0f;
  out[threadIdx.x] = big[threadIdx.x];
}
#endif

// A planted fault: a launch of more threads than the kernel's launch bounds allow (64).
extern "C" __global__ void __launch_bounds__(64) emu_test_bounded(float* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// A register-hungry kernel without launch bounds: 96 accumulators live through a loop whose trip
// count the compiler does not know (over 100 registers per thread on sm_90), so that a block of
// 1 024 threads needs more registers than an SM has — a launch the GPU refuses.
extern "C" __global__ void emu_test_many_registers(const float* in, float* out, int n) {
  float acc[96];
#pragma unroll
  for (int j = 0; j < 96; ++j) acc[j] = in[j];
  for (int i = 0; i < n; ++i)
#pragma unroll
    for (int j = 0; j < 96; ++j) acc[j] = acc[j] * acc[(j + 1) % 96] + in[(i + j) % 128];
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < 96; ++j) s += acc[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
