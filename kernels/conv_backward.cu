// The convolution's gradients (the backward rule of src/autograd.rs, the semantics of the CPU
// backend's src/backend/cpu). Cross-correlation with stride s, padding pt/pl, dy (n, co, ho, wo):
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
// dx: at stride 1 (3×3 and 1×1) the convolution of dy with the kernel transposed and rotated by
// 180°, on the forward's direct kernels (src/backend/cuda/conv.rs, `input_gradient`). Otherwise
// the columns G[n][ci·k² + tap][oy·wo + ox] = Σ_co w[co, ci, tap] · dy[n, co, oy, ox] — a batched
// GEMM of kernels/gemm.cu (M = ci·k², N = ho·wo, K = co) — then conv2d_col2im_f32 adds, for each
// input pixel, the columns of the (at most k² · 9 with circular padding) output positions that read
// it, taps in order.
//
// dw: a GEMM over a grid that makes the input gather a shift. The padded input (h + pt + pb) ×
// (w + pl + pr) is cut into s² phase planes, phase (a, b) holding rows a, a + s, … and columns b,
// b + s, … (conv2d_phase_pack_f32: xp[(a·s + b)·ci + ci'][q], q over the grid of n × hq × wq cells,
// hq = ⌈(h + pt + pb)/s⌉; padding — zeros, or the wrapped image — written out). The output
// gradient is laid on the same grid (conv2d_grid_pack_f32: dyp[co][q], zero in the cells past
// ho × wo and past the grid, up to K, the cells rounded up to a slice). Tap (ky, kx) of output cell
// q then reads phase (ky mod s, kx mod s) at cell q + ⌊ky/s⌋·wq + ⌊kx/s⌋, so
//
//   dw[co][ci'·k² + tap] = Σ_q dyp[co][q] · xp[phase(tap)·ci + ci'][q + shift(tap)]
//
// — a GEMM with both operands K-contiguous, B's row for column ci'·k² + tap starting at its shift
// (cells whose reads run into the next row, sample or the planes' slack meet dy = 0 there). On
// the tensor cores (conv2d_wgrad_tf32/bf16) it is kernels/gemm_tc.cuh's product with B read 4
// bytes at a time (the shifts are not 16-byte aligned), split along K for a block on every SM
// (twice over), each split's partial sums added in order by the tile's last block; in float32
// (conv2d_wgrad_f32) kernels/gemm_core.cuh's FFMA tile product, B's row offsets in shared memory,
// split along K into planes that conv2d_finish_f32 adds in order. Every sum runs in an order fixed
// by the shapes, so a training step is the same bits on every run.
//
// Launch: the packs and conv2d_col2im_f32 one thread per output value, 256 per block;
// conv2d_wgrad_tf32/bf16 as gemm_tf32 (grid (⌈ci·k²/64⌉, ⌈co/64⌉·splits, 1), 128 threads,
// gemm_shared_bytes); conv2d_wgrad_f32 grid (⌈ci·k²/64⌉, ⌈co/64⌉, splits), 128 threads.
// Benchmark: `dydiff bench train --device cuda` (per-kernel times), the GPU check script and
// python/sass_model.py.
#include "gemm_tc.cuh"

struct ConvBwdShape {
  int n, ci, h, w, co, k, stride, pad_top, pad_left, ho, wo;
  int circular;  // padding wraps around
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

// dx[n, ci, iy, ix] from the columns cols[n][ci·k² + tap][oy·wo + ox]: one thread per input pixel.
extern "C" __global__ void conv2d_col2im_f32(const float* __restrict__ cols,
                                             float* __restrict__ dx, ConvBwdShape s) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long hw = (long long)s.h * s.w, len = (long long)s.n * s.ci * hw;
  if (i >= len) return;
  const long long nc = i / hw;  // n·ci + ci
  const int rem = int(i - nc * hw), iy = rem / s.w, ix = rem - iy * s.w;
  const int kk = s.k * s.k;
  const long long hw_out = (long long)s.ho * s.wo;
  const float* base = cols + nc * kk * hw_out;
  float v = 0.0f;
  for (int ky = 0; ky < s.k; ++ky) {
    int oys[3];
    const int ny = dgrad_sources(iy + s.pad_top - ky, s.h, s.stride, s.ho, s.circular, oys);
    for (int kx = 0; kx < s.k; ++kx) {
      int oxs[3];
      const int nx = dgrad_sources(ix + s.pad_left - kx, s.w, s.stride, s.wo, s.circular, oxs);
      const float* plane = base + (ky * s.k + kx) * hw_out;
      for (int a = 0; a < ny; ++a)
        for (int b = 0; b < nx; ++b) v += plane[(long long)oys[a] * s.wo + oxs[b]];
    }
  }
  dx[i] = v;
}

// The weight gradient's grid (see the top of the file): `cells` = n·hq·wq, each phase plane's
// rows `ld` long (the cells rounded up to a slice, plus the largest shift), dyp's rows `k_len`
// (the cells rounded up to a slice: the GEMM's K).
struct WgradGrid {
  int n, ci, h, w, co, k, stride, pad_top, pad_left, ho, wo, circular;
  int hq, wq;
  long long cells, ld, k_len;
};

