// The tensor-core tile product of kernels/gemm.cu (its comment describes it), shared with the
// kernels that are a GEMM over operands laid out for it: the convolution's weight gradient
// (kernels/conv.cu) reads its B operand at a row pointer per column, unaligned.
#pragma once
#include "gemm_core.cuh"
#include "splitk.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_KC 32  // K per slice
#define GEMM_THREADS 128

struct GemmShape {
  int m, n, k, lda, ldb, ldc;
  long long stride_a, stride_b, stride_c;
  int a_trans, b_trans, bias_per_row;
  float scale;
  int slices;     // ⌈k / GEMM_KC⌉
  int per_split;  // slices per split (the tensor-core kernels; gridDim.y = m tiles · splits)
};

// Words of shared memory per operand and slice: a word per element (TF32), or per bf16 pair.
__host__ __device__ constexpr int gemm_slice_words(int mma) {
  return (mma == MMA_BF16 ? GEMM_KC / 2 : GEMM_KC) * GEMM_BM;
}
// Dynamic shared memory of a tensor-core launch: two buffers of both operands.
__host__ __device__ constexpr int gemm_shared_bytes(int mma) {
  return 4 * 2 * 2 * gemm_slice_words(mma);
}

// One thread's unit of an operand: a row of op(A) (a column of op(B)) and k 4c … 4c+3 of a slice,
// K contiguous: one 16-byte load (ALIGNED), or four 4-byte loads where the row may start anywhere
// (the weight gradient's gathered input). The caller gives the row's start (a row past the matrix
// reads its last row instead: finite values whose products land in rows the epilogue does not
// store).
template <bool ALIGNED>
struct GemmUnit {
  const float* p;  // the unit's first element in the next slice the main loop reads
  int k_rel;       // the unit's first k within a slice
  __device__ __forceinline__ void init(const float* row, int k, int first_slice) {
    k_rel = k;
    p = row + first_slice * GEMM_KC + k;
  }
  __device__ __forceinline__ static float4 load(const float* q) {
    if constexpr (ALIGNED) return load_vec<float4>(q);
    else return make_float4(q[0], q[1], q[2], q[3]);
  }
  // the unit's values in slice sl, zero past K (the one slice that may be ragged; K is a multiple
  // of 4, so a unit is wholly inside or outside)
  __device__ __forceinline__ float4 load_edge(int sl, int next, int K) const {
    const float* q = p + (sl - next) * GEMM_KC;
    return sl * GEMM_KC + k_rel < K ? load(q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  // the unit's values in a whole slice, then on to the next
  __device__ __forceinline__ float4 load_next() {
    const float4 v = load(p);
    p += GEMM_KC;
    return v;
  }
};

// Word of an element as the TF32 MMA takes it (rounded to nearest).
__device__ __forceinline__ uint4 tf32_words(float a, float b, float c, float d) {
  return make_uint4(tf32_for_mma(a), tf32_for_mma(b), tf32_for_mma(c), tf32_for_mma(d));
}

// The product of blockIdx.z's matrices (A at blockIdx.z·stride_a; B's column n starts at
// b_row(n), 0 ≤ n < s.n: B_ALIGNED when every such row is 16-byte aligned) with the epilogue.
template <int MMA, bool B_ALIGNED, class BRow>
__device__ __forceinline__ void gemm_tc(const float* __restrict__ A, const BRow& b_row,
                                        float* __restrict__ C, const float* __restrict__ bias,
                                        const float* __restrict__ residual,
                                        float* __restrict__ parts, unsigned* __restrict__ counters,
                                        const GemmShape& s) {
  constexpr int KH = GEMM_KC / 16;  // 16-wide pieces per slice
  constexpr int WORDS = gemm_slice_words(MMA);
  // units per thread: A's 64 rows in pairs (r, r+8) × KH × 4 quads of k; B's 64 columns × KH × 4
  constexpr int UA = (GEMM_BM / 2) * KH * 4 / GEMM_THREADS;
  constexpr int UB = GEMM_BN * KH * 4 / GEMM_THREADS;
  // a slice buffer: A's words then B's; two buffers
  DYDIFF_DYNAMIC_SHARED(unsigned, smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int m_tiles = (s.m + GEMM_BM - 1) / GEMM_BM;
  const int split = blockIdx.y / m_tiles;
  const int m0 = (blockIdx.y - split * m_tiles) * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
  const long long b = blockIdx.z;
  A += b * s.stride_a;

  // The split's slices: the first one read with bounds (the ragged last slice of K when the split
  // holds it, else its first), then whole slices [f_begin, f_end) in the main loop.
  const int s_begin = split * s.per_split, s_end = min(s.slices, s_begin + s.per_split);
  const bool ragged = s_end == s.slices && s.k % GEMM_KC != 0;
  const int first = ragged ? s.slices - 1 : s_begin;
  const int f_begin = ragged ? s_begin : s_begin + 1, f_end = ragged ? s_end - 1 : s_end;

  // unit u of A: rows (16i + g', +8) of the tile, k 16h + 4t' (lane' = 4g' + t'); of B: column
  // 8j + g', same k. Threads take consecutive lanes, so their shared stores are contiguous.
  GemmUnit<true> ua[UA][2];
  GemmUnit<B_ALIGNED> ub[UB];
  int a_at[UA], b_at[UB];  // the units' word offsets in a slice buffer
#pragma unroll
  for (int q = 0; q < UA; ++q) {
    const int u = tid + q * GEMM_THREADS, ln = u % 32, h = (u / 32) % KH, i = u / (32 * KH);
    a_at[q] = (i * KH + h) * (MMA == MMA_BF16 ? 128 : 256) + ln * 4;
#pragma unroll
    for (int e = 0; e < 2; ++e)
      ua[q][e].init(A + (long long)min(m0 + 16 * i + ln / 4 + 8 * e, s.m - 1) * s.lda,
                    16 * h + 4 * (ln % 4), f_begin);
  }
#pragma unroll
  for (int q = 0; q < UB; ++q) {
    const int u = tid + q * GEMM_THREADS, ln = u % 32, h = (u / 32) % KH, j = u / (32 * KH);
    b_at[q] = 2 * WORDS + ((j * KH + h) * 32 + ln) * (MMA == MMA_BF16 ? 2 : 4);
    ub[q].init(b_row(min(n0 + 8 * j + ln / 4, s.n - 1)), 16 * h + 4 * (ln % 4), f_begin);
  }

  float4 ra[UA][2], rb[UB];
  // this thread's share of slice sl, from registers to the buffer at word offset `at` (0 or WORDS
  // past each operand's start)
  auto store = [&](int at) {
#pragma unroll
    for (int q = 0; q < UA; ++q) {
      const float4 x = ra[q][0], y = ra[q][1];  // rows r and r + 8, k 4t'…4t'+3
      unsigned* dst = smem + at + a_at[q];
      if constexpr (MMA == MMA_BF16) {
        store_vec<uint4>(dst, make_uint4(pack_bf16x2(x.x, x.y), pack_bf16x2(y.x, y.y),
                                         pack_bf16x2(x.z, x.w), pack_bf16x2(y.z, y.w)));
      } else {
        store_vec<uint4>(dst, tf32_words(x.x, y.x, x.z, y.z));
        store_vec<uint4>(dst + 128, tf32_words(x.y, y.y, x.w, y.w));
      }
    }
#pragma unroll
    for (int q = 0; q < UB; ++q) {
      const float4 v = rb[q];
      unsigned* dst = smem + at + b_at[q];
      if constexpr (MMA == MMA_BF16)
        store_vec<uint2>(dst, make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w)));
      else
        store_vec<uint4>(dst, tf32_words(v.x, v.z, v.y, v.w));
    }
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  // the products of the slice in the buffer at word offset `at`
  auto multiply = [&](int at) {
    const unsigned* ab = smem + at;
    const unsigned* bb = smem + at + 2 * WORDS;
#pragma unroll
    for (int h = 0; h < KH; ++h) {
      if constexpr (MMA == MMA_BF16) {
        uint4 af[2];
        uint2 bv[4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          af[i] = load_vec<uint4>(ab + ((wm / 16 + i) * KH + h) * 128 + lane * 4);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          bv[j] = load_vec<uint2>(bb + (((wn / 8 + j) * KH + h) * 32 + lane) * 2);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], &af[i].x, &bv[j].x, acc[i][j]);
      } else {
        uint4 af[2][2], bv[4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int st = 0; st < 2; ++st)
            af[i][st] = load_vec<uint4>(ab + ((wm / 16 + i) * KH + h) * 256 + st * 128 + lane * 4);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          bv[j] = load_vec<uint4>(bb + (((wn / 8 + j) * KH + h) * 32 + lane) * 4);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const unsigned b0[2] = {bv[j].x, bv[j].y}, b1[2] = {bv[j].z, bv[j].w};
            mma_m16n8k8_tf32(acc[i][j], &af[i][0].x, b0, acc[i][j]);
            mma_m16n8k8_tf32(acc[i][j], &af[i][1].x, b1, acc[i][j]);
          }
      }
    }
  };

