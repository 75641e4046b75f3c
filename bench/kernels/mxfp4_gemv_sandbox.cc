// Kernel sandbox for the batch-1 MXFP4 GEMV (llm.c dev/cuda style): a scalar
// reference, numbered kernel versions, a validator and a timer. Only the
// winner moves into engine/cpu/kernels_avx512.cc.
//   build: see bench/CMakeLists.txt;  run: mxfp4_gemv_sandbox [rows] [reps]
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

const float kFp4[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
float Scale(uint8_t s) { return std::ldexp(1.0f, s - 127); }

// Reference: spec decode, x in natural order.
void Ref(const uint8_t* b, const uint8_t* s, int64_t k, const float* x, int64_t rows, float* y) {
  const int64_t g = k / 32;
  for (int64_t o = 0; o < rows; ++o) {
    double acc = 0;
    for (int64_t i = 0; i < k; ++i) {
      const uint8_t byte = b[(o * g + i / 32) * 16 + (i % 32) / 2];
      acc += kFp4[i % 2 ? byte >> 4 : byte & 15] * Scale(s[o * g + i / 32]) * double(x[i]);
    }
    y[o] = static_cast<float>(acc);
  }
}

struct ScaleTable {
  float v[256];
  ScaleTable() { for (int i = 0; i < 256; ++i) v[i] = Scale(i); }
} kScales;

// v1: vpermps from a scaled f32 table (the engine's kernel at T = 1, R = 4).
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V1(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m512 table = _mm512_loadu_ps(kFp4);
  for (int64_t o = r0; o < r1; o += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < 4; ++r) {
        const int64_t bi = (o + r) * groups + g;
        const __m512 tab = _mm512_mul_ps(table, _mm512_set1_ps(kScales.v[s[bi]]));
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(b + bi * 16)));
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab), xlo, acc[r]);
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab), xhi, acc[r]);
      }
    }
    for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v2: pshufb on xmm to doubled int8 values, sign-extend, convert; scale folded
// into a per-group FMA.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V2(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m128i tbl = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  for (int64_t o = r0; o < r1; o += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < 4; ++r) {
        const int64_t bi = (o + r) * groups + g;
        const __m128i by = _mm_loadu_si128((const __m128i*)(b + bi * 16));
        const __m128i lo = _mm_shuffle_epi8(tbl, _mm_and_si128(by, m4));
        const __m128i hi = _mm_shuffle_epi8(tbl, _mm_and_si128(_mm_srli_epi16(by, 4), m4));
        __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), xlo);
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), xhi, t);
        acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(0.5f * kScales.v[s[bi]]), acc[r]);
      }
    }
    for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v3: v1 with the scale applied per group to the partial product instead of
// the table, two groups per iteration from one 32-byte load.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V3(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m512 table = _mm512_loadu_ps(kFp4);
  for (int64_t o = r0; o < r1; o += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < 4; ++r) {
        const int64_t bi = (o + r) * groups + g;
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(b + bi * 16)));
        __m512 t = _mm512_mul_ps(_mm512_permutexvar_ps(idx, table), xlo);
        t = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table), xhi, t);
        acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(kScales.v[s[bi]]), acc[r]);
      }
    }
    for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v4: vpermb (VBMI) on 64 nibbles at once to int8, then convert; 2 groups per step.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,fma"))) void V4(const uint8_t* b, const uint8_t* s,
                                                                             int64_t k, const float* xp, int64_t r0,
                                                                             int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m128i tbl = _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  const __m256i tbl2 = _mm256_broadcastsi128_si256(tbl);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t o = r0; o < r1; o += 2) {
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int r = 0; r < 2; ++r) {
      const uint8_t* rb = b + (o + r) * groups * 16;
      const uint8_t* rs = s + (o + r) * groups;
      int64_t g = 0;
      for (; g + 2 <= groups; g += 2) {
        const __m256i by = _mm256_loadu_si256((const __m256i*)(rb + g * 16));
        const __m256i lo = _mm256_shuffle_epi8(tbl2, _mm256_and_si256(by, m4));
        const __m256i hi = _mm256_shuffle_epi8(tbl2, _mm256_and_si256(_mm256_srli_epi16(by, 4), m4));
        for (int h = 0; h < 2; ++h) {
          const __m128i l = h ? _mm256_extracti128_si256(lo, 1) : _mm256_castsi256_si128(lo);
          const __m128i u = h ? _mm256_extracti128_si256(hi, 1) : _mm256_castsi256_si128(hi);
          __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(l)), _mm512_loadu_ps(xp + (g + h) * 32));
          t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(u)), _mm512_loadu_ps(xp + (g + h) * 32 + 16), t);
          acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(0.5f * kScales.v[rs[g + h]]), acc[r]);
        }
      }
    }
    for (int r = 0; r < 2; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v5: v1 + software prefetch of the blocks 8 groups ahead, hi indices from an
// xmm shift (cheaper than a zmm shift) and 8-row tiles.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V5(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m512 table = _mm512_loadu_ps(kFp4);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  for (int64_t o = r0; o < r1; o += R) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < R; ++r) {
        const int64_t bi = (o + r) * groups + g;
        _mm_prefetch((const char*)(b + (bi + 8) * 16), _MM_HINT_T0);
        const __m512 tab = _mm512_mul_ps(table, _mm512_set1_ps(kScales.v[s[bi]]));
        const __m128i by = _mm_loadu_si128((const __m128i*)(b + bi * 16));
        const __m512i ilo = _mm512_cvtepu8_epi32(by);
        const __m512i ihi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(by, 4), m4));
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(ilo, tab), xlo, acc[r]);
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(ihi, tab), xhi, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v6: v1 with the 4 rows of a tile interleaved group-major and the scale
// vector for 4 rows built once per group.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V6(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  const __m512 table = _mm512_loadu_ps(kFp4);
  for (int64_t o = r0; o < r1; o += 4) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const uint8_t* rb[4];
    const uint8_t* rs[4];
    for (int r = 0; r < 4; ++r) rb[r] = b + (o + r) * groups * 16, rs[r] = s + (o + r) * groups;
    for (int64_t g = 0; g < groups; g += 2) {
      for (int h = 0; h < 2; ++h) {
        const __m512 xlo = _mm512_loadu_ps(xp + (g + h) * 32), xhi = _mm512_loadu_ps(xp + (g + h) * 32 + 16);
        for (int r = 0; r < 4; ++r) {
          const __m512 tab = _mm512_mul_ps(table, _mm512_set1_ps(kScales.v[rs[r][g + h]]));
          const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rb[r] + (g + h) * 16)));
          acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab), xlo, acc[r]);
          acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab), xhi, acc[r]);
        }
      }
    }
    for (int r = 0; r < 4; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v7: 256 pre-scaled 16-entry tables (16 KiB, L1-resident): the scale costs a
// table pick instead of a broadcast and a multiply.
struct ScaledTables {
  alignas(64) float t[256][16];
  ScaledTables() {
    for (int s = 0; s < 256; ++s)
      for (int i = 0; i < 16; ++i) t[s][i] = kFp4[i] * Scale(s);
  }
} kTables;

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V7(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  for (int64_t o = r0; o < r1; o += R) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < R; ++r) {
        const int64_t bi = (o + r) * groups + g;
        const __m512 tab = _mm512_load_ps(kTables.t[s[bi]]);
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(b + bi * 16)));
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab), xlo, acc[r]);
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab), xhi, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

