// Batched matrix products with a fused epilogue, for the network's linear layers and attention
// projections:
//
//   C[b] = (op(A[b]) · op(B[b]) + bias + residual[b]) · scale        b = blockIdx.z
//
// op(A) is M×K: A row-major M×K with leading dimension lda, or (a_trans) A row-major K×M;
// op(B) is K×N: B row-major K×N, or (b_trans) B row-major N×K (so y = x·Wᵀ is b_trans with W N×K).
// bias (length N, per column; or per row with bias_per_row) and residual (shaped like C, same
// ldc) are optional (null). All storage is float32.
//
// The tensor-core kernels (gemm_tf32: mma.sync m16n8k8 TF32, operands rounded to nearest;
// gemm_bf16: m16n8k16 — float32 accumulation) read both operands with K contiguous and 16-byte
// aligned (A not transposed, B transposed; K, lda, ldb and the matrix strides multiples of 4):
// the launcher packs any other operand into that form first (gemm_pack_f32, which also applies a
// group norm: attention's norm before its projections). A block of 128 threads (4 warps as 2×2,
// each a 32×32 piece) takes a 64×64 tile of C and walks K in slices of 32. Per slice each thread
// loads its fixed share of both operands — units of one row (column of op(B)) and four consecutive
// k, one 16-byte load each, at pointers that advance by a constant — into registers (the next
// slice's while the current one is multiplied), rounds it (TF32 in three instructions; bf16 pairs
// packed in one) and stores it to shared memory in the order of the MMA fragments, so that every
// fragment is one 16-byte (bf16's B: 8-byte) shared load: two buffers, one barrier per slice.
// Within each 16-wide piece of K the MMAs take k in the order that gives every thread four
// consecutive k (as kernels/conv.cu's weights): TF32 step 0 reads k = 4t, 4t+2 and step 1 4t+1,
// 4t+3; bf16 the pairs (4t, 4t+1), (4t+2, 4t+3). The one slice that may be ragged (K's last) is
// read first with bounds, so the main loop reads whole slices without any; rows past M (columns
// past N) read the last row instead and are not stored.
//
// A product with few tiles splits its slices among blockIdx.y's (split-K, chosen by the launcher
// from the product's shape per sample, never from the batch): each split writes its partial sums
// to a plane of its own and the block that arrives last for its tile adds them in order and
// applies the epilogue (kernels/splitk.cuh: deterministic, the atomics only count) — or, without
// the device's tile counters, conv2d_finish_f32 does.
//
// gemm_f32 multiplies with FFMA (`--precision fp32`) through kernels/gemm_core.cuh's tile product:
// any layout read in place, one launch, no split.
//
// Launch: gemm_tf32/bf16 grid (⌈N/64⌉, ⌈M/64⌉·splits, batch), 128 threads, dynamic shared memory
// gemm_shared_bytes (src/backend/cuda/gemm.rs mirrors it); gemm_f32 grid (⌈N/64⌉, ⌈M/64⌉, batch),
// 128 threads, none. Ragged edges (any M, N, K) are zero-filled on load and masked on store.
//
// Benchmark: `dydiff bench unet --device cuda` (per-operation times), the GPU check script and
// python/sass_model.py (the model from the machine code).
#include "gemm_tc.cuh"

#define GEMM_PARAMS                                                                       \
  const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,        \
      const float *__restrict__ bias, const float *__restrict__ residual, GemmShape s

// The rows of op(B) (B transposed, K contiguous) of matrix blockIdx.z.
struct GemmRows {
  const float* b;
  int ldb;
  __device__ __forceinline__ const float* operator()(int n) const {
    return b + (long long)n * ldb;
  }
};
__device__ __forceinline__ GemmRows gemm_rows(const float* B, const GemmShape& s) {
  return GemmRows{B + blockIdx.z * s.stride_b, s.ldb};
}

