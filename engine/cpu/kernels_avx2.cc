// AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c). Same blocking as the
// AVX-512 variant with 8-wide vectors; MXFP4 is decoded with pshufb from a
// table of doubled E2M1 values (all integers) and one multiply by scale / 2.
#include <immintrin.h>

#include "engine/cpu/kernels.h"

namespace moeserve::cpu {
namespace {

constexpr int kRows = 4;
constexpr int kTok = 4;

inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 LoadBf16(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename W>
inline float ScalarW(const W* w, int64_t i) {
  if constexpr (sizeof(W) == 2) {
    uint32_t u = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(w)[i]) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  } else {
    return reinterpret_cast<const float*>(w)[i];
  }
}

template <typename W, int R, int T>
inline void DenseTile(const W* w, int64_t k, const float* x, int64_t ldx, int64_t o, float* y, int64_t ldy) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t{7};
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + i);
    for (int r = 0; r < R; ++r) {
      __m256 wv;
      if constexpr (sizeof(W) == 2) wv = LoadBf16(reinterpret_cast<const uint16_t*>(w) + (o + r) * k + i);
      else wv = _mm256_loadu_ps(reinterpret_cast<const float*>(w) + (o + r) * k + i);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = HSum(acc[r][t]);
      for (int64_t i = k8; i < k; ++i) s += ScalarW(w, (o + r) * k + i) * x[t * ldx + i];
      y[t * ldy + o + r] = s;
    }
  }
}

template <typename W, int R>
inline void DenseRows(const W* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o, float* y,
                      int64_t ldy) {
  int t = 0;
  for (; t + kTok <= num_tokens; t += kTok) DenseTile<W, R, kTok>(w, k, x + t * ldx, ldx, o, y + t * ldy, ldy);
  switch (num_tokens - t) {
    case 3: DenseTile<W, R, 3>(w, k, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    case 2: DenseTile<W, R, 2>(w, k, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    case 1: DenseTile<W, R, 1>(w, k, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    default: break;
  }
}

template <typename W>
void Dense(const W* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin, int64_t o_end,
           float* y, int64_t ldy) {
  int64_t o = o_begin;
  for (; o + kRows <= o_end; o += kRows) DenseRows<W, kRows>(w, k, x, ldx, num_tokens, o, y, ldy);
  for (; o < o_end; ++o) DenseRows<W, 1>(w, k, x, ldx, num_tokens, o, y, ldy);
}

void GemmBf16(const uint16_t* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
              int64_t o_end, float* y, int64_t ldy) {
  Dense<uint16_t>(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
}

void GemmF32(const float* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
             int64_t o_end, float* y, int64_t ldy) {
  Dense<float>(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
}

struct HalfScaleTable {
  float v[256];
  HalfScaleTable() {
    for (int s = 0; s < 256; ++s) v[s] = 0.5f * E8m0ToFloat(static_cast<uint8_t>(s));
  }
};

template <int R, int T>
inline void Mxfp4Tile(const uint8_t* blocks, const uint8_t* scales, int64_t groups, const float* x, int64_t ldx,
                      int64_t o, float* y, int64_t ldy) {
  static const HalfScaleTable kHalfScales;
  const __m128i table = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m128i low_mask = _mm_set1_epi8(0x0F);
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    for (int r = 0; r < R; ++r) {
      const int64_t bi = (o + r) * groups + g;
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + bi * 16));
      const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(bytes, low_mask));
      const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask));
      const __m256 s = _mm256_set1_ps(kHalfScales.v[scales[bi]]);
      const __m256 w0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), s);
      const __m256 w1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), s);
      const __m256 w2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), s);
      const __m256 w3 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), s);
      for (int t = 0; t < T; ++t) {
        const float* xt = x + t * ldx + g * 32;
        acc[r][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xt), acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xt + 8), acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xt + 16), acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xt + 24), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + o + r] = HSum(acc[r][t]);
}

template <int R>
inline void Mxfp4Rows(const uint8_t* blocks, const uint8_t* scales, int64_t groups, const float* x, int64_t ldx,
                      int num_tokens, int64_t o, float* y, int64_t ldy) {
  int t = 0;
  for (; t + kTok <= num_tokens; t += kTok) Mxfp4Tile<R, kTok>(blocks, scales, groups, x + t * ldx, ldx, o, y + t * ldy, ldy);
  switch (num_tokens - t) {
    case 3: Mxfp4Tile<R, 3>(blocks, scales, groups, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    case 2: Mxfp4Tile<R, 2>(blocks, scales, groups, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    case 1: Mxfp4Tile<R, 1>(blocks, scales, groups, x + t * ldx, ldx, o, y + t * ldy, ldy); break;
    default: break;
  }
}

void GemmMxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t k, const float* x_perm, int64_t ldx,
               int num_tokens, int64_t o_begin, int64_t o_end, float* y, int64_t ldy) {
  const int64_t groups = k / 32;
  int64_t o = o_begin;
  for (; o + kRows <= o_end; o += kRows) Mxfp4Rows<kRows>(blocks, scales, groups, x_perm, ldx, num_tokens, o, y, ldy);
  for (; o < o_end; ++o) Mxfp4Rows<1>(blocks, scales, groups, x_perm, ldx, num_tokens, o, y, ldy);
}

}  // namespace

const Kernels kAvx2Kernels = {"avx2", GemmBf16, GemmF32, GemmMxfp4, AttendGeneric, SwiGluGeneric};

}  // namespace moeserve::cpu
