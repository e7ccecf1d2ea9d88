// Softmax attention per head as one kernel (docs/network.md, "Blocks"; the projections around it
// are kernels/gemm.cu's):
//
//   out[n, i, h·d + e] = Σ_j softmax_j(scale · q[n, i, h·d + ·] · k[n, j, h·d + ·]) · v[n, j, h·d + e]
//
// q, k, v and out are token-major (n, l, heads·d) — the layout the projections write and read — so
// no transpose is needed. Head dimensions 1 to 128.
//
// The scores never reach memory: each block takes 32 query rows of one (sample, head) and walks the
// keys in tiles of 32, staged in shared memory, with the online softmax (Milakov & Gimelshein, 2018;
// FlashAttention): per tile, the new row maximum m', the running sum ℓ ← ℓ·e^{m−m'} + Σ e^{s−m'} and
// the output o ← o·e^{m−m'} + Σ e^{s−m'}·v, then out = o/ℓ. Four threads share a query row, each
// owning the dimensions e ≡ t (mod 4) of q and o (so at one dimension the four read consecutive
// floats and the eight rows of a warp read the same key: no bank conflicts; the staging stores
// are swizzled, see att_swizzle); a score is their four partial dot products summed by two
// shuffles. FFMA, float32 throughout.
//
// For training, `lse` (optional, (n, heads, l)) receives each row's log-sum-exp of the scaled scores,
// m + log ℓ, which the backward (the gradient, at the end of this file) recomputes the probabilities from (below).
//
// Launch: grid (⌈l/32⌉, heads, n), 128 threads, no dynamic shared memory (32 KiB static).
//
// attention_tf32_d{16,32,64,128} do the same on the tensor cores (the TF32 and bf16 precisions;
// FlashAttention-2's structure): a block takes 64 query rows, each of its 4 warps 16, and walks
// the keys in tiles of 64 (32 at d = 128) staged in shared memory — K as rows of d (the B
// fragments of QKᵀ one 16-byte load), V transposed (those of PV one 8-byte load), rounded to TF32
// once. A warp keeps its queries as A fragments in registers (scaled by scale·log₂e, so that the
// softmax is exp2), forms its 16 × 64 scores with mma.m16n8k8, takes the online softmax on the
// accumulators (row maxima over the four threads of a row by two shuffles; the sums kept per
// thread and added once at the end) and multiplies P·V with P straight from the accumulators:
// within each 8 keys the MMA takes key 2t at position t and 2t+1 at t+4, which is where the
// accumulator layout holds them. Within 16 dimensions QKᵀ takes d = 4t, 4t+2 in its first step
// and 4t+1, 4t+3 in its second (one 16-byte load per thread and row, as kernels/gemm.cu).
// Launch: grid (⌈l/64⌉, heads, n), 128 threads, no dynamic shared memory.
//
// Benchmark: `cargo bench --bench ops -- attention` (CPU), the GPU check script and
// python/sass_model.py.
#include "ptx.cuh"

#define ATT_ROWS 32
#define ATT_KEYS 32
#define ATT_DMAX 128
#define ATT_SPLIT 4

// Key j's dimension e sits in column e ^ att_swizzle(j) of the staged tiles: the bits 2–4 of the
// column reversed from j's low three bits. A warp stages 32 consecutive (j, e) — 32/d keys when
// the head dimension d is below 32 — and the swizzle puts those keys' dimensions in different
// banks for d = 4, 8 and 16 (rows of 128 floats would stack them in the same banks); the reads,
// one key and the four dimensions t + 4i of a row's threads, still broadcast, and since the
// swizzle leaves bits 0–1 alone, column t + ((4i) ^ att_swizzle(j)) keeps t as the only
// run-time part.
__device__ __forceinline__ int att_swizzle(int j) {
  return ((j & 1) << 4) | ((j & 2) << 2) | (j & 4);
}

