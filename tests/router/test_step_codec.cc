// The step codec without a worker: a scheduler's output becomes the
// StepRequest the worker protocol describes (new sequences whole, running ones
// as diffs against what was sent), and results that break the protocol are
// refused.
#include <gtest/gtest.h>

#include <random>

#include "router/step_codec.h"

namespace moeserve::router {
namespace {

namespace v1 = worker::v1;
using Ids = std::vector<int32_t>;

KvCacheConfig Kv() {
  KvCacheConfig c;
  c.block_size = 4;
  c.num_blocks = {16, 16};
  c.sliding_window = 8;
  return c;
}

std::unique_ptr<Request> Req(int64_t id, int n, int64_t max_tokens) {
  auto r = std::make_unique<Request>();
  r->id = id;
  for (int i = 0; i < n; ++i) r->prompt.push_back(10 + i);
  r->max_tokens = max_tokens;
  r->sampling.set_temperature(0.5f);
  r->sampling.set_seed(9);
  return r;
}

Ids Of(const google::protobuf::RepeatedField<int32_t>& f) { return Ids(f.begin(), f.end()); }

TEST(StepCodecTest, NewSequencesWholeRunningOnesAsDiffs) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 6;
  Scheduler s(c, Kv());
  ASSERT_TRUE(s.AddRequest(Req(1, 10, 20)).ok());
  SchedulerOutput o = s.Schedule();
  v1::StepRequest req = EncodeStep(1, o);
  EXPECT_EQ(req.step_id(), 1u);
  ASSERT_EQ(req.new_sequences_size(), 1);
  ASSERT_EQ(req.running_size(), 0);
  const v1::NewSequence& n = req.new_sequences(0);
  EXPECT_EQ(n.id(), 1);
  EXPECT_EQ(Of(n.tokens()), (Ids{10, 11, 12, 13, 14, 15, 16, 17, 18, 19}));
  EXPECT_EQ(n.num_computed(), 0);
  EXPECT_EQ(n.num_scheduled(), 6);
  EXPECT_EQ(Of(n.full_blocks()), (Ids{0, 1}));
  EXPECT_EQ(Of(n.sliding_blocks()), (Ids{0, 1}));
  EXPECT_EQ(n.num_prompt_tokens(), 10);
  EXPECT_FLOAT_EQ(n.sampling().temperature(), 0.5f);
  EXPECT_EQ(n.sampling().seed(), 9u);
  auto d = DecodeResult(v1::StepResult(), 1, o, 100);  // a prefill chunk: no samples due
  ASSERT_FALSE(d.ok());                                 // ... but step id 0 answers another step
  v1::StepResult res;
  res.set_step_id(1);
  d = DecodeResult(res, 1, o, 100);
  ASSERT_TRUE(d.ok()) << d.status();
  s.UpdateFromOutput(o, d->tokens);

  // The rest of the prompt: only the new block ids go out.
  o = s.Schedule();
  req = EncodeStep(2, o);
  ASSERT_EQ(req.new_sequences_size(), 0);
  ASSERT_EQ(req.running_size(), 1);
  EXPECT_EQ(req.running(0).num_scheduled(), 4);
  EXPECT_EQ(Of(req.running(0).new_full_blocks()), (Ids{2}));
  EXPECT_EQ(Of(req.running(0).new_sliding_blocks()), (Ids{2}));
  EXPECT_EQ(req.running(0).sliding_released_below(), 0);
  res.set_step_id(2);
  auto* sample = res.add_samples();
  sample->set_id(1);
  sample->set_token(42);
  d = DecodeResult(res, 2, o, 100);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->tokens, (std::map<int64_t, int32_t>{{1, 42}}));
  ASSERT_EQ(d->samples.size(), 1u);
  s.UpdateFromOutput(o, d->tokens);

  // Decode positions 10 and 11, then 12: a new block, and sliding block 0
  // leaves the window (position 12 reads 5..12).
  for (int step = 3; step <= 4; ++step) {
    o = s.Schedule();
    req = EncodeStep(step, o);
    res.set_step_id(step);
    d = DecodeResult(res, step, o, 100);
    ASSERT_TRUE(d.ok()) << d.status();
    s.UpdateFromOutput(o, d->tokens);
  }
  o = s.Schedule();
  req = EncodeStep(5, o);
  ASSERT_EQ(req.running_size(), 1);
  EXPECT_EQ(o.scheduled[0].start, 12);
  EXPECT_EQ(Of(req.running(0).new_full_blocks()), (Ids{3}));
  EXPECT_EQ(Of(req.running(0).new_sliding_blocks()), (Ids{3}));
  EXPECT_EQ(req.running(0).sliding_released_below(), 1);

