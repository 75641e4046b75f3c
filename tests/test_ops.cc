// Each CPU op against a plain scalar implementation written from the spec,
// for every SIMD variant this CPU supports and at awkward sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>

#include "engine/config.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/ops.h"
#include "engine/dtype.h"
#include "engine/thread_pool.h"

namespace moeserve {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

class KernelTest : public ::testing::TestWithParam<int> {
 protected:
  const cpu::Kernels& k() { return cpu::SupportedKernels(GetParam()); }
};

TEST_P(KernelTest, DenseGemmMatchesScalar) {
  for (int64_t kdim : {1, 7, 16, 33, 64, 100, 2880}) {
    for (int rows : {1, 3, 4, 9, 37}) {
      for (int tokens : {1, 2, 3, 4, 5, 8, 9, 14, 24, 31}) {
        auto w = Random(rows * kdim, 1 + rows), x = Random(tokens * kdim, 2 + tokens);
        std::vector<uint16_t> wb(w.size());
        for (size_t i = 0; i < w.size(); ++i) wb[i] = F32ToBf16(w[i]);
        // Rows [1, rows) only: the kernel must not touch row 0 or other columns.
        const int64_t ldy = rows + 3;
        std::vector<float> y32(tokens * ldy, 1234.0f), y16(tokens * ldy, 1234.0f);
        k().gemm_f32(w.data(), kdim, x.data(), kdim, tokens, 1, rows, y32.data(), ldy);
        k().gemm_bf16(wb.data(), kdim, x.data(), kdim, tokens, 1, rows, y16.data(), ldy);
        for (int t = 0; t < tokens; ++t) {
          EXPECT_EQ(y32[t * ldy], 1234.0f);
          EXPECT_EQ(y32[t * ldy + rows], 1234.0f);
          for (int o = 1; o < rows; ++o) {
            double r32 = 0, r16 = 0, mag = 0;
            for (int64_t i = 0; i < kdim; ++i) {
              r32 += static_cast<double>(w[o * kdim + i]) * x[t * kdim + i];
              r16 += static_cast<double>(Bf16ToF32(wb[o * kdim + i])) * x[t * kdim + i];
              mag += std::abs(static_cast<double>(w[o * kdim + i]) * x[t * kdim + i]);
            }
            // f32 accumulation: error bounded by a small multiple of eps * sum |w x|.
            const double tol = 1e-6 * mag + 1e-6;
            ASSERT_NEAR(y32[t * ldy + o], r32, tol) << k().name << " k=" << kdim << " o=" << o << " t=" << t;
            ASSERT_NEAR(y16[t * ldy + o], r16, tol) << k().name << " k=" << kdim << " o=" << o << " t=" << t;
          }
        }
      }
    }
  }
}

// MXFP4 per spec §3.3: low nibble = even column, E2M1 table, scale 2^(s-127).
TEST_P(KernelTest, Mxfp4GemmMatchesSpecDecode) {
  static const double kE2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  std::mt19937 g(5);
  for (int64_t kdim : {32, 64, 2880}) {
    for (int rows : {1, 4, 6, 13}) {
      for (int tokens : {1, 3, 4, 7, 8, 12, 13, 29}) {
        const int64_t groups = kdim / 32;
        std::vector<uint8_t> blocks(rows * groups * 16), scales(rows * groups);
        for (auto& b : blocks) b = static_cast<uint8_t>(g());
        for (auto& s : scales) s = static_cast<uint8_t>(115 + g() % 20);
        auto x = Random(tokens * kdim, 9);
        std::vector<float> xp(x.size());
        for (int t = 0; t < tokens; ++t) cpu::PermuteForMxfp4(&x[t * kdim], &xp[t * kdim], kdim);
        std::vector<float> y(tokens * rows, -1.0f);
        k().gemm_mxfp4(blocks.data(), scales.data(), kdim, xp.data(), kdim, tokens, 0, rows, y.data(), rows);
        for (int t = 0; t < tokens; ++t) {
          for (int o = 0; o < rows; ++o) {
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < kdim; ++i) {
              const uint8_t byte = blocks[(o * groups + i / 32) * 16 + (i % 32) / 2];
              const int code = i % 2 == 0 ? byte & 15 : byte >> 4;
              const double term = std::ldexp(kE2M1[code], scales[o * groups + i / 32] - 127) * x[t * kdim + i];
              ref += term;
              mag += std::abs(term);
            }
            ASSERT_NEAR(y[t * rows + o], ref, 1e-6 * mag + 1e-6)
                << k().name << " k=" << kdim << " o=" << o << " t=" << t;
          }
        }
      }
    }
  }
}

