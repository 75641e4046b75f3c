// Every kernel launch of the CUDA backend goes through Launch(): under nvcc it
// is `kernel<<<grid, block, shared_bytes, stream>>>(args...)`; in the emulated
// build (engine/cuda/emu/) it runs the grid on the CPU with the same checks
// the hardware makes. Errors surface through cudaGetLastError in both.
#pragma once

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "engine/cuda/runtime.h"

namespace moeserve::cuda {

template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "Launch: wrong number of kernel arguments");
#if defined(MOESERVE_CUDA_EMU)
  // Converted once to the kernel's parameter types, as the launch does.
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  emu::LaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream,
                    [&] { std::apply(kernel, params); });
#else
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

}  // namespace moeserve::cuda
