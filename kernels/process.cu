// The Dynamical Diffusion process along the frame axis (docs/process.md): Dyn/InvDyn,
// the fused forward process, the fused DDIM step with its σ-noise drawn in the kernel, and the
// normals of docs/random.md. Plain references: src/backend/cpu/reference.rs; the CPU's fast
// versions: src/backend/cpu/dynamics.rs. Test: `cargo test --release --features cuda --test
// ops cuda::process` (on the emulator, or the GPU with DYDIFF_TEST_DEVICE=cuda).
//
// Layout: sequences (batch, frames, elems), frame-major; one thread per (sequence b, element e)
// walks the frames, keeping the running sums of the scan in registers, so every input element is
// read once and every output written once: these kernels are bound by memory bandwidth (bytes per
// thread = 4·(frames read + frames written)), and a warp's accesses at one frame are 32
// consecutive floats. Launch: 1-D, ⌈batch·elems / 256⌉ blocks of 256 threads.
// Per-sequence coefficients come as small arrays, per-step ones as scalars.
//
// Benchmark: `dydiff bench sample --device cuda` (the process kernels' share of a DDIM step).
#include "philox.cuh"

// y = Dyn_γ(x) (inverse = 0) or InvDyn_γ(x) (inverse = 1) along the frames of each sequence:
//   Dyn:    y^0 = x^0,  y^f = √γ·x^f + √(1−γ)·y^{f−1}
//   InvDyn: y^0 = x^0,  y^f = (x^f − √(1−γ)·x^{f−1}) / √γ
// coefs[2b], coefs[2b+1] = √γ, √(1−γ) of sequence b.
extern "C" __global__ void dynamics_f32(const float* __restrict__ x, float* __restrict__ y,
                                        const float* __restrict__ coefs, int batch, int frames,
                                        long long elems, int inverse) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * elems || frames == 0) return;
  long long b = i / elems, e = i - b * elems;
  float sg = coefs[2 * b], s1g = coefs[2 * b + 1];
  const float* xs = x + b * frames * elems + e;
  float* ys = y + b * frames * elems + e;
  float prev = xs[0];
  ys[0] = prev;
  for (int f = 1; f < frames; ++f) {
    float v = xs[f * elems];
    if (inverse) {
      ys[f * elems] = (v - s1g * prev) / sg;
      prev = v;
    } else {
      prev = sg * v + s1g * prev;
      ys[f * elems] = prev;
    }
  }
}

// The forward process (docs/process.md, "Forward process" and "Diffusing the history") on clean
// sequences x0 (batch, H+S, elems) with noise eps (batch, D, elems), D = S (or H+S when
// diffuse_history): input (batch, H+D, elems) = the clean history, then
//   x_t^s = √ᾱ_t·Dyn_{γ̄_t}(x_0)^s + √(1−ᾱ_t)·ε̃^s,  ε̃ = Dyn_{γ̄_t}(ε) from the first diffused frame,
// and target = a·ε̃ + b·D (batch, D, elems): ε̃ (a, b = 1, 0), or the velocity
// v = √ᾱ_t·ε̃ − √(1−ᾱ_t)·D (docs/process.md, "What the network predicts").
// coefs[6b..6b+5] = √γ̄_t, √(1−γ̄_t), √ᾱ_t, √(1−ᾱ_t), a, b of sequence b.
extern "C" __global__ void q_sample_f32(const float* __restrict__ x0, const float* __restrict__ eps,
                                        float* __restrict__ input, float* __restrict__ target,
                                        const float* __restrict__ coefs, int batch, int history,
                                        int future, long long elems, int diffuse_history) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * elems) return;
  long long b = i / elems, e = i - b * elems;
  int frames = history + future;
  int diffused = diffuse_history ? frames : future;
  int state = history + diffused;
  int first = diffuse_history ? 0 : history;  // the first diffused frame
  int off = diffuse_history ? history : 0;    // x_t of sequence frame f goes to input frame off+f
  const float* cb = coefs + 6 * b;
  float sg = cb[0], s1g = cb[1], sab = cb[2], s1ab = cb[3], ta = cb[4], td = cb[5];
  const float* xs = x0 + b * frames * elems + e;
  const float* es = eps + b * diffused * elems + e;
  float* in = input + b * state * elems + e;
  float* tg = target + b * diffused * elems + e;
  float d = 0.0f, et = 0.0f;
  for (int f = 0; f < frames; ++f) {
    float x = xs[f * elems];
    d = f == 0 ? x : sg * x + s1g * d;
    if (f < history) in[f * elems] = x;
    if (f < first) continue;
    int s = f - first;
    float z = es[s * elems];
    et = s == 0 ? z : sg * z + s1g * et;
    tg[s * elems] = ta * et + td * d;
    in[(off + f) * elems] = sab * d + s1ab * et;
  }
}

