// Prefix caching: block hashes against an independent SHA-256 (Python's
// hashlib), the block pool's LRU cache, the KV manager's hit rule with exact
// block ids (full and sliding-window groups), the scheduler's use of it, and
// a randomized workload run through the step codec into a simulated worker
// that checks every K/V position a token reads holds what that request wrote
// there (a wrong hit, a shared block written, or a block evicted while in use
// all fail it), ending with every block free.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "router/scheduler.h"
#include "router/step_codec.h"

namespace moeserve::router {
namespace {

using Ids = std::vector<int32_t>;

std::string Hex(const BlockHash& h) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t b : h.bytes) s += {d[b >> 4], d[b & 15]};
  return s;
}

TEST(BlockHashTest, ChainedSha256MatchesHashlib) {
  // hashlib.sha256(bytes(32) + struct.pack('<q', 0) + struct.pack('<4i', 1, 2, 3, 4))
  const BlockHash a = HashBlock(nullptr, 0, Ids{1, 2, 3, 4});
  EXPECT_EQ(Hex(a), "0ef3c9f6ae8968026875ea9128fbaa06aae53945a8da2e5a53a448919dd0a5ca");
  // ... then sha256(a + struct.pack('<q', 7) + struct.pack('<4i', 5, -1, 200000, 0))
  const BlockHash b = HashBlock(&a, 7, Ids{5, -1, 200000, 0});
  EXPECT_EQ(Hex(b), "fb21f1fe480dfe9004dc2f82ca7dcaece674681752e84ba22fde9fa065f4b238");
  // The prefix and the cache key are part of the name.
  EXPECT_NE(HashBlock(nullptr, 7, Ids{5, -1, 200000, 0}), b);
  EXPECT_NE(HashBlock(&a, 0, Ids{5, -1, 200000, 0}), b);
}

BlockHash H(int i) { return HashBlock(nullptr, 0, Ids{i}); }

TEST(BlockPoolTest, CachedBlocksStayFreeUntilEvictedOldestFirst) {
  BlockPool p(4);
  Ids a = p.Allocate(3);  // 0 1 2
  p.Cache(0, H(0));
  p.Cache(1, H(1));
  p.Cache(2, H(1));  // the name is taken: block 2 stays unnamed
  EXPECT_FALSE(p.cached(2));
  EXPECT_EQ(p.Lookup(H(1)), 1);
  p.Free(Ids{2, 1, 0});
  EXPECT_EQ(p.num_free(), 4);            // cached blocks count as free
  EXPECT_EQ(p.FreeList(), (Ids{3, 2, 1, 0}));
  p.Touch(1);                            // taken back out of the middle
  EXPECT_EQ(p.ref_count(1), 1);
  EXPECT_EQ(p.FreeList(), (Ids{3, 2, 0}));
  p.Touch(1);                            // shared
  EXPECT_EQ(p.ref_count(1), 2);
  EXPECT_EQ(p.Allocate(2), (Ids{3, 2}));  // uncached ones first: no eviction
  EXPECT_EQ(p.num_evictions(), 0);
  EXPECT_EQ(p.Allocate(1), (Ids{0}));     // evicts block 0's name
  EXPECT_EQ(p.num_evictions(), 1);
  EXPECT_EQ(p.Lookup(H(0)), -1);
  EXPECT_EQ(p.Lookup(H(1)), 1);
  p.Free(Ids{1, 1});
  EXPECT_EQ(p.FreeList(), (Ids{1}));
  EXPECT_TRUE(p.cached(1));
}

KvCacheConfig Kv(int32_t full, int32_t sliding, int64_t window = 8) {
  KvCacheConfig c;
  c.block_size = 4;
  c.num_blocks = {full, sliding};
  c.sliding_window = window;
  return c;
}