// Attention with sinks against a double-precision scalar version of spec §2.4,
// at gpt-oss's shape (8 query heads per KV head, head_dim 64) and the tiny
// test shape, for bf16 and f32 rows, from one key to a long context.
TEST_P(KernelTest, AttentionMatchesScalar) {
  for (auto [group, hd] : {std::pair{8, 64}, std::pair{2, 16}, std::pair{8, 32}}) {
    for (int64_t n : {1, 2, 3, 17, 128, 600}) {
      for (bool bf16 : {false, true}) {
        auto q = Random(group * hd, 1, -2, 2), sinks = Random(group, 2, -3, 3);
        auto kf = Random(n * hd, 3), vf = Random(n * hd, 4);
        std::vector<uint16_t> kb(kf.size()), vb(vf.size());
        for (size_t i = 0; i < kf.size(); ++i) {
          kb[i] = F32ToBf16(kf[i]);
          vb[i] = F32ToBf16(vf[i]);
          if (bf16) kf[i] = Bf16ToF32(kb[i]), vf[i] = Bf16ToF32(vb[i]);
        }
        // Rows are visited in reverse memory order, as paged blocks may be.
        std::vector<const void*> kr(n), vr(n);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t at = n - 1 - j;
          kr[j] = bf16 ? static_cast<const void*>(&kb[at * hd]) : &kf[at * hd];
          vr[j] = bf16 ? static_cast<const void*>(&vb[at * hd]) : &vf[at * hd];
        }
        std::vector<float> scratch(group * n + 16), out(group * hd + 8, 777.0f);
        const float scale = 1.0f / std::sqrt(float(hd));
        k().attend(q.data(), group, hd, kr.data(), vr.data(), n, bf16, sinks.data(), scale, scratch.data(), out.data());
        EXPECT_EQ(out[group * hd], 777.0f) << "wrote past the output";
        for (int h = 0; h < group; ++h) {
          std::vector<double> sc(n);
          double m = sinks[h];
          for (int64_t j = 0; j < n; ++j) {
            const int64_t at = n - 1 - j;
            double d = 0;
            for (int i = 0; i < hd; ++i) d += double(q[h * hd + i]) * kf[at * hd + i];
            sc[j] = d * scale;
            m = std::max(m, sc[j]);
          }
          double den = std::exp(sinks[h] - m);
          for (double& e : sc) den += (e = std::exp(e - m));
          for (int i = 0; i < hd; ++i) {
            double o = 0;
            for (int64_t j = 0; j < n; ++j) o += sc[j] / den * vf[(n - 1 - j) * hd + i];
            ASSERT_NEAR(out[h * hd + i], o, 2e-6) << k().name << " group " << group << " hd " << hd << " n " << n
                                                  << " bf16 " << bf16 << " head " << h << " dim " << i;
          }
        }
      }
    }
  }
}

