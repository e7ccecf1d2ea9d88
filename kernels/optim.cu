// The training step's reductions and its optimizer, on the device so that a step never waits for
// the host:
//
//   loss_partial_f32 / loss_finish_f32:  the loss mean((a − b)²) (kind 0) or mean|a − b| (kind 1)
//       into one value, by fixed blocks summed in order (the same bits on every run);
//   loss_backward_f32:  da = g·2(a − b)/N or g·sign(a − b)/N, g the loss's gradient (one value);
//   grad_sq_partial_f32 / adamw_fused_f32:  gradient clipping by global norm, AdamW (Loshchilov &
//       Hutter, 2019) and the weight EMA in one pass over the parameters:
//
//       norm = √(Σ g²)  (double),  scale = min(max_norm / (norm + 10⁻⁶), 1)
//       g' = g·scale,  m' = β₁m + (1 − β₁)g',  v' = β₂v + (1 − β₂)g'²
//       p' = p − lr·((m'/bc1) / (√(v'/bc2) + ε) + weight_decay·p),  e' = d·e + (1 − d)·p'
//
//       in place — unless the loss or the norm is not finite: then nothing changes (the host
//       stops the run when it reads the loss). The parameters, moments and EMA are each one
//       contiguous array; the gradients, one per parameter, are read through a table of chunks
//       (each ≤ OPT_CHUNK values of one parameter: its address and its place in the arrays), as
//       PyTorch's multi-tensor apply does. Every block first sums the chunks' partial squares
//       itself, in order, so the norm never leaves the device.
//
// Launch: losses: LOSS_BLOCKS blocks of 256 threads, then one; the optimizer: one block of 256
// threads per chunk. Bound by memory bandwidth (the update reads 5 and writes 4 arrays).
// Benchmark: `dydiff bench train --device cuda` (per-kernel times).
#include "ptx.cuh"

#define OPT_THREADS 256

struct OptChunk {
  unsigned long long grad;  // address of the chunk's first gradient value
  unsigned long long flat;  // its index in the contiguous arrays
  unsigned len, unused;
};

struct AdamHyper {
  float lr, beta1, beta2, eps, weight_decay, bc1, bc2, max_norm, ema_decay;
  int chunks;
};

__device__ __forceinline__ double opt_block_sum(double v) {
  DYDIFF_SHARED(double, red, [OPT_THREADS]);
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned h = OPT_THREADS / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  double total = red[0];
  __syncthreads();
  return total;
}

// partial[block] = Σ of its slice of (a − b)² or |a − b|; slices of `per` values.
extern "C" __global__ void __launch_bounds__(OPT_THREADS)
    loss_partial_f32(const float* __restrict__ a, const float* __restrict__ b,
                     float* __restrict__ partial, long long len, long long per, int kind) {
  long long begin = blockIdx.x * per, end = min(len, begin + per);
  double acc = 0.0;
  for (long long i = begin + threadIdx.x; i < end; i += OPT_THREADS) {
    float d = a[i] - b[i];
    acc += kind == 0 ? double(d) * double(d) : double(fabsf(d));
  }
  double total = opt_block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = float(total);
}

// out[0] = Σ partial · inv_count.
extern "C" __global__ void __launch_bounds__(OPT_THREADS)
    loss_finish_f32(const float* __restrict__ partial, float* __restrict__ out, int blocks,
                    double inv_count) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += OPT_THREADS) acc += partial[i];
  double total = opt_block_sum(acc);
  if (threadIdx.x == 0) out[0] = float(total * inv_count);
}

extern "C" __global__ void loss_backward_f32(const float* __restrict__ a,
                                             const float* __restrict__ b,
                                             const float* __restrict__ g, float* __restrict__ da,
                                             long long len, int kind, float inv_count) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  float d = a[i] - b[i];
  float w = kind == 0 ? 2.0f * d : (d > 0.0f ? 1.0f : d < 0.0f ? -1.0f : 0.0f);
  da[i] = w * (g[0] * inv_count);
}

// partial[chunk] = Σ g² over the chunk.
extern "C" __global__ void __launch_bounds__(OPT_THREADS)
    grad_sq_partial_f32(const OptChunk* __restrict__ table, float* __restrict__ partial) {
  OptChunk ch = table[blockIdx.x];
  const float* g = reinterpret_cast<const float*>(ch.grad);
  double acc = 0.0;
  for (unsigned i = threadIdx.x; i < ch.len; i += OPT_THREADS) acc += double(g[i]) * double(g[i]);
  double total = opt_block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = float(total);
}

extern "C" __global__ void __launch_bounds__(OPT_THREADS)
    adamw_fused_f32(const OptChunk* __restrict__ table, const float* __restrict__ partial,
                    const float* __restrict__ loss, float* p, float* m, float* v, float* e,
                    float* __restrict__ norm_out, AdamHyper h) {
  // p, m, v, e are updated in place: each value is read, then written, by the same thread
  double acc = 0.0;
  for (int i = threadIdx.x; i < h.chunks; i += OPT_THREADS) acc += partial[i];
  double norm = sqrt(opt_block_sum(acc));
  if (blockIdx.x == 0 && threadIdx.x == 0) norm_out[0] = float(norm);
  if (!(isfinite(norm) && isfinite(loss[0]))) return;
  float scale = float(fmin(double(h.max_norm) / (norm + 1e-6), 1.0));
  OptChunk ch = table[blockIdx.x];
  const float* g = reinterpret_cast<const float*>(ch.grad);
  for (unsigned j = threadIdx.x; j < ch.len; j += OPT_THREADS) {
    unsigned long long i = ch.flat + j;
    float gi = g[j] * scale;
    float mi = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
    float vi = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
    float step = (mi / h.bc1) / (sqrtf(vi / h.bc2) + h.eps) + h.weight_decay * p[i];
    float pi = p[i] - h.lr * step;
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    e[i] = h.ema_decay * e[i] + (1.0f - h.ema_decay) * pi;
  }
}