std::vector<BlockHash> Hashes(const Ids& tokens, int bs = 4) {
  std::vector<BlockHash> h;
  for (size_t b = 0; (b + 1) * bs <= tokens.size(); ++b) {
    h.push_back(HashBlock(b ? &h.back() : nullptr, 0, std::span<const int32_t>(tokens).subspan(b * bs, bs)));
  }
  return h;
}

Ids Range(int from, int n) {
  Ids t;
  for (int i = 0; i < n; ++i) t.push_back(from + i);
  return t;
}

TEST(KvCacheManagerPrefixTest, FullGroupHitSharesBlocksAndLeavesOneTokenToCompute) {
  KvCacheManager kv(Kv(16, 0));
  const Ids a = Range(0, 10);
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 10, 0, nullptr));
  EXPECT_EQ(kv.tables(1)[kFullGroup], (Ids{0, 1, 2}));
  // Nothing is named before the step's result.
  EXPECT_EQ(kv.FindCachedPrefix(Hashes(a), 10).num_tokens, 0);
  kv.CacheBlocks(1, Hashes(a), 10);  // blocks 0 and 1 are full
  Ids b = Range(0, 8);
  b.push_back(77);  // shares 8 tokens = 2 blocks
  PrefixHit hit = kv.FindCachedPrefix(Hashes(b), 9);
  EXPECT_EQ(hit.num_tokens, 8);
  EXPECT_EQ(hit.tables[kFullGroup], (Ids{0, 1}));
  ASSERT_TRUE(kv.AllocateSlots(2, 8, 1, 0, nullptr, &hit));
  EXPECT_EQ(kv.tables(2)[kFullGroup], (Ids{0, 1, 3}));
  EXPECT_EQ(kv.pool(kFullGroup).ref_count(0), 2);
  // A prompt equal to a cached one of whole blocks still computes its last block.
  EXPECT_EQ(kv.FindCachedPrefix(Hashes(Range(0, 8)), 8).num_tokens, 4);
  // Another cache key (adapter) shares nothing.
  std::vector<BlockHash> other;
  other.push_back(HashBlock(nullptr, 5, Ids{0, 1, 2, 3}));
  EXPECT_EQ(kv.FindCachedPrefix(other, 9).num_tokens, 0);
  kv.Free(1);
  kv.Free(2);
  EXPECT_EQ(kv.pool(kFullGroup).num_free(), 16);
  EXPECT_EQ(kv.pool(kFullGroup).num_cached(), 2);  // still there for the next request
  EXPECT_EQ(kv.FindCachedPrefix(Hashes(b), 9).num_tokens, 8);
}

