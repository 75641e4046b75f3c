// Sampling against distributions computed independently in the test.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/sampler.h"

namespace moeserve {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 0.5f, 2.0f, -1.0f, 2.5f, 0.0f, -3.0f};

std::vector<double> Softmax(std::vector<double> l, double temp = 1.0) {
  double m = *std::max_element(l.begin(), l.end()), s = 0;
  for (double& x : l) s += (x = std::exp((x - m) / temp));
  for (double& x : l) x /= s;
  return l;
}

std::map<int, int> Histogram(SamplingParams p, int n, std::vector<int32_t> prompt = {}) {
  std::map<int, int> h;
  for (int i = 0; i < n; ++i) {
    p.seed = i;
    p.has_seed = true;
    Sampler s(p, prompt);
    h[s.Sample(kLogits.data(), kLogits.size()).token]++;
  }
  return h;
}

TEST(SamplerTest, GreedyIsArgmax) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, {});
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()).token, 1);
  p.temperature = 1;
  p.top_k = 1;
  Sampler s2(p, {});
  EXPECT_EQ(s2.Sample(kLogits.data(), kLogits.size()).token, 1);
}

TEST(SamplerTest, SameSeedSameTokens) {
  SamplingParams p;
  p.seed = 1234;
  p.has_seed = true;
  Sampler a(p, {}), b(p, {});
  p.seed = 99;
  Sampler c(p, {});
  int differ = 0;
  for (int i = 0; i < 50; ++i) {
    const int x = a.Sample(kLogits.data(), kLogits.size()).token;
    EXPECT_EQ(x, b.Sample(kLogits.data(), kLogits.size()).token);
    differ += x != c.Sample(kLogits.data(), kLogits.size()).token;
  }
  EXPECT_GT(differ, 0);
}

// Frequencies within 5 sigma of the softmax probabilities.
void ExpectDistribution(const std::map<int, int>& h, const std::vector<double>& prob, int n) {
  for (size_t t = 0; t < prob.size(); ++t) {
    const double expect = prob[t] * n, sigma = std::sqrt(n * prob[t] * (1 - prob[t])) + 1;
    const int got = h.count(t) ? h.at(t) : 0;
    EXPECT_NEAR(got, expect, 5 * sigma) << "token " << t;
    if (prob[t] == 0) {
      EXPECT_EQ(got, 0) << "token " << t;
    }
  }
}

// OpenAI's logit_bias: added to the logits before the draw; the logprobs stay
// those of the model.
TEST(SamplerTest, LogitBiasShiftsTheDistribution) {
  SamplingParams p;
  p.temperature = 0;
  p.logit_bias = {{1, -100.0f}};  // bans the argmax: the next best (5) wins
  Sampler banned(p, {});
  EXPECT_EQ(banned.Sample(kLogits.data(), kLogits.size()).token, 5);
  p.logit_bias = {{7, 100.0f}};  // the worst token, forced
  p.logprobs = 0;
  Sampler forced(p, {});
  const SampleResult r = forced.Sample(kLogits.data(), kLogits.size());
  EXPECT_EQ(r.token, 7);
  const std::vector<double> raw = Softmax({kLogits.begin(), kLogits.end()});
  EXPECT_NEAR(r.logprob, std::log(raw[7]), 1e-5);
  // Sampled: the distribution of the biased logits.
  p = SamplingParams();
  p.temperature = 0.8f;
  p.logit_bias = {{0, 2.0f}, {3, -1.5f}};
  std::vector<double> biased(kLogits.begin(), kLogits.end());
  biased[0] += 2.0;
  biased[3] -= 1.5;
  const int n = 20000;
  ExpectDistribution(Histogram(p, n), Softmax(biased, 0.8), n);
  SamplingParams bad;
  bad.logit_bias = {{3, 101.0f}};
  EXPECT_FALSE(bad.Validate().ok());
  bad.logit_bias = {{-1, 1.0f}};
  EXPECT_FALSE(bad.Validate().ok());
}