struct AttnShape {
  int n, l, heads, d;
  float scale;
};

extern "C" __global__ void __launch_bounds__(ATT_ROWS* ATT_SPLIT)
    attention_f32(const float* __restrict__ q, const float* __restrict__ k,
                  const float* __restrict__ v, float* __restrict__ out, float* __restrict__ lse,
                  AttnShape s) {
  DYDIFF_SHARED(float, ks, [ATT_KEYS][ATT_DMAX]);
  DYDIFF_SHARED(float, vs, [ATT_KEYS][ATT_DMAX]);
  const int c = s.heads * s.d;
  const int t = threadIdx.x % ATT_SPLIT, r = threadIdx.x / ATT_SPLIT;
  const int row = blockIdx.x * ATT_ROWS + r, h = blockIdx.y, n = blockIdx.z;
  const bool live = row < s.l;
  const long long base = (long long)n * s.l * c + h * s.d;
  const int dims = (s.d - t + ATT_SPLIT - 1) / ATT_SPLIT;  // dimensions t, t+4, … below d
  float qr[ATT_DMAX / ATT_SPLIT], o[ATT_DMAX / ATT_SPLIT];
#pragma unroll
  for (int i = 0; i < ATT_DMAX / ATT_SPLIT; ++i) {
    qr[i] = live && i < dims ? q[base + (long long)row * c + t + ATT_SPLIT * i] * s.scale : 0.0f;
    o[i] = 0.0f;
  }
  float m = -INFINITY, sum = 0.0f;
  for (int j0 = 0; j0 < s.l; j0 += ATT_KEYS) {
    const int keys = min(ATT_KEYS, s.l - j0);
    for (int e = threadIdx.x; e < ATT_KEYS * s.d; e += blockDim.x) {
      int j = e / s.d, dim = e % s.d;
      bool in = j < keys;
      ks[j][dim ^ att_swizzle(j)] = in ? k[base + (long long)(j0 + j) * c + dim] : 0.0f;
      vs[j][dim ^ att_swizzle(j)] = in ? v[base + (long long)(j0 + j) * c + dim] : 0.0f;
    }
    __syncthreads();
    float sc[ATT_KEYS];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < ATT_KEYS; ++j) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < ATT_DMAX / ATT_SPLIT; ++i)
        if (i < dims) part = fmaf(qr[i], ks[j][t + ((ATT_SPLIT * i) ^ att_swizzle(j))], part);
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      sc[j] = j < keys ? part : -INFINITY;
      tile_max = fmaxf(tile_max, sc[j]);
    }
    float m_new = fmaxf(m, tile_max);
    float corr = expf(m - m_new);  // 0 on the first tile (m = −∞)
    sum *= corr;
#pragma unroll
    for (int i = 0; i < ATT_DMAX / ATT_SPLIT; ++i) o[i] *= corr;
#pragma unroll
    for (int j = 0; j < ATT_KEYS; ++j) {
      float p = expf(sc[j] - m_new);  // 0 past the last key
      sum += p;
#pragma unroll
      for (int i = 0; i < ATT_DMAX / ATT_SPLIT; ++i)
        if (i < dims) o[i] = fmaf(p, vs[j][t + ((ATT_SPLIT * i) ^ att_swizzle(j))], o[i]);
    }
    m = m_new;
    __syncthreads();
  }
  if (!live) return;
  if (lse && t == 0) lse[((long long)n * s.heads + h) * s.l + row] = m + logf(sum);
  float inv = 1.0f / sum;
  for (int i = 0; i < dims; ++i) out[base + (long long)row * c + t + ATT_SPLIT * i] = o[i] * inv;
}

#define FA_ROWS 64  // query rows per block (16 per warp)

