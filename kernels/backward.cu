// Gradients of the network's operations: the backward rules of src/autograd.rs, with the
// semantics of the CPU backend's (src/backend/cpu). Every sum is reduced in a fixed order that
// depends only on the shapes (no atomics), so a training step is the same bits on every run.
//
// Convolution (cross-correlation with stride s, padding pt/pl), dy (n, co, ho, wo):
//
//   dx[n, ci, iy, ix] = Σ_{co, ky, kx} w[co, ci, ky, kx] · dy[n, co, oy, ox]
//                       where oy·s + ky − pt = iy, ox·s + kx − pl = ix (terms with no such oy, ox: 0)
//   dw[co, ci, ky, kx] = Σ_{n, oy, ox} dy[n, co, oy, ox] · x[n, ci, oy·s + ky − pt, ox·s + kx − pl]
//   db[co]             = Σ_{n, oy, ox} dy[n, co, oy, ox]
//
// With `circular` padding x is read wrapped around (row −1 is row h − 1), so dx takes, per tap,
// every output position whose read lands on (iy, ix) modulo the image: oy·s + ky − pt ∈
// {iy − h, iy, iy + h} (the padding is at most the image's size), and the same for columns.
//
// At stride 1, dx is the convolution of dy with the kernel transposed and rotated by 180°, padded
// by k − 1 − p: it runs the forward's direct kernels (kernels/conv.cu; src/backend/cuda/conv.rs,
// `input_gradient`). Otherwise (stride 2) dx is an implicit GEMM of the output gradient with the
// kernel read flipped in place (rows: input channels; columns: input pixels; reduction: co·k²) —
// conv2d_dgrad_*; three of four terms are zero and skipped only by the loads. dw is a GEMM over the
// batch and the pixels (rows: output channels; columns: ci·k²; reduction: n·ho·wo, the input
// gathered on the fly), split along the reduction into `splits` slices (blockIdx.z) when the output
// is small, each slice written to its own partial matrix and the partials summed by sum_splits_f32
// — conv2d_wgrad_*. Both use kernels/gemm_core.cuh's tile product (TF32 or bf16 tensor cores, or
// FFMA), like the forward.
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
// Launch: the GEMMs as the forward (128 threads, grid (⌈N/64⌉, ⌈M/64⌉, splits)); reductions one
// block of 256 threads per output; element-wise one thread per element, 256 per block.
// Benchmark: `dydiff bench train --device cuda` (per-kernel times) and the GPU check script.
#include "gemm_core.cuh"

struct ConvBwdShape {
  int n, ci, h, w, co, k, stride, pad_top, pad_left, ho, wo;
  int circular;         // padding wraps around
  long long slice_len;  // conv2d_wgrad: reduction values per slice (a multiple of TILE_K; the
                        // slices are blockIdx.z)
};

// The output positions t·stride = oy·stride whose tap reads input position `i` along one axis
// (`t0 = i + pad − tap`): one (or none) with zero padding; with circular padding up to three, at
// t0 − size, t0 and t0 + size. Returns how many, their indices in `o`.
__device__ __forceinline__ int dgrad_sources(int t0, int size, int stride, int out, int circular,
                                             int o[3]) {
  int n = 0;
  for (int m = circular ? -1 : 0; m <= (circular ? 1 : 0); ++m) {
    int t = t0 + m * size;
    if (t >= 0 && t % stride == 0 && t / stride < out) o[n++] = t / stride;
  }
  return n;
}

template <int MMA>
__device__ __forceinline__ void dgrad_kernel(const float* __restrict__ dy,
                                             const float* __restrict__ w, float* __restrict__ dx,
                                             const ConvBwdShape& s) {
  const int kk = s.k * s.k, K = s.co * kk;
  const long long hw_in = (long long)s.h * s.w, pixels = s.n * hw_in;
  long long p0 = (long long)blockIdx.x * TILE_N;
  int ci0 = blockIdx.y * TILE_M;
  auto a = [&](int row, int k) {
    int ci = ci0 + row;
    if (ci >= s.ci || k >= K) return 0.0f;
    int co = k / kk, tap = k - co * kk;
    return w[((long long)co * s.ci + ci) * kk + tap];
  };
  auto b = [&](int col, int k) {
    long long p = p0 + col;
    if (p >= pixels || k >= K) return 0.0f;
    int n = int(p / hw_in);
    int rem = int(p - n * hw_in);
    int iy = rem / s.w, ix = rem - iy * s.w;
    int co = k / kk, tap = k - co * kk;
    int ky = tap / s.k, kx = tap - ky * s.k;
    int ty = iy + s.pad_top - ky, tx = ix + s.pad_left - kx;
    if (!s.circular) {
      if (ty < 0 || tx < 0 || ty % s.stride || tx % s.stride) return 0.0f;
      int oy = ty / s.stride, ox = tx / s.stride;
      if (oy >= s.ho || ox >= s.wo) return 0.0f;
      return dy[(((long long)n * s.co + co) * s.ho + oy) * s.wo + ox];
    }
    int oys[3], oxs[3];
    int ny = dgrad_sources(ty, s.h, s.stride, s.ho, 1, oys);
    int nx = dgrad_sources(tx, s.w, s.stride, s.wo, 1, oxs);
    const float* plane = dy + ((long long)n * s.co + co) * s.ho * s.wo;
    float v = 0.0f;
    for (int i = 0; i < ny; ++i)
      for (int j = 0; j < nx; ++j) v += plane[(long long)oys[i] * s.wo + oxs[j]];
    return v;
  };
  float acc[2][4][4];
  tile_product<MMA>(K, a, true, b, false, acc);
  tile_store(acc, [&](int row, int col, float v) {
    int ci = ci0 + row;
    long long p = p0 + col;
    if (ci >= s.ci || p >= pixels) return;
    int n = int(p / hw_in);
    dx[((long long)n * s.ci + ci) * hw_in + (p - n * hw_in)] = v;
  });
}