// Window 8, blocks of 4: a hit of j blocks needs sliding blocks
// lo(j) = max(0, 4j - 7) / 4 .. j-1, i.e. the last two blocks.
TEST(KvCacheManagerPrefixTest, SlidingHitNeedsTheLastWindowCached) {
  KvCacheManager kv(Kv(64, 32));
  const Ids a = Range(0, 24);
  const auto ha = Hashes(a);
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 24, 0, &ha));  // one chunk: sliding blocks 0..5 all held
  EXPECT_EQ(kv.num_pending(), 6);
  kv.CacheBlocks(1, ha, 24);
  EXPECT_EQ(kv.num_pending(), 0);
  const Ids full1 = kv.tables(1)[kFullGroup], sliding1 = kv.tables(1)[kSlidingGroup];
  ASSERT_EQ(sliding1, (Ids{0, 1, 2, 3, 4, 5}));
  Ids b = a;
  b.insert(b.end(), {90, 91, 92, 93});  // 28 tokens: up to 6 blocks may hit
  PrefixHit hit = kv.FindCachedPrefix(Hashes(b), 28);
  EXPECT_EQ(hit.num_tokens, 24);
  EXPECT_EQ(hit.tables[kFullGroup], full1);
  EXPECT_EQ(hit.tables[kSlidingGroup], (Ids{-1, -1, -1, -1, 4, 5}));  // only the last window
  // Freed, the table's tail goes first: evicting exactly sliding block 5 (the
  // last of the window) leaves a hit of 5 blocks, whose window (3, 4) is cached.
  kv.Free(1);
  const auto frees = kv.pool(kSlidingGroup).FreeList();
  const int64_t upto = std::find(frees.begin(), frees.end(), 5) - frees.begin() + 1;
  ASSERT_TRUE(kv.AllocateSlots(50, 0, 4 * upto, 0, nullptr));  // other tokens, never named
  EXPECT_EQ(kv.pool(kSlidingGroup).num_evictions(), 1);
  EXPECT_EQ(kv.pool(kFullGroup).num_evictions(), 0);
  hit = kv.FindCachedPrefix(Hashes(b), 28);
  EXPECT_EQ(hit.num_tokens, 20);
  EXPECT_EQ(hit.tables[kFullGroup], Ids(full1.begin(), full1.begin() + 5));
  EXPECT_EQ(hit.tables[kSlidingGroup], (Ids{-1, -1, -1, 3, 4}));
  ASSERT_TRUE(kv.AllocateSlots(2, 20, 8, 0, nullptr, &hit));
  EXPECT_EQ(kv.pool(kSlidingGroup).ref_count(3), 1);
  EXPECT_EQ(kv.pool(kFullGroup).ref_count(full1[0]), 1);
  EXPECT_EQ(kv.sliding_released(2), 3);
  EXPECT_EQ(kv.tables(2)[kFullGroup].size(), 7u);
  kv.Free(2);
  kv.Free(50);
  EXPECT_EQ(kv.pool(kFullGroup).num_free(), 64);
  EXPECT_EQ(kv.pool(kSlidingGroup).num_free(), 32);
}

TEST(KvCacheManagerPrefixTest, BlocksBeingComputedArePending) {
  KvCacheManager kv(Kv(16, 16));
  const Ids a = Range(0, 12);
  const auto h = Hashes(a);
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 12, 0, &h));
  PrefixHit hit = kv.FindCachedPrefix(h, 12);
  EXPECT_EQ(hit.num_tokens, 0);
  EXPECT_TRUE(hit.next_pending);
  kv.CacheBlocks(1, h, 8);  // a chunk of 8 computed
  hit = kv.FindCachedPrefix(h, 12);
  EXPECT_EQ(hit.num_tokens, 8);
  EXPECT_FALSE(hit.next_pending);  // block 2 would be the last: never shared
  kv.Free(1);
  EXPECT_EQ(kv.num_pending(), 0);
}

TEST(KvCacheManagerPrefixTest, OffMeansNoHits) {
  KvCacheConfig c = Kv(16, 16);
  c.enable_prefix_caching = false;
  KvCacheManager kv(c);
  const auto h = Hashes(Range(0, 12));
  ASSERT_TRUE(kv.AllocateSlots(1, 0, 12, 0, &h));
  kv.CacheBlocks(1, h, 12);
  EXPECT_EQ(kv.FindCachedPrefix(h, 13).num_tokens, 0);
  EXPECT_EQ(kv.pool(kFullGroup).num_cached(), 0);
}

std::unique_ptr<Request> Req(int64_t id, Ids prompt, int64_t max_tokens) {
  auto r = std::make_unique<Request>();
  r->id = id;
  r->prompt = std::move(prompt);
  r->max_tokens = max_tokens;
  return r;
}

// Runs steps, sampling token 1000 + position, until nothing is left.
void Drain(Scheduler& s, int max_steps = 100) {
  for (int i = 0; i < max_steps && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      if (q.samples) sampled[q.request_id] = static_cast<int32_t>(1000 + q.start + q.num_tokens);
    }
    s.UpdateFromOutput(o, sampled);
  }
}