// Shared-memory row strides (words): K's rows of d ≡ 16 (mod 32), so that the 16-byte fragment
// reads of 8 keys × 4 threads fall in distinct banks; V's transposed rows of keys ≡ 8 (mod 32),
// for the 8-byte reads of 4 dimensions × 4 threads.
template <int D>
struct FaGeo {
  static constexpr int KT = D <= 64 ? 64 : 32;  // keys per tile
  static constexpr int KS = D + (16 - D % 32 + 32) % 32;
  static constexpr int VS = KT + (8 - KT % 32 + 32) % 32;
};

template <int D>
__device__ __forceinline__ void flash_attention(const float* __restrict__ q,
                                                const float* __restrict__ k,
                                                const float* __restrict__ v,
                                                float* __restrict__ out, float* __restrict__ lse,
                                                const AttnShape& s) {
  using G = FaGeo<D>;
  constexpr int KT = G::KT, PD = D / 16, NT = KT / 8, DT = D / 8;
  DYDIFF_SHARED(unsigned, ks, [KT * G::KS]);
  DYDIFF_SHARED(unsigned, vt, [D * G::VS]);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int c = s.heads * D, h = blockIdx.y, n = blockIdx.z;
  const long long base = (long long)n * s.l * c + h * D;
  const int r0 = blockIdx.x * FA_ROWS + warp * 16;
  constexpr float LOG2E = 1.4426950408889634f;

  // the warp's queries as A fragments: rows r0 + g and + 8 (past l: the last row, not stored)
  unsigned qf[PD][2][4];
  {
    const float qs = s.scale * LOG2E;
    const float* q0 = q + base + (long long)min(r0 + g, s.l - 1) * c;
    const float* q1 = q + base + (long long)min(r0 + g + 8, s.l - 1) * c;
#pragma unroll
    for (int p = 0; p < PD; ++p) {
      const float4 x = load_vec<float4>(q0 + 16 * p + 4 * t);
      const float4 y = load_vec<float4>(q1 + 16 * p + 4 * t);
      qf[p][0][0] = tf32_for_mma(x.x * qs);
      qf[p][0][1] = tf32_for_mma(y.x * qs);
      qf[p][0][2] = tf32_for_mma(x.z * qs);
      qf[p][0][3] = tf32_for_mma(y.z * qs);
      qf[p][1][0] = tf32_for_mma(x.y * qs);
      qf[p][1][1] = tf32_for_mma(y.y * qs);
      qf[p][1][2] = tf32_for_mma(x.w * qs);
      qf[p][1][3] = tf32_for_mma(y.w * qs);
    }
  }
  float o[DT][4];
#pragma unroll
  for (int j = 0; j < DT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) o[j][r] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};  // rows g, g + 8

  for (int j0 = 0; j0 < s.l; j0 += KT) {
    // stage the tile: K row-major (a key's 4 dimensions per thread, consecutive threads along d);
    // V transposed (consecutive threads along the keys, so their shared stores are consecutive)
#pragma unroll
    for (int i = 0; i < KT * D / 4 / 128; ++i) {
      const int u = tid + 128 * i;
      const int key = u / (D / 4), d4 = u % (D / 4);
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (j0 + key < s.l) x = load_vec<float4>(k + base + (long long)(j0 + key) * c + 4 * d4);
      store_vec<uint4>(ks + key * G::KS + 4 * d4,
                       make_uint4(tf32_for_mma(x.x), tf32_for_mma(x.y), tf32_for_mma(x.z),
                                  tf32_for_mma(x.w)));
      const int vkey = u % KT, vd4 = u / KT;
      float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (j0 + vkey < s.l) y = load_vec<float4>(v + base + (long long)(j0 + vkey) * c + 4 * vd4);
      vt[(4 * vd4 + 0) * G::VS + vkey] = tf32_for_mma(y.x);
      vt[(4 * vd4 + 1) * G::VS + vkey] = tf32_for_mma(y.y);
      vt[(4 * vd4 + 2) * G::VS + vkey] = tf32_for_mma(y.z);
      vt[(4 * vd4 + 3) * G::VS + vkey] = tf32_for_mma(y.w);
    }
    __syncthreads();

    // scores (log₂ units): 16 rows × KT keys, accumulator layout
    float sc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) sc[j][r] = 0.0f;
