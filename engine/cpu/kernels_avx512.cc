// AVX-512 kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mfma).
//
// Register blocking: 4 weight rows x up to 4 tokens of accumulators, so each
// decoded weight vector feeds several FMAs and batch-1 decode keeps four
// independent dependency chains in flight. MXFP4 is decoded in registers:
// the nibbles become dword indices into a 16-entry table of E2M1 values that
// was scaled by the group's E8M0 scale (vpermps ignores the high index bits);
// the 256 scaled tables live in 16 KiB that stay in L1. Each tile prefetches
// the next tile's weights as it goes: without it one thread streams MXFP4 at
// ~8 GB/s, with it ~14 GB/s (bench/kernels/mxfp4_gemv_sandbox.cc).
#include <immintrin.h>

#include <algorithm>
#include <new>
#include <cmath>
#include <vector>

#include "engine/cpu/kernels.h"

namespace moeserve::cpu {
namespace {

constexpr int kRows = 4;

// 64-byte aligned storage for scratch panels.
template <typename T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <typename U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  bool operator==(const AlignedAlloc&) const { return true; }
};
constexpr int kTok = 4;

inline __m512 LoadBf16(const uint16_t* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename W>
inline __m512 LoadW(const W* w, int64_t i, __mmask16 m) {
  if constexpr (sizeof(W) == 2) return LoadBf16(reinterpret_cast<const uint16_t*>(w) + i, m);
  else return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(w) + i);
}

// NOTE: every loop over R and T is unrolled so the R x T accumulators stay in
// registers; without the pragmas GCC 12 spills them to the stack.
template <typename W, int R, int T>
inline void DenseTile(const W* w, int64_t k, const float* x, int64_t ldx, int64_t o, float* y, int64_t ldy) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const char* next = reinterpret_cast<const char*>(w + (o + R) * k);  // the following tile
  auto step = [&](int64_t i, __mmask16 m) __attribute__((always_inline)) {
    __m512 xv[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + i);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = LoadW(w + (o + r) * k, i, m);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  };
  const int64_t k16 = k & ~int64_t{15};
  for (int64_t i = 0; i < k16; i += 16) {
    if ((i * static_cast<int64_t>(sizeof(W))) % 64 == 0) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) _mm_prefetch(next + (r * k + i) * static_cast<int64_t>(sizeof(W)), _MM_HINT_T0);
    }
    step(i, 0xFFFF);
  }
  if (k16 < k) step(k16, static_cast<__mmask16>((1u << (k - k16)) - 1));
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) y[t * ldy + o + r] = _mm512_reduce_add_ps(acc[r][t]);
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

// ---- batched path: transposed weight panels ---------------------------------
//
// With enough tokens (kPanelMinTokens*) the weights are decoded (bf16 or
// MXFP4 -> f32) 32 rows at a time into a transposed panel, wt[i][32], that
// lives in L2 for as long as every token uses it. The micro-kernel then holds
// 12 tokens x 32 rows of outputs in 24 registers and per k step does two panel
// loads, 12 broadcasts and 24 FMAs: FMA-bound, and the outputs are stored as
// vectors with no horizontal sums. (The GEMV path keeps 16 partial sums per
// output instead, so batched and single-token results may differ in the last
// bits of f32.)
// Break-even batch sizes (bench/RESULTS.md): the panel costs ~0.5 ops per
// weight to build once; the GEMV path redoes its cheaper decode every 4 tokens.
constexpr int kPanelMinTokensDense = 24;
constexpr int kPanelMinTokensMxfp4 = 12;
constexpr int kPanel = 32;
constexpr int kPanelTok = 12;

float* PanelScratch(int64_t k) {
  thread_local std::vector<float, AlignedAlloc<float>> panel;
  if (static_cast<int64_t>(panel.size()) < kPanel * k) panel.resize(kPanel * k);
  return panel.data();
}

// In-place transpose of a 16 x 16 block held in 16 registers.
inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
#pragma GCC unroll 8
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

