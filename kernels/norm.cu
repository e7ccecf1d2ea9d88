// Group normalisation (docs/network.md, "Blocks"), in two parts so that the normalisation itself can
// be fused into whatever reads the tensor next (kernels/conv.cu applies it as it loads):
//
//   group_norm_stats_f32:  for sample n and group g of `channels / groups` channels,
//       mean = Σv / len,  var = Σv²/len − mean²,  rstd = 1/√(var + eps)   (sums in float64)
//       stats[2(n·groups + g)] = mean, stats[2(n·groups + g) + 1] = rstd
//   group_norm_apply_f32:  y = (v − mean)·rstd·gamma[c] + beta[c], then SiLU if `silu`.
//
// The input is (n, c, hw), NCHW; its channels may be split over two tensors, x (c1 channels) then
// x2 (c − c1), for the concatenations of the up blocks. Statistics: one block of 256 threads per
// (sample, group), each thread summing a strided share (consecutive threads, consecutive addresses),
// then a tree in shared memory; bound by memory bandwidth (one read). Apply: one thread per element.
//
// The gradient (training), y = x̂·γ + β with x̂ = (x − mean)·rstd per (sample, group) of `len`
// values:
//
//   a[n, c] = Σ_p dy·x̂,  b[n, c] = Σ_p dy                 (group_norm_bwd_channel_f32)
//   dx = rstd·(γ[c]·dy − (Σ_{c∈g} γ·b + x̂·Σ_{c∈g} γ·a) / len)   (group_norm_bwd_dx_f32)
//   dγ[c] = Σ_n a[n, c],  dβ[c] = Σ_n b[n, c]             (reduce_channels_f32, both at once)
//
// reduce_channels_f32 also serves the column sums of a linear layer's bias gradient and a
// convolution's bias gradient. Every sum in a fixed order that depends only on the shapes (no
// atomics): the same bits on every run. Launch: one block of 256 threads per output.
// Benchmark: the GPU check script (per-kernel times).
#include "ptx.cuh"

struct NormShape {
  int n, c, c1, hw, groups, silu;
  float eps;
};

__device__ __forceinline__ float norm_input(const float* __restrict__ x, const float* __restrict__ x2,
                                            const NormShape& s, int n, int c, int p) {
  return c < s.c1 ? x[((long long)n * s.c1 + c) * s.hw + p]
                  : x2[((long long)n * (s.c - s.c1) + (c - s.c1)) * s.hw + p];
}

extern "C" __global__ void __launch_bounds__(256)
    group_norm_stats_f32(const float* __restrict__ x, const float* __restrict__ x2,
                         float* __restrict__ stats, NormShape s) {
  DYDIFF_SHARED(double, sum, [256]);
  DYDIFF_SHARED(double, sq, [256]);
  int n = blockIdx.x / s.groups, g = blockIdx.x % s.groups;
  int per = s.c / s.groups;
  long long len = (long long)per * s.hw;
  double a = 0.0, q = 0.0;
  for (long long i = threadIdx.x; i < len; i += blockDim.x) {
    int c = g * per + int(i / s.hw), p = int(i % s.hw);
    double v = norm_input(x, x2, s, n, c, p);
    a += v;
    q += v * v;
  }
  sum[threadIdx.x] = a;
  sq[threadIdx.x] = q;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
      sum[threadIdx.x] += sum[threadIdx.x + h];
      sq[threadIdx.x] += sq[threadIdx.x + h];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double mean = sum[0] / double(len);
    double var = sq[0] / double(len) - mean * mean;
    if (var < 0.0) var = 0.0;
    stats[2 * blockIdx.x] = float(mean);
    stats[2 * blockIdx.x + 1] = float(1.0 / sqrt(var + double(s.eps)));
  }
}

