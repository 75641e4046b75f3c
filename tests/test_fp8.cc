// FP8 E4M3 conversions (engine/fp8.h) against the format's definition (OCP
// 8-bit floating point, E4M3): every code decoded from the formula, and
// encoding checked against the nearest representable value found by search
// (ties to the even code, saturation at +-448).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "engine/fp8.h"

namespace moeserve {
namespace {

// The definition: sign, 4-bit exponent with bias 7, 3-bit mantissa; exponent 0 is subnormal; S.1111.111 is NaN.
double Defined(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -v : v;
}

TEST(Fp8Test, EveryCodeDecodesAsDefined) {
  for (int c = 0; c < 256; ++c) {
    const double want = Defined(c);
    const float got = E4m3ToF32(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << c;
    }
  }
  EXPECT_EQ(E4m3ToF32(0x7e), 448.0f);
  EXPECT_EQ(E4m3ToF32(0x01), std::ldexp(1.0f, -9));
}

// The nearest finite code (ties: the even one), saturating beyond 448.
uint8_t Nearest(float x) {
  if (std::isnan(x)) return 0x7f;
  const bool neg = std::signbit(x);
  const double a = std::min<double>(std::fabs(static_cast<double>(x)), 448.0);
  int best = 0;
  double best_d = 1e300;
  for (int c = 0; c < 127; ++c) {  // positive finite codes, ascending
    const double d = std::fabs(Defined(c) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) best = c, best_d = d;
  }
  return static_cast<uint8_t>(best | (neg ? 0x80 : 0));
}

TEST(Fp8Test, EncodingRoundsToNearestEvenAndSaturates) {
  std::vector<float> xs = {0.0f, -0.0f, 448.0f, -448.0f, 449.0f, 464.0f, 480.0f, 1e6f, -1e30f,
                           std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::ldexp(1.0f, -10), std::ldexp(1.0f, -10) * 1.0001f, std::ldexp(3.0f, -10),
                           std::numeric_limits<float>::denorm_min()};
  // Every code, and the midpoints between neighbours (the ties), and just either side of them.
  for (int c = 0; c < 126; ++c) {
    const float lo = static_cast<float>(Defined(c)), hi = static_cast<float>(Defined(c + 1));
    const float mid = static_cast<float>((Defined(c) + Defined(c + 1)) / 2);
    for (float v : {lo, mid, std::nextafter(mid, lo), std::nextafter(mid, hi), hi}) {
      xs.push_back(v);
      xs.push_back(-v);
    }
  }
  std::mt19937 g(5);
  std::uniform_real_distribution<float> exp(-14.0f, 10.0f);
  for (int i = 0; i < 200000; ++i) xs.push_back((g() & 1 ? 1.0f : -1.0f) * std::exp2(exp(g)));
  for (float x : xs) ASSERT_EQ(F32ToE4m3(x), Nearest(x)) << x;
  EXPECT_TRUE(std::isnan(E4m3ToF32(F32ToE4m3(std::numeric_limits<float>::quiet_NaN()))));
}

}  // namespace
}  // namespace moeserve
