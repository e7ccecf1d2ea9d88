// Every inline PTX instruction the kernels use, each in a small device function, so that kernel
// sources have no #ifdef: on the device the PTX itself; on the emulator (kernels/emu/emu.h) a host
// version that follows the PTX ISA's fragment layouts (PTX ISA 8.x, "Matrix fragments for
// mma.m16n8k8" / "mma.m16n8k16", "ldmatrix", "cp.async") and rounds operands as the hardware does.
//
// Fragments of the warp-wide mma.sync, with g = lane / 4 and t = lane % 4 (rows, columns):
//   m16n8k8 .tf32:  A 16×8 row: a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//                   B 8×8 col:  b0 (t, g)  b1 (t+4, g)
//   m16n8k16 .bf16: A 16×16 row, two bf16 per register (lower half the lower column):
//                   a0 (g, 2t..2t+1)  a1 (g+8, 2t..2t+1)  a2 (g, 2t+8..2t+9)  a3 (g+8, 2t+8..2t+9)
//                   B 16×8 col: b0 (2t..2t+1, g)  b1 (2t+8..2t+9, g)
//   C, D 16×8 f32 (both shapes): c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// The tensor cores read a .tf32 operand's upper 19 bits (sign, exponent, 10 mantissa bits): the
// emulator truncates likewise, forms the products exactly and accumulates in float64, rounding
// once to float32 (the hardware's accumulation order is not specified; tests allow for it).
#pragma once

#if defined(__CUDA_ARCH__)

// The launch's dynamic shared memory as an array of T (16-byte aligned); on the emulator
// kernels/emu/emu.h defines the same.
#define DYDIFF_DYNAMIC_SHARED(T, name)                        \
  extern __shared__ __align__(16) unsigned char dydiff_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(dydiff_dynamic_shared_)

// Static shared memory: `DYDIFF_SHARED(float, tile, [32][33]);` declares `__shared__ float
// tile[32][33]` (16-byte aligned); `DYDIFF_SHARED(int, flag, );` a scalar. On the emulator
// (kernels/emu/emu.h) the same declaration gets memory between guard pages, filled with NaN bytes
// at every block's start — the checks dynamic shared memory has.
#define DYDIFF_SHARED(T, name, dims) __shared__ __align__(16) T name dims

// The float x rounded to TF32 (to nearest, ties away from zero), in a 32-bit register.
__device__ __forceinline__ unsigned f32_to_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// The float x as an mma .tf32 operand rounded to nearest (ties away from zero, as cvt.rna): its
// bits plus half a TF32 unit, the low 13 bits left for the tensor cores to ignore; Inf and NaN
// unchanged, and a value that rounds past the largest float becomes Inf. Two instructions where
// cvt.rna.tf32.f32 takes five.
__device__ __forceinline__ unsigned tf32_for_mma(float x) {
  unsigned u = __float_as_uint(x);
  return fabsf(x) < __int_as_float(0x7f800000) ? u + 0x1000u : u;
}

// A vector access (uint2, uint4, float4: 8 or 16 bytes) to shared or global memory, which the GPU
// requires to be aligned to its size (a misaligned one is a fault there); the emulator checks it.
template <class V>
__device__ __forceinline__ V load_vec(const void* p) {
  return *reinterpret_cast<const V*>(p);
}
template <class V>
__device__ __forceinline__ void store_vec(void* p, V v) {
  *reinterpret_cast<V*>(p) = v;
}

// Two floats rounded to bf16 (to nearest, ties to even) in one register, lo in the lower half.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// SiLU, x·σ(x) = x / (1 + 2^(−x·log₂e)), with the special-function unit's exponential and
// reciprocal on float32 flushed to zero at subnormals (ex2.approx.ftz, rcp.approx.ftz: relative
// errors about 2⁻²² each): four instructions where __expf and __fdividef take eight (their
// subnormal fix-ups). For x → −∞ the exponential overflows to Inf and the result is −0.
__device__ __forceinline__ float silu_fast(float x) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.0f + e));
  return x * r;
}

// d = a·b + c on the tensor cores, m16n8k8 with TF32 operands and f32 accumulators.
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                 const unsigned b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