TEST(SchedulerPrefixTest, SecondRequestStartsAtTheHit) {
  SchedulerConfig c;
  Scheduler s(c, Kv(32, 32));
  ASSERT_TRUE(s.AddRequest(Req(1, Range(0, 18), 2)).ok());
  Drain(s);
  Ids p = Range(0, 16);
  p.insert(p.end(), {55, 56, 57});
  ASSERT_TRUE(s.AddRequest(Req(2, p, 2)).ok());
  SchedulerOutput o = s.Schedule();
  ASSERT_EQ(o.new_sequences.size(), 1u);
  EXPECT_EQ(o.new_sequences[0].num_computed, 16);
  EXPECT_EQ(o.new_sequences[0].num_scheduled, 3);
  EXPECT_EQ(o.scheduled[0].start, 16);
  EXPECT_EQ(o.prefix_cache_queries, 19);
  EXPECT_EQ(o.prefix_cache_hits, 16);
  EXPECT_EQ(s.request(2)->num_cached_tokens, 16);
  EXPECT_EQ(o.started, (std::vector<int64_t>{2}));
}

// Prompt logprobs need every prompt row computed: no cache hits, and the
// prompt goes in chunks of at most 128 tokens (then the rest as one chunk).
TEST(SchedulerPrefixTest, PromptLogprobsTakeNoHitsAndSmallChunks) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 1024;
  Scheduler s(c, Kv(256, 256));
  ASSERT_TRUE(s.AddRequest(Req(1, Range(0, 300), 2)).ok());
  Drain(s);
  auto r = Req(2, Range(0, 300), 2);
  r->sampling.set_prompt_logprobs(true);
  ASSERT_TRUE(s.AddRequest(std::move(r)).ok());
  std::vector<std::pair<int64_t, int64_t>> chunks;
  for (int i = 0; i < 10 && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    for (const auto& q : o.scheduled) chunks.emplace_back(q.start, q.num_tokens);
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      if (q.samples) sampled[q.request_id] = 7;
    }
    s.UpdateFromOutput(o, sampled);
  }
  EXPECT_EQ(chunks, (std::vector<std::pair<int64_t, int64_t>>{{0, 128}, {128, 128}, {256, 44}, {300, 1}}));
}

// The 128 prompt-logprob rows are per step, over all requests; a request
// without prompt logprobs is scheduled beside them as usual.
TEST(SchedulerPrefixTest, PromptLogprobRowsAreBoundedPerStep) {
  SchedulerConfig c;
  c.max_num_batched_tokens = 1024;
  Scheduler s(c, Kv(512, 512));
  for (int64_t id : {1, 2, 3}) {
    auto r = Req(id, Range(1000 * id, 100), 1);
    r->sampling.set_prompt_logprobs(id != 3);
    ASSERT_TRUE(s.AddRequest(std::move(r)).ok());
  }
  std::vector<std::map<int64_t, int64_t>> steps;  // per step: request -> tokens
  for (int i = 0; i < 10 && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    std::map<int64_t, int64_t> step;
    int64_t prompt_rows = 0;
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      step[q.request_id] = q.num_tokens;
      if (q.request_id != 3 && q.start + 1 < 100) prompt_rows += q.num_tokens;
      if (q.samples) sampled[q.request_id] = 7;
    }
    EXPECT_LE(prompt_rows, 128) << "step " << i;
    steps.push_back(step);
    s.UpdateFromOutput(o, sampled);
  }
  ASSERT_GE(steps.size(), 2u);
  EXPECT_EQ(steps[0], (std::map<int64_t, int64_t>{{1, 100}, {2, 28}, {3, 100}}));
  EXPECT_EQ(steps[1], (std::map<int64_t, int64_t>{{2, 72}}));
}

