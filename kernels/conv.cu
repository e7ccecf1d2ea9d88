// 2-D convolution (cross-correlation, as PyTorch) with the tail and the head of diffusers'
// ResnetBlock2D fused in, so that a resnet block is a handful of launches:
//
//   y[n, co, oy, ox] = ( Σ_{ci, ky, kx} w[co, ci, ky, kx] · in[n, ci, oy·s + ky − pt, ox·s + kx − pl]
//                        + bias[co] + temb[n, co] + residual[n, co, oy, ox] ) · scale
//
// where the input `in` (outside the image, the padding: zeros, or with `circular` the image wrapped
// around, row −1 being row h − 1) is, per element, as loaded:
//   - the channels of x, followed by those of x2 if given (the skip concatenation of an up block);
//   - read at (y/2, x/2) with `upsample` (nearest 2× upsampling before the convolution);
//   - group-normalised, (v − mean[n, grp])·rstd[n, grp]·gamma[ci] + beta[ci], from statistics
//     computed beforehand (kernels/norm.cu), then SiLU (the `_norm_silu` kernels; with `groups`
//     0 the SiLU alone).
// bias, temb (n × co), residual (shaped like y) and x2 are optional (null).
//
// The direct kernels, conv2d_{f32,tf32,bf16}_{k3s1,k3s1_norm_silu,k3s2,k1s1} — the kernel size and
// stride as template parameters, the three the network uses — compute one tile of 8×8 output
// pixels of one image × 64 output channels (128 for 1×1) per block of 128 threads (4 warps, each
// 32 (64) channels × 4 rows of 8 pixels), as an implicit GEMM whose reduction runs over slices of
// input channels (16 for a 3×3 kernel, 64 for a 1×1: conv_slice_channels):
//
//   - per slice, the input patch the tile reads — (7s + k)² pixels × the slice — is loaded once
//     from global memory, normalised and activated once per element (a per-(sample, channel)
//     scale/shift table built at the start of the block: one FMA; SiLU as x·σ(x) with the
//     special-function unit's exponential and reciprocal, `silu_fast`, on the tensor-core paths),
//     rounded to the MMA's operand type,
//     and stored channel-contiguous; every tap then reads its shifted window of the patch, so an
//     input element is loaded and transformed once per slice instead of once per tap (k² times);
//   - the weights come prepared (conv2d_weights_*: per slice and output channel, zero-padded,
//     rounded to TF32 or packed to bf16 pairs, in the order of the MMA's A fragments), so that a
//     block's slice is one contiguous range, copied with 16-byte cp.async at immediate offsets;
//   - every thread's patch pixels and their source offsets (padding, wrap-around, upsampling) are
//     computed once, outside the reduction: no division in the main loop;
//   - an A fragment is one 16-byte shared load (the weights are in fragment order: consecutive
//     lanes, consecutive 16 bytes); a B fragment one 16-byte (TF32) or 8-byte (bf16) load, the
//     MMA's k index mapped to channels so that a thread's four channels are adjacent, the patch's
//     pixel stride padded (≡ 16 words mod 32, bf16 8) so that the reads are free of bank
//     conflicts at stride 1;
//   - two buffers: the next slice's weights are in flight (cp.async) and, when a thread stages
//     one patch pixel (stride 1), its patch values in registers while the current slice is
//     multiplied; at stride 2 (three pixels a thread) the patch is loaded after; one barrier per
//     slice;
//   - split-K: the slices are shared among gridDim.z blocks when a layer has few tiles (chosen
//     from the layer's shape alone, never the batch, so that results do not depend on the batch
//     size); the partial sums go to their own planes and the block that arrives last for its
//     tile adds them in order and applies the epilogue (kernels/splitk.cuh: deterministic, the
//     atomics only count) — or, without the device's tile counters, conv2d_finish_f32 does.
// Three ways to multiply: FFMA (`f32`), TF32 tensor cores (mma.m16n8k8, operands rounded to
// nearest), bf16 tensor cores (mma.m16n8k16) — always float32 accumulation.
//
// The same kernels compute the input gradient of a stride-1 convolution (conv2d_weights_* read the
// weights transposed and rotated; the gradients at the end of this file).
//
// Other geometries (kernel sizes other than 1 and 3, other strides) write the transformed input's
// columns (conv2d_im2col_f32) for a batched GEMM of kernels/gemm.cu at the same precision: the
// network never uses them (src/backend/cuda/conv.rs says when each kernel runs).
//
// Launch (direct): grid (n·tiles_y·tiles_x, ⌈co/64⌉ (⌈co/128⌉ for 1×1), splits), 128 threads,
// dynamic shared memory for the norm table (8 bytes per slice channel, 16 at float32) and two
// buffers of weights and patch (src/backend/cuda/conv.rs, `Direct::shared_bytes`). Columns: one
// thread per value, 256 per block.
// Benchmark: `dydiff bench unet --device cuda`, the GPU check script (per-kernel times) and
// python/sass_model.py (the model from the machine code).
#include "gemm_tc.cuh"

