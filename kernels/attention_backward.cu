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
#include "ptx.cuh"

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
