#include "engine/cpu/kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace moeserve::cpu {

const float kFp4Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float E8m0ToFloat(uint8_t s) { return std::ldexp(1.0f, static_cast<int>(s) - 127); }

void PermuteForMxfp4(const float* x, float* x_perm, int64_t k) {
  for (int64_t g = 0; g < k; g += 32) {
    for (int j = 0; j < 16; ++j) {
      x_perm[g + j] = x[g + 2 * j];
      x_perm[g + 16 + j] = x[g + 2 * j + 1];
    }
  }
}

namespace {

std::vector<const Kernels*> Detect() {
  std::vector<const Kernels*> v;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
    v.push_back(&kAvx512Kernels);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back(&kAvx2Kernels);
  v.push_back(&kGenericKernels);
  return v;
}

const std::vector<const Kernels*>& Supported() {
  static const std::vector<const Kernels*> v = Detect();
  return v;
}

}  // namespace

int NumSupportedKernels() { return static_cast<int>(Supported().size()); }
const Kernels& SupportedKernels(int i) { return *Supported()[i]; }

const Kernels& ActiveKernels() {
  static const Kernels* k = [] {
    const char* want = std::getenv("MOESERVE_CPU_ISA");
    for (const Kernels* c : Supported()) {
      if (!want || !*want || std::strcmp(want, c->name) == 0) return c;
    }
    return Supported().back();
  }();
  return *k;
}

}  // namespace moeserve::cpu
