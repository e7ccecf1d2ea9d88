// 2-D convolution (cross-correlation, as PyTorch) as an implicit GEMM, with the tail and the head of
// diffusers' ResnetBlock2D fused in, so that a resnet block is a handful of launches:
//
//   y[n, co, oy, ox] = ( Σ_{ci, ky, kx} w[co, ci, ky, kx] · in[n, ci, oy·s + ky − pt, ox·s + kx − pl]
//                        + bias[co] + temb[n, co] + residual[n, co, oy, ox] ) · scale
//
// where the input `in` (outside the image, the padding: zeros, or with `circular` the image wrapped
// around, row −1 being row h − 1) is, per element, as loaded:
//   - the channels of x, followed by those of x2 if given (the skip concatenation of an up block);
//   - read at (y/2, x/2) with `upsample` (nearest 2× upsampling before the convolution);
//   - with `groups` > 0, group-normalised, (v − mean[n, grp])·rstd[n, grp]·gamma[ci] + beta[ci],
//     from statistics computed beforehand (kernels/norm.cu), then SiLU if `silu`.
// bias, temb (n × co), residual (shaped like y), x2 and the norm are optional (null / 0).
//
// As a GEMM: rows are output channels (A = w, co × ci·k·k, contiguous along the reduction), columns
// the output pixels of every image (B = the input gathered on the fly, contiguous along the
// pixels), so a warp's loads of B are consecutive x positions and its stores consecutive pixels of
// one channel (NCHW). The tile product is kernels/gemm_core.cuh's: conv2d_tf32 and conv2d_bf16 on
// the tensor cores (TF32 or bf16 operands, float32 accumulation), conv2d_f32 with FFMA.
//
// Launch: grid (⌈n·ho·wo / 64⌉, ⌈co / 64⌉), 128 threads, no dynamic shared memory.
// Benchmark: `dydiff bench unet --device cuda` and the GPU check script (per-kernel times).
#include "gemm_core.cuh"

struct ConvShape {
  int n, ci, h, w;  // the input as the convolution sees it (after upsampling)
  int ci1;          // channels from x; the others (ci − ci1) from x2
  int co, k, stride, pad_top, pad_left, ho, wo;
  int upsample;     // x and x2 hold (h/2, w/2) images, read at (y/2, x/2)
  int groups;       // group norm on load (0: none)
  int silu;         // SiLU after the norm (or on the raw input when groups is 0)
  float scale;
  int circular;     // padding wraps around (padding at most the image's size)
};

template <int MMA>
__device__ __forceinline__ void conv_kernel(const float* __restrict__ x, const float* __restrict__ x2,
                                            const float* __restrict__ w,
                                            const float* __restrict__ bias,
                                            const float* __restrict__ temb,
                                            const float* __restrict__ residual,
                                            const float* __restrict__ stats,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta, float* __restrict__ y,
                                            const ConvShape& s) {
  const int kk = s.k * s.k, K = s.ci * kk;
  const long long hw_out = (long long)s.ho * s.wo, pixels = s.n * hw_out;
  const int sh = s.upsample ? s.h / 2 : s.h, sw = s.upsample ? s.w / 2 : s.w;  // stored size
  const int per_group = s.groups ? s.ci / s.groups : 1;
  long long p0 = (long long)blockIdx.x * TILE_N;
  int co0 = blockIdx.y * TILE_M;
  auto a = [&](int row, int k) {
    int co = co0 + row;
    return co < s.co && k < K ? w[(long long)co * K + k] : 0.0f;
  };
  auto b = [&](int col, int k) {
    long long p = p0 + col;
    if (p >= pixels || k >= K) return 0.0f;
    int n = int(p / hw_out);
    int rem = int(p - n * hw_out);
    int oy = rem / s.wo, ox = rem - oy * s.wo;
    int c = k / kk, tap = k - c * kk;
    int ky = tap / s.k, kx = tap - ky * s.k;
    int iy = oy * s.stride + ky - s.pad_top, ix = ox * s.stride + kx - s.pad_left;
    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) {  // padding of the transformed input
      if (!s.circular) return 0.0f;
      iy += iy < 0 ? s.h : (iy >= s.h ? -s.h : 0);
      ix += ix < 0 ? s.w : (ix >= s.w ? -s.w : 0);
    }
    if (s.upsample) {
      iy /= 2;
      ix /= 2;
    }
    float v = c < s.ci1 ? x[(((long long)n * s.ci1 + c) * sh + iy) * sw + ix]
                        : x2[(((long long)n * (s.ci - s.ci1) + (c - s.ci1)) * sh + iy) * sw + ix];
    if (s.groups) {
      const float* st = stats + 2 * ((long long)n * s.groups + c / per_group);
      v = (v - st[0]) * st[1] * gamma[c] + beta[c];
    }
    if (s.silu) v = v / (1.0f + expf(-v));
    return v;
  };
  float acc[2][4][4];
  tile_product<MMA>(K, a, true, b, false, acc);
  tile_store(acc, [&](int row, int col, float v) {
    int co = co0 + row;
    long long p = p0 + col;
    if (co >= s.co || p >= pixels) return;
    int n = int(p / hw_out);
    long long at = ((long long)n * s.co + co) * hw_out + (p - n * hw_out);
    if (bias) v += bias[co];
    if (temb) v += temb[(long long)n * s.co + co];
    if (residual) v += residual[at];
    y[at] = v * s.scale;
  });
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_tf32(const float* __restrict__ x, const float* __restrict__ x2,
                const float* __restrict__ w, const float* __restrict__ bias,
                const float* __restrict__ temb, const float* __restrict__ residual,
                const float* __restrict__ stats, const float* __restrict__ gamma,
                const float* __restrict__ beta, float* __restrict__ y, ConvShape s) {
  conv_kernel<MMA_TF32>(x, x2, w, bias, temb, residual, stats, gamma, beta, y, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_bf16(const float* __restrict__ x, const float* __restrict__ x2,
                const float* __restrict__ w, const float* __restrict__ bias,
                const float* __restrict__ temb, const float* __restrict__ residual,
                const float* __restrict__ stats, const float* __restrict__ gamma,
                const float* __restrict__ beta, float* __restrict__ y, ConvShape s) {
  conv_kernel<MMA_BF16>(x, x2, w, bias, temb, residual, stats, gamma, beta, y, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_f32(const float* __restrict__ x, const float* __restrict__ x2,
               const float* __restrict__ w, const float* __restrict__ bias,
               const float* __restrict__ temb, const float* __restrict__ residual,
               const float* __restrict__ stats, const float* __restrict__ gamma,
               const float* __restrict__ beta, float* __restrict__ y, ConvShape s) {
  conv_kernel<MMA_F32>(x, x2, w, bias, temb, residual, stats, gamma, beta, y, s);
}