// One DDIM step (docs/process.md, "One step" and "Diffusing the history") on the sampler state
// (batch, H+D, elems) — the clean history, then x_t — given ε̂ (batch, D, elems): next state =
// the history, then x_p. Per element, running over the history Dt = Dyn_{γ̄_t}(h)^P and
// Dp = Dyn_{γ̄_p}(h)^P (unless diffuse_history), then for each diffused frame s:
//   ε̂^s = eps_xt·x_t^s + eps_out·output^s (the network's output itself, or from a velocity),
//   y = (x_t^s − √(1−ᾱ_t)·ε̂^s)/√ᾱ_t,  x̂_0^s = (y − √(1−γ̄_t)·y_prev)/√γ̄_t  (y_prev = Dt first)
//   ε_w^s = (ε̂^s − √(1−γ̄_t)·ε̂^{s−1})/√γ̄_t  (ε̂^0 first),  Dp = √γ̄_p·x̂_0^s + √(1−γ̄_p)·Dp
//   W = Dyn_{γ̄_p}(ε_w)^s,  Z = Dyn_{γ̄_p}(z)^s,  x_p^s = √ᾱ_p·Dp + √(1−ᾱ_p−σ²)·W + σ·Z
// With diffuse_history every chain starts at frame 0 and x̂_0^0 = y^0.
// The step's values are read from device memory, `params`: the eleven coefficients c (float bit
// patterns) = √γ̄_t, √(1−γ̄_t), √γ̄_p, √(1−γ̄_p), √ᾱ_t, √(1−ᾱ_t), √ᾱ_p, √(1−ᾱ_p−σ²), σ, eps_xt,
// eps_out, then the noise key: seed (low, high 32 bits), purpose, step — so that a step captured
// in a CUDA graph reads each replay's values. The fresh noise z (when σ > 0) is read from z
// (batch, D, elems) if that is given, otherwise drawn here: element s·elems + e of the row (rows[b], rows[batch + b]) =
// (sample, member) of the stream (seed, purpose, step) (docs/random.md).
struct DdimCoefs {
  float sg_t, s1g_t, sg_p, s1g_p, sab_t, s1ab_t, sab_p, eps_w, sigma, eps_xt, eps_out;
};

