// Block pool, KV manager and scheduler, step by step with exact block ids,
// plus a randomized simulation checking that nothing leaks and that
// preemption never changes what a request generates.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "router/scheduler.h"

namespace moeserve::router {
namespace {

using Ids = std::vector<int32_t>;

TEST(BlockPoolTest, FifoFreeListAndRefCounts) {
  BlockPool p(4);
  EXPECT_EQ(p.Allocate(3), (Ids{0, 1, 2}));
  EXPECT_TRUE(p.Allocate(2).empty());  // only 1 free: nothing handed out
  EXPECT_EQ(p.num_free(), 1);
  p.Free(Ids{1, 0});
  EXPECT_EQ(p.FreeList(), (Ids{3, 1, 0}));
  EXPECT_EQ(p.Allocate(2), (Ids{3, 1}));
  EXPECT_EQ(p.ref_count(2), 1);
  p.Free(-1);  // released sliding entries are ignored
  EXPECT_EQ(p.num_free(), 1);
}

KvCacheConfig SmallKv(int32_t full, int32_t sliding) {
  KvCacheConfig c;
  c.block_size = 4;
  c.num_blocks = {full, sliding};
  c.sliding_window = 8;
  return c;
}

TEST(KvCacheManagerTest, FullTableGrowsSlidingTableStaysBounded) {
  KvCacheManager kv(SmallKv(16, 8));
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 6));  // positions 0..5
  EXPECT_EQ(kv.tables(1)[kFullGroup], (Ids{0, 1}));
  EXPECT_EQ(kv.tables(1)[kSlidingGroup], (Ids{0, 1}));
  // Decode up to position 19 one token at a time.
  for (int64_t p = 6; p < 20; ++p) ASSERT_TRUE(kv.AllocateSlots(1, p, 1));
  EXPECT_EQ(kv.tables(1)[kFullGroup], (Ids{0, 1, 2, 3, 4}));
  // Position 19 attends to 12..19: blocks 3 and 4; blocks 0..2 went back.
  const Ids& s = kv.tables(1)[kSlidingGroup];
  ASSERT_EQ(s.size(), 5u);
  EXPECT_EQ(s[0], -1);
  EXPECT_EQ(s[1], -1);
  EXPECT_EQ(s[2], -1);
  EXPECT_GE(s[3], 0);
  EXPECT_GE(s[4], 0);
  EXPECT_EQ(kv.pool(kSlidingGroup).num_free(), 6);
  kv.Free(1);
  EXPECT_EQ(kv.pool(kFullGroup).num_free(), 16);
  EXPECT_EQ(kv.pool(kSlidingGroup).num_free(), 8);
}

TEST(KvCacheManagerTest, DoesNotFitChangesNothing) {
  KvCacheManager kv(SmallKv(3, 8));
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 8));   // 2 full blocks
  EXPECT_FALSE(kv.AllocateSlots(2, 0, 8));  // needs 2, 1 free
  EXPECT_FALSE(kv.has(2));
  EXPECT_EQ(kv.pool(kFullGroup).num_free(), 1);
  EXPECT_FALSE(kv.AllocateSlots(2, 0, 4, /*watermark=*/1));  // would leave 0 < watermark
  EXPECT_TRUE(kv.AllocateSlots(2, 0, 4));
}

std::unique_ptr<Request> Req(int64_t id, int prompt_len, int64_t max_tokens, Ids stop = {}) {
  auto r = std::make_unique<Request>();
  r->id = id;
  for (int i = 0; i < prompt_len; ++i) r->prompt.push_back(100 + i);
  r->max_tokens = max_tokens;
  r->stop_token_ids = std::move(stop);
  return r;
}

TEST(SchedulerTest, ChunkedPrefillThenDecode) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 8;
  Scheduler s(c, SmallKv(64, 64));
  ASSERT_TRUE(s.AddRequest(Req(1, 20, 3)).ok());
  std::vector<std::pair<int64_t, int64_t>> steps;  // (start, n)
  for (int i = 0; i < 10 && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    ASSERT_EQ(o.scheduled.size(), 1u);
    steps.emplace_back(o.scheduled[0].start, o.scheduled[0].num_tokens);
    EXPECT_EQ(o.scheduled[0].whole, i == 0);
    std::map<int64_t, int32_t> sampled;
    if (o.scheduled[0].samples) sampled[1] = 7;
    s.UpdateFromOutput(o, sampled);
  }
  EXPECT_EQ(steps, (std::vector<std::pair<int64_t, int64_t>>{{0, 8}, {8, 8}, {16, 4}, {20, 1}, {21, 1}}));
  EXPECT_EQ(s.request(1)->output, (Ids{7, 7, 7}));
  EXPECT_EQ(s.request(1)->status, RequestStatus::kFinishedLength);
  EXPECT_EQ(s.kv().pool(kFullGroup).num_free(), 64);
}