#pragma unroll
      for (int p = 0; p < PD; ++p) {
        const uint4 kb = load_vec<uint4>(ks + (8 * j + g) * G::KS + 16 * p + 4 * t);
        const unsigned b0[2] = {kb.x, kb.z}, b1[2] = {kb.y, kb.w};
        mma_m16n8k8_tf32(sc[j], qf[p][0], b0, sc[j]);
        mma_m16n8k8_tf32(sc[j], qf[p][1], b1, sc[j]);
      }
    }
    // the online softmax: keys past l score −∞
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if (j0 + 8 * j + 2 * t + (r & 1) >= s.l) sc[j][r] = -INFINITY;
        mx[r / 2] = fmaxf(mx[r / 2], sc[j][r]);
      }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffffu, mx[e], 1));
      mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffffu, mx[e], 2));
      const float corr = exp2f(m[e] - mx[e]);  // 0 on the first tile (m = −∞)
      sum[e] *= corr;
#pragma unroll
      for (int j = 0; j < DT; ++j) {
        o[j][2 * e] *= corr;
        o[j][2 * e + 1] *= corr;
      }
      m[e] = mx[e];
    }
    // P·V, P from the accumulators: keys 8j + 2t and 2t + 1 at positions t and t + 4
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      float p[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        p[r] = exp2f(sc[j][r] - m[r / 2]);
        sum[r / 2] += p[r];
      }
      const unsigned a[4] = {tf32_for_mma(p[0]), tf32_for_mma(p[2]), tf32_for_mma(p[1]),
                             tf32_for_mma(p[3])};
#pragma unroll
      for (int dn = 0; dn < DT; ++dn) {
        const uint2 vb = load_vec<uint2>(vt + (8 * dn + g) * G::VS + 8 * j + 2 * t);
        const unsigned b[2] = {vb.x, vb.y};
        mma_m16n8k8_tf32(o[dn], a, b, o[dn]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int e = 0; e < 2; ++e) {
    sum[e] += __shfl_xor_sync(0xffffffffu, sum[e], 1);
    sum[e] += __shfl_xor_sync(0xffffffffu, sum[e], 2);
    const int row = r0 + g + 8 * e;
    if (row >= s.l) continue;
    if (lse && t == 0)
      lse[((long long)n * s.heads + h) * s.l + row] = (m[e] + log2f(sum[e])) * 0.6931471805599453f;
    const float inv = 1.0f / sum[e];
    float* dst = out + base + (long long)row * c + 2 * t;
#pragma unroll
    for (int dn = 0; dn < DT; ++dn)
      store_vec<float2>(dst + 8 * dn, make_float2(o[dn][2 * e] * inv, o[dn][2 * e + 1] * inv));
  }
}

#define FA_PARAMS                                                                             \
  const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,     \
      float *__restrict__ out, float *__restrict__ lse, AttnShape s

extern "C" __global__ void __launch_bounds__(128) attention_tf32_d16(FA_PARAMS) {
  flash_attention<16>(q, k, v, out, lse, s);
}
extern "C" __global__ void __launch_bounds__(128) attention_tf32_d32(FA_PARAMS) {
  flash_attention<32>(q, k, v, out, lse, s);
}
extern "C" __global__ void __launch_bounds__(128) attention_tf32_d64(FA_PARAMS) {
  flash_attention<64>(q, k, v, out, lse, s);
}
extern "C" __global__ void __launch_bounds__(128) attention_tf32_d128(FA_PARAMS) {
  flash_attention<128>(q, k, v, out, lse, s);
}

