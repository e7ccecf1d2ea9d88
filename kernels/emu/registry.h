// The emulator's table of kernels: for each `extern "C" __global__` function, its name, the size of
// each parameter, and a function that calls it with the launch's raw argument pointers (what
// cuLaunchKernel's `kernelParams` are on the GPU), and its resource figures. build.rs writes one
// table per kernels/*.cu (`EMU_KERNEL(name, max threads, registers, static shared bytes)` for
// every kernel it finds) and the function that lists them all.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace emu {

struct Kernel {
  const char* name;
  size_t params;
  const size_t* param_sizes;
  void (*invoke)(void** args);
  // What the GPU holds a launch to (0: not known): the most threads per block its
  // __launch_bounds__ allow, and its machine code's registers per thread and static shared bytes
  // (build.rs, from nvcc's build where there is one).
  unsigned max_threads;
  unsigned registers;
  unsigned static_shared;
};

template <auto F>
struct Invoker;

template <typename... A, void (*F)(A...)>
struct Invoker<F> {
  static constexpr size_t params = sizeof...(A);
  static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};
  template <size_t... I>
  static void call(void** args, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
  }
  static void invoke(void** args) { call(args, std::index_sequence_for<A...>{}); }
};

}  // namespace emu

#define EMU_KERNEL(f, max_threads, registers, static_shared)                                 \
  ::emu::Kernel {                                                                             \
    #f, ::emu::Invoker<&f>::params, ::emu::Invoker<&f>::sizes, &::emu::Invoker<&f>::invoke,   \
        unsigned(max_threads), registers, static_shared                                       \
  }