struct ConvShape {
  int n, ci, h, w;  // the input as the convolution sees it (after upsampling)
  int ci1;          // channels from x; the others (ci − ci1) from x2
  int co, k, stride, pad_top, pad_left, ho, wo;
  int upsample;     // x and x2 hold (h/2, w/2) images, read at (y/2, x/2)
  int groups;       // group norm on load (0: none)
  int silu;         // SiLU after the norm (or on the raw input when groups is 0)
  float scale;
  int circular;     // padding wraps around (padding at most the image's size)
  // the direct kernels: slices of kc channels of x (slices1) then of x2, in all (slices); each
  // blockIdx.z takes per_split of them; output tiles per image
  int slices1, slices, per_split, tiles_x, tiles_y;
  int kc;  // channels per slice (conv_slice_channels)
};

// Input channels per slice of a direct kernel: a 1×1 kernel has one tap, so its slices are wider
// to give each trip through the main loop enough MMAs to cover its loads.
#define CONV_SLICE_K3 16
#define CONV_SLICE_K1 64
__host__ __device__ constexpr int conv_slice_channels(int k) {
  return k == 1 ? CONV_SLICE_K1 : CONV_SLICE_K3;
}
// Output channels per block: 64, and 128 for a 1×1 kernel (whose loads are per MMA twice a 3×3
// kernel's otherwise).
#define CONV_BLOCK_K3 64
#define CONV_BLOCK_K1 128
__host__ __device__ constexpr int conv_block_channels(int k) {
  return k == 1 ? CONV_BLOCK_K1 : CONV_BLOCK_K3;
}

// Words of the norm table per slice channel: (scale, shift), and for float32, which normalises as
// the CPU backend does, (scale, shift, mean, beta).
#define CONV_TABLE_WORDS 2
#define CONV_TABLE_WORDS_F32 4
__host__ __device__ constexpr int conv_table_words(int mma) {
  return mma == MMA_F32 ? CONV_TABLE_WORDS_F32 : CONV_TABLE_WORDS;
}

#define CONV_TILE 8       // output tile: 8×8 pixels of one image
#define CONV_THREADS 128

// The patch geometry of a direct kernel: side, pixels, taps, how the 128 threads share the
// staging (groups of threads splitting the slice's channels when the patch is small), shared-memory
// words per patch pixel and per weight row.
template <int MMA, int KS, int S>
struct ConvGeo {
  static constexpr int KC = conv_slice_channels(KS);
  static constexpr int BM = conv_block_channels(KS);
  static constexpr int MT = BM / 32;  // m16 tiles per warp (warps 2 × 2, each BM/2 channels)
  static constexpr int SUBS = KC / 16;  // groups of 16 channels (the fragments' unit)
  static constexpr int PC = (CONV_TILE - 1) * S + KS;
  static constexpr int PP = PC * PC;
  static constexpr int KK = KS * KS;
  static constexpr int GROUPS = PP <= CONV_THREADS / 2 ? 2 : 1;
  static constexpr int PIX_THREADS = CONV_THREADS / GROUPS;
  static constexpr int PPT = (PP + PIX_THREADS - 1) / PIX_THREADS;
  static constexpr int CPT = KC / GROUPS;
  // words per channel slice: KC floats, or KC/2 bf16 pairs
  static constexpr int WPC = MMA == MMA_BF16 ? KC / 2 : KC;
  // patch pixel stride in words, padded so that the fragment reads of 8 (bf16: 4) consecutive
  // pixels fall in distinct banks: ≡ 16 (bf16: 8) mod 32 at stride 1; at stride 2, where the
  // reads step two pixels, half a slice more
  static constexpr int BANKS = MMA == MMA_BF16 ? 8 : 16;
  static constexpr int PS = S == 1 ? WPC + (BANKS - WPC % 32 + 32) % 32 : WPC + WPC / 2;
  static constexpr int RS = KK * WPC;  // weight row (one output channel, one slice)
  static constexpr int W_WORDS = BM * RS;
  static constexpr int P_WORDS = PP * PS;
};

// The input channel that is channel j of slice sl (slices of kc channels: x's, then x2's, each
// part's last slice padded), or −1 for padding.
__device__ __forceinline__ int slice_channel(const ConvShape& s, int kc, int sl, int j) {
  if (sl < s.slices1) return sl * kc + j < s.ci1 ? sl * kc + j : -1;
  int c = s.ci1 + (sl - s.slices1) * kc + j;
  return c < s.ci ? c : -1;
}

// The convolution input of one slice element as the MMA takes it (one 32-bit word per channel
// for f32/tf32; bf16 values are packed in pairs by the caller).
template <int MMA>
__device__ __forceinline__ unsigned conv_word(float v) {
  if constexpr (MMA == MMA_TF32) return tf32_for_mma(v);
  return __float_as_uint(v);
}