// d = a·b + c on the tensor cores, m16n8k16 with bf16 operands and f32 accumulators.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4],
                                                  const unsigned b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

// Four 8×8 matrices of 16-bit elements from shared memory: lane 8i+r gives the address of row r
// of matrix i (16 bytes, 16-byte aligned); lane l receives in r[i] row l/4, elements 2(l%4) and
// 2(l%4)+1 of matrix i (transposed: column l/4, rows 2(l%4) and 2(l%4)+1).
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
  unsigned a = unsigned(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) {
  unsigned a = unsigned(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Asynchronous 16-byte copy global → shared (both 16-byte aligned), bypassing registers; with
// src_bytes < 16 the rest of the 16 bytes is zero-filled (ragged edges).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, unsigned src_bytes = 16) {
  unsigned a = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(gmem), "r"(src_bytes));
}
// Closes the group of the copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

#else  // the emulator

namespace emu_ptx {

inline float tf32_operand(unsigned bits) { return __uint_as_float(bits & 0xffffe000u); }
inline float bf16_lo(unsigned pair) { return __uint_as_float(pair << 16); }
inline float bf16_hi(unsigned pair) { return __uint_as_float(pair & 0xffff0000u); }

struct MmaDeposit {
  unsigned a[4], b[2];
  float c[4];
};

// The m16n8 accumulator fragment of this lane from the gathered A (16×K) and B (K×8) elements.
template <int K>
void mma_finish(float d[4], const float (&A)[16][K], const float (&B)[K][8],
                const unsigned char* table) {
  unsigned lane = ::emu::self().lane, g = lane / 4, t = lane % 4;
  MmaDeposit mine = ::emu::slot<MmaDeposit>(table, lane);
  for (int i = 0; i < 4; ++i) {
    int row = g + 8 * (i / 2), col = 2 * int(t) + i % 2;
    double acc = mine.c[i];
    for (int k = 0; k < K; ++k) acc += double(A[row][k]) * double(B[k][col]);
    d[i] = float(acc);
  }
}

}  // namespace emu_ptx

inline unsigned bf16_bits(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u >> 16) | ((u & 0xffffu) ? 0x40u : 0u);  // NaN stays NaN
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // nearest, ties to even
}
inline unsigned pack_bf16x2(float lo, float hi) { return bf16_bits(lo) | bf16_bits(hi) << 16; }

inline float silu_fast(float x) { return x / (1.0f + std::exp(-x)); }

inline unsigned f32_to_tf32(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // Inf and NaN pass through
  return (u + 0x1000u) & 0xffffe000u;               // nearest, ties away from zero (magnitude)
}

namespace emu_ptx {
template <class V>
void check_aligned(const void* p) {
  static_assert(sizeof(V) == 8 || sizeof(V) == 16, "a vector of 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(p) % sizeof(V))
    ::emu::fail(sizeof(V) == 16 ? "a 16-byte vector access is not 16-byte aligned"
                                : "an 8-byte vector access is not 8-byte aligned");
}
}  // namespace emu_ptx

template <class V>
V load_vec(const void* p) {
  emu_ptx::check_aligned<V>(p);
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V>
void store_vec(void* p, V v) {
  emu_ptx::check_aligned<V>(p);
  std::memcpy(p, &v, sizeof(V));
}

inline unsigned tf32_for_mma(float x) {
  unsigned u = __float_as_uint(x);
  return std::fabs(x) < INFINITY ? u + 0x1000u : u;
}

inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                             const float c[4]) {
  emu_ptx::MmaDeposit dep{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
  auto table = ::emu::warp_exchange(0xffffffffu, &dep, sizeof dep, "mma.m16n8k8.tf32");
  float A[16][8], B[8][8];
  for (unsigned l = 0; l < 32; ++l) {
    auto p = ::emu::slot<emu_ptx::MmaDeposit>(table, l);
    unsigned g = l / 4, t = l % 4;
    A[g][t] = emu_ptx::tf32_operand(p.a[0]);
    A[g + 8][t] = emu_ptx::tf32_operand(p.a[1]);
    A[g][t + 4] = emu_ptx::tf32_operand(p.a[2]);
    A[g + 8][t + 4] = emu_ptx::tf32_operand(p.a[3]);
    B[t][g] = emu_ptx::tf32_operand(p.b[0]);
    B[t + 4][g] = emu_ptx::tf32_operand(p.b[1]);
  }
  emu_ptx::mma_finish<8>(d, A, B, table);
}

inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                              const float c[4]) {
  emu_ptx::MmaDeposit dep{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {c[0], c[1], c[2], c[3]}};
  auto table = ::emu::warp_exchange(0xffffffffu, &dep, sizeof dep, "mma.m16n8k16.bf16");
  float A[16][16], B[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    auto p = ::emu::slot<emu_ptx::MmaDeposit>(table, l);
    unsigned g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      unsigned c0 = 2 * t + 8 * h;
      A[g][c0] = emu_ptx::bf16_lo(p.a[2 * h]);
      A[g][c0 + 1] = emu_ptx::bf16_hi(p.a[2 * h]);
      A[g + 8][c0] = emu_ptx::bf16_lo(p.a[2 * h + 1]);
      A[g + 8][c0 + 1] = emu_ptx::bf16_hi(p.a[2 * h + 1]);
      B[c0][g] = emu_ptx::bf16_lo(p.b[h]);
      B[c0 + 1][g] = emu_ptx::bf16_hi(p.b[h]);
    }
  }
  emu_ptx::mma_finish<16>(d, A, B, table);
}