// v8: v7 + software prefetch of the next 4-row tile (blocks and scales), a
// cache line per group step, so the stream runs ahead of the decode.
template <int R, int kAhead>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void V8(const uint8_t* b, const uint8_t* s, int64_t k,
                                                                  const float* xp, int64_t r0, int64_t r1, float* y) {
  const int64_t groups = k / 32;
  for (int64_t o = r0; o < r1; o += R) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const uint8_t* next = b + (o + R) * groups * 16;  // next tile, R * groups * 16 bytes
    for (int64_t g = 0; g < groups; ++g) {
      // R * 16 bytes of blocks per group step: prefetch the same amount of the tile kAhead ahead.
      for (int r = 0; r < R; r += 4) _mm_prefetch((const char*)(next + (kAhead - 1) * R * groups * 16 + g * R * 16 + r * 16), _MM_HINT_T0);
      if ((g & 15) == 0) _mm_prefetch((const char*)(s + (o + kAhead * R) * groups + g * R), _MM_HINT_T0);
      const __m512 xlo = _mm512_loadu_ps(xp + g * 32), xhi = _mm512_loadu_ps(xp + g * 32 + 16);
      for (int r = 0; r < R; ++r) {
        const int64_t bi = (o + r) * groups + g;
        const __m512 tab = _mm512_load_ps(kTables.t[s[bi]]);
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(b + bi * 16)));
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab), xlo, acc[r]);
        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab), xhi, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[o + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

using Fn = void (*)(const uint8_t*, const uint8_t*, int64_t, const float*, int64_t, int64_t, float*);

}  // namespace

int main(int argc, char** argv) {
  const int64_t k = 2880, rows = argc > 1 ? std::atoll(argv[1]) : 5760 * 8;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  const int64_t groups = k / 32;
  std::mt19937 gen(1);
  std::vector<uint8_t> b(rows * groups * 16), s(rows * groups);
  for (auto& v : b) v = gen();
  for (auto& v : s) v = 118 + gen() % 4;
  std::vector<float> x(k), xp(k), want(rows), got(rows);
  for (auto& v : x) v = std::uniform_real_distribution<float>(-1, 1)(gen);
  for (int64_t g = 0; g < k; g += 32)
    for (int j = 0; j < 16; ++j) xp[g + j] = x[g + 2 * j], xp[g + 16 + j] = x[g + 2 * j + 1];
  Ref(b.data(), s.data(), k, x.data(), rows, want.data());
  const double bytes = double(rows) * groups * 17;
  struct V { const char* name; Fn fn; } vs[] = {{"v1 vpermps scaled table", V1}, {"v2 pshufb int8", V2},
                                                {"v3 vpermps + group fma", V3}, {"v4 ymm pshufb 2 groups", V4},
                                                {"v5<4> prefetch, xmm shift", V5<4>}, {"v5<8>", V5<8>},
                                                {"v6 unroll 2 groups", V6},
                                                {"v7<4> scaled tables", V7<4>}, {"v7<2>", V7<2>},
                                                {"v8<4,1> prefetch next tile", V8<4, 1>}, {"v8<4,2>", V8<4, 2>},
                                                {"v8<4,4>", V8<4, 4>}};
  for (const V& v : vs) {
    v.fn(b.data(), s.data(), k, xp.data(), 0, rows, got.data());
    double err = 0;
    for (int64_t i = 0; i < rows; ++i) err = std::max(err, double(std::abs(got[i] - want[i])));
    for (int threads : {1, 2}) {
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) {
        std::vector<std::thread> th;
        for (int t = 0; t < threads; ++t)
          th.emplace_back([&, t] {
            const int64_t per = rows / threads;
            v.fn(b.data(), s.data(), k, xp.data(), t * per, (t + 1) * per, got.data());
          });
        for (auto& t : th) t.join();
      }
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
      std::printf("%-26s threads %d: %6.2f GB/s  max err %.2e\n", v.name, threads, bytes / dt / 1e9, err);
    }
  }
}