TEST(SchedulerPrefixTest, SimultaneousRequestsWaitAStepToShare) {
  SchedulerConfig c;
  Scheduler s(c, Kv(64, 64));
  for (int id = 1; id <= 3; ++id) ASSERT_TRUE(s.AddRequest(Req(id, Range(0, 21), 2)).ok());  // n = 3
  SchedulerOutput o = s.Schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);  // the first computes; the others wait for its blocks
  EXPECT_EQ(o.scheduled[0].request_id, 1);
  s.UpdateFromOutput(o, {{1, 7}});
  o = s.Schedule();
  ASSERT_EQ(o.scheduled.size(), 3u);
  EXPECT_EQ(o.scheduled[1].start, 20);
  EXPECT_EQ(o.scheduled[1].num_tokens, 1);
  EXPECT_EQ(o.scheduled[2].start, 20);
  EXPECT_EQ(s.kv().tables(2)[kFullGroup][0], s.kv().tables(1)[kFullGroup][0]);
  EXPECT_EQ(s.kv().pool(kFullGroup).ref_count(s.kv().tables(1)[kFullGroup][0]), 3);
  EXPECT_EQ(s.request(3)->num_cached_tokens, 20);
}

TEST(SchedulerPrefixTest, PreemptedRequestRecomputesOnlyWhatWasEvicted) {
  SchedulerConfig c;
  c.watermark_blocks = 0;
  Scheduler s(c, Kv(6, 16));
  ASSERT_TRUE(s.AddRequest(Req(1, Range(0, 8), 12)).ok());  // grows to 20 tokens = 5 blocks
  ASSERT_TRUE(s.AddRequest(Req(2, Range(100, 8), 8)).ok());  // grows to 16 = 4 blocks: one must wait
  int64_t recomputed_from = -1;
  for (int i = 0; i < 60 && s.num_running() + s.num_waiting() > 0; ++i) {
    SchedulerOutput o = s.Schedule();
    for (const auto& d : o.new_sequences) {
      if (d.request_id == 2 && s.request(2)->num_preemptions > 0) recomputed_from = d.num_computed;
    }
    std::map<int64_t, int32_t> sampled;
    for (const auto& q : o.scheduled) {
      if (q.samples) sampled[q.request_id] = static_cast<int32_t>(1000 + q.start + q.num_tokens);
    }
    s.UpdateFromOutput(o, sampled);
  }
  ASSERT_EQ(s.request(2)->num_preemptions, 1);
  EXPECT_GT(recomputed_from, 0) << "the preempted request found none of its blocks";
  EXPECT_EQ(s.request(2)->output, (Ids{1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}));
  EXPECT_EQ(s.kv().pool(kFullGroup).num_free(), 6);
}

TEST(SchedulerPrefixTest, CachedBlocksAreReclaimedUnderPressure) {
  SchedulerConfig c;
  c.watermark_blocks = 0;
  Scheduler s(c, Kv(8, 8));
  ASSERT_TRUE(s.AddRequest(Req(1, Range(0, 24), 1)).ok());
  Drain(s);
  EXPECT_EQ(s.kv().pool(kFullGroup).num_cached(), 6);
  EXPECT_EQ(s.kv().usage(kFullGroup), 0.0);
  // A request of other tokens needs 7 of the 8 blocks: cached ones are evicted, oldest (tail) first.
  ASSERT_TRUE(s.AddRequest(Req(2, Range(500, 26), 1)).ok());
  Drain(s);
  EXPECT_EQ(s.request(2)->status, RequestStatus::kFinishedLength);
  EXPECT_GT(s.kv().pool(kFullGroup).num_evictions(), 0);
  EXPECT_EQ(s.kv().pool(kFullGroup).num_evictions(), 5);
  // Freed tail first, so the prefix's first block went last: a request sharing it still hits.
  ASSERT_TRUE(s.AddRequest(Req(3, Range(0, 9), 1)).ok());
  SchedulerOutput o = s.Schedule();
  EXPECT_EQ(o.prefix_cache_hits, 4);
}

// ---------------------------------------------------------------------------
// The randomized workload through the codec into a simulated worker.

uint64_t Mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  h *= 0xff51afd7ed558ccdULL;
  return h ^ (h >> 31);
}