  // A buffer's word offset: 0 or WORDS (each operand's two buffers are adjacent: A A B B)
  int at = 0;
  if (s_begin < s_end) {
#pragma unroll
    for (int q = 0; q < UA; ++q)
#pragma unroll
      for (int e = 0; e < 2; ++e) ra[q][e] = ua[q][e].load_edge(first, f_begin, s.k);
#pragma unroll
    for (int q = 0; q < UB; ++q) rb[q] = ub[q].load_edge(first, f_begin, s.k);
    store(at);
    __syncthreads();
    for (int sl = f_begin; sl < f_end; ++sl) {
#pragma unroll
      for (int q = 0; q < UA; ++q)
#pragma unroll
        for (int e = 0; e < 2; ++e) ra[q][e] = ua[q][e].load_next();
#pragma unroll
      for (int q = 0; q < UB; ++q) rb[q] = ub[q].load_next();
      multiply(at);
      at ^= WORDS;
      store(at);
      __syncthreads();
    }
    multiply(at);
  }

  // the epilogue; or, split, this split's partial sums (plane `split` of batch·m·n), then in the
  // block that arrives last for the tile (kernels/splitk.cuh) their sum and the epilogue
  if (residual) residual += b * s.stride_c;
  auto finish = [&](int m, int n, long long at, float v) {
    if (bias) v += bias[s.bias_per_row ? m : n];
    if (residual) v += residual[at];
    return v * s.scale;
  };
  const int splits = gridDim.y / m_tiles;
  const long long plane = (long long)gridDim.z * s.stride_c;
  float* out = (splits > 1 ? parts + split * plane : C) + b * s.stride_c;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = m0 + wm + 16 * i + g + 8 * (r / 2), n = n0 + wn + 8 * j + 2 * t + r % 2;
        if (m >= s.m || n >= s.n) continue;
        const long long at = (long long)m * s.ldc + n;
        out[at] = splits > 1 ? acc[i][j][r] : finish(m, n, at, acc[i][j][r]);
      }
  const int tile = blockIdx.x + gridDim.x * ((blockIdx.y - split * m_tiles) + m_tiles * blockIdx.z);
  if (splits == 1 || !counters || !splitk_arrive_last(counters + tile, splits)) return;
  parts += b * s.stride_c;
  C += b * s.stride_c;
  // the tile's 64 × 64 outputs, a rolled loop (consecutive threads, consecutive columns)
  for (int e = tid; e < GEMM_BM * GEMM_BN; e += GEMM_THREADS) {
    const int m = m0 + e / GEMM_BN, n = n0 + e % GEMM_BN;
    if (m >= s.m || n >= s.n) continue;
    const long long at = (long long)m * s.ldc + n;
    float v = 0.0f;
    for (int z = 0; z < splits; ++z) v += splitk_load(parts + z * plane + at);
    C[at] = finish(m, n, at, v);
  }
}