  // A finish and a preemption reach the worker as ids to drop.
  s.FinishRequests({1}, RequestStatus::kFinishedStopped);
  o = s.Schedule();
  req = EncodeStep(6, o);
  EXPECT_EQ(std::vector<int64_t>(req.finished_ids().begin(), req.finished_ids().end()), (std::vector<int64_t>{1}));
}

TEST(StepCodecTest, ResultsThatBreakTheProtocolAreRefused) {
  SchedulerConfig c;
  Scheduler s(c, Kv());
  ASSERT_TRUE(s.AddRequest(Req(1, 3, 5)).ok());
  ASSERT_TRUE(s.AddRequest(Req(2, 3, 5)).ok());
  SchedulerOutput o = s.Schedule();  // both sample
  auto result = [](std::vector<std::pair<int64_t, int32_t>> samples) {
    v1::StepResult r;
    r.set_step_id(4);
    for (auto [id, t] : samples) {
      auto* x = r.add_samples();
      x->set_id(id);
      x->set_token(t);
    }
    return r;
  };
  EXPECT_TRUE(DecodeResult(result({{1, 5}, {2, 6}}), 4, o, 100).ok());
  EXPECT_FALSE(DecodeResult(result({{1, 5}, {2, 6}}), 5, o, 100).ok());          // another step
  EXPECT_FALSE(DecodeResult(result({{1, 5}}), 4, o, 100).ok());                  // 2 got nothing
  EXPECT_FALSE(DecodeResult(result({{1, 5}, {2, 6}, {1, 5}}), 4, o, 100).ok());  // twice
  EXPECT_FALSE(DecodeResult(result({{1, 5}, {2, 6}, {3, 1}}), 4, o, 100).ok());  // not in the step
  EXPECT_FALSE(DecodeResult(result({{1, 100}, {2, 6}}), 4, o, 100).ok());        // outside the vocabulary
  EXPECT_FALSE(DecodeResult(result({{1, -1}, {2, 6}}), 4, o, 100).ok());
  // A failed step is not a protocol error: its sequences alone fail.
  v1::StepResult failed = result({});
  failed.set_error("out of memory");
  auto d = DecodeResult(failed, 4, o, 100);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->error, "out of memory");
}

}  // namespace
}  // namespace moeserve::router

namespace moeserve::router {
namespace {

// Token masks go in the smallest form, and each form decodes to the same set.
TEST(StepCodecTest, TokenMasksTakeTheSmallestForm) {
  const int32_t vocab = 201088;
  auto decode = [&](const worker::v1::TokenMask& m) {
    std::vector<bool> in(vocab, false);
    if (m.allowed_size() > 0) {
      for (int32_t t : m.allowed()) in[t] = true;
    } else if (m.denied_size() > 0) {
      in.assign(vocab, true);
      for (int32_t t : m.denied()) in[t] = false;
    } else {
      EXPECT_EQ(m.bits().size(), static_cast<size_t>((vocab + 7) / 8));
      for (int32_t t = 0; t < vocab; ++t) in[t] = (static_cast<uint8_t>(m.bits()[t / 8]) >> (t % 8)) & 1;
    }
    return in;
  };
  std::mt19937 rng(3);
  for (int density : {0, 1, 50, 99, 100}) {  // percent of tokens allowed (0: three tokens; 100: all but three)
    grammar::TokenMask mask((vocab + 63) / 64 + 1, 0);  // one spare word: bits past the vocabulary are dropped
    std::vector<bool> want(vocab, false);
    for (int32_t t = 0; t < vocab; ++t) {
      const bool in = density == 0 ? (t == 0 || t == 7 || t == vocab - 1)
                      : density == 100 ? !(t == 0 || t == 7 || t == vocab - 1)
                                       : static_cast<int>(rng() % 100) < density;
      if (in) grammar::MaskSet(&mask, t), want[t] = true;
    }
    grammar::MaskSet(&mask, vocab + 3);
    worker::v1::TokenMask m;
    EncodeTokenMask(mask, vocab, &m);
    const int forms = (m.allowed_size() > 0) + (m.denied_size() > 0) + !m.bits().empty();
    EXPECT_EQ(forms, 1) << density;
    if (density <= 1) EXPECT_GT(m.allowed_size(), 0) << density;
    if (density >= 99) EXPECT_GT(m.denied_size(), 0) << density;
    if (density == 50) EXPECT_FALSE(m.bits().empty());
    EXPECT_EQ(decode(m), want) << density;
    EXPECT_LE(m.ByteSizeLong(), static_cast<size_t>(vocab / 8 + 16)) << density;
  }
}

}  // namespace
}  // namespace moeserve::router
