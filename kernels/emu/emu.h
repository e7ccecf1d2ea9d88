// The CUDA programming model on the host: what a kernel source in kernels/ sees when it is
// compiled by a C++ compiler instead of nvcc, so that the unchanged kernels run in `cargo test`
// on a machine without a GPU (docs/devices.md, “The emulator”).
//
// A launch runs its blocks one after another on the calling OS thread; each block's threads are
// fibers (kernels/emu/emu.cpp) that run until they reach a point where CUDA threads wait for one
// another — __syncthreads, a warp collective (__syncwarp, shuffles, votes, the tensor-core
// instructions of kernels/ptx.cuh) — or finish. Static shared memory (DYDIFF_SHARED) is a guarded
// region per declaration and launch, refilled with NaN bytes for every block, as dynamic shared
// memory is. Anything that cannot happen on a GPU without undefined behaviour is an error naming
// the kernel, the block and the thread: a barrier that not every thread of the block reaches, a
// warp collective whose mask names a lane that has exited, does not exist or waits elsewhere, an
// access outside an allocation or shared memory (they sit between guard pages) or a fiber's stack
// overflow; and a launch the GPU would refuse (kernels/emu/emu.cpp: launch bounds, registers,
// shared memory) is refused.
//
// Not modelled: timing, memory ordering between blocks (blocks run one at a time, so atomics are
// trivially atomic), texture and constant memory, cooperative groups, clusters.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Static shared memory is declared with DYDIFF_SHARED (below), which the emulator can check.
#define __shared__ \
  static_assert(false, "declare static shared memory with DYDIFF_SHARED (kernels/ptx.cuh)");
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))

// Dynamic shared memory (`extern __shared__ T name[]` on the device): the launch's shared bytes.
#define DYDIFF_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dynamic_shared())

// Static shared memory (`__shared__ T name dims;` on the device, kernels/ptx.cuh): one region per
// declaration and launch, between guard pages like every allocation (an access past either end
// is an error) and filled with NaN bytes when a block first reaches the declaration, so that a
// read of what no thread of the block wrote shows. The site (one per declaration, per OS thread)
// remembers its region for the block it was last reached in.
#define DYDIFF_SHARED(T, name, dims)                  \
  using name##_type_ = T dims;                        \
  static thread_local ::emu::SharedSite name##_site_; \
  name##_type_& name = *static_cast<name##_type_*>(name##_site_.get(sizeof(name##_type_)))

// ---------------------------------------------------------------- built-in variables
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {

// The state of the calling fiber (one CUDA thread).
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned lane;  // linear thread index % 32
};

__attribute__((pure)) const ThreadState& self();
void* dynamic_shared();

// The running block's number, unique among all blocks of all launches.
unsigned long long block_serial();
// The region of `bytes` for static shared memory declared at `site` in the running launch,
// filled with NaN bytes (a new block).
void* static_shared(const void* site, size_t bytes);

struct SharedSite {
  unsigned long long block = 0;
  void* region = nullptr;
  void* get(size_t bytes) {
    const unsigned long long b = block_serial();
    if (b != block) {
      region = static_shared(this, bytes);
      block = b;
    }
    return region;
  }
};

// Waits until every thread of the block is here (__syncthreads).
void block_barrier();

// Warp collective: deposits `bytes` (at most kSlotBytes) of `in` for this lane and waits until
// every lane of `mask` has deposited at a collective of the same `kind` and mask; returns the
// 32-slot table, slot `l` holding lane l's deposit (kSlotBytes apart). The table stays valid until
// this lane's next collective.
constexpr size_t kSlotBytes = 128;
const unsigned char* warp_exchange(unsigned mask, const void* in, size_t bytes, const char* kind);

// cp.async (kernels/ptx.cuh): queues a copy of `bytes` bytes to shared memory, the first
// `src_bytes` from `src` and the rest zeros; closes the current group; carries out the copies of
// every group but the `n` most recently committed.
void async_copy(void* dst, const void* src, size_t bytes, size_t src_bytes);
void async_commit();
void async_wait(int n);

// Stops the launch with an error naming the kernel, block and thread (for checks in kernels/ptx.cuh).
[[noreturn]] void fail(const char* what);

template <typename T>
T slot(const unsigned char* table, unsigned lane) {
  T v;
  std::memcpy(&v, table + lane * kSlotBytes, sizeof(T));
  return v;
}

}  // namespace emu

#define threadIdx (::emu::self().thread_idx)
#define blockIdx (::emu::self().block_idx)
#define blockDim (::emu::self().block_dim)
#define gridDim (::emu::self().grid_dim)
constexpr int warpSize = 32;