TEST_P(KernelTest, SwiGluMatchesSpec) {
  for (int64_t n : {1, 15, 16, 37, 2880}) {
    auto gu = Random(2 * n, 7, -60, 60);
    std::vector<float> out(n + 1, 5.0f);
    k().swiglu(gu.data(), n, 7.0f, 1.702f, out.data());
    EXPECT_EQ(out[n], 5.0f);
    for (int64_t j = 0; j < n; ++j) {
      const double g = std::min<double>(gu[2 * j], 7.0), u = std::clamp<double>(gu[2 * j + 1], -7.0, 7.0);
      const double want = g / (1 + std::exp(-1.702 * g)) * (u + 1);
      ASSERT_NEAR(out[j], want, 1e-6 * std::max(1.0, std::abs(want))) << k().name << " n " << n << " j " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, KernelTest, ::testing::Range(0, cpu::NumSupportedKernels()),
                         [](const auto& info) { return std::string(cpu::SupportedKernels(info.param).name); });

TEST(OpsTest, RmsNorm) {
  auto x = Random(2880, 1, -3, 3), w = Random(2880, 2, 0.5, 1.5);
  std::vector<float> y(2880);
  cpu::RmsNorm(x.data(), w.data(), 2880, 1e-5f, y.data());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double r = 1 / std::sqrt(ss / 2880 + 1e-5);
  for (int i = 0; i < 2880; ++i) ASSERT_NEAR(y[i], x[i] * r * w[i], 1e-5);
}

// Values printed in spec §1.2 and §2.3 for gpt-oss's YaRN.
TEST(OpsTest, YarnFrequenciesMatchSpec) {
  const ModelConfig c = ModelConfig::GptOss20b();
  const auto inv = c.RopeInvFreq(false);
  ASSERT_EQ(inv.size(), 32u);
  EXPECT_NEAR(inv[0], 1.0, 1e-6);
  EXPECT_NEAR(inv[1], 0.68904, 1e-5);
  EXPECT_NEAR(inv[8], 0.050813, 1e-6);
  EXPECT_NEAR(inv[9], 0.031706, 1e-6);
  EXPECT_NEAR(inv[17], 1.2932e-4, 1e-8);
  EXPECT_NEAR(inv[18], 3.8309e-5, 1e-9);
  EXPECT_NEAR(inv[31], 3.0235e-7, 1e-11);
  EXPECT_NEAR(c.RopeMscale(), 1.3465735902799727, 1e-7);
  // ggml rounding (low 8, high 18): pair 9..17 blend differently, 0..8 and 18.. agree.
  const auto rounded = c.RopeInvFreq(true);
  EXPECT_FLOAT_EQ(rounded[8], inv[8]);
  EXPECT_FLOAT_EQ(rounded[18], inv[18]);
  EXPECT_NE(rounded[12], inv[12]);
  // Blend by hand at pair 12 (ramp (12-8)/(18-8)).
  const double f = std::pow(150000.0, 24.0 / 64);
  EXPECT_NEAR(rounded[12], (1 / (32 * f)) * 0.4 + (1 / f) * 0.6, 1e-9);
}

// Hugging Face clamps the correction range in both modes. The tiny test preset
// (theta 1e4, original context 64, head_dim 16, factor 32) puts the unclamped
// low end at -0.99: without the clamp pair 0 — the highest frequency, which
// YaRN keeps as it is — would be blended a third of the way toward 1/32.
TEST(OpsTest, YarnCorrectionRangeIsClampedAsHuggingFace) {
  ModelConfig c = ModelConfig::GptOss20b();
  c.head_dim = 16;
  c.rope_theta = 1e4;
  c.rope_scaling.original_max_position_embeddings = 64;
  const double d = 16, l0 = 64, base = 1e4;
  const double low_raw = d * std::log(l0 / (32 * 2 * M_PI)) / (2 * std::log(base));   // beta_fast 32
  const double high_raw = d * std::log(l0 / (1 * 2 * M_PI)) / (2 * std::log(base));   // beta_slow 1
  ASSERT_LT(low_raw, -0.9);
  for (bool truncate : {false, true}) {
    const auto [low, high] = c.YarnRamp(truncate);
    EXPECT_EQ(low, 0.0) << "truncate " << truncate;
    EXPECT_NEAR(high, truncate ? std::ceil(high_raw) : high_raw, 1e-12);
    const auto inv = c.RopeInvFreq(truncate);
    EXPECT_FLOAT_EQ(inv[0], 1.0f) << "pair 0 is not interpolated";
    for (int i = 1; i < 8; ++i) {
      const double f = std::pow(base, 2.0 * i / d);
      const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      EXPECT_NEAR(inv[i], (1 / (32 * f)) * ramp + (1 / f) * (1 - ramp), 1e-7 / f) << "pair " << i;
    }
  }
  // The upper end is clamped to head_dim - 1 (a long original context).
  c.rope_scaling.original_max_position_embeddings = 1 << 30;
  EXPECT_EQ(c.YarnRamp(false).second, 15.0);
}

TEST(OpsTest, RopeRotatesHalves) {
  std::vector<float> inv = {1.0f, 0.5f};
  float cs[2], sn[2];
  cpu::RopeCosSin(3, inv, 1.5f, cs, sn);
  std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8};  // 2 heads of dim 4
  auto ref = v;
  cpu::ApplyRope(v.data(), 2, 4, cs, sn);
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 2; ++i) {
      const double th = 3.0 * inv[i], c = std::cos(th) * 1.5, s = std::sin(th) * 1.5;
      const double x1 = ref[h * 4 + i], x2 = ref[h * 4 + i + 2];
      EXPECT_NEAR(v[h * 4 + i], x1 * c - x2 * s, 1e-5);
      EXPECT_NEAR(v[h * 4 + i + 2], x2 * c + x1 * s, 1e-5);
    }
  }
}

