// Batched matrix products with a fused epilogue, for the network's linear layers, attention
// projections and 1×1 convolutions:
//
//   C[b] = (op(A[b]) · op(B[b]) + bias) · scale + residual[b]        b = blockIdx.z
//
// op(A) is M×K: A row-major M×K with leading dimension lda, or (a_trans) A row-major K×M;
// op(B) is K×N: B row-major K×N, or (b_trans) B row-major N×K (so y = x·Wᵀ is b_trans with W N×K).
// bias (length N, per column; or per row with bias_per_row) and residual (shaped like C, same
// ldc) are optional (null). All storage is float32.
//
// Variants: gemm_tf32 multiplies on the tensor cores (mma.sync m16n8k8, operands rounded to TF32
// by cvt.rna, float32 accumulation); gemm_f32 uses FFMA (`--precision fp32`).
//
// Launch: grid (⌈N/64⌉, ⌈M/64⌉, batch), 128 threads (4 warps, 2×2, each a 32×32 piece of the
// 64×64 tile), no dynamic shared memory. The k loop stages 64×16 tiles of A and B in shared
// memory, both stored k-contiguous ([row][k], rows padded to 20 floats so that a warp's fragment
// loads hit 32 different banks), and prefetches the next tiles into registers while the tensor
// cores work on the current ones. Ragged edges (any M, N, K) are zero-filled on load and masked on
// store.
//
// Benchmark: `dydiff bench unet --device cuda` (per-operation times) and the GPU check script.
#include "ptx.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 16
#define GEMM_LD (GEMM_BK + 4)
#define GEMM_THREADS 128

struct GemmShape {
  int m, n, k, lda, ldb, ldc;
  long long stride_a, stride_b, stride_c;
  int a_trans, b_trans, bias_per_row;
  float scale;
};

// Loads the 64×16 tiles of op(A) (rows m0…, columns k0…) and op(B) (columns n0…, rows k0…) into
// registers: 8 values each per thread, zero outside the matrices.
__device__ __forceinline__ void gemm_load_tiles(const float* __restrict__ A,
                                                const float* __restrict__ B, const GemmShape& s,
                                                int m0, int n0, int k0, float ra[8], float rb[8]) {
  int tid = threadIdx.x;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    int e = tid + GEMM_THREADS * q;
    int m, k;
    if (s.a_trans) {
      k = e / GEMM_BM;
      m = e % GEMM_BM;
    } else {
      m = e / GEMM_BK;
      k = e % GEMM_BK;
    }
    int gm = m0 + m, gk = k0 + k;
    bool in = gm < s.m && gk < s.k;
    ra[q] = in ? (s.a_trans ? A[(long long)gk * s.lda + gm] : A[(long long)gm * s.lda + gk]) : 0.0f;
    int n;
    if (s.b_trans) {
      n = e / GEMM_BK;
      k = e % GEMM_BK;
    } else {
      k = e / GEMM_BN;
      n = e % GEMM_BN;
    }
    int gn = n0 + n;
    gk = k0 + k;
    in = gn < s.n && gk < s.k;
    rb[q] = in ? (s.b_trans ? B[(long long)gn * s.ldb + gk] : B[(long long)gk * s.ldb + gn]) : 0.0f;
  }
}

// Writes the registers of gemm_load_tiles into the k-contiguous shared tiles.
__device__ __forceinline__ void gemm_store_tiles(const GemmShape& s, const float ra[8],
                                                 const float rb[8], float (*As)[GEMM_LD],
                                                 float (*Bs)[GEMM_LD]) {
  int tid = threadIdx.x;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    int e = tid + GEMM_THREADS * q;
    if (s.a_trans)
      As[e % GEMM_BM][e / GEMM_BM] = ra[q];
    else
      As[e / GEMM_BK][e % GEMM_BK] = ra[q];
    if (s.b_trans)
      Bs[e / GEMM_BK][e % GEMM_BK] = rb[q];
    else
      Bs[e % GEMM_BN][e / GEMM_BN] = rb[q];
  }
}

