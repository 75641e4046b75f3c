// FP8 E4M3 (the OCP "E4M3FN" format of torch.float8_e4m3fn and vLLM's fp8 KV
// cache): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no
// infinities, S.1111.111 is NaN, the largest finite value is 448 and the
// smallest subnormal 2^-9. Conversions for the host and (with nvcc, or the
// CUDA emulation) the device, from bits only.
//
// F32ToE4m3 rounds to nearest, ties to even, and saturates out-of-range
// values to +-448 (as the KV-cache kernels of vLLM do with SATFINITE); NaN
// stays NaN.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MOE_FP8_FN __host__ __device__ __forceinline__
#else
#define MOE_FP8_FN inline
#endif

namespace moeserve {

constexpr float kE4m3Max = 448.0f;

MOE_FP8_FN uint32_t Fp8FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

MOE_FP8_FN float Fp8BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

MOE_FP8_FN float E4m3ToF32(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80) << 24;
  const uint32_t e = (v >> 3) & 15, m = v & 7;
  if (e == 15 && m == 7) return Fp8BitsFloat(sign | 0x7fc00000u);  // NaN
  if (e == 0) {  // subnormal: m * 2^-9
    const float a = static_cast<float>(m) * 0.001953125f;
    return sign ? -a : a;
  }
  return Fp8BitsFloat(sign | ((e - 7 + 127) << 23) | (m << 20));
}

MOE_FP8_FN uint8_t F32ToE4m3(float f) {
  uint32_t u = Fp8FloatBits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7f;         // NaN
  if (u >= 0x43e00000u) return sign | 0x7e;        // >= 448 (and inf): saturate
  if (u < 0x3c800000u) {                           // < 2^-6: subnormal, in units of 2^-9
    const float a = Fp8BitsFloat(u) * 512.0f;      // exact: a power-of-two scale, a < 8
    uint32_t q = static_cast<uint32_t>(a);
    const float frac = a - static_cast<float>(q);  // exact
    if (frac > 0.5f || (frac == 0.5f && (q & 1))) ++q;
    return sign | static_cast<uint8_t>(q);         // q = 8 is 2^-6, the smallest normal: the same bits
  }
  int32_t e = static_cast<int32_t>(u >> 23) - 127;  // -6 .. 8
  uint32_t r = (u >> 20) & 7;
  const uint32_t rest = u & 0xfffffu, half = 0x80000u;
  if (rest > half || (rest == half && (r & 1))) ++r;
  if (r == 8) {
    r = 0;
    ++e;
  }
  return sign | static_cast<uint8_t>(((e + 7) << 3) | r);  // below 448, so never the NaN code
}

}  // namespace moeserve