// Holds block tables as a worker does (from StepRequests only) and the content
// of every KV slot: the hash of the token sequence up to that position.
class SimWorker {
 public:
  SimWorker(const KvCacheConfig& kv, const Scheduler* s) : kv_(kv), s_(s) {
    for (int g = 0; g < kNumGroups; ++g) slots_[g].assign(static_cast<size_t>(kv.num_blocks[g]) * kv.block_size, 0);
  }

  // Runs a step; returns the sampled tokens (the "model": a function of what it read).
  worker::v1::StepResult Run(const worker::v1::StepRequest& req) {
    worker::v1::StepResult res;
    res.set_step_id(req.step_id());
    for (int64_t id : req.finished_ids()) seqs_.erase(id);
    std::vector<std::pair<int64_t, int64_t>> work;  // id, tokens to compute
    for (const auto& n : req.new_sequences()) {
      Seq& q = seqs_[n.id()];
      q = Seq();
      q.tokens.assign(n.tokens().begin(), n.tokens().end());
      q.computed = n.num_computed();
      q.tables[kFullGroup].assign(n.full_blocks().begin(), n.full_blocks().end());
      q.tables[kSlidingGroup].assign(n.sliding_blocks().begin(), n.sliding_blocks().end());
      work.emplace_back(n.id(), n.num_scheduled());
    }
    for (const auto& r : req.running()) {
      Seq& q = seqs_.at(r.id());
      q.tables[kFullGroup].insert(q.tables[kFullGroup].end(), r.new_full_blocks().begin(), r.new_full_blocks().end());
      q.tables[kSlidingGroup].insert(q.tables[kSlidingGroup].end(), r.new_sliding_blocks().begin(),
                                     r.new_sliding_blocks().end());
      for (int64_t b = 0; b < r.sliding_released_below(); ++b) q.tables[kSlidingGroup][b] = -1;
      // The router appended the token it last sampled.
      const Request* rq = s_->request(r.id());
      q.tokens.assign(rq->prompt.begin(), rq->prompt.end());
      q.tokens.insert(q.tokens.end(), rq->output.begin(), rq->output.end());
      work.emplace_back(r.id(), r.num_scheduled());
    }
    for (auto [id, n] : work) {
      Seq& q = seqs_.at(id);
      std::vector<uint64_t> ph(q.tokens.size());
      for (size_t i = 0; i < q.tokens.size(); ++i) ph[i] = Mix(i ? ph[i - 1] : 1, static_cast<uint32_t>(q.tokens[i]));
      for (int64_t p = q.computed; p < q.computed + n; ++p) Compute(id, q, ph, p);
      q.computed += n;
      if (q.computed == static_cast<int64_t>(q.tokens.size())) {
        auto* o = res.add_samples();
        o->set_id(id);
        o->set_token(static_cast<int32_t>(ph[q.computed - 1] % 7));  // many repeats: shared outputs
      }
    }
    return res;
  }

 private:
  struct Seq {
    std::vector<int32_t> tokens;
    int64_t computed = 0;
    BlockTables tables;
  };
  uint64_t& Slot(int g, const Seq& q, int64_t pos) {
    const int64_t b = pos / kv_.block_size;
    EXPECT_LT(b, static_cast<int64_t>(q.tables[g].size()));
    static uint64_t dummy;
    if (b >= static_cast<int64_t>(q.tables[g].size())) return dummy;
    const int32_t block = q.tables[g][b];
    EXPECT_GE(block, 0) << "group " << g << " position " << pos << " has no block";
    if (block < 0) return dummy;
    return slots_[g][static_cast<size_t>(block) * kv_.block_size + pos % kv_.block_size];
  }
  void Compute(int64_t id, Seq& q, const std::vector<uint64_t>& ph, int64_t p) {
    // Read: every earlier position (full layers), the window (sliding layers).
    for (int64_t i = 0; i < p; ++i) {
      const uint64_t want = ph[i];
      ASSERT_EQ(Slot(kFullGroup, q, i), want) << "sequence " << id << " reads a wrong full K/V at " << i;
      if (i >= p - kv_.sliding_window + 1) {
        ASSERT_EQ(Slot(kSlidingGroup, q, i), want) << "sequence " << id << " reads a wrong sliding K/V at " << i;
      }
    }
    // Write position p: never into a block another sequence holds.
    for (int g = 0; g < kNumGroups; ++g) {
      const int32_t block = q.tables[g][p / kv_.block_size];
      ASSERT_EQ(s_->kv().pool(g).ref_count(block), 1) << "a shared block is written";
      Slot(g, q, p) = ph[p];
    }
  }