TEST(SamplerTest, TemperatureFollowsSoftmax) {
  SamplingParams p;
  p.temperature = 0.7f;
  const int n = 20000;
  ExpectDistribution(Histogram(p, n), Softmax({kLogits.begin(), kLogits.end()}, 0.7), n);
}

TEST(SamplerTest, TopKTopPMinP) {
  const int n = 20000;
  auto renorm = [](std::vector<double> p, std::vector<int> keep) {
    std::vector<double> out(p.size(), 0.0);
    double s = 0;
    for (int k : keep) s += p[k];
    for (int k : keep) out[k] = p[k] / s;
    return out;
  };
  const auto base = Softmax({kLogits.begin(), kLogits.end()});
  SamplingParams p;
  p.top_k = 3;  // tokens 1, 5, 3
  ExpectDistribution(Histogram(p, n), renorm(base, {1, 5, 3}), n);
  p = {};
  p.top_p = 0.75f;  // cumulative: 1 (.44), 5 (.71), 3 (.87) -> keep 3 tokens
  ExpectDistribution(Histogram(p, n), renorm(base, {1, 5, 3}), n);
  p = {};
  p.min_p = 0.5f;  // keep p >= 0.5 * p_max: tokens 1 and 5 (e^-0.5 = .61)
  ExpectDistribution(Histogram(p, n), renorm(base, {1, 5}), n);
}

TEST(SamplerTest, Penalties) {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 1.0f;
  p.frequency_penalty = 0.3f;
  Sampler s(p, {});
  // Token 1 (3.0) wins; then 3.0 - 1.3 = 1.7 < 2.5: token 5; then 5 drops to 1.2: token 3 (2.0) ...
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()).token, 1);
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()).token, 5);
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()).token, 3);
  // 1: 1.7, 5: 1.2, 3: 0.7, 0: 1.0 -> token 1 again, now 3.0 - 1.6 = 1.4.
  EXPECT_EQ(s.Sample(kLogits.data(), kLogits.size()).token, 1);
  // Repetition penalty divides positive logits of prompt tokens: 3.0/2 = 1.5 < 2.5.
  SamplingParams r;
  r.temperature = 0;
  r.repetition_penalty = 2.0f;
  Sampler s2(r, {1});
  EXPECT_EQ(s2.Sample(kLogits.data(), kLogits.size()).token, 5);
  // ... and multiplies negative ones.
  const std::vector<float> neg = {-1.0f, -1.5f};
  Sampler s3(r, {0});
  EXPECT_EQ(s3.Sample(neg.data(), 2).token, 1);  // -2.0 vs -1.5
}

TEST(SamplerTest, LogprobsAreRawLogSoftmax) {
  SamplingParams p;
  p.temperature = 0.5f;
  p.top_k = 2;
  p.logprobs = 3;
  p.seed = 3;
  p.has_seed = true;
  Sampler s(p, {});
  const auto r = s.Sample(kLogits.data(), kLogits.size());
  const auto want = Softmax({kLogits.begin(), kLogits.end()});
  EXPECT_NEAR(r.logprob, std::log(want[r.token]), 1e-5);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_EQ(r.top[1].token, 5);
  EXPECT_EQ(r.top[2].token, 3);
  for (const auto& t : r.top) EXPECT_NEAR(t.logprob, std::log(want[t.token]), 1e-5);
}

TEST(SamplerTest, StopTokensAndValidation) {
  SamplingParams p;
  p.temperature = 0;
  p.stop_token_ids = {1};
  Sampler s(p, {});
  EXPECT_TRUE(s.Sample(kLogits.data(), kLogits.size()).stop);
  SamplingParams bad;
  bad.top_p = 0;
  EXPECT_FALSE(bad.Validate().ok());
  bad = {};
  bad.temperature = -1;
  EXPECT_FALSE(bad.Validate().ok());
  bad = {};
  bad.temperature = NAN;
  EXPECT_FALSE(bad.Validate().ok());
  bad = {};
  bad.logprobs = 21;
  EXPECT_FALSE(bad.Validate().ok());
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace moeserve