TEST(SchedulerTest, PrefillAndDecodeShareAStep) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 10;
  Scheduler s(c, SmallKv(64, 64));
  ASSERT_TRUE(s.AddRequest(Req(1, 4, 5)).ok());
  SchedulerOutput o = s.Schedule();
  s.UpdateFromOutput(o, {{1, 9}});
  ASSERT_TRUE(s.AddRequest(Req(2, 30, 5)).ok());
  o = s.Schedule();
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[0].request_id, 1);  // decode first
  EXPECT_EQ(o.scheduled[0].num_tokens, 1);
  EXPECT_TRUE(o.scheduled[0].samples);
  EXPECT_EQ(o.scheduled[1].request_id, 2);  // then 9 prompt tokens of the new one
  EXPECT_EQ(o.scheduled[1].num_tokens, 9);
  EXPECT_FALSE(o.scheduled[1].samples);
  EXPECT_EQ(o.num_batched_tokens, 10);
}

TEST(SchedulerTest, MaxNumSeqsAndStopTokens) {
  SchedulerConfig c;
  c.max_num_seqs = 2;
  Scheduler s(c, SmallKv(64, 64));
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(s.AddRequest(Req(id, 3, 10, {42})).ok());
  SchedulerOutput o = s.Schedule();
  EXPECT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(s.num_waiting(), 1);
  auto done = s.UpdateFromOutput(o, {{1, 42}, {2, 5}});
  EXPECT_EQ(done, (std::vector<int64_t>{1}));
  EXPECT_STREQ(FinishReason(s.request(1)->status), "stop");
  o = s.Schedule();
  EXPECT_EQ(o.finished, (std::vector<int64_t>{1}));  // the worker drops its state
  ASSERT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(o.scheduled[1].request_id, 3);
}