template <int MMA>
__device__ __forceinline__ void wgrad_kernel(const float* __restrict__ x,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dw, const ConvBwdShape& s) {
  const int kk = s.k * s.k, N = s.ci * kk;
  const long long hw_out = (long long)s.ho * s.wo, K = s.n * hw_out;
  const long long k_begin = blockIdx.z * s.slice_len;
  const long long k_end = min(K, k_begin + s.slice_len);
  int co0 = blockIdx.y * TILE_M, c0 = blockIdx.x * TILE_N;
  auto a = [&](int row, int k) {
    int co = co0 + row;
    long long p = k_begin + k;
    if (co >= s.co || p >= k_end) return 0.0f;
    int n = int(p / hw_out);
    return dy[((long long)n * s.co + co) * hw_out + (p - n * hw_out)];
  };
  auto b = [&](int col, int k) {
    int c = c0 + col;
    long long p = k_begin + k;
    if (c >= N || p >= k_end) return 0.0f;
    int n = int(p / hw_out);
    int rem = int(p - n * hw_out);
    int oy = rem / s.wo, ox = rem - oy * s.wo;
    int ci = c / kk, tap = c - ci * kk;
    int ky = tap / s.k, kx = tap - ky * s.k;
    int iy = oy * s.stride + ky - s.pad_top, ix = ox * s.stride + kx - s.pad_left;
    if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) {
      if (!s.circular) return 0.0f;
      iy += iy < 0 ? s.h : (iy >= s.h ? -s.h : 0);
      ix += ix < 0 ? s.w : (ix >= s.w ? -s.w : 0);
    }
    return x[(((long long)n * s.ci + ci) * s.h + iy) * s.w + ix];
  };
  float acc[2][4][4];
  tile_product<MMA>(int(k_end - k_begin), a, true, b, true, acc);
  float* out = dw + (long long)blockIdx.z * s.co * N;
  tile_store(acc, [&](int row, int col, float v) {
    int co = co0 + row, c = c0 + col;
    if (co < s.co && c < N) out[(long long)co * N + c] = v;
  });
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_dgrad_f32(const float* __restrict__ dy, const float* __restrict__ w,
                      float* __restrict__ dx, ConvBwdShape s) {
  dgrad_kernel<MMA_F32>(dy, w, dx, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_wgrad_f32(const float* __restrict__ x, const float* __restrict__ dy,
                      float* __restrict__ dw, ConvBwdShape s) {
  wgrad_kernel<MMA_F32>(x, dy, dw, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_dgrad_tf32(const float* __restrict__ dy, const float* __restrict__ w,
                      float* __restrict__ dx, ConvBwdShape s) {
  dgrad_kernel<MMA_TF32>(dy, w, dx, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_wgrad_tf32(const float* __restrict__ x, const float* __restrict__ dy,
                      float* __restrict__ dw, ConvBwdShape s) {
  wgrad_kernel<MMA_TF32>(x, dy, dw, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_dgrad_bf16(const float* __restrict__ dy, const float* __restrict__ w,
                      float* __restrict__ dx, ConvBwdShape s) {
  dgrad_kernel<MMA_BF16>(dy, w, dx, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_wgrad_bf16(const float* __restrict__ x, const float* __restrict__ dy,
                      float* __restrict__ dw, ConvBwdShape s) {
  wgrad_kernel<MMA_BF16>(x, dy, dw, s);
}

// y[i] = Σ_z parts[z·len + i], z in order.
extern "C" __global__ void sum_splits_f32(const float* __restrict__ parts, float* __restrict__ y,
                                          long long len, int splits) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  float acc = 0.0f;
  for (int z = 0; z < splits; ++z) acc += parts[z * len + i];
  y[i] = acc;
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
