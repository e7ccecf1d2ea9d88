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
// which index walks memory, so that a warp's loads are consecutive addresses. The loads are
// pipelined: the next slice is loaded into registers while the current one is multiplied (through
// registers, not cp.async, because the functors transform what they load — a group norm, SiLU,
// an upsampling or a concatenation read in place). The slices are staged in shared memory
// k-contiguous, 16 floats a row, the k index XOR-swizzled per row (tile_col) so that every access
// is free of bank conflicts: the stores of both load orders (a warp writing 2 rows × 16 k, or 32
// rows × 1 k) and the fragment reads of every MMA variant (TF32: 8 rows × k..k+3; bf16: 8 rows ×
// k = 2t (+1, +8, +9); FFMA: broadcasts of 8 rows × 1 k). With h = (row / 2) mod 16 the swizzle is
// a bijection of h onto the 16 columns, so the 32 consecutive rows of a transposed store, two to a
// bank row, fall in 32 distinct banks; the low two bits of h — the rows a fragment read spreads
// over — move to the bits the read does not vary: bits 2–3 for TF32 and FFMA (whose reads vary
// k's bits 0–1), bits 0 and 3 for bf16 (whose reads vary bits 1–2).
#pragma once
#include "ptx.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
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

// The shared-memory column of (row, k) in a staged slice (see the top of the file).
template <int MMA>
__device__ __forceinline__ int tile_col(int row, int k) {
  int h = (row >> 1) & 15;
  int s = MMA == MMA_BF16 ? (h & 1) | ((h & 2) << 2) | ((h >> 2) << 1) : ((h & 3) << 2) | (h >> 2);
  return k ^ s;
}

template <int MMA, class LoadA, class LoadB>
__device__ __forceinline__ void tile_product(int K, const LoadA& a, bool a_k_contiguous,
                                             const LoadB& b, bool b_k_contiguous,
                                             float acc[2][4][4]) {
  DYDIFF_SHARED(float, As, [TILE_M][TILE_K]);
  DYDIFF_SHARED(float, Bs, [TILE_N][TILE_K]);
  // the slices' values at tile-local (row, k)
  auto sa = [&](int row, int k) { return As[row][tile_col<MMA>(row, k)]; };
  auto sb = [&](int col, int k) { return Bs[col][tile_col<MMA>(col, k)]; };
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
  if (K > 0) load(0);  // (an empty reduction reads nothing: its operands may be empty)
  for (int k0 = 0; k0 < K; k0 += TILE_K) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      int row, k;
      tile_slot(q, a_k_contiguous, &row, &k);
      As[row][tile_col<MMA>(row, k)] = ra[q];
      tile_slot(q, b_k_contiguous, &row, &k);
      Bs[row][tile_col<MMA>(row, k)] = rb[q];
    }
    __syncthreads();
    if (k0 + TILE_K < K) load(k0 + TILE_K);
    if constexpr (MMA == MMA_BF16) {
      unsigned af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        int r = wm + 16 * i + g;
        af[i][0] = pack_bf16x2(sa(r, 2 * t), sa(r, 2 * t + 1));
        af[i][1] = pack_bf16x2(sa(r + 8, 2 * t), sa(r + 8, 2 * t + 1));
        af[i][2] = pack_bf16x2(sa(r, 2 * t + 8), sa(r, 2 * t + 9));
        af[i][3] = pack_bf16x2(sa(r + 8, 2 * t + 8), sa(r + 8, 2 * t + 9));
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int c = wn + 8 * j + g;
        bf[j][0] = pack_bf16x2(sb(c, 2 * t), sb(c, 2 * t + 1));
        bf[j][1] = pack_bf16x2(sb(c, 2 * t + 8), sb(c, 2 * t + 9));
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
            af[i][0] = f32_to_tf32(sa(r, kk + t));
            af[i][1] = f32_to_tf32(sa(r + 8, kk + t));
            af[i][2] = f32_to_tf32(sa(r, kk + t + 4));
            af[i][3] = f32_to_tf32(sa(r + 8, kk + t + 4));
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            int c = wn + 8 * j + g;
            bf[j][0] = f32_to_tf32(sb(c, kk + t));
            bf[j][1] = f32_to_tf32(sb(c, kk + t + 4));
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
              av[i][0] = sa(wm + 16 * i + g, k);
              av[i][1] = sa(wm + 16 * i + g + 8, k);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              bv[j][0] = sb(wn + 8 * j + 2 * t, k);
              bv[j][1] = sb(wn + 8 * j + 2 * t + 1, k);
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
