// Element types of checkpoint tensors and the scalar conversions between them.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace moeserve {

enum class DType { kF32, kBF16, kF16, kU8 };

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kU8: return 1;
  }
  return 0;
}

// safetensors spelling ("F32", "BF16", ...).
const char* DTypeName(DType t);
bool ParseDType(const std::string& name, DType* out);

inline float Bf16ToF32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet.
inline uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts `n` elements of type `t` at `src` to f32.
void ConvertToF32(DType t, const void* src, float* dst, size_t n);

}  // namespace moeserve