// `parts` (split: splits planes of batch·m·n) and `counters` (the device's tile counters, or null:
// conv2d_finish_f32 finishes) are for split-K.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
    gemm_tf32(GEMM_PARAMS, float* __restrict__ parts, unsigned* __restrict__ counters) {
  gemm_tc<MMA_TF32, true>(A, gemm_rows(B, s), C, bias, residual, parts, counters, s);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
    gemm_bf16(GEMM_PARAMS, float* __restrict__ parts, unsigned* __restrict__ counters) {
  gemm_tc<MMA_BF16, true>(A, gemm_rows(B, s), C, bias, residual, parts, counters, s);
}

// FFMA: kernels/gemm_core.cuh's tile product, the operands read in place through functors.
extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    gemm_f32(GEMM_PARAMS) {
  const long long b = blockIdx.z;
  A += b * s.stride_a;
  B += b * s.stride_b;
  C += b * s.stride_c;
  if (residual) residual += b * s.stride_c;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  auto a = [&](int row, int k) {
    const int m = m0 + row;
    if (m >= s.m || k >= s.k) return 0.0f;
    return s.a_trans ? A[(long long)k * s.lda + m] : A[(long long)m * s.lda + k];
  };
  auto bv = [&](int col, int k) {
    const int n = n0 + col;
    if (n >= s.n || k >= s.k) return 0.0f;
    return s.b_trans ? B[(long long)n * s.ldb + k] : B[(long long)k * s.ldb + n];
  };
  float acc[2][4][4];
  tile_product<MMA_F32>(s.k, a, !s.a_trans, bv, s.b_trans != 0, acc);
  tile_store(acc, [&](int row, int col, float v) {
    const int m = m0 + row, n = n0 + col;
    if (m >= s.m || n >= s.n) return;
    if (bias) v += bias[s.bias_per_row ? m : n];
    const long long at = (long long)m * s.ldc + n;
    if (residual) v += residual[at];
    C[at] = v * s.scale;
  });
}

// An operand packed for the tensor-core kernels: out[b][row][k] = op(X[b])[row][k] for k < K, zero
// for K ≤ k < width (out's rows `width` long: K rounded up to a multiple of 4) — op(X) rows × K, stored
// rows × K (ld, `trans` 0) or K × rows (`trans` 1), matrix b at b·stride. With `stats`, the group
// norm of the columns (column k is channel k of sample b, `groups` groups; statistics from
// kernels/norm.cu): (x − mean)·rstd·gamma[k] + beta[k]. Through a 32×33 shared tile, so that
// both the reads and the writes of a warp are consecutive addresses whichever way X is stored.
// Grid (⌈width/32⌉, ⌈rows/32⌉, batch), 32×8 threads.
extern "C" __global__ void gemm_pack_f32(const float* __restrict__ x, float* __restrict__ out,
                                         int rows, int k, int width, int ld, long long stride,
                                         int trans, const float* __restrict__ stats,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ beta, int groups) {
  DYDIFF_SHARED(float, tile, [32][33]);  // [row][k] of the block's 32 × 32 piece
  const long long b = blockIdx.z;
  const int k0 = blockIdx.x * 32, r0 = blockIdx.y * 32, tx = threadIdx.x, ty = threadIdx.y;
  x += b * stride;
#pragma unroll
  for (int j = 0; j < 32; j += 8) {
    // trans: threads along the row (contiguous in memory); else along k
    const int row = r0 + (trans ? tx : ty + j), kk = k0 + (trans ? ty + j : tx);
    float v = 0.0f;
    if (row < rows && kk < k) v = trans ? x[(long long)kk * ld + row] : x[(long long)row * ld + kk];
    tile[trans ? tx : ty + j][trans ? ty + j : tx] = v;
  }
  __syncthreads();
  const int kk = k0 + tx;
  float mean = 0.0f, rstd = 1.0f, ga = 1.0f, be = 0.0f;
  if (stats && kk < k) {
    const float* st = stats + 2 * (b * groups + kk / (k / groups));
    mean = st[0];
    rstd = st[1];
    ga = gamma[kk];
    be = beta[kk];
  }
#pragma unroll
  for (int j = 0; j < 32; j += 8) {
    const int row = r0 + ty + j;
    if (row >= rows || kk >= width) continue;
    float v = tile[ty + j][tx];
    if (stats && kk < k) v = (v - mean) * rstd * ga + be;
    out[(b * rows + row) * width + kk] = v;
  }
}