// Writes 16 rows x 16 columns (one vector per row, columns [i0, i0 + 16)) into
// the panel at row offset r0.
inline void PutTransposed(__m512 v[16], float* wt, int64_t i0, int r0) {
  Transpose16(v);
#pragma GCC unroll 16
  for (int c = 0; c < 16; ++c) _mm512_store_ps(wt + (i0 + c) * kPanel + r0, v[c]);
}

// NOTE: sums run in blocks of kSumBlock steps whose partial results are added
// to running totals. A plain running sum over k is ~3x less accurate than the
// GEMV path's 16-lane partial sums, and a model with large activations turns
// that into 2e-4 on logits (measured against the double-precision reference at
// 200 tokens: 2.0e-4 with one running sum, 3.7e-5 with blocks of 16, GEMV path
// 5.2e-5); blocks of 16 cost ~7% of prefill speed.
constexpr int64_t kSumBlock = 16;

template <int T>
inline void PanelTile(const float* wt, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, __mmask16 m0,
                      __mmask16 m1) {
  __m512 tot[2 * T];
#pragma GCC unroll 16
  for (int t = 0; t < 2 * T; ++t) tot[t] = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < k; i0 += kSumBlock) {
    const int64_t i1 = std::min(k, i0 + kSumBlock);
    __m512 a0[T], a1[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
    for (int64_t i = i0; i < i1; ++i) {
      const __m512 w0 = _mm512_load_ps(wt + i * kPanel), w1 = _mm512_load_ps(wt + i * kPanel + 16);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const __m512 xb = _mm512_set1_ps(x[t * ldx + i]);
        a0[t] = _mm512_fmadd_ps(xb, w0, a0[t]);
        a1[t] = _mm512_fmadd_ps(xb, w1, a1[t]);
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      tot[2 * t] = _mm512_add_ps(tot[2 * t], a0[t]);
      tot[2 * t + 1] = _mm512_add_ps(tot[2 * t + 1], a1[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, tot[2 * t]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, m1, tot[2 * t + 1]);
  }
}

// y[t, 0 .. rows) for every token from one panel.
void PanelGemm(const float* wt, int64_t k, const float* x, int64_t ldx, int num_tokens, int rows, float* y,
               int64_t ldy) {
  const __mmask16 m0 = rows >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << rows) - 1);
  const __mmask16 m1 = rows >= 32 ? 0xFFFF : rows <= 16 ? 0 : static_cast<__mmask16>((1u << (rows - 16)) - 1);
  int t = 0;
  for (; t + kPanelTok <= num_tokens; t += kPanelTok) PanelTile<kPanelTok>(wt, k, x + t * ldx, ldx, y + t * ldy, ldy, m0, m1);
  const float* xr = x + t * ldx;
  float* yr = y + t * ldy;
  switch (num_tokens - t) {
    case 11: PanelTile<11>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 10: PanelTile<10>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 9: PanelTile<9>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 8: PanelTile<8>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 7: PanelTile<7>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 6: PanelTile<6>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 5: PanelTile<5>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 4: PanelTile<4>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 3: PanelTile<3>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 2: PanelTile<2>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    case 1: PanelTile<1>(wt, k, xr, ldx, yr, ldy, m0, m1); break;
    default: break;
  }
}

// Dense weights (bf16 or f32) rows [o, o + rows) -> transposed panel. Rows
// past `rows` and columns past k (up to a multiple of 16) are zero.
template <typename W>
void DensePanel(const W* w, int64_t k, int64_t o, int rows, float* wt) {
  for (int64_t i0 = 0; i0 < k; i0 += 16) {
    const __mmask16 m = (k - i0 >= 16) ? 0xFFFF : static_cast<__mmask16>((1u << (k - i0)) - 1);
    for (int r0 = 0; r0 < kPanel; r0 += 16) {
      __m512 v[16];
#pragma GCC unroll 16
      for (int r = 0; r < 16; ++r) {
        v[r] = r0 + r < rows ? LoadW(w + (o + r0 + r) * k, i0, m) : _mm512_setzero_ps();
      }
      Transpose16(v);
      for (int c = 0; c < 16 && i0 + c < k; ++c) _mm512_store_ps(wt + (i0 + c) * kPanel + r0, v[c]);
    }
  }
}