extern "C" __global__ void ddim_step_f32(const float* __restrict__ state,
                                         const float* __restrict__ eps_hat,
                                         const float* __restrict__ z_given,
                                         float* __restrict__ next,
                                         const unsigned* __restrict__ params, int batch,
                                         int history, int future, long long elems,
                                         int diffuse_history, const unsigned* __restrict__ rows) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)batch * elems) return;
  const DdimCoefs c = {__uint_as_float(params[0]), __uint_as_float(params[1]),
                       __uint_as_float(params[2]), __uint_as_float(params[3]),
                       __uint_as_float(params[4]), __uint_as_float(params[5]),
                       __uint_as_float(params[6]), __uint_as_float(params[7]),
                       __uint_as_float(params[8]), __uint_as_float(params[9]),
                       __uint_as_float(params[10])};
  long long b = i / elems, e = i - b * elems;
  int frames = history + future;
  int diffused = diffuse_history ? frames : future;
  int state_frames = history + diffused;
  const float* st = state + b * state_frames * elems + e;
  const float* eh = eps_hat + b * diffused * elems + e;
  float* out = next + b * state_frames * elems + e;
  float dt = 0.0f, dp = 0.0f;
  for (int f = 0; f < history; ++f) {
    float h = st[f * elems];
    out[f * elems] = h;
    if (diffuse_history) continue;
    dt = f == 0 ? h : c.sg_t * h + c.s1g_t * dt;
    dp = f == 0 ? h : c.sg_p * h + c.s1g_p * dp;
  }
  NoiseStream ns;
  const bool draw = c.sigma > 0.0f && !z_given;
  if (draw) {
    unsigned long long seed = params[11] | ((unsigned long long)params[12] << 32);
    ns = noise_stream(seed, params[13], params[14], rows[b], rows[batch + b]);
  }
  float y_prev = dt, eh_prev = 0.0f, w = 0.0f, zz = 0.0f;
  for (int s = 0; s < diffused; ++s) {
    float xt = st[(history + s) * elems];
    float ehs = c.eps_xt * xt + c.eps_out * eh[s * elems];
    float y = (xt - c.s1ab_t * ehs) / c.sab_t;
    float z = draw ? noise_normal(ns, (unsigned long long)s * elems + e)
                   : c.sigma > 0.0f ? z_given[(b * diffused + s) * elems + e] : 0.0f;
    if (s == 0 && diffuse_history) {
      dp = y;
    } else {
      float x0 = (y - c.s1g_t * y_prev) / c.sg_t;
      dp = c.sg_p * x0 + c.s1g_p * dp;
    }
    y_prev = y;
    if (s == 0) {
      w = ehs;
      zz = z;
    } else {
      float ew = (ehs - c.s1g_t * eh_prev) / c.sg_t;
      w = c.sg_p * ew + c.s1g_p * w;
      zz = c.sg_p * z + c.s1g_p * zz;
    }
    eh_prev = ehs;
    out[(history + s) * elems] = c.sab_p * dp + c.eps_w * w + c.sigma * zz;
  }
}

// Standard normals: out[r·row_len + e] = element e of row r = (samples[r], members[r]) of the
// stream (seed, purpose, step), for rows r < rows and e < row_len (docs/random.md).
extern "C" __global__ void randn_f32(float* __restrict__ out, unsigned long long seed,
                                     unsigned purpose, unsigned step,
                                     const unsigned* __restrict__ samples,
                                     const unsigned* __restrict__ members, int rows,
                                     long long row_len) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)rows * row_len) return;
  long long r = i / row_len, e = i - r * row_len;
  NoiseStream ns = noise_stream(seed, purpose, step, samples[r], members[r]);
  out[i] = noise_normal(ns, (unsigned long long)e);
}

// The raw Philox words: out[4·(r·blocks + k) + j] = word j of call c0 = k of row r, for the
// integer draws of docs/random.md ("Uniform integers") and the bit-exact test of the generator.
extern "C" __global__ void philox_words_u32(unsigned* __restrict__ out, unsigned long long seed,
                                            unsigned purpose, unsigned step,
                                            const unsigned* __restrict__ samples,
                                            const unsigned* __restrict__ members, int rows,
                                            long long blocks) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)rows * blocks) return;
  long long r = i / blocks, k = i - r * blocks;
  NoiseStream ns = noise_stream(seed, purpose, step, samples[r], members[r]);
  unsigned w[4];
  noise_words(ns, unsigned(k), w);
  for (int j = 0; j < 4; ++j) out[4 * i + j] = w[j];
}

// Dropout (docs/random.md, "Dropout masks"): one thread per Philox call, i.e. per 4 values of a
// row. Value e of row r is kept, times `scale`, when word e mod 4 of the call with counter
// (layer·2^24 + ⌊e/4⌋, step, sample, purpose·2^24 + member) is at least `threshold`. The rows'
// samples and members are read from `rows` (all samples, then all members), so the mask is the
// same bits as the CPU's for any batch.
extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y,
                                       unsigned long long seed, unsigned purpose, unsigned step,
                                       unsigned layer, unsigned threshold, float scale,
                                       const unsigned* __restrict__ rows, int nrows,
                                       long long row_len) {
  long long blocks = (row_len + 3) / 4;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)nrows * blocks) return;
  long long r = i / blocks, k = i - r * blocks;
  NoiseStream ns = noise_stream(seed, purpose, step, rows[r], rows[nrows + r]);
  unsigned w[4];
  noise_words(ns, (layer << 24) | unsigned(k), w);
  long long first = r * row_len + 4 * k;
  long long count = row_len - 4 * k < 4 ? row_len - 4 * k : 4;
  for (long long j = 0; j < count; ++j) y[first + j] = w[j] >= threshold ? x[first + j] * scale : 0.0f;
}

