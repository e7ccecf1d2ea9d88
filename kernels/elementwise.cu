// The network's element-wise and data-movement operations, as the CPU backend defines them
// (src/backend/cpu/elementwise.rs): SiLU, binary add/sub/mul, affine, the per-(sample, channel)
// bias, nearest 2× upsampling, the (n, a, b) → (n, b, a) transpose, channel copies (concatenation
// and slicing), and the sinusoidal timestep embedding; and the gradients of SiLU, of the
// upsampling (its adjoint: 2×2 sums) and of slicing (a copy into zeros). Each reads its input once and writes its
// output once: bound by memory bandwidth, except the embedding (a few hundred values).
//
// Launch: one thread per output element, 256 per block (1-D grid), except transpose12_f32: 32×8
// threads per 32×32 tile staged in shared memory (rows padded to 33 floats), so that both the
// reads and the writes of a warp are consecutive addresses; grid (⌈b/32⌉, ⌈a/32⌉, n).
// Benchmark: the GPU check script (per-kernel times).
#include "ptx.cuh"

#define EW_INDEX() ((long long)blockIdx.x * blockDim.x + threadIdx.x)

extern "C" __global__ void silu_f32(const float* __restrict__ x, float* __restrict__ y,
                                    long long len) {
  long long i = EW_INDEX();
  if (i < len) {
    float v = x[i];
    y[i] = v / (1.0f + expf(-v));
  }
}

// op 0: a + b, 1: a − b, 2: a · b, 3: |a − b|, 4: sign(a − b) (0 where a = b).
extern "C" __global__ void binary_f32(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ y, long long len, int op) {
  long long i = EW_INDEX();
  if (i >= len) return;
  float u = a[i], v = b[i], d = u - v;
  switch (op) {
    case 0: y[i] = u + v; break;
    case 1: y[i] = d; break;
    case 2: y[i] = u * v; break;
    case 3: y[i] = fabsf(d); break;
    default: y[i] = d > 0.0f ? 1.0f : d < 0.0f ? -1.0f : 0.0f; break;
  }
}

extern "C" __global__ void affine_f32(const float* __restrict__ x, float* __restrict__ y,
                                      long long len, float mul, float add) {
  long long i = EW_INDEX();
  if (i < len) y[i] = x[i] * mul + add;
}

// y[n, c, p] = x[n, c, p] + b[n, c] for x (n, c, hw), b (n, c).
extern "C" __global__ void add_channel_bias_f32(const float* __restrict__ x,
                                                const float* __restrict__ b,
                                                float* __restrict__ y, long long len, int hw) {
  long long i = EW_INDEX();
  if (i < len) y[i] = x[i] + b[i / hw];
}

// (nc, h, w) → (nc, 2h, 2w), each value repeated 2×2.
extern "C" __global__ void upsample_nearest2x_f32(const float* __restrict__ x,
                                                 float* __restrict__ y, int nc, int h, int w) {
  long long i = EW_INDEX();
  long long len = (long long)nc * 4 * h * w;
  if (i >= len) return;
  int ox = int(i % (2 * w));
  long long r = i / (2 * w);
  int oy = int(r % (2 * h));
  long long plane = r / (2 * h);
  y[i] = x[(plane * h + oy / 2) * w + ox / 2];
}

// dst[n, dst_offset + c, p] = src[n, src_offset + c, p] for c < count, p < hw, with src having
// c_src channels and dst c_dst: a part of a concatenation, or a slice.
extern "C" __global__ void channel_copy_f32(const float* __restrict__ src, float* __restrict__ dst,
                                            int n, int c_src, int src_offset, int c_dst,
                                            int dst_offset, int count, int hw) {
  long long i = EW_INDEX();
  long long len = (long long)n * count * hw;
  if (i >= len) return;
  int p = int(i % hw);
  long long r = i / hw;
  int c = int(r % count), s = int(r / count);
  dst[((long long)s * c_dst + dst_offset + c) * hw + p] = src[((long long)s * c_src + src_offset + c) * hw + p];
}

// (n, a, b) → (n, b, a).
extern "C" __global__ void transpose12_f32(const float* __restrict__ x, float* __restrict__ y,
                                           int a, int b) {
  DYDIFF_SHARED(float, tile, [32][33]);
  long long base = (long long)blockIdx.z * a * b;
  int b0 = blockIdx.x * 32, a0 = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int ai = a0 + r, bi = b0 + threadIdx.x;
    if (ai < a && bi < b) tile[r][threadIdx.x] = x[base + (long long)ai * b + bi];
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    int bi = b0 + r, ai = a0 + threadIdx.x;
    if (ai < a && bi < b) y[base + (long long)bi * a + ai] = tile[threadIdx.x][r];
  }
}

// diffusers' sinusoidal embedding (docs/network.md, "Timestep embedding") of rows timesteps t:
// e_i = exp(−ln(10000)·i/(half − shift)), [sin(t·e), cos(t·e)] (swapped with flip), a zero appended
// when dim is odd. Float32, as the CPU computes it.
extern "C" __global__ void timestep_embedding_f32(const float* __restrict__ t,
                                                  float* __restrict__ y, int rows, int dim,
                                                  int flip, float freq_shift) {
  long long i = EW_INDEX();
  if (i >= (long long)rows * dim) return;
  int r = int(i / dim), j = int(i % dim), half = dim / 2;
  if (j >= 2 * half) {
    y[i] = 0.0f;
    return;
  }
  int f = j < half ? j : j - half;
  const float neg_log = -9.210340371976184f;  // −ln 10000
  float e = expf(neg_log * float(f) / (float(half) - freq_shift));
  float a = t[r] * e;
  bool first = j < half;  // the first half: sin, or cos with flip
  y[i] = first != (flip != 0) ? sinf(a) : cosf(a);
}

// dx = dy·σ(x)·(1 + x·(1 − σ(x))).
extern "C" __global__ void silu_backward_f32(const float* __restrict__ x,
                                             const float* __restrict__ dy,
                                             float* __restrict__ dx, long long len) {
  long long i = EW_INDEX();
  if (i >= len) return;
  float v = x[i], sg = 1.0f / (1.0f + expf(-v));
  dx[i] = dy[i] * sg * (1.0f + v * (1.0f - sg));
}

// (nc, 2h, 2w) → (nc, h, w): each value the sum of its 2×2 block.
extern "C" __global__ void upsample_nearest2x_backward_f32(const float* __restrict__ dy,
                                                          float* __restrict__ dx, int nc, int h,
                                                          int w) {
  long long i = EW_INDEX();
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
  long long i = EW_INDEX();
  if (i >= (long long)n * c * hw) return;
  int p = int(i % hw);
  long long nc = i / hw;
  int ch = int(nc % c), b = int(nc / c);
  y[i] = ch >= start && ch < end ? g[((long long)b * (end - start) + (ch - start)) * hw + p] : 0.0f;
}