template <typename W>
void DenseBatched(const W* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin, int64_t o_end,
                  float* y, int64_t ldy) {
  float* wt = PanelScratch(k + 16);
  for (int64_t o = o_begin; o < o_end; o += kPanel) {
    const int rows = static_cast<int>(std::min<int64_t>(kPanel, o_end - o));
    DensePanel(w, k, o, rows, wt);
    PanelGemm(wt, k, x, ldx, num_tokens, rows, y + o, ldy);
  }
}

void GemmBf16(const uint16_t* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
              int64_t o_end, float* y, int64_t ldy) {
  if (num_tokens >= kPanelMinTokensDense) DenseBatched(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
  else Dense<uint16_t>(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
}

void GemmF32(const float* w, int64_t k, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
             int64_t o_end, float* y, int64_t ldy) {
  if (num_tokens >= kPanelMinTokensDense) DenseBatched(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
  else Dense<float>(w, k, x, ldx, num_tokens, o_begin, o_end, y, ldy);
}

// E2M1 values times each of the 256 E8M0 scales.
struct ScaledTables {
  alignas(64) float t[256][16];
  ScaledTables() {
    for (int s = 0; s < 256; ++s)
      for (int i = 0; i < 16; ++i) t[s][i] = kFp4Values[i] * E8m0ToFloat(static_cast<uint8_t>(s));
  }
};
const ScaledTables kTables;

template <int R, int T>
inline void Mxfp4Tile(const uint8_t* blocks, const uint8_t* scales, int64_t groups, const float* x, int64_t ldx,
                      int64_t o, float* y, int64_t ldy) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  // Rows of a tile are consecutive: row r's blocks start r * groups * 16 bytes in.
  const uint8_t* b = blocks + o * groups * 16;
  const uint8_t* s = scales + o * groups;
  const int64_t row_bytes = groups * 16;
  const char* next = reinterpret_cast<const char*>(b + R * row_bytes);  // the following tile
  const char* next_scales = reinterpret_cast<const char*>(s + R * groups);
  const float* table = &kTables.t[0][0];
  for (int64_t g = 0; g < groups; ++g, b += 16, ++s) {
    // This tile reads R * 16 bytes per group step; prefetch as much of the next.
#pragma GCC unroll 8
    for (int r = 0; r < R * 16; r += 64) _mm_prefetch(next + g * R * 16 + r, _MM_HINT_T0);
    if (g % 16 == 0) _mm_prefetch(next_scales + g * R, _MM_HINT_T0);
    __m512 xlo[T], xhi[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      xlo[t] = _mm512_loadu_ps(x + t * ldx + g * 32);
      xhi[t] = _mm512_loadu_ps(x + t * ldx + g * 32 + 16);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 tab = _mm512_load_ps(table + 16 * s[r * groups]);
      const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + r * row_bytes)));
      const __m512 wlo = _mm512_permutexvar_ps(idx, tab);
      const __m512 whi = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        acc[r][t] = _mm512_fmadd_ps(wlo, xlo[t], acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(whi, xhi[t], acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) y[t * ldy + o + r] = _mm512_reduce_add_ps(acc[r][t]);
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
  if (num_tokens >= kPanelMinTokensMxfp4) {
    // Panel columns follow x_perm's order: per group, even columns then odd.
    float* wt = PanelScratch(k);
    for (; o < o_end; o += kPanel) {
      const int rows = static_cast<int>(std::min<int64_t>(kPanel, o_end - o));
      for (int64_t g = 0; g < groups; ++g) {
        for (int r0 = 0; r0 < kPanel; r0 += 16) {
          __m512 lo[16], hi[16];
#pragma GCC unroll 16
          for (int r = 0; r < 16; ++r) {
            if (r0 + r < rows) {
              const int64_t bi = (o + r0 + r) * groups + g;
              const __m512 tab = _mm512_load_ps(kTables.t[scales[bi]]);
              const __m512i idx =
                  _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + bi * 16)));
              lo[r] = _mm512_permutexvar_ps(idx, tab);
              hi[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab);
            } else {
              lo[r] = hi[r] = _mm512_setzero_ps();
            }
          }
          PutTransposed(lo, wt, g * 32, r0);
          PutTransposed(hi, wt, g * 32 + 16, r0);
        }
      }
      PanelGemm(wt, k, x_perm, ldx, num_tokens, rows, y + o, ldy);
    }
    return;
  }
  for (; o + kRows <= o_end; o += kRows) Mxfp4Rows<kRows>(blocks, scales, groups, x_perm, ldx, num_tokens, o, y, ldy);
  for (; o < o_end; ++o) Mxfp4Rows<1>(blocks, scales, groups, x_perm, ldx, num_tokens, o, y, ldy);
}


