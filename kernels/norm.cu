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