TEST(SchedulerTest, AdmissionErrors) {
  SchedulerConfig c;
  c.max_model_len = 32;
  c.max_num_queued_requests = 2;
  Scheduler s(c, SmallKv(4, 4));
  EXPECT_EQ(s.AddRequest(Req(1, 30, 5)).code(), absl::StatusCode::kInvalidArgument);  // beyond max_model_len
  EXPECT_EQ(s.AddRequest(Req(2, 16, 8)).code(), absl::StatusCode::kInvalidArgument);  // more blocks than exist
  EXPECT_EQ(s.AddRequest(Req(3, 0, 8)).code(), absl::StatusCode::kInvalidArgument);   // empty prompt
  EXPECT_TRUE(s.AddRequest(Req(4, 4, 4)).ok());
  EXPECT_TRUE(s.AddRequest(Req(5, 4, 4)).ok());
  EXPECT_EQ(s.AddRequest(Req(6, 4, 4)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.AddRequest(Req(4, 4, 4)).code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerTest, PreemptsTheNewestAndRecomputes) {
  SchedulerConfig c;
  c.watermark_blocks = 0;
  Scheduler s(c, SmallKv(5, 8));  // 5 full blocks of 4 tokens
  ASSERT_TRUE(s.AddRequest(Req(1, 7, 10)).ok());  // 2 blocks, grows to 17 tokens = 5 blocks
  ASSERT_TRUE(s.AddRequest(Req(2, 7, 6)).ok());   // 2 blocks, grows to 13 tokens = 4 blocks
  std::vector<int64_t> preempted;
  for (int step = 0; step < 40 && (s.num_running() + s.num_waiting()) > 0; ++step) {
    SchedulerOutput o = s.Schedule();
    preempted.insert(preempted.end(), o.preempted.begin(), o.preempted.end());
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      if (q.samples) sampled[q.request_id] = static_cast<int32_t>(q.start + q.num_tokens);  // depends on position only
    }
    s.UpdateFromOutput(o, sampled);
  }
  EXPECT_EQ(preempted, (std::vector<int64_t>{2}));
  EXPECT_EQ(s.request(1)->output, (Ids{7, 8, 9, 10, 11, 12, 13, 14, 15, 16}));
  EXPECT_EQ(s.request(2)->output, (Ids{7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(s.request(2)->num_preemptions, 1);
  EXPECT_EQ(s.kv().pool(kFullGroup).num_free(), 5);
  EXPECT_EQ(s.kv().pool(kSlidingGroup).num_free(), 8);
}

// The sliding pool holds K/V of a whole chunk during a step: with a small pool
// (the worker sizes it for --max-num-seqs windows) a long prompt is prefilled
// in chunks that fit, instead of waiting forever for blocks that never free.
TEST(SchedulerTest, ChunksFitTheSlidingPool) {
  SchedulerConfig c;
  c.watermark_blocks = 1;
  Scheduler s(c, SmallKv(64, 10));  // window 8 = 2 blocks of 4; 10 sliding blocks
  ASSERT_TRUE(s.AddRequest(Req(1, 60, 2)).ok());  // 15 blocks of prompt
  std::vector<int64_t> chunks;
  for (int i = 0; i < 20 && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    ASSERT_EQ(o.scheduled.size(), 1u) << "step " << i;
    chunks.push_back(o.scheduled[0].num_tokens);
    std::map<int64_t, int32_t> sampled;
    if (o.scheduled[0].samples) sampled[1] = 7;
    s.UpdateFromOutput(o, sampled);
  }
  EXPECT_EQ(s.request(1)->status, RequestStatus::kFinishedLength);
  // 9 blocks (10 - watermark) of 4 tokens, then chunks reusing the released blocks.
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks[0], 36);
  int64_t total = 0;
  for (int64_t n : chunks) total += n;
  EXPECT_EQ(total, 61);  // 60 prompt tokens and the first sampled one
  EXPECT_EQ(s.kv().pool(kSlidingGroup).num_free(), 10);
}

// Many requests, a tight KV pool, random aborts: every request ends, its
// output is what the position-determined "model" says no matter how often it
// was preempted, and all blocks come back.
TEST(SchedulerTest, RandomSimulationLeaksNothing) {
  std::mt19937 g(3);
  SchedulerConfig c;
  c.max_num_batched_tokens = 24;
  c.max_num_seqs = 6;
  c.max_model_len = 64;
  Scheduler s(c, SmallKv(24, 20));
  std::set<int64_t> live;
  int64_t next_id = 1;
  int preemptions = 0;
  for (int step = 0; step < 3000; ++step) {
    if (next_id <= 200 && g() % 3 == 0) {
      auto r = Req(next_id, 1 + static_cast<int>(g() % 30), 1 + static_cast<int64_t>(g() % 20), {9999});
      if (s.AddRequest(std::move(r)).ok()) live.insert(next_id);
      ++next_id;
    }
    SchedulerOutput o = s.Schedule();
    preemptions += static_cast<int>(o.preempted.size());
    int64_t tokens = 0;
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      tokens += q.num_tokens;
      const Request* r = s.request(q.request_id);
      ASSERT_LE(q.start + q.num_tokens, r->num_tokens());
      if (q.samples) sampled[q.request_id] = static_cast<int32_t>((q.start + q.num_tokens) * 31 + q.request_id);
    }
    ASSERT_LE(tokens, c.max_num_batched_tokens);
    ASSERT_LE(s.num_running(), c.max_num_seqs);
    for (int64_t id : s.UpdateFromOutput(o, sampled)) live.erase(id);
    if (!live.empty() && g() % 50 == 0) {
      const int64_t victim = *std::next(live.begin(), g() % live.size());
      s.FinishRequests({victim}, RequestStatus::kFinishedAborted);
      live.erase(victim);
    }
    if (next_id > 200 && live.empty()) break;
  }
  EXPECT_TRUE(live.empty());
  EXPECT_GT(preemptions, 0) << "the pool was never tight; the test proves nothing";
  for (int64_t id = 1; id < next_id; ++id) {
    const Request* r = s.request(id);
    if (!r || r->status == RequestStatus::kFinishedAborted) continue;
    for (size_t k = 0; k < r->output.size(); ++k) {
      const int64_t pos = static_cast<int64_t>(r->prompt.size() + k);
      ASSERT_EQ(r->output[k], static_cast<int32_t>(pos * 31 + id)) << "request " << id;
    }
    EXPECT_EQ(static_cast<int64_t>(r->output.size()), r->max_tokens);
  }
  EXPECT_EQ(s.kv().pool(kFullGroup).num_free(), 24);
  EXPECT_EQ(s.kv().pool(kSlidingGroup).num_free(), 20);
}

}  // namespace
}  // namespace moeserve::router