template <int MMA, int KS, int S, bool ACT>
__device__ __forceinline__ void direct_conv(const float* __restrict__ x,
                                            const float* __restrict__ x2,
                                            const unsigned* __restrict__ wp,
                                            const float* __restrict__ bias,
                                            const float* __restrict__ temb,
                                            const float* __restrict__ residual,
                                            const float* __restrict__ stats,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta,
                                            float* __restrict__ y, float* __restrict__ parts,
                                            unsigned* __restrict__ counters, const ConvShape& s) {
  using G = ConvGeo<MMA, KS, S>;
  DYDIFF_DYNAMIC_SHARED(unsigned, smem);
  // the norm table, per slice channel: (scale, shift) — float32 normalises as the CPU backend
  // does, (v − mean)·scale + beta, and holds (scale, shift, mean, beta)
  constexpr int TW = conv_table_words(MMA);
  float* table = reinterpret_cast<float*>(smem);
  unsigned* wbuf = smem + (ACT ? TW * G::KC * s.slices : 0);
  unsigned* pbuf = wbuf + 2 * G::W_WORDS;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = (warp / 2) * (G::BM / 2), wr = (warp % 2) * 4;  // warp's channels, output rows
  const int tiles = s.tiles_x * s.tiles_y;
  const int n = blockIdx.x / tiles, tile = blockIdx.x - n * tiles;
  const int oy0 = (tile / s.tiles_x) * CONV_TILE, ox0 = (tile % s.tiles_x) * CONV_TILE;
  const int co0 = blockIdx.y * G::BM;
  const int s_begin = blockIdx.z * s.per_split, s_end = min(s.slices, s_begin + s.per_split);
  const int sh = s.upsample ? s.h / 2 : s.h, sw = s.upsample ? s.w / 2 : s.w;
  const int hws = sh * sw, ci2 = s.ci - s.ci1;

  // this thread's patch pixels: their source offset in a channel plane, −1 for padding
  const int pix = tid % G::PIX_THREADS, chan0 = (tid / G::PIX_THREADS) * G::CPT;
  int offs[G::PPT];
#pragma unroll
  for (int q = 0; q < G::PPT; ++q) {
    int e = pix + q * G::PIX_THREADS, off = -1;
    if (e < G::PP) {
      int iy = oy0 * S - s.pad_top + e / G::PC, ix = ox0 * S - s.pad_left + e % G::PC;
      bool inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
      if (!inside && s.circular) {  // (a patch reaching past the padding feeds no output)
        iy += iy < 0 ? s.h : (iy >= s.h ? -s.h : 0);
        ix += ix < 0 ? s.w : (ix >= s.w ? -s.w : 0);
        inside = iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
      }
      if (inside) off = s.upsample ? (iy / 2) * sw + ix / 2 : iy * sw + ix;
    }
    offs[q] = off;
  }

  if constexpr (ACT) {
    const int per_group = s.groups ? s.ci / s.groups : 1;
    for (int i = tid; i < G::KC * s.slices; i += CONV_THREADS) {
      const int c = slice_channel(s, G::KC, i / G::KC, i % G::KC);
      float a = 0.0f, b = 0.0f, m = 0.0f, be = 0.0f;
      if (c >= 0) {
        a = 1.0f;
        if (s.groups) {
          const float* st = stats + 2 * ((long long)n * s.groups + c / per_group);
          m = st[0];
          a = st[1] * gamma[c];
          be = beta[c];
          b = be - m * a;
        }
      }
      if constexpr (TW == 4)
        store_vec<float4>(table + 4 * i, make_float4(a, b, m, be));
      else
        store_vec<float2>(table + 2 * i, make_float2(a, b));
    }
    __syncthreads();
  }

  // the slice's source: channels [16·sl, 16·sl + count) of x or x2 for sample n
  auto source = [&](int sl, int* count) {
    if (sl < s.slices1) {
      *count = min(G::KC, s.ci1 - sl * G::KC);
      return x + ((long long)n * s.ci1 + (long long)sl * G::KC) * hws;
    }
    int s2 = sl - s.slices1;
    *count = min(G::KC, ci2 - s2 * G::KC);
    return x2 + ((long long)n * ci2 + (long long)s2 * G::KC) * hws;
  };
  float raw[G::PPT][G::CPT];
  auto load_patch = [&](int sl) {
    int count;
    const float* src = source(sl, &count);
#pragma unroll
    for (int q = 0; q < G::PPT; ++q) {
      const int valid = offs[q] >= 0 ? count - chan0 : 0;  // channels this thread loads
      const float* p = src + max(offs[q], 0) + (long long)chan0 * hws;
#pragma unroll
      for (int j = 0; j < G::CPT; ++j, p += hws) raw[q][j] = j < valid ? *p : 0.0f;
    }
  };
  auto store_patch = [&](int sl, unsigned* pb) {
    const float* tb = table + TW * (sl * G::KC + chan0);
#pragma unroll
    for (int q = 0; q < G::PPT; ++q) {
      int e = pix + q * G::PIX_THREADS;
      float v[G::CPT];
#pragma unroll
      for (int j = 0; j < G::CPT; j += 2) {
        v[j] = raw[q][j];
        v[j + 1] = raw[q][j + 1];
        if constexpr (ACT && MMA == MMA_F32) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float4 c = load_vec<float4>(tb + 4 * (j + h));
            v[j + h] = (v[j + h] - c.z) * c.x + c.w;
            v[j + h] = offs[q] >= 0 ? v[j + h] / (1.0f + expf(-v[j + h])) : 0.0f;
          }
        } else if constexpr (ACT) {  // the padding is zeroed below, after the rounding
          const float4 c = load_vec<float4>(tb + 2 * j);  // two channels' (scale, shift)
          v[j] = silu_fast(fmaf(v[j], c.x, c.y));
          v[j + 1] = silu_fast(fmaf(v[j + 1], c.z, c.w));
        }
      }
      // the padding is zero after the transform: the operand words of a padding pixel cleared
      const unsigned keep = !ACT || offs[q] >= 0 ? ~0u : 0u;
      if (e < G::PP) {
        unsigned* dst = pb + e * G::PS + chan0 / (MMA == MMA_BF16 ? 2 : 1);
        if constexpr (MMA == MMA_BF16) {
#pragma unroll
          for (int j = 0; j < G::CPT; j += 8)
            store_vec<uint4>(dst + j / 2,
                make_uint4(pack_bf16x2(v[j], v[j + 1]) & keep,
                           pack_bf16x2(v[j + 2], v[j + 3]) & keep,
                           pack_bf16x2(v[j + 4], v[j + 5]) & keep,
                           pack_bf16x2(v[j + 6], v[j + 7]) & keep));
        } else {
          // TF32: each quad of channels stored (c, c+2, c+1, c+3), the B fragments' order
          constexpr int P1 = MMA == MMA_TF32 ? 2 : 1, P2 = MMA == MMA_TF32 ? 1 : 2;
#pragma unroll
          for (int j = 0; j < G::CPT; j += 4)
            store_vec<uint4>(dst + j,
                make_uint4(conv_word<MMA>(v[j]) & keep, conv_word<MMA>(v[j + P1]) & keep,
                           conv_word<MMA>(v[j + P2]) & keep, conv_word<MMA>(v[j + 3]) & keep));
        }
      }
    }
  };
  // the weights of slice sl: the block's 64 rows, contiguous in the prepared weights (whose
  // rows are padded to a multiple of 64 with zeros)
  // (this thread's 16-byte units: one pointer per slice, the units at constant offsets from it)
  const int co_pad = (s.co + G::BM - 1) / G::BM * G::BM;
  const unsigned* wsrc = wp + ((long long)s_begin * co_pad + co0) * G::RS + 4 * tid;
  const long long wstep = (long long)co_pad * G::RS;
  auto load_weights = [&](int sl, unsigned* wb) {
    const unsigned* src = wsrc + (sl - s_begin) * wstep;
    unsigned* dst = wb + 4 * tid;
    static_assert(G::W_WORDS % (4 * CONV_THREADS) == 0, "whole 16-byte copies per thread");
#pragma unroll
    for (int k = 0; k < G::W_WORDS / (4 * CONV_THREADS); ++k)
      cp_async_16(dst + 4 * k * CONV_THREADS, src + 4 * k * CONV_THREADS);
    cp_async_commit();
  };

  float acc[G::MT][4][4];