TEST(OpsTest, SwiGluClampsAsSpecified) {
  const std::vector<float> gu = {8.0f, 9.0f, -9.0f, -8.0f, 1.0f, 0.5f, 7.5f, -7.5f};
  std::vector<float> out(4);
  cpu::SwiGlu(gu.data(), 4, 7.0f, 1.702f, out.data());
  auto ref = [](double g, double u) {
    g = std::min(g, 7.0);  // gate: upper clamp only
    u = std::clamp(u, -7.0, 7.0);
    return g / (1 + std::exp(-1.702 * g)) * (u + 1);
  };
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(out[j], ref(gu[2 * j], gu[2 * j + 1]), 1e-5) << j;
  EXPECT_NEAR(out[0], 7.0 / (1 + std::exp(-1.702 * 7)) * 8.0, 1e-5);
  EXPECT_NEAR(out[1], -9.0 / (1 + std::exp(1.702 * 9)) * (-7.0 + 1), 1e-5);
}

TEST(OpsTest, TopKThenSoftmax) {
  const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 2.5f, 2.5f, 0.0f, 4.0f, -2.0f};
  int idx[4];
  float w[4];
  cpu::TopKSoftmax(logits.data(), 8, 4, idx, w);
  EXPECT_EQ(idx[0], 6);
  EXPECT_EQ(idx[1], 1);
  EXPECT_EQ(idx[2], 3);
  EXPECT_EQ(idx[3], 4);
  double den = std::exp(4.0) + std::exp(3.0) + 2 * std::exp(2.5);
  EXPECT_NEAR(w[0], std::exp(4.0) / den, 1e-6);
  EXPECT_NEAR(w[3], std::exp(2.5) / den, 1e-6);
}

TEST(OpsTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(F32ToBf16(1.00390625f), 0x3F80);   // halfway, even stays
  EXPECT_EQ(F32ToBf16(1.01171875f), 0x3F82);   // halfway, odd rounds up
  EXPECT_EQ(Bf16ToF32(0xC0A0), -5.0f);
  EXPECT_EQ(F16ToF32(F32ToF16(0.333251953125f)), 0.333251953125f);
}

TEST(ThreadPoolTest, RunsEveryTaskOnce) {
  ThreadPool pool(3);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::atomic<int>> hits(257);
    pool.Run(257, [&](int t) { hits[t]++; });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
  std::atomic<int64_t> sum{0};
  pool.ParallelFor(1000, 16, [&](int64_t b, int64_t e) {
    EXPECT_EQ(b % 16, 0);
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 999 * 1000 / 2);
}

}  // namespace
}  // namespace moeserve