// xp[(phase·ci + c)·ld + q]: the padded input at phase (a, b) = (phase / s, phase mod s), cell q =
// (n, i, j) → padded row s·i + a, column s·j + b; zero past the cells and in zero padding.
extern "C" __global__ void conv2d_phase_pack_f32(const float* __restrict__ x,
                                                 float* __restrict__ xp, WgradGrid g) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long rows = (long long)g.stride * g.stride * g.ci;
  if (i >= rows * g.ld) return;
  const long long row = i / g.ld, q = i - row * g.ld;
  float v = 0.0f;
  if (q < g.cells) {
    const int phase = int(row / g.ci), c = int(row - (long long)phase * g.ci);
    const long long per_sample = (long long)g.hq * g.wq;
    const int n = int(q / per_sample), cell = int(q - n * per_sample);
    const int ci = cell / g.wq, cj = cell - ci * g.wq;
    int y = g.stride * ci + phase / g.stride - g.pad_top;
    int xx = g.stride * cj + phase % g.stride - g.pad_left;
    if (g.circular) {
      y = ((y % g.h) + g.h) % g.h;
      xx = ((xx % g.w) + g.w) % g.w;
    }
    if (y >= 0 && y < g.h && xx >= 0 && xx < g.w)
      v = x[(((long long)n * g.ci + c) * g.h + y) * g.w + xx];
  }
  xp[i] = v;
}

// dyp[co][q] (rows k_len long): dy at cell q = (n, i, j) when i < ho and j < wo, else zero.
extern "C" __global__ void conv2d_grid_pack_f32(const float* __restrict__ dy,
                                                float* __restrict__ dyp, WgradGrid g) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= g.co * g.k_len) return;
  const int co = int(i / g.k_len);
  const long long q = i - co * g.k_len;
  float v = 0.0f;
  if (q < g.cells) {
    const long long per_sample = (long long)g.hq * g.wq;
    const int n = int(q / per_sample), cell = int(q - n * per_sample);
    const int oy = cell / g.wq, ox = cell - oy * g.wq;
    if (oy < g.ho && ox < g.wo) v = dy[(((long long)n * g.co + co) * g.ho + oy) * g.wo + ox];
  }
  dyp[i] = v;
}

// Where B's row of weight-gradient column c = ci·k² + ky·k + kx starts: its phase plane's row of
// channel ci, at the tap's shift.
__device__ __forceinline__ long long wgrad_row(const WgradGrid& g, int c) {
  const int kk = g.k * g.k, ci = c / kk, tap = c - ci * kk, ky = tap / g.k, kx = tap - ky * g.k;
  const int phase = (ky % g.stride) * g.stride + kx % g.stride;
  return ((long long)phase * g.ci + ci) * g.ld + (ky / g.stride) * g.wq + kx / g.stride;
}

struct WgradRows {
  const float* xp;
  WgradGrid g;
  __device__ __forceinline__ const float* operator()(int c) const { return xp + wgrad_row(g, c); }
};

// dw = dyp · B (M = co, N = ci·k², K = k_len; s as gemm_tf32's with b_trans, lda = k_len).
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
    conv2d_wgrad_tf32(const float* __restrict__ dyp, const float* __restrict__ xp,
                      float* __restrict__ dw, GemmShape s, WgradGrid g, float* __restrict__ parts,
                      unsigned* __restrict__ counters) {
  gemm_tc<MMA_TF32, false>(dyp, WgradRows{xp, g}, dw, nullptr, nullptr, parts, counters, s);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
    conv2d_wgrad_bf16(const float* __restrict__ dyp, const float* __restrict__ xp,
                      float* __restrict__ dw, GemmShape s, WgradGrid g, float* __restrict__ parts,
                      unsigned* __restrict__ counters) {
  gemm_tc<MMA_BF16, false>(dyp, WgradRows{xp, g}, dw, nullptr, nullptr, parts, counters, s);
}

// FFMA: split z takes K from z·slice_len (a multiple of TILE_K) and writes plane z of `out`
// (co × ci·k² each).
extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
    conv2d_wgrad_f32(const float* __restrict__ dyp, const float* __restrict__ xp,
                     float* __restrict__ out, WgradGrid g, long long slice_len) {
  DYDIFF_SHARED(long long, rows, [TILE_N]);  // B's row offsets of the tile's columns
  const int n_cols = g.ci * g.k * g.k, co0 = blockIdx.y * TILE_M, c0 = blockIdx.x * TILE_N;
  const long long k0 = blockIdx.z * slice_len, k_len = min(slice_len, g.k_len - k0);
  for (int j = threadIdx.x; j < TILE_N; j += TILE_THREADS)
    rows[j] = wgrad_row(g, min(c0 + j, n_cols - 1)) + k0;
  __syncthreads();
  const float* a_at = dyp + k0;
  auto a = [&](int row, int k) {
    const int co = min(co0 + row, g.co - 1);
    return a_at[(long long)co * g.k_len + k];
  };
  auto b = [&](int col, int k) { return xp[rows[col] + k]; };
  float acc[2][4][4];
  tile_product<MMA_F32>(int(k_len), a, true, b, true, acc);
  out += (long long)blockIdx.z * g.co * n_cols;
  tile_store(acc, [&](int row, int col, float v) {
    const int co = co0 + row, c = c0 + col;
    if (co < g.co && c < n_cols) out[(long long)co * n_cols + c] = v;
  });
}
