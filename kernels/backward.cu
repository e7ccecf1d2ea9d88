// Gradients of the network's operations other than the convolution (kernels/conv_backward.cu):
// the backward rules of src/autograd.rs, with the semantics of the CPU backend's
// (src/backend/cpu). Every sum is reduced in a fixed order that depends only on the shapes (no
// atomics), so a training step is the same bits on every run.
//
// Group norm, y = x̂·γ + β with x̂ = (x − mean)·rstd per (sample, group) of `len` values:
//
//   a[n, c] = Σ_p dy·x̂,  b[n, c] = Σ_p dy                 (group_norm_bwd_channel_f32)
//   dx = rstd·(γ[c]·dy − (Σ_{c∈g} γ·b + x̂·Σ_{c∈g} γ·a) / len)   (group_norm_bwd_dx_f32)
//   dγ[c] = Σ_n a[n, c],  dβ[c] = Σ_n b[n, c]             (reduce_channels_f32)
//
// and the element-wise rules: SiLU's, nearest upsampling's adjoint (2×2 sums), slicing's (a copy
// into zeros). reduce_channels_f32 also serves the column sums of a linear layer's bias gradient.
//
// Launch: reductions one block of 256 threads per output; element-wise one thread per element, 256 per block.
// Benchmark: `dydiff bench train --device cuda` (per-kernel times) and the GPU check script.
#include "ptx.cuh"

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

// a[n, c] = Σ_p dy·x̂ and b[n, c] = Σ_p dy: one block per (sample, channel).
extern "C" __global__ void __launch_bounds__(256)
    group_norm_bwd_channel_f32(const float* __restrict__ x, const float* __restrict__ dy,
                               const float* __restrict__ stats, float* __restrict__ a,
                               float* __restrict__ b, NormBwdShape s) {
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
    a[nc] = ta;
    b[nc] = tb;
  }
}

// dx of one (sample, group) per block.
extern "C" __global__ void __launch_bounds__(256)
    group_norm_bwd_dx_f32(const float* __restrict__ x, const float* __restrict__ dy,
                          const float* __restrict__ stats, const float* __restrict__ gamma,
                          const float* __restrict__ a, const float* __restrict__ b,
                          float* __restrict__ dx, NormBwdShape s) {
  int n = blockIdx.x / s.groups, g = blockIdx.x % s.groups;
  int per = s.c / s.groups;
  float mean = stats[2 * blockIdx.x], rstd = stats[2 * blockIdx.x + 1];
  float ga = 0.0f, gb = 0.0f;
  for (int j = 0; j < per; ++j) {
    int c = g * per + j;
    ga += gamma[c] * a[n * s.c + c];
    gb += gamma[c] * b[n * s.c + c];
  }
  float inv_len = 1.0f / float((long long)per * s.hw);
  long long base = ((long long)n * s.c + g * per) * s.hw, len = (long long)per * s.hw;
  for (long long i = threadIdx.x; i < len; i += blockDim.x) {
    int c = g * per + int(i / s.hw);
    float xh = (x[base + i] - mean) * rstd;
    dx[base + i] = rstd * (gamma[c] * dy[base + i] - (gb + xh * ga) * inv_len);
  }
}

#define EW_I() ((long long)blockIdx.x * blockDim.x + threadIdx.x)

// dx = dy·σ(x)·(1 + x·(1 − σ(x))).
extern "C" __global__ void silu_backward_f32(const float* __restrict__ x,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dx, long long len) {
  long long i = EW_I();
  if (i >= len) return;
  float v = x[i], sg = 1.0f / (1.0f + expf(-v));
  dx[i] = dy[i] * sg * (1.0f + v * (1.0f - sg));
}

// (nc, 2h, 2w) → (nc, h, w): each value the sum of its 2×2 block.
extern "C" __global__ void upsample_nearest2x_backward_f32(const float* __restrict__ dy,
                                                          float* __restrict__ dx, int nc, int h,
                                                          int w) {
  long long i = EW_I();
  if (i >= (long long)nc * h * w) return;
  int x = int(i % w);
  long long r = i / w;
  int y = int(r % h);
  long long plane = r / h;
  const float* src = dy + (plane * 2 * h + 2 * y) * 2 * w + 2 * x;
  dx[i] = (src[0] + src[1]) + (src[2 * w] + src[2 * w + 1]);
}

// y (n, c, hw): channels start…end from g (n, end − start, hw), zeros elsewhere.
extern "C" __global__ void slice_channels_backward_f32(const float* __restrict__ g,
                                                       float* __restrict__ y, int n, int c,
                                                       int hw, int start, int end) {
  long long i = EW_I();
  if (i >= (long long)n * c * hw) return;
  int p = int(i % hw);
  long long nc = i / hw;
  int ch = int(nc % c), b = int(nc / c);
  y[i] = ch >= start && ch < end ? g[((long long)b * (end - start) + (ch - start)) * hw + p] : 0.0f;
}