// ---------------------------------------------------------------- synchronisation
inline void __syncthreads() { ::emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::emu::warp_exchange(mask, nullptr, 0, "__syncwarp");
}
inline void __threadfence() {}
// A load that bypasses L1 (ld.global.cg): the same load here, where memory has no caches.
template <typename T>
T __ldcg(const T* p) {
  return *p;
}
inline void __threadfence_block() {}
inline unsigned __activemask() {
  // Every lane of the warp that exists is active at a convergence point in this model.
  const auto& s = ::emu::self();
  unsigned n = s.block_dim.x * s.block_dim.y * s.block_dim.z;
  unsigned lin = s.thread_idx.x + s.block_dim.x * (s.thread_idx.y + s.block_dim.y * s.thread_idx.z);
  unsigned first = lin - s.lane;
  unsigned live = n - first >= 32 ? 32 : n - first;
  return live == 32 ? 0xffffffffu : (1u << live) - 1;
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  auto t = ::emu::warp_exchange(mask, &v, sizeof(T), "__shfl_sync");
  unsigned lane = ::emu::self().lane;
  unsigned from = (lane & ~unsigned(width - 1)) + (unsigned(src) & unsigned(width - 1));
  if (!(mask >> from & 1u)) ::emu::fail("__shfl_sync reads a lane outside its mask");
  return ::emu::slot<T>(t, from);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  auto t = ::emu::warp_exchange(mask, &v, sizeof(T), "__shfl_xor_sync");
  unsigned lane = ::emu::self().lane;
  unsigned from = lane ^ unsigned(lane_mask);
  if ((from & ~unsigned(width - 1)) != (lane & ~unsigned(width - 1))) return v;
  if (!(mask >> from & 1u)) ::emu::fail("__shfl_xor_sync reads a lane outside its mask");
  return ::emu::slot<T>(t, from);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  auto t = ::emu::warp_exchange(mask, &v, sizeof(T), "__shfl_down_sync");
  unsigned lane = ::emu::self().lane;
  if ((lane & unsigned(width - 1)) + delta >= unsigned(width)) return v;
  unsigned from = lane + delta;
  if (!(mask >> from & 1u)) ::emu::fail("__shfl_down_sync reads a lane outside its mask");
  return ::emu::slot<T>(t, from);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  auto t = ::emu::warp_exchange(mask, &v, sizeof(T), "__shfl_up_sync");
  unsigned lane = ::emu::self().lane;
  if ((lane & unsigned(width - 1)) < delta) return v;
  unsigned from = lane - delta;
  if (!(mask >> from & 1u)) ::emu::fail("__shfl_up_sync reads a lane outside its mask");
  return ::emu::slot<T>(t, from);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  int p = pred != 0;
  auto t = ::emu::warp_exchange(mask, &p, sizeof p, "__ballot_sync");
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && ::emu::slot<int>(t, l)) bits |= 1u << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---------------------------------------------------------------- atomics
// Blocks run one at a time and a fiber is never interrupted between two collectives, so plain
// read-modify-write is atomic here; the GCC builtins keep it so if blocks ever run in parallel.
template <typename T>
T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  } else {
    T old = *p, next;
    do {
      next = old + v;
    } while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
  }
}
template <typename T>
T atomicMax(T* p, T v) {
  return __atomic_fetch_max(p, v, __ATOMIC_RELAXED);
}
template <typename T>
T atomicMin(T* p, T v) {
  return __atomic_fetch_min(p, v, __ATOMIC_RELAXED);
}
template <typename T>
T atomicExch(T* p, T v) {
  return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}
template <typename T>
T atomicCAS(T* p, T expected, T desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

// ---------------------------------------------------------------- math and bit casts
// The device's intrinsics with the host's correctly rounded functions: where CUDA's fast versions
// (__expf, __fdividef, rsqrtf) differ from them it is by a few ulp, inside every kernel test's
// tolerance; the exact ones (fmaf, __fmul_rn, __umulhi, conversions) are exact here too.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int __float_as_int(float x) { return int(__float_as_uint(x)); }
inline float __int_as_float(int i) { return __uint_as_float(unsigned(i)); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return unsigned((uint64_t(a) * uint64_t(b)) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((__uint128_t)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __int2float_rn(int i) { return float(i); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(std::floor(x)); }
inline unsigned __float2uint_rz(float x) { return unsigned(x); }
inline float __uint2float_rn(unsigned u) { return float(u); }

// expf, sqrtf, fmaf, fminf, … are the C library's (correctly rounded or within an ulp);
// isfinite is C++'s (a macro in C, a template in <cmath>), as CUDA's overloads for float and double.
using std::isfinite;
template <typename T>
T min(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
T max(T a, T b) {
  return a > b ? a : b;
}