extern "C" __global__ void group_norm_apply_f32(const float* __restrict__ x,
                                                const float* __restrict__ x2,
                                                const float* __restrict__ stats,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                float* __restrict__ y, NormShape s) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)s.n * s.c * s.hw) return;
  int p = int(i % s.hw);
  long long nc = i / s.hw;
  int c = int(nc % s.c), n = int(nc / s.c);
  const float* st = stats + 2 * ((long long)n * s.groups + c / (s.c / s.groups));
  float v = (norm_input(x, x2, s, n, c, p) - st[0]) * st[1] * gamma[c] + beta[c];
  if (s.silu) v = v / (1.0f + expf(-v));
  y[i] = v;
}

// The sum of this block's 256 values `v` (every thread gets it).
__device__ __forceinline__ float block_sum(float v) {
  DYDIFF_SHARED(float, red, [256]);
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  float total = red[0];
  __syncthreads();
  return total;
}

// y[c] = Σ_{o, i} x[(o·channels + c)·inner + i] for x (outer, channels, inner): one block per
// channel.
extern "C" __global__ void __launch_bounds__(256)
    reduce_channels_f32(const float* __restrict__ x, float* __restrict__ y, int outer,
                        int channels, int inner) {
  int c = blockIdx.x;
  long long len = (long long)outer * inner;
  float acc = 0.0f;
  for (long long j = threadIdx.x; j < len; j += blockDim.x) {
    long long o = j / inner, i = j - o * inner;
    acc += x[(o * channels + c) * inner + i];
  }
  float total = block_sum(acc);
  if (threadIdx.x == 0) y[c] = total;
}

struct NormBwdShape {
  int n, c, hw, groups;
};

// a[n, c] = Σ_p dy·x̂ and b[n, c] = Σ_p dy, into ab (n, 2, c) — a's row of each sample, then
// b's, so that one channel sum gives dγ and dβ together: one block per (sample, channel).
extern "C" __global__ void __launch_bounds__(256)
    group_norm_bwd_channel_f32(const float* __restrict__ x, const float* __restrict__ dy,
                               const float* __restrict__ stats, float* __restrict__ ab,
                               NormBwdShape s) {
  int nc = blockIdx.x, n = nc / s.c, c = nc % s.c;
  const float* st = stats + 2 * ((long long)n * s.groups + c / (s.c / s.groups));
  const float* xs = x + (long long)nc * s.hw;
  const float* ds = dy + (long long)nc * s.hw;
  float sa = 0.0f, sb = 0.0f;
  for (int p = threadIdx.x; p < s.hw; p += blockDim.x) {
    float d = ds[p];
    sa += d * ((xs[p] - st[0]) * st[1]);
    sb += d;
  }
  float ta = block_sum(sa), tb = block_sum(sb);
  if (threadIdx.x == 0) {
    ab[(2LL * n) * s.c + c] = ta;
    ab[(2LL * n + 1) * s.c + c] = tb;
  }
}

// dx of one (sample, group) per block.
extern "C" __global__ void __launch_bounds__(256)
    group_norm_bwd_dx_f32(const float* __restrict__ x, const float* __restrict__ dy,
                          const float* __restrict__ stats, const float* __restrict__ gamma,
                          const float* __restrict__ ab, float* __restrict__ dx,
                          NormBwdShape s) {
  int n = blockIdx.x / s.groups, g = blockIdx.x % s.groups;
  int per = s.c / s.groups;
  float mean = stats[2 * blockIdx.x], rstd = stats[2 * blockIdx.x + 1];
  float ga = 0.0f, gb = 0.0f;
  for (int j = 0; j < per; ++j) {
    int c = g * per + j;
    ga += gamma[c] * ab[(2LL * n) * s.c + c];
    gb += gamma[c] * ab[(2LL * n + 1) * s.c + c];
  }
  float inv_len = 1.0f / float((long long)per * s.hw);
  long long base = ((long long)n * s.c + g * per) * s.hw, len = (long long)per * s.hw;
  for (long long i = threadIdx.x; i < len; i += blockDim.x) {
    int c = g * per + int(i / s.hw);
    float xh = (x[base + i] - mean) * rstd;
    dx[base + i] = rstd * (gamma[c] * dy[base + i] - (gb + xh * ga) * inv_len);
  }
}