// ---- attention -------------------------------------------------------------

// exp(x) for x <= 0 (softmax arguments), relative error ~2 ulp: x = k ln2 + r,
// |r| <= ln2/2, exp(r) by a degree-6 polynomial, 2^k through the exponent.
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

template <bool kBf16>
inline __m512 LoadKv(const void* row, int c) {
  if constexpr (kBf16) {
    const __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(row) + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(row) + c * 16);
  }
}

// Sums of each of 8 vectors: [sum(v0), ..., sum(v7)].
inline __m256 Reduce8(const __m512* v) {
  __m256 s[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) s[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm512_extractf32x8_ps(v[i], 1));
  const __m256 h01 = _mm256_hadd_ps(s[0], s[1]), h23 = _mm256_hadd_ps(s[2], s[3]);
  const __m256 h45 = _mm256_hadd_ps(s[4], s[5]), h67 = _mm256_hadd_ps(s[6], s[7]);
  const __m256 a = _mm256_hadd_ps(h01, h23), b = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Query heads in groups of 8 (gpt-oss: 64 heads over 8 KV heads), head_dim = 16 * C.
// scores are kept key-major, [n][8], so a key's 8 scores are one ymm.
template <bool kBf16, int C>
void Attend8(const float* q, const void* const* k_rows, const void* const* v_rows, int64_t n, const float* sinks,
             float scale, float* scores, float* out) {
  constexpr int kG = 8;
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 vmax = _mm256_loadu_ps(sinks);
  for (int64_t j = 0; j < n; ++j) {
    __m512 kc[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) kc[c] = LoadKv<kBf16>(k_rows[j], c);
    __m512 acc[kG];
#pragma GCC unroll 8
    for (int h = 0; h < kG; ++h) {
      acc[h] = _mm512_mul_ps(_mm512_loadu_ps(q + h * 16 * C), kc[0]);
#pragma GCC unroll 8
      for (int c = 1; c < C; ++c) acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * 16 * C + c * 16), kc[c], acc[h]);
    }
    const __m256 sc = _mm256_mul_ps(Reduce8(acc), vscale);
    _mm256_storeu_ps(scores + j * kG, sc);
    vmax = _mm256_max_ps(vmax, sc);
  }
  // exp(s - max) in place, two keys (16 lanes) at a time, and the per-head sums.
  const __m512 vmax2 = _mm512_insertf32x8(_mm512_castps256_ps512(vmax), vmax, 1);
  __m512 vsum2 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const __m512 e = Exp(_mm512_sub_ps(_mm512_loadu_ps(scores + j * kG), vmax2));
    _mm512_storeu_ps(scores + j * kG, e);
    vsum2 = _mm512_add_ps(vsum2, e);
  }
  __m256 vsum = _mm256_add_ps(_mm512_castps512_ps256(vsum2), _mm512_extractf32x8_ps(vsum2, 1));
  if (j < n) {
    const __m512 e = Exp(_mm512_sub_ps(_mm512_castps256_ps512(_mm256_loadu_ps(scores + j * kG)), vmax2));
    _mm256_storeu_ps(scores + j * kG, _mm512_castps512_ps256(e));
    vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
  }
  // The sink adds exp(sink - max) to each head's denominator and nothing to its output.
  alignas(32) float sink_e[kG], mx[kG];
  _mm256_store_ps(mx, vmax);
  for (int h = 0; h < kG; ++h) sink_e[h] = std::exp(sinks[h] - mx[h]);
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(vsum, _mm256_load_ps(sink_e)));
  alignas(32) float inv_s[kG];
  _mm256_store_ps(inv_s, inv);
  // Weighted values, four heads per pass so the accumulators stay in registers.
  for (int h0 = 0; h0 < kG; h0 += 4) {
    __m512 o[4][C];
#pragma GCC unroll 8
    for (int h = 0; h < 4; ++h)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) o[h][c] = _mm512_setzero_ps();
    for (int64_t jj = 0; jj < n; ++jj) {
      __m512 vc[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) vc[c] = LoadKv<kBf16>(v_rows[jj], c);
#pragma GCC unroll 8
      for (int h = 0; h < 4; ++h) {
        const __m512 w = _mm512_set1_ps(scores[jj * kG + h0 + h]);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) o[h][c] = _mm512_fmadd_ps(w, vc[c], o[h][c]);
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < 4; ++h)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c)
        _mm512_storeu_ps(out + (h0 + h) * 16 * C + c * 16, _mm512_mul_ps(o[h][c], _mm512_set1_ps(inv_s[h0 + h])));
  }
}