namespace emu_ptx {
template <bool Trans>
void ldmatrix_x4(unsigned r[4], const void* row) {
  auto addr = reinterpret_cast<uintptr_t>(row);
  if (addr % 16 != 0) ::emu::fail("ldmatrix: a row address is not 16-byte aligned");
  auto table = ::emu::warp_exchange(0xffffffffu, &addr, sizeof addr,
                                    Trans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
  unsigned lane = ::emu::self().lane;
  for (unsigned i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!Trans) {
      auto base = ::emu::slot<uintptr_t>(table, 8 * i + lane / 4);
      std::memcpy(&lo, reinterpret_cast<const void*>(base + 4 * (lane % 4)), 2);
      std::memcpy(&hi, reinterpret_cast<const void*>(base + 4 * (lane % 4) + 2), 2);
    } else {
      auto r0 = ::emu::slot<uintptr_t>(table, 8 * i + 2 * (lane % 4));
      auto r1 = ::emu::slot<uintptr_t>(table, 8 * i + 2 * (lane % 4) + 1);
      std::memcpy(&lo, reinterpret_cast<const void*>(r0 + 2 * (lane / 4)), 2);
      std::memcpy(&hi, reinterpret_cast<const void*>(r1 + 2 * (lane / 4)), 2);
    }
    r[i] = unsigned(lo) | unsigned(hi) << 16;
  }
}
}  // namespace emu_ptx

inline void ldmatrix_x4(unsigned r[4], const void* row) { emu_ptx::ldmatrix_x4<false>(r, row); }
inline void ldmatrix_x4_trans(unsigned r[4], const void* row) {
  emu_ptx::ldmatrix_x4<true>(r, row);
}

// The copies are queued per thread and carried out when a wait retires their group, so a kernel
// that reads shared memory before waiting reads what was there before (as a GPU may).
inline void cp_async_16(void* smem, const void* gmem, unsigned src_bytes = 16) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 || reinterpret_cast<uintptr_t>(gmem) % 16)
    ::emu::fail("cp.async: an address is not 16-byte aligned");
  if (src_bytes > 16) ::emu::fail("cp.async: more than 16 source bytes");
  ::emu::async_copy(smem, gmem, 16, src_bytes);
}
inline void cp_async_commit() { ::emu::async_commit(); }
template <int N>
void cp_async_wait() {
  ::emu::async_wait(N);
}

#endif

// q / d for q below 2^31 by a multiply and a shift (Granlund and Montgomery's round-up method, as
// CUTLASS's FastDivmod): shift = ⌈log₂ d⌉, mul = ⌊2³²·(2^shift − d)/d⌋ + 1, made once on the host
// (src/backend/cuda/check.rs, `fast_div`) — where a run-time division is some twenty instructions.
__device__ __forceinline__ unsigned fast_div(unsigned q, unsigned mul, unsigned shift) {
  return (__umulhi(q, mul) + q) >> shift;
}