  KvCacheConfig kv_;
  const Scheduler* s_;
  std::map<int64_t, Seq> seqs_;
  std::array<std::vector<uint64_t>, kNumGroups> slots_;
};

TEST(SchedulerPrefixTest, RandomWorkloadReadsOnlyItsOwnKvAndLeaksNothing) {
  std::mt19937 g(11);
  SchedulerConfig c;
  c.max_num_batched_tokens = 20;
  c.max_num_seqs = 6;
  c.max_model_len = 96;
  const KvCacheConfig kv = Kv(40, 24);
  Scheduler s(c, kv);
  SimWorker w(kv, &s);
  // Prompts: one of three shared prefixes (system prompts), then a random tail.
  std::vector<Ids> prefixes = {Range(0, 13), Range(50, 33), Range(200, 6)};
  std::set<int64_t> live;
  int64_t next_id = 1, preemptions = 0, hits = 0, queries = 0;
  uint64_t step_id = 0;
  for (int step = 0; step < 6000; ++step) {
    if (next_id <= 300 && g() % 3 == 0) {
      Ids p = prefixes[g() % prefixes.size()];
      const int tail = static_cast<int>(g() % 12);
      for (int i = 0; i < tail; ++i) p.push_back(static_cast<int32_t>(g() % 3));  // tails often repeat too
      if (p.empty()) p.push_back(1);
      if (s.AddRequest(Req(next_id, p, 1 + static_cast<int64_t>(g() % 24))).ok()) live.insert(next_id);
      ++next_id;
    }
    SchedulerOutput o = s.Schedule();
    preemptions += static_cast<int64_t>(o.preempted.size());
    hits += o.prefix_cache_hits;
    queries += o.prefix_cache_queries;
    const worker::v1::StepRequest req = EncodeStep(++step_id, o);
    const worker::v1::StepResult res = w.Run(req);
    if (HasFatalFailure()) return;
    auto samples = DecodeResult(res, step_id, o, 1 << 20);
    ASSERT_TRUE(samples.ok()) << samples.status();
    for (int64_t id : s.UpdateFromOutput(o, samples->tokens)) live.erase(id);
    if (!live.empty() && g() % 40 == 0) {
      const int64_t victim = *std::next(live.begin(), g() % live.size());
      s.FinishRequests({victim}, g() % 2 ? RequestStatus::kFinishedAborted : RequestStatus::kFinishedStopped);
      live.erase(victim);
    }
    if (next_id > 300 && live.empty()) break;
  }
  EXPECT_TRUE(live.empty());
  EXPECT_GT(preemptions, 0) << "the pool was never tight";
  EXPECT_GT(hits, queries / 4) << "few hits: the test proves little (" << hits << " of " << queries << ")";
  EXPECT_GT(s.kv().pool(kFullGroup).num_evictions(), 0);
  s.Schedule();  // the last finished ids go out
  EXPECT_EQ(s.kv().pool(kFullGroup).num_free(), 40);
  EXPECT_EQ(s.kv().pool(kSlidingGroup).num_free(), 24);
  EXPECT_EQ(s.kv().num_pending(), 0);
  for (int b = 0; b < 40; ++b) EXPECT_EQ(s.kv().pool(kFullGroup).ref_count(b), 0);
}

}  // namespace
}  // namespace moeserve::router
