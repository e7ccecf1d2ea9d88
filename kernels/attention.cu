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
// m + log ℓ, which the backward (kernels/attention_backward.cu) recomputes the probabilities from.
//
// Launch: grid (⌈l/32⌉, heads, n), 128 threads, no dynamic shared memory (32 KiB static).
// Benchmark: `cargo bench --bench ops -- attention` (CPU) and the GPU check script.

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
  __shared__ float ks[ATT_KEYS][ATT_DMAX];
  __shared__ float vs[ATT_KEYS][ATT_DMAX];
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