// ---------------------------------------------------------------------------------------------
// The gradient of softmax attention (kernels/attention.cu) without the score matrix: the scores
// are recomputed, tile by tile, from two statistics per query row (FlashAttention-2's backward,
// Dao 2023). With s_ij = scale·q_i·k_j, P_ij = softmax_j(s_ij) and dP_ij = dO_i·v_j:
//
//   attention_bwd_rows_f32:  lse_i = log Σ_j e^{s_ij},  D_i = Σ_j P_ij·dP_ij      (one pass over keys,
//                            online as the forward) — or, when the forward saved lse_i (training
//                            records it), attention_bwd_dsum_f32: D_i = dO_i·O_i (the same sum,
//                            one pass over the output)
//   attention_bwd_dq_f32:    dq_i = scale·Σ_j P_ij (dP_ij − D_i)·k_j              (per query row)
//   attention_bwd_dkv_f32:   dv_j = Σ_i P_ij·dO_i,  dk_j = scale·Σ_i P_ij (dP_ij − D_i)·q_i  (per key row)
//
// with P_ij = e^{s_ij − lse_i}. Each gradient row is owned by one group of 8 threads (no atomics:
// the same bits on every run); a thread holds the dimensions e ≡ t (mod 8) of its rows' vectors and
// dot products are summed over the group by three shuffles. The other side's rows are staged in
// shared memory, 32 at a time. Layouts token-major (n, l, heads·d), as the forward; head
// dimensions 1 to 128; FFMA, float32 throughout.
//
// Launch: grid (⌈l/16⌉, heads, n), 128 threads (16 rows of 8), no dynamic shared memory.
// Benchmark: `dydiff bench train --device cuda` (per-kernel times).

#define AB_ROWS 16
#define AB_TILE 32
#define AB_DMAX 128
#define AB_SPLIT 8
#define AB_PER (AB_DMAX / AB_SPLIT)

struct AttnBwdShape {
  int n, l, heads, d;
  float scale;
};

// The sum over the 8 threads of a row group.
__device__ __forceinline__ float group8_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  return v;
}

// Loads this thread's dimensions of row `row` (zeros past l or d).
__device__ __forceinline__ void ab_load(const float* __restrict__ src, long long base, int c,
                                        int row, const AttnBwdShape& s, int t, float* out) {
#pragma unroll
  for (int i = 0; i < AB_PER; ++i) {
    int e = t + AB_SPLIT * i;
    out[i] = row < s.l && e < s.d ? src[base + (long long)row * c + e] : 0.0f;
  }
}

// Stages rows j0 … j0+31 of up to two tensors in shared memory (zeros past l).
__device__ __forceinline__ void ab_stage(const float* __restrict__ u, const float* __restrict__ w,
                                         long long base, int c, int j0, const AttnBwdShape& s,
                                         float (*us)[AB_DMAX], float (*ws)[AB_DMAX]) {
  for (int e = threadIdx.x; e < AB_TILE * s.d; e += blockDim.x) {
    int j = e / s.d, dim = e % s.d;
    bool in = j0 + j < s.l;
    us[j][dim] = in ? u[base + (long long)(j0 + j) * c + dim] : 0.0f;
    ws[j][dim] = in ? w[base + (long long)(j0 + j) * c + dim] : 0.0f;
  }
}

// This thread's share of the dot product of its row `r` with staged row `j`.
__device__ __forceinline__ float ab_dot(const float* r, const float* staged, int t, int d) {
  float part = 0.0f;
#pragma unroll
  for (int i = 0; i < AB_PER; ++i)
    if (t + AB_SPLIT * i < d) part = fmaf(r[i], staged[t + AB_SPLIT * i], part);
  return part;
}