void Attend(const float* q, int group, int head_dim, const void* const* k_rows, const void* const* v_rows, int64_t n,
            bool bf16, const float* sinks, float scale, float* scratch, float* out) {
  if (group == 8 && head_dim == 64) {
    if (bf16) Attend8<true, 4>(q, k_rows, v_rows, n, sinks, scale, scratch, out);
    else Attend8<false, 4>(q, k_rows, v_rows, n, sinks, scale, scratch, out);
  } else {
    AttendGeneric(q, group, head_dim, k_rows, v_rows, n, bf16, sinks, scale, scratch, out);
  }
}

// 16 outputs per step: gate = even inputs, up = odd inputs.
void SwiGlu(const float* gate_up, int64_t n, float limit, float alpha, float* out) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 lim = _mm512_set1_ps(limit), nlim = _mm512_set1_ps(-limit), nalpha = _mm512_set1_ps(-alpha);
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 a = _mm512_loadu_ps(gate_up + 2 * j), b = _mm512_loadu_ps(gate_up + 2 * j + 16);
    const __m512 g = _mm512_min_ps(_mm512_permutex2var_ps(a, even, b), lim);
    const __m512 u = _mm512_max_ps(_mm512_min_ps(_mm512_permutex2var_ps(a, odd, b), lim), nlim);
    // exp argument -alpha * g >= -alpha * limit; large positive arguments (g very
    // negative) overflow to inf and give g / inf = -0, as the scalar formula does.
    const __m512 e = Exp(_mm512_min_ps(_mm512_mul_ps(nalpha, g), _mm512_set1_ps(88.0f)));
    const __m512 sig = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_storeu_ps(out + j, _mm512_mul_ps(sig, _mm512_add_ps(u, one)));
  }
  if (j < n) SwiGluGeneric(gate_up + 2 * j, n - j, limit, alpha, out + j);
}

}  // namespace

const Kernels kAvx512Kernels = {"avx512", GemmBf16, GemmF32, GemmMxfp4, Attend, SwiGlu};

}  // namespace moeserve::cpu
