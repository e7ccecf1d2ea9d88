// Batched matrix products with a fused epilogue, for the network's linear layers, attention
// projections and 1×1 convolutions:
//
//   C[b] = (op(A[b]) · op(B[b]) + bias + residual[b]) · scale        b = blockIdx.z
//
// op(A) is M×K: A row-major M×K with leading dimension lda, or (a_trans) A row-major K×M;
// op(B) is K×N: B row-major K×N, or (b_trans) B row-major N×K (so y = x·Wᵀ is b_trans with W N×K).
// bias (length N, per column; or per row with bias_per_row) and residual (shaped like C, same
// ldc) are optional (null); so is a group norm of op(A)'s columns applied as A is loaded
// (GemmNorm). All storage is float32.
//
// Variants: gemm_tf32 multiplies on the tensor cores (mma.sync m16n8k8, operands rounded to TF32
// by cvt.rna, float32 accumulation); gemm_bf16 likewise with operands rounded to bf16 (m16n8k16);
// gemm_f32 uses FFMA (`--precision fp32`).
//
// Launch: grid (⌈N/64⌉, ⌈M/64⌉, batch), 128 threads, no dynamic shared memory; the tile product
// is kernels/gemm_core.cuh's. Ragged edges (any M, N, K) are zero-filled on load and masked on
// store.
//
// Benchmark: `dydiff bench unet --device cuda` (per-operation times) and the GPU check script.
#include "gemm_core.cuh"

// An optional group norm of op(A)'s columns, applied as A is loaded (attention's norm before the
// q, k, v projections): column k is channel k of sample b (the batch index), in `groups` groups;
// stats from kernels/norm.cu. Null stats: none.
struct GemmNorm {
  const float* stats;
  const float* gamma;
  const float* beta;
  int groups, unused;
};

struct GemmShape {
  int m, n, k, lda, ldb, ldc;
  long long stride_a, stride_b, stride_c;
  int a_trans, b_trans, bias_per_row;
  float scale;
};

template <int MMA>
__device__ __forceinline__ void gemm_kernel(const float* __restrict__ A,
                                            const float* __restrict__ B, float* __restrict__ C,
                                            const float* __restrict__ bias,
                                            const float* __restrict__ residual,
                                            const GemmShape& s, const GemmNorm& nrm) {
  long long b = blockIdx.z;
  A += b * s.stride_a;
  B += b * s.stride_b;
  C += b * s.stride_c;
  if (residual) residual += b * s.stride_c;
  int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
  auto a = [&](int row, int k) {
    int m = m0 + row;
    if (m >= s.m || k >= s.k) return 0.0f;
    float v = s.a_trans ? A[(long long)k * s.lda + m] : A[(long long)m * s.lda + k];
    if (nrm.stats) {
      const float* st = nrm.stats + 2 * (b * nrm.groups + k / (s.k / nrm.groups));
      v = (v - st[0]) * st[1] * nrm.gamma[k] + nrm.beta[k];
    }
    return v;
  };
  auto bv = [&](int col, int k) {
    int n = n0 + col;
    if (n >= s.n || k >= s.k) return 0.0f;
    return s.b_trans ? B[(long long)n * s.ldb + k] : B[(long long)k * s.ldb + n];
  };
  float acc[2][4][4];
  tile_product<MMA>(s.k, a, !s.a_trans, bv, s.b_trans != 0, acc);
  tile_store(acc, [&](int row, int col, float v) {
    int m = m0 + row, n = n0 + col;
    if (m >= s.m || n >= s.n) return;
    if (bias) v += bias[s.bias_per_row ? m : n];
    long long at = (long long)m * s.ldc + n;
    if (residual) v += residual[at];
    C[at] = v * s.scale;
  });
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
              const float* __restrict__ bias, const float* __restrict__ residual, GemmShape s,
              GemmNorm norm) {
  gemm_kernel<MMA_TF32>(A, B, C, bias, residual, s, norm);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    gemm_bf16(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
              const float* __restrict__ bias, const float* __restrict__ residual, GemmShape s,
              GemmNorm norm) {
  gemm_kernel<MMA_BF16>(A, B, C, bias, residual, s, norm);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    gemm_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
             const float* __restrict__ bias, const float* __restrict__ residual, GemmShape s,
              GemmNorm norm) {
  gemm_kernel<MMA_F32>(A, B, C, bias, residual, s, norm);
}