extern "C" __global__ void __launch_bounds__(AB_ROWS* AB_SPLIT)
    attention_bwd_rows_f32(const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, const float* __restrict__ dout,
                           float* __restrict__ lse, float* __restrict__ dsum, AttnBwdShape s) {
  DYDIFF_SHARED(float, ks, [AB_TILE][AB_DMAX]);
  DYDIFF_SHARED(float, vs, [AB_TILE][AB_DMAX]);
  const int c = s.heads * s.d, t = threadIdx.x % AB_SPLIT;
  const int row = blockIdx.x * AB_ROWS + threadIdx.x / AB_SPLIT, h = blockIdx.y, n = blockIdx.z;
  const long long base = (long long)n * s.l * c + h * s.d;
  float qr[AB_PER], dor[AB_PER];
  ab_load(q, base, c, row, s, t, qr);
  ab_load(dout, base, c, row, s, t, dor);
  float m = -INFINITY, sum = 0.0f, acc = 0.0f;
  for (int j0 = 0; j0 < s.l; j0 += AB_TILE) {
    ab_stage(k, v, base, c, j0, s, ks, vs);
    __syncthreads();
    const int keys = min(AB_TILE, s.l - j0);
    for (int j = 0; j < keys; ++j) {
      float sc = group8_sum(ab_dot(qr, ks[j], t, s.d)) * s.scale;
      float dp = group8_sum(ab_dot(dor, vs[j], t, s.d));
      float m_new = fmaxf(m, sc);
      float corr = expf(m - m_new);
      float p = expf(sc - m_new);
      sum = sum * corr + p;
      acc = acc * corr + p * dp;
      m = m_new;
    }
    __syncthreads();
  }
  if (row < s.l && t == 0) {
    long long at = ((long long)n * s.heads + h) * s.l + row;
    lse[at] = m + logf(sum);
    dsum[at] = acc / sum;
  }
}

extern "C" __global__ void __launch_bounds__(AB_ROWS* AB_SPLIT)
    attention_bwd_dsum_f32(const float* __restrict__ out, const float* __restrict__ dout,
                           float* __restrict__ dsum, AttnBwdShape s) {
  const int c = s.heads * s.d, t = threadIdx.x % AB_SPLIT;
  const int row = blockIdx.x * AB_ROWS + threadIdx.x / AB_SPLIT, h = blockIdx.y, n = blockIdx.z;
  const long long base = (long long)n * s.l * c + h * s.d;
  float o[AB_PER], dor[AB_PER];
  ab_load(out, base, c, row, s, t, o);
  ab_load(dout, base, c, row, s, t, dor);
  float part = 0.0f;
#pragma unroll
  for (int i = 0; i < AB_PER; ++i) part = fmaf(o[i], dor[i], part);
  float total = group8_sum(part);
  if (row < s.l && t == 0) dsum[((long long)n * s.heads + h) * s.l + row] = total;
}

extern "C" __global__ void __launch_bounds__(AB_ROWS* AB_SPLIT)
    attention_bwd_dq_f32(const float* __restrict__ q, const float* __restrict__ k,
                         const float* __restrict__ v, const float* __restrict__ dout,
                         const float* __restrict__ lse, const float* __restrict__ dsum,
                         float* __restrict__ dq, AttnBwdShape s) {
  DYDIFF_SHARED(float, ks, [AB_TILE][AB_DMAX]);
  DYDIFF_SHARED(float, vs, [AB_TILE][AB_DMAX]);
  const int c = s.heads * s.d, t = threadIdx.x % AB_SPLIT;
  const int row = blockIdx.x * AB_ROWS + threadIdx.x / AB_SPLIT, h = blockIdx.y, n = blockIdx.z;
  const long long base = (long long)n * s.l * c + h * s.d;
  const long long at = ((long long)n * s.heads + h) * s.l + row;
  const float li = row < s.l ? lse[at] : 0.0f, di = row < s.l ? dsum[at] : 0.0f;
  float qr[AB_PER], dor[AB_PER], g[AB_PER];
  ab_load(q, base, c, row, s, t, qr);
  ab_load(dout, base, c, row, s, t, dor);
#pragma unroll
  for (int i = 0; i < AB_PER; ++i) g[i] = 0.0f;
  for (int j0 = 0; j0 < s.l; j0 += AB_TILE) {
    ab_stage(k, v, base, c, j0, s, ks, vs);
    __syncthreads();
    const int keys = min(AB_TILE, s.l - j0);
    for (int j = 0; j < keys; ++j) {
      float sc = group8_sum(ab_dot(qr, ks[j], t, s.d)) * s.scale;
      float dp = group8_sum(ab_dot(dor, vs[j], t, s.d));
      float ds = expf(sc - li) * (dp - di) * s.scale;
#pragma unroll
      for (int i = 0; i < AB_PER; ++i)
        if (t + AB_SPLIT * i < s.d) g[i] = fmaf(ds, ks[j][t + AB_SPLIT * i], g[i]);
    }
    __syncthreads();
  }
  if (row >= s.l) return;
  for (int i = 0; i < AB_PER && t + AB_SPLIT * i < s.d; ++i)
    dq[base + (long long)row * c + t + AB_SPLIT * i] = g[i];
}