// The epilogue for one output element.
__device__ __forceinline__ void gemm_store(float* __restrict__ C, const float* __restrict__ bias,
                                           const float* __restrict__ residual, const GemmShape& s,
                                           int m, int n, float acc) {
  if (m >= s.m || n >= s.n) return;
  if (bias) acc += bias[s.bias_per_row ? m : n];
  acc *= s.scale;
  long long at = (long long)m * s.ldc + n;
  if (residual) acc += residual[at];
  C[at] = acc;
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
              const float* __restrict__ bias, const float* __restrict__ residual, GemmShape s) {
  __shared__ float As[GEMM_BM][GEMM_LD];
  __shared__ float Bs[GEMM_BN][GEMM_LD];
  long long b = blockIdx.z;
  A += b * s.stride_a;
  B += b * s.stride_b;
  C += b * s.stride_c;
  if (residual) residual += b * s.stride_c;
  int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  float ra[8], rb[8];
  gemm_load_tiles(A, B, s, m0, n0, 0, ra, rb);
  for (int k0 = 0; k0 < s.k; k0 += GEMM_BK) {
    gemm_store_tiles(s, ra, rb, As, Bs);
    __syncthreads();
    if (k0 + GEMM_BK < s.k) gemm_load_tiles(A, B, s, m0, n0, k0 + GEMM_BK, ra, rb);
#pragma unroll
    for (int kk = 0; kk < GEMM_BK; kk += 8) {
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        int r = wm + 16 * i + g;
        af[i][0] = f32_to_tf32(As[r][kk + t]);
        af[i][1] = f32_to_tf32(As[r + 8][kk + t]);
        af[i][2] = f32_to_tf32(As[r][kk + t + 4]);
        af[i][3] = f32_to_tf32(As[r + 8][kk + t + 4]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int c = wn + 8 * j + g;
        bf[j][0] = f32_to_tf32(Bs[c][kk + t]);
        bf[j][1] = f32_to_tf32(Bs[c][kk + t + 4]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_m16n8k8_tf32(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int r = m0 + wm + 16 * i + g, c = n0 + wn + 8 * j + 2 * t;
      gemm_store(C, bias, residual, s, r, c, acc[i][j][0]);
      gemm_store(C, bias, residual, s, r, c + 1, acc[i][j][1]);
      gemm_store(C, bias, residual, s, r + 8, c, acc[i][j][2]);
      gemm_store(C, bias, residual, s, r + 8, c + 1, acc[i][j][3]);
    }
}

// The same product with FFMA in float32: each thread owns rows tm + 8i (i < 8) and columns
// tn + 16j (j < 4) of the tile, tm = thread / 16, tn = thread % 16.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
             const float* __restrict__ bias, const float* __restrict__ residual, GemmShape s) {
  __shared__ float As[GEMM_BM][GEMM_LD];
  __shared__ float Bs[GEMM_BN][GEMM_LD];
  long long b = blockIdx.z;
  A += b * s.stride_a;
  B += b * s.stride_b;
  C += b * s.stride_c;
  if (residual) residual += b * s.stride_c;
  int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
  int tm = threadIdx.x / 16, tn = threadIdx.x % 16;
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  float ra[8], rb[8];
  gemm_load_tiles(A, B, s, m0, n0, 0, ra, rb);
  for (int k0 = 0; k0 < s.k; k0 += GEMM_BK) {
    gemm_store_tiles(s, ra, rb, As, Bs);
    __syncthreads();
    if (k0 + GEMM_BK < s.k) gemm_load_tiles(A, B, s, m0, n0, k0 + GEMM_BK, ra, rb);
#pragma unroll
    for (int k = 0; k < GEMM_BK; ++k) {
      float a[8], bv[4];
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = As[tm + 8 * i][k];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[tn + 16 * j][k];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      gemm_store(C, bias, residual, s, m0 + tm + 8 * i, n0 + tn + 16 * j, acc[i][j]);
}
