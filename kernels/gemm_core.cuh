// The product of one 64×64 output tile, shared by every kernel that is a matrix product in
// disguise (kernels/gemm.cu: linear layers and attention projections; kernels/conv.cu: convolutions
// as implicit GEMMs): 128 threads, 4 warps as 2×2, each warp a 32×32 piece.
//
//   acc[i][j][r] = Σ_k  a(row, k) · b(col, k)
//   row = wm + 16i + g + 8·(r / 2),  col = wn + 8j + 2t + r % 2     (tile-local; g = lane/4, t = lane%4)
//
// — the accumulator fragments of mma.m16n8k8 and m16n8k16 (kernels/ptx.cuh), kept in that layout
// by the FFMA variant too, so that epilogues are written once. Three ways to multiply (MMA):
// MMA_F32 with FFMA; MMA_TF32 on the tensor cores with operands rounded to TF32 (m16n8k8, two per
// 16-wide slice); MMA_BF16 with operands rounded to bf16 (m16n8k16, one per slice) — always
// float32 accumulation. The operands come from functors: a(row, k) and
// b(col, k) return the value of op(A) and op(B)ᵀ at tile-local row/column and global k, zero
// outside the matrices (and apply whatever transform the kernel fuses into its loads). Each
// thread loads 8 values of each per 16-wide slice of k; a_k_contiguous / b_k_contiguous say
// which index walks memory, so that a warp's loads are consecutive addresses. The slices are staged
// in shared memory k-contiguous, rows padded to 20 floats (a warp's fragment loads then touch 32
// distinct banks), and the next slice is loaded into registers while the current one is multiplied.
#pragma once
#include "ptx.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define TILE_LD (TILE_K + 4)
#define TILE_THREADS 128

#define MMA_F32 0
#define MMA_TF32 1
#define MMA_BF16 2

// The tile-local (row, k) that value q (0…7) of this thread's share of a 64×16 slice holds.
__device__ __forceinline__ void tile_slot(int q, bool k_contiguous, int* row, int* k) {
  int e = threadIdx.x + TILE_THREADS * q;
  if (k_contiguous) {
    *row = e / TILE_K;
    *k = e % TILE_K;
  } else {
    *row = e % TILE_M;
    *k = e / TILE_M;
  }
}

template <int MMA, class LoadA, class LoadB>
__device__ __forceinline__ void tile_product(int K, const LoadA& a, bool a_k_contiguous,
                                             const LoadB& b, bool b_k_contiguous,
                                             float acc[2][4][4]) {
  __shared__ float As[TILE_M][TILE_LD];
  __shared__ float Bs[TILE_N][TILE_LD];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  float ra[8], rb[8];
  auto load = [&](int k0) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      int row, k;
      tile_slot(q, a_k_contiguous, &row, &k);
      ra[q] = a(row, k0 + k);
      tile_slot(q, b_k_contiguous, &row, &k);
      rb[q] = b(row, k0 + k);
    }
  };
  load(0);
  for (int k0 = 0; k0 < K; k0 += TILE_K) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      int row, k;
      tile_slot(q, a_k_contiguous, &row, &k);
      As[row][k] = ra[q];
      tile_slot(q, b_k_contiguous, &row, &k);
      Bs[row][k] = rb[q];
    }
    __syncthreads();
    if (k0 + TILE_K < K) load(k0 + TILE_K);
    if constexpr (MMA == MMA_BF16) {
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        int r = wm + 16 * i + g;
        af[i][0] = pack_bf16x2(As[r][2 * t], As[r][2 * t + 1]);
        af[i][1] = pack_bf16x2(As[r + 8][2 * t], As[r + 8][2 * t + 1]);
        af[i][2] = pack_bf16x2(As[r][2 * t + 8], As[r][2 * t + 9]);
        af[i][3] = pack_bf16x2(As[r + 8][2 * t + 8], As[r + 8][2 * t + 9]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int c = wn + 8 * j + g;
        bf[j][0] = pack_bf16x2(Bs[c][2 * t], Bs[c][2 * t + 1]);
        bf[j][1] = pack_bf16x2(Bs[c][2 * t + 8], Bs[c][2 * t + 9]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
    } else {
#pragma unroll
      for (int kk = 0; kk < TILE_K; kk += 8) {
        if constexpr (MMA == MMA_TF32) {
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
        } else {
#pragma unroll
          for (int k = kk; k < kk + 8; ++k) {
            float av[2][2], bv[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              av[i][0] = As[wm + 16 * i + g][k];
              av[i][1] = As[wm + 16 * i + g + 8][k];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              bv[j][0] = Bs[wn + 8 * j + 2 * t][k];
              bv[j][1] = Bs[wn + 8 * j + 2 * t + 1][k];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
              for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r)
                  acc[i][j][r] = fmaf(av[i][r / 2], bv[j][r % 2], acc[i][j][r]);
          }
        }
      }
    }
    __syncthreads();
  }
}

// Calls store(row, col, value) for each of this thread's accumulators (tile-local row and column).
template <class Store>
__device__ __forceinline__ void tile_store(const float acc[2][4][4], const Store& store) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        store(wm + 16 * i + g + 8 * (r / 2), wn + 8 * j + 2 * t + r % 2, acc[i][j][r]);
}