extern "C" __global__ void __launch_bounds__(AB_ROWS* AB_SPLIT)
    attention_bwd_dkv_f32(const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const float* __restrict__ dout,
                          const float* __restrict__ lse, const float* __restrict__ dsum,
                          float* __restrict__ dk, float* __restrict__ dv, AttnBwdShape s) {
  DYDIFF_SHARED(float, qs, [AB_TILE][AB_DMAX]);
  DYDIFF_SHARED(float, dos, [AB_TILE][AB_DMAX]);
  DYDIFF_SHARED(float, ls, [AB_TILE]);
  DYDIFF_SHARED(float, dss, [AB_TILE]);
  const int c = s.heads * s.d, t = threadIdx.x % AB_SPLIT;
  const int row = blockIdx.x * AB_ROWS + threadIdx.x / AB_SPLIT, h = blockIdx.y, n = blockIdx.z;
  const long long base = (long long)n * s.l * c + h * s.d;
  const long long stat = ((long long)n * s.heads + h) * s.l;
  float kr[AB_PER], vr[AB_PER], gk[AB_PER], gv[AB_PER];
  ab_load(k, base, c, row, s, t, kr);
  ab_load(v, base, c, row, s, t, vr);
#pragma unroll
  for (int i = 0; i < AB_PER; ++i) gk[i] = gv[i] = 0.0f;
  for (int i0 = 0; i0 < s.l; i0 += AB_TILE) {
    ab_stage(q, dout, base, c, i0, s, qs, dos);
    for (int j = threadIdx.x; j < AB_TILE; j += blockDim.x) {
      bool in = i0 + j < s.l;
      ls[j] = in ? lse[stat + i0 + j] : 0.0f;
      dss[j] = in ? dsum[stat + i0 + j] : 0.0f;
    }
    __syncthreads();
    const int queries = min(AB_TILE, s.l - i0);
    for (int i = 0; i < queries; ++i) {
      float sc = group8_sum(ab_dot(kr, qs[i], t, s.d)) * s.scale;
      float dp = group8_sum(ab_dot(vr, dos[i], t, s.d));
      float p = expf(sc - ls[i]);
      float ds = p * (dp - dss[i]) * s.scale;
#pragma unroll
      for (int e = 0; e < AB_PER; ++e)
        if (t + AB_SPLIT * e < s.d) {
          gv[e] = fmaf(p, dos[i][t + AB_SPLIT * e], gv[e]);
          gk[e] = fmaf(ds, qs[i][t + AB_SPLIT * e], gk[e]);
        }
    }
    __syncthreads();
  }
  if (row >= s.l) return;
  for (int e = 0; e < AB_PER && t + AB_SPLIT * e < s.d; ++e) {
    dk[base + (long long)row * c + t + AB_SPLIT * e] = gk[e];
    dv[base + (long long)row * c + t + AB_SPLIT * e] = gv[e];
  }
}
