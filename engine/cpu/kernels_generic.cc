// Portable kernels: plain loops the compiler may vectorise. The reference
// variant and the fallback on CPUs without AVX2.
#include "engine/cpu/kernels.h"
#include "engine/dtype.h"

namespace moeserve::cpu {
namespace {

void GemmBf16(const uint16_t* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
              int64_t o_end, float* y, int64_t ldy) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint16_t* row = w + o * k;
    for (int t = 0; t < num_tokens; ++t) {
      const float* xt = x + t * ldx;
      // 16 partial sums, like the SIMD variants: vectorisable and accurate.
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= k; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += Bf16ToF32(row[i + j]) * xt[i + j];
      for (; i < k; ++i) acc[i % 16] += Bf16ToF32(row[i]) * xt[i];
      float s = 0.0f;
      for (float a : acc) s += a;
      y[t * ldy + o] = s;
    }
  }
}

void GemmF32(const float* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
             int64_t o_end, float* y, int64_t ldy) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    const float* row = w + o * k;
    for (int t = 0; t < num_tokens; ++t) {
      const float* xt = x + t * ldx;
      float acc[16] = {};
      int64_t i = 0;
      for (; i + 16 <= k; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += row[i + j] * xt[i + j];
      for (; i < k; ++i) acc[i % 16] += row[i] * xt[i];
      float s = 0.0f;
      for (float a : acc) s += a;
      y[t * ldy + o] = s;
    }
  }
}

void GemmMxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t k, const float* x_perm, int64_t ldx,
               int num_tokens, int64_t o_begin, int64_t o_end, float* y, int64_t ldy) {
  const int64_t groups = k / 32;
  float w[32];
  for (int64_t o = o_begin; o < o_end; ++o) {
    for (int t = 0; t < num_tokens; ++t) y[t * ldy + o] = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* b = blocks + (o * groups + g) * 16;
      const float s = E8m0ToFloat(scales[o * groups + g]);
      for (int j = 0; j < 16; ++j) {
        w[j] = kFp4Values[b[j] & 15] * s;
        w[16 + j] = kFp4Values[b[j] >> 4] * s;
      }
      for (int t = 0; t < num_tokens; ++t) {
        const float* xt = x_perm + t * ldx + g * 32;
        float acc = 0.0f;
        for (int j = 0; j < 32; ++j) acc += w[j] * xt[j];
        y[t * ldy + o] += acc;
      }
    }
  }
}

}  // namespace

const Kernels kGenericKernels = {"generic", GemmBf16, GemmF32, GemmMxfp4};

}  // namespace moeserve::cpu