#pragma unroll
  for (int i = 0; i < G::MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  if (s_begin < s_end) {
    load_weights(s_begin, wbuf);
    load_patch(s_begin);
    store_patch(s_begin, pbuf);
    cp_async_wait<0>();
    __syncthreads();
  }
  for (int sl = s_begin; sl < s_end; ++sl) {
    const int buf = (sl - s_begin) & 1;
    const unsigned* wb = wbuf + buf * G::W_WORDS;
    const unsigned* pb = pbuf + buf * G::P_WORDS;
    const bool more = sl + 1 < s_end;
    if (more) {
      load_weights(sl + 1, wbuf + (buf ^ 1) * G::W_WORDS);
      if constexpr (G::PPT == 1) load_patch(sl + 1);
    }
    // the products of one tap (ky, kx) of the slice
    auto tap_product = [&](int ky, int kx) {
      const int tap = ky * KS + kx;
      // patch pixel of n-tile j (output row wr + j) and column c of the tile
      auto pp = [&](int j, int c) { return ((wr + j) * S + ky) * G::PC + c * S + kx; };
      if constexpr (MMA == MMA_TF32) {
        // per group of 16 channels: one 16-byte load per m16 tile and half q is the A fragment;
        // one per n-tile holds b0, b1 of both halves (channels 4t, 4t+2 | 4t+1, 4t+3)
#pragma unroll
        for (int sub = 0; sub < G::SUBS; ++sub) {
          uint4 af[G::MT][2], bv[4];
#pragma unroll
          for (int i = 0; i < G::MT; ++i)
#pragma unroll
            for (int q = 0; q < 2; ++q)
              af[i][q] = load_vec<uint4>(
                  wb + ((((wm / 16 + i) * G::KK + tap) * G::SUBS + sub) * 2 + q) * 128 + lane * 4);
#pragma unroll
          for (int j = 0; j < 4; ++j)
            bv[j] = load_vec<uint4>(pb + pp(j, g) * G::PS + sub * 16 + 4 * t);
#pragma unroll
          for (int i = 0; i < G::MT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              unsigned b0[2] = {bv[j].x, bv[j].y}, b1[2] = {bv[j].z, bv[j].w};
              mma_m16n8k8_tf32(acc[i][j], &af[i][0].x, b0, acc[i][j]);
              mma_m16n8k8_tf32(acc[i][j], &af[i][1].x, b1, acc[i][j]);
            }
        }
      } else if constexpr (MMA == MMA_BF16) {
        // per group of 16 channels: one 16-byte load per m16 tile is the A fragment; one 8-byte
        // load per n-tile the B fragment (channel pairs 2t, 2t + 1: channels 4t…4t+3)
#pragma unroll
        for (int sub = 0; sub < G::SUBS; ++sub) {
          uint4 af[G::MT];
          uint2 bv[4];
#pragma unroll
          for (int i = 0; i < G::MT; ++i)
            af[i] = load_vec<uint4>(
                wb + (((wm / 16 + i) * G::KK + tap) * G::SUBS + sub) * 128 + lane * 4);
#pragma unroll
          for (int j = 0; j < 4; ++j)
            bv[j] = load_vec<uint2>(pb + pp(j, g) * G::PS + sub * 8 + 2 * t);
#pragma unroll
          for (int i = 0; i < G::MT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
              mma_m16n8k16_bf16(acc[i][j], &af[i].x, &bv[j].x, acc[i][j]);
        }
      } else {
#pragma unroll
        for (int c4 = 0; c4 < G::KC; c4 += 4) {
          float4 av[G::MT][2];
#pragma unroll
          for (int i = 0; i < G::MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              av[i][h] = load_vec<float4>(
                  wb + (wm + 16 * i + g + 8 * h) * G::RS + tap * G::WPC + c4);
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float4 b =
                  load_vec<float4>(pb + pp(j, 2 * t + e) * G::PS + c4);
#pragma unroll
              for (int i = 0; i < G::MT; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const float4 a = av[i][h];
                  float v = acc[i][j][2 * h + e];
                  v = fmaf(a.x, b.x, v);
                  v = fmaf(a.y, b.y, v);
                  v = fmaf(a.z, b.z, v);
                  acc[i][j][2 * h + e] = fmaf(a.w, b.w, v);
                }
            }
        }
      }
    };
    if constexpr (MMA == MMA_F32) {  // FFMA: a rolled loop keeps the registers in bounds
#pragma unroll 1
      for (int tap = 0; tap < G::KK; ++tap) tap_product(tap / KS, tap % KS);
    } else {
#pragma unroll
      for (int ky = 0; ky < KS; ++ky)
#pragma unroll
        for (int kx = 0; kx < KS; ++kx) tap_product(ky, kx);
    }
    if (more) {
      if constexpr (G::PPT > 1) load_patch(sl + 1);
      store_patch(sl + 1, pbuf + (buf ^ 1) * G::P_WORDS);
      cp_async_wait<0>();
    }
    __syncthreads();
  }

  // the epilogue; or, split, this split's partial sums (plane blockIdx.z of n·co·ho·wo), then in
  // the block that arrives last for the tile (kernels/splitk.cuh) their sum and the epilogue
  const long long hw_out = (long long)s.ho * s.wo, plane = (long long)s.n * s.co * hw_out;
  auto finish = [&](int co, long long at, float v) {
    if (bias) v += bias[co];
    if (temb) v += temb[(long long)n * s.co + co];
    if (residual) v += residual[at];
    return v * s.scale;
  };
  const bool split = gridDim.z > 1;
  float* out = split ? parts + blockIdx.z * plane : y;
  // The block's BM channels × 8×8 pixels go through shared memory (the buffers are free: the
  // loop ended at a barrier), channel-major with rows of ES words (≡ 8 mod 32: the warps' 8-byte
  // writes free of bank conflicts), and leave as 16-byte accesses of 4 pixels of a row where the
  // rows' length allows (wo a multiple of 4), a rolled loop. The terms a launch lacks are added
  // as zeros (a split's partial sums take none, and a scale of 1), in `finish`'s order, so that
  // both give the same sums.
  constexpr int PIX = CONV_TILE * CONV_TILE, ES = PIX + 8;
  static_assert(G::BM * ES <= 2 * (G::W_WORDS + G::P_WORDS), "the staging fits the buffers");
  float* stage = reinterpret_cast<float*>(wbuf);
#pragma unroll
  for (int i = 0; i < G::MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        store_vec<float2>(stage + (wm + 16 * i + g + 8 * h) * ES + (wr + j) * CONV_TILE + 2 * t,
                          make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]));
  __syncthreads();
  const float* res = split ? nullptr : residual;
  const float sc = split ? 1.0f : s.scale;
  const bool quads = s.wo % 4 == 0;
  for (int u = tid; u < G::BM * PIX / 4; u += CONV_THREADS) {
    const int cl = u / (PIX / 4), r = u % (PIX / 4) / 2, c4 = 4 * (u % 2);
    const int co = co0 + cl, oy = oy0 + r, ox = ox0 + c4;
    if (co >= s.co || oy >= s.ho || ox >= s.wo) continue;
    const float4 a = load_vec<float4>(stage + cl * ES + r * CONV_TILE + c4);
    const float bv = bias && !split ? bias[co] : 0.0f;
    const float tv = temb && !split ? temb[(long long)n * s.co + co] : 0.0f;
    const long long at = ((long long)n * s.co + co) * hw_out + (long long)oy * s.wo + ox;
    if (quads) {
      const float4 rv = res ? load_vec<float4>(res + at) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      store_vec<float4>(out + at, make_float4((a.x + bv + tv + rv.x) * sc,
                                              (a.y + bv + tv + rv.y) * sc,
                                              (a.z + bv + tv + rv.z) * sc,
                                              (a.w + bv + tv + rv.w) * sc));
    } else {
      const float v[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (ox + e < s.wo) out[at + e] = (v[e] + bv + tv + (res ? res[at + e] : 0.0f)) * sc;
    }
  }
  if (!split || !counters ||
      !splitk_arrive_last(counters + blockIdx.x + gridDim.x * blockIdx.y, gridDim.z))
    return;
  // the tile's BM channels × 8×8 pixels, a rolled loop (consecutive threads, consecutive pixels)
  for (int e = tid; e < G::BM * PIX; e += CONV_THREADS) {
    const int co = co0 + e / PIX, oy = oy0 + e % PIX / CONV_TILE, ox = ox0 + e % CONV_TILE;
    if (co >= s.co || oy >= s.ho || ox >= s.wo) continue;
    const long long at = ((long long)n * s.co + co) * hw_out + (long long)oy * s.wo + ox;
    float v = 0.0f;
    for (unsigned z = 0; z < gridDim.z; ++z) v += splitk_load(parts + z * plane + at);
    y[at] = finish(co, at, v);
  }
}

#define CONV_DIRECT_PARAMS                                                                      \
  const float *__restrict__ x, const float *__restrict__ x2, const unsigned *__restrict__ w,      \
      const float *__restrict__ bias, const float *__restrict__ temb,                            \
      const float *__restrict__ residual, const float *__restrict__ stats,                       \
      const float *__restrict__ gamma, const float *__restrict__ beta, float *__restrict__ y,    \
      float *__restrict__ parts, unsigned *__restrict__ counters, ConvShape s
#define CONV_DIRECT_ARGS x, x2, w, bias, temb, residual, stats, gamma, beta, y, parts, counters, s

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_f32_k3s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_F32, 3, 1, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_f32_k3s1_norm_silu(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_F32, 3, 1, true>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_f32_k3s2(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_F32, 3, 2, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_f32_k1s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_F32, 1, 1, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_tf32_k3s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_TF32, 3, 1, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_tf32_k3s1_norm_silu(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_TF32, 3, 1, true>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_tf32_k3s2(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_TF32, 3, 2, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_tf32_k1s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_TF32, 1, 1, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_bf16_k3s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_BF16, 3, 1, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_bf16_k3s1_norm_silu(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_BF16, 3, 1, true>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_bf16_k3s2(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_BF16, 3, 2, false>(CONV_DIRECT_ARGS);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS, 1)
    conv2d_bf16_k1s1(CONV_DIRECT_PARAMS) {
  direct_conv<MMA_BF16, 1, 1, false>(CONV_DIRECT_ARGS);
}

// The weights as the direct kernels read them, for slices of kc channels (those past the end of
// x's or x2's channels zero) and output channels padded with zero rows to a multiple of the
// block's (conv_block_channels), so that a block's slice is one contiguous range:
//   - f32 (`mma` MMA_F32): wp[slice][co][tap][kc channels];
//   - tf32: per slice, m16 tile of output channels, tap, group of 16 channels and half q, 128
//     words in the order of the
//     mma.m16n8k8 A fragment, lane l = 4g + t holding (g, 4t+q), (g+8, 4t+q), (g, 4t+2+q),
//     (g+8, 4t+2+q) — rounded to TF32 (to nearest);
//   - bf16: per slice, m16 tile, tap and group of 16 channels, 128 words in the order of the
//     mma.m16n8k16 A fragment,
//     lane l holding the channel pairs (g, p), (g+8, p), (g, p+1), (g+8, p+1), p = 2t, a pair
//     (2p, 2p+1) packed with the lower channel in the lower half.
// With `flipped`, w is the weight of the convolution whose input gradient this one computes,
// (ci, co, k, k) in this one's terms, read transposed and rotated by 180°: the input gradient of
// a stride-1 convolution is the convolution of the output gradient with those weights.
// One thread per word: grid (⌈words / 256⌉, co_pad / 16, slices), 256 threads.
// The body for kernel size KS and multiply MMA: every index a division by a constant.
template <int KS, int MMA>
__device__ __forceinline__ void prepare_weights(const float* __restrict__ w,
                                                unsigned* __restrict__ wp, const ConvShape& s,
                                                int flipped) {
  constexpr int kk = KS * KS, kc = conv_slice_channels(KS), subs = kc / 16;
  constexpr int words = 16 * kk * (MMA == MMA_BF16 ? kc / 2 : kc);  // per slice and 16 rows
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= words) return;
  const int blk = blockIdx.y, sl = blockIdx.z;
  unsigned* out = wp + ((long long)sl * gridDim.y + blk) * words + r;
  // channel j of slice sl, row co, tap
  auto value = [&](int co, int j, int tap) {
    const int c = slice_channel(s, kc, sl, j);
    if (co >= s.co || c < 0) return 0.0f;
    return flipped ? w[((long long)c * s.co + co) * kk + (kk - 1 - tap)]
                   : w[((long long)co * s.ci + c) * kk + tap];
  };
  if constexpr (MMA == MMA_F32) {  // r = (row·kk + tap)·kc + j
    const int j = r % kc, tap = (r / kc) % kk, row = r / (kc * kk);
    *out = __float_as_uint(value(blk * 16 + row, j, tap));
    return;
  }
  const int e = r % 4, lane = (r / 4) % 32, g = lane / 4, t = lane % 4;
  const int co = blk * 16 + g + 8 * (e & 1);
  if constexpr (MMA == MMA_TF32) {  // r = (((tap·subs + sub)·2 + q)·32 + lane)·4 + e
    const int q = (r / 128) % 2, sub = (r / 256) % subs, tap = r / (256 * subs);
    *out = f32_to_tf32(value(co, 16 * sub + 4 * t + q + 2 * (e >> 1), tap));
  } else {  // r = ((tap·subs + sub)·32 + lane)·4 + e
    const int sub = (r / 128) % subs, tap = r / (128 * subs), p = 2 * t + (e >> 1);
    *out = pack_bf16x2(value(co, 16 * sub + 2 * p, tap), value(co, 16 * sub + 2 * p + 1, tap));
  }
}

// conv2d_weights_k{1,3}_{f32,tf32,bf16}: grid (⌈words / 256⌉, co_pad / 16, slices), word r of the
// 16 rows blockIdx.y of slice blockIdx.z — a kernel per size and multiply, so that each holds only
// its own index arithmetic.
extern "C" __global__ void conv2d_weights_k1_f32(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<1, MMA_F32>(w, wp, s, flipped);
}
extern "C" __global__ void conv2d_weights_k1_tf32(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<1, MMA_TF32>(w, wp, s, flipped);
}
extern "C" __global__ void conv2d_weights_k1_bf16(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<1, MMA_BF16>(w, wp, s, flipped);
}
extern "C" __global__ void conv2d_weights_k3_f32(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<3, MMA_F32>(w, wp, s, flipped);
}
extern "C" __global__ void conv2d_weights_k3_tf32(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<3, MMA_TF32>(w, wp, s, flipped);
}
extern "C" __global__ void conv2d_weights_k3_bf16(const float* __restrict__ w,
                                                 unsigned* __restrict__ wp, ConvShape s,
                                                 int flipped) {
  prepare_weights<3, MMA_BF16>(w, wp, s, flipped);
}

// The split-K finish of the direct kernels: y = (Σ_z parts[z] + bias[c] + temb[n, c] +
// residual)·scale over y (n, co, hw), the planes z added in order. One thread per output.
extern "C" __global__ void conv2d_finish_f32(const float* __restrict__ parts,
                                             const float* __restrict__ bias,
                                             const float* __restrict__ temb,
                                             const float* __restrict__ residual,
                                             float* __restrict__ y, int n, int co, long long hw,
                                             int splits, float scale) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x, len = (long long)n * co * hw;
  if (i >= len) return;
  float v = 0.0f;
  for (int z = 0; z < splits; ++z) v += parts[z * len + i];
  long long nc = i / hw;
  if (bias) v += bias[nc % co];
  if (temb) v += temb[nc];
  if (residual) v += residual[i];
  y[i] = v * scale;
}

// The generic path (any kernel size, stride and padding): the input's columns, transformed as
// the direct kernels transform it (group norm, SiLU, upsampling, concatenation, circular padding),
// for a batched GEMM of kernels/gemm.cu with the weights (rows the output channels, columns the
// output pixels of each image, reduction ci·k²):
//
//   cols[n][oy·wo + ox][c·k² + ky·k + kx] = x̃[n, c, oy·stride + ky − pad_top, ox·stride + kx − pad_left]
//
// One thread per value, 256 per block.
extern "C" __global__ void conv2d_im2col_f32(const float* __restrict__ x,
                                             const float* __restrict__ x2,
                                             const float* __restrict__ stats,
                                             const float* __restrict__ gamma,
                                             const float* __restrict__ beta,
                                             float* __restrict__ cols, ConvShape s) {
  const int kk = s.k * s.k, K = s.ci * kk;
  const long long hw_out = (long long)s.ho * s.wo;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= s.n * hw_out * K) return;
  const long long np = i / K;  // n·hw_out + p
  const int k = int(i - np * K), n = int(np / hw_out), p = int(np - n * hw_out);
  const int sh = s.upsample ? s.h / 2 : s.h, sw = s.upsample ? s.w / 2 : s.w;  // stored size
  const int oy = p / s.wo, ox = p - oy * s.wo;
  const int c = k / kk, tap = k - c * kk, ky = tap / s.k, kx = tap - ky * s.k;
  int iy = oy * s.stride + ky - s.pad_top, ix = ox * s.stride + kx - s.pad_left;
  if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) {  // padding of the transformed input
    if (!s.circular) {
      cols[i] = 0.0f;
      return;
    }
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
    const float* st = stats + 2 * ((long long)n * s.groups + c / (s.ci / s.groups));
    v = (v - st[0]) * st[1] * gamma[c] + beta[c];
  }
  if (s.silu) v = v / (1.0f + expf(-v));
  cols[i] = v;
}

// ---------------------------------------------------------------------------------------------
// The gradients (the backward rule of src/autograd.rs, the semantics of the CPU
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
// Launch: conv2d_col2im_f32 one thread per output value, 256 per block; the packs one thread per
// cell, 256 per block, grid (⌈row length/256⌉, channels, s for the input's phase rows, else 1);
// conv2d_wgrad_tf32/bf16 as gemm_tf32 (grid (⌈ci·k²/64⌉, ⌈co/64⌉·splits, 1), 128 threads,
// gemm_shared_bytes); conv2d_wgrad_f32 grid (⌈ci·k²/64⌉, ⌈co/64⌉, splits), 128 threads.
// Benchmark: `dydiff bench train --device cuda` (per-kernel times), the GPU check script and
// python/sass_model.py.

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
struct WgradGrid : ConvBwdShape {  // the convolution's shape, then the grid's
  int hq, wq;
  long long cells, ld, k_len;  // cells below 2^31
  unsigned cells_mul, cells_shift, wq_mul, wq_shift;  // division by hq·wq and by wq (fast_div)
};
static_assert(sizeof(WgradGrid) == 96, "src/backend/cuda/conv.rs lays WgradGrid out so");

// The packs: one thread per cell q, 256 per block, grid (⌈row length/256⌉, channels, s): a block's
// cells of one channel (and, for the input, one phase row a: the thread writes phases (a, 0 … s−1)),
// each thread's cell (n, i, j) from q by two divisions by a multiply and a shift (the constants in
// the grid, made on the host).
__device__ __forceinline__ void wgrad_cell(const WgradGrid& g, unsigned q, int* n, int* i, int* j) {
  *n = int(fast_div(q, g.cells_mul, g.cells_shift));
  const unsigned cell = q - unsigned(*n) * unsigned(g.hq * g.wq);
  *i = int(fast_div(cell, g.wq_mul, g.wq_shift));
  *j = int(cell) - *i * g.wq;
}

// xp[(phase·ci + c)·ld + q]: the padded input at phase (a, b) (phase = a·s + b), cell q =
// (n, i, j) → padded row s·i + a, column s·j + b; zero past the cells and in zero padding (one
// wrap with circular padding, which is at most the image: the cells read past it meet dy = 0).
extern "C" __global__ void conv2d_phase_pack_f32(const float* __restrict__ x,
                                                 float* __restrict__ xp, WgradGrid g) {
  const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= g.ld) return;
  const int c = blockIdx.y, a = blockIdx.z;
  const float* row = nullptr;  // the input row of the cell's phase row; null: zeros
  int x0 = 0;
  if (q < g.cells) {
    int n, i, j;
    wgrad_cell(g, unsigned(q), &n, &i, &j);
    int y = g.stride * i + a - g.pad_top;
    if (g.circular) y += y < 0 ? g.h : (y >= g.h ? -g.h : 0);
    if (y >= 0 && y < g.h) row = x + (((long long)n * g.ci + c) * g.h + y) * g.w;
    x0 = g.stride * j - g.pad_left;
  }
  float* out = xp + ((long long)a * g.stride * g.ci + c) * g.ld + q;
  const long long phase_step = (long long)g.ci * g.ld;
#pragma unroll 1  // (s is 1 or 2 in practice: a rolled loop issues what runs)
  for (int b = 0; b < g.stride; ++b, out += phase_step) {
    int xx = x0 + b;
    if (g.circular) xx += xx < 0 ? g.w : (xx >= g.w ? -g.w : 0);
    *out = row && xx >= 0 && xx < g.w ? row[xx] : 0.0f;
  }
}

// dyp[co][q] (rows k_len long): dy at cell q = (n, i, j) when i < ho and j < wo, else zero.
extern "C" __global__ void conv2d_grid_pack_f32(const float* __restrict__ dy,
                                                float* __restrict__ dyp, WgradGrid g) {
  const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= g.k_len) return;
  const int co = blockIdx.y;
  float v = 0.0f;
  if (q < g.cells) {
    int n, i, j;
    wgrad_cell(g, unsigned(q), &n, &i, &j);
    if (i < g.ho && j < g.wo) v = dy[(((long long)n * g.co + co) * g.ho + i) * g.wo + j];
  }
  dyp[(long long)co * g.k_len + q] = v;
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
