// Portable kernels: plain loops the compiler may vectorise. The reference
// variant and the fallback on CPUs without AVX2.
#include "engine/cpu/kernels.h"
#include "engine/dtype.h"

#include <algorithm>
#include <cmath>

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

template <typename KvT>
inline float KvAt(const void* row, int d) {
  if constexpr (sizeof(KvT) == 2) return Bf16ToF32(static_cast<const uint16_t*>(row)[d]);
  else return static_cast<const float*>(row)[d];
}

template <typename KvT>
void Attend(const float* q, int group, int hd, const void* const* k_rows, const void* const* v_rows, int64_t n,
            const float* sinks, float scale, float* scores, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    for (int h = 0; h < group; ++h) {
      const float* qh = q + h * hd;
      float dot = 0.0f;
      for (int d = 0; d < hd; ++d) dot += qh[d] * KvAt<KvT>(k_rows[j], d);
      scores[h * n + j] = dot * scale;
    }
  }
  for (int h = 0; h < group; ++h) {
    float* sc = scores + h * n;
    float m = sinks[h];
    for (int64_t j = 0; j < n; ++j) m = std::max(m, sc[j]);
    float sum = std::exp(sinks[h] - m);
    for (int64_t j = 0; j < n; ++j) sum += sc[j] = std::exp(sc[j] - m);
    const float inv = 1.0f / sum;
    float* o = out + h * hd;
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float w = sc[j] * inv;
      for (int d = 0; d < hd; ++d) o[d] += w * KvAt<KvT>(v_rows[j], d);
    }
  }
}

}  // namespace

void AttendGeneric(const float* q, int group, int head_dim, const void* const* k_rows, const void* const* v_rows,
                   int64_t n, bool bf16, const float* sinks, float scale, float* scratch, float* out) {
  if (bf16) Attend<uint16_t>(q, group, head_dim, k_rows, v_rows, n, sinks, scale, scratch, out);
  else Attend<float>(q, group, head_dim, k_rows, v_rows, n, sinks, scale, scratch, out);
}

void SwiGluGeneric(const float* gate_up, int64_t n, float limit, float alpha, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    const float g = std::min(gate_up[2 * j], limit);
    const float u = std::clamp(gate_up[2 * j + 1], -limit, limit);
    out[j] = g / (1.0f + std::exp(-alpha * g)) * (u + 1.0f);
  }
}

const Kernels kGenericKernels = {"generic", GemmBf16, GemmF32, GemmMxfp4, AttendGeneric, SwiGluGeneric};

}  // namespace moeserve::cpu
