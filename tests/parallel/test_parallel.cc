// Tensor and expert parallel CPU ranks over real Gloo (TCP on loopback), one
// thread per rank in this process, against the single-process engine: the
// same logits within 1e-4 (f32 KV) and the same greedy tokens, on a
// checkpoint with gpt-oss's 8 KV heads, a vocabulary that does not divide
// evenly, prompts that cross the sliding window and experts scaled to hit
// the SwiGLU clamps. The worker-process version is tests/e2e/parallel_e2e.mjs.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <atomic>
#include <latch>
#include <numeric>
#include <thread>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel/gloo_communicator.h"
#include "engine/parallel/rendezvous.h"
#include "engine/parallel/shard.h"
#include "tests/test_util.h"

namespace moeserve {
namespace {

using testing::RandomTokens;
using testing::TempDir;

std::string MidCheckpoint(const std::string& experts = "mxfp4") {
  static std::map<std::string, std::string> dirs;
  if (dirs.count(experts)) return dirs[experts];
  const std::string dir = TempDir("parallel_mid_" + experts);
  CheckpointGenOptions o;
  o.config = *PresetConfig("mid");
  o.experts = experts;
  o.dense = "bf16";
  o.expert_scale = 4.0;  // reaches the SwiGLU clamps
  o.seed = 11;
  EXPECT_TRUE(GenerateCheckpoint(dir, o).ok());
  return dirs[experts] = dir;
}

std::unique_ptr<CpuBackend> Open(const std::string& dir, const ShardPlan* plan_or_null,
                                 std::vector<std::vector<int32_t>> placement = {}, int rank = 0, int world = 1,
                                 bool ep = false) {
  auto w = LoadModelWeights(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  if (world > 1) {
    auto plan = PlanShard((*w)->config, rank, world, ep, placement);
    EXPECT_TRUE(plan.ok()) << plan.status();
    EXPECT_TRUE(ShardWeights(**w, *plan).ok());
  }
  CpuOptions o;
  o.num_threads = 1;
  o.kv.dtype = KvDtype::kF32;
  o.kv.block_size = 4;
  o.kv.num_blocks[0] = o.kv.num_blocks[1] = 64;
  return std::make_unique<CpuBackend>(std::move(*w), o);
}

// Logits of every position of two sequences stepped together: a chunked
// prefill, then greedy decode steps; returns [step][row][vocab] and the tokens.
struct GroupRun {
  std::vector<std::vector<float>> logits;  // one row per returned position
  std::vector<int32_t> greedy;             // decoded tokens of both sequences, interleaved
};

GroupRun Drive(Backend& m) {
  GroupRun run;
  const int vocab = static_cast<int>(m.config().vocab_size);
  std::vector<int32_t> seq[2] = {RandomTokens(21, vocab, 3), RandomTokens(13, vocab, 4)};
  std::vector<int32_t> tables[2];
  for (int i = 0; i < 16; ++i) tables[0].push_back(i), tables[1].push_back(40 - i);
  int64_t done[2] = {0, 0};
  for (int step = 0; step < 12; ++step) {
    std::vector<SequenceInput> batch(2);
    for (int s = 0; s < 2; ++s) {
      const int64_t n = std::min<int64_t>(step < 2 ? 9 : 1, static_cast<int64_t>(seq[s].size()) - done[s]);
      batch[s].tokens = std::span<const int32_t>(seq[s]).subspan(done[s], std::max<int64_t>(n, 1));
      batch[s].start_pos = done[s];
      batch[s].block_tables[0] = tables[s];
      batch[s].block_tables[1] = tables[s];
      batch[s].all_logits = true;
    }
    ForwardOutput out;
    const absl::Status st = m.Forward(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return run;
    int row = 0;
    for (int s = 0; s < 2; ++s) {
      for (size_t i = 0; i < batch[s].tokens.size(); ++i, ++row) {
        const float* l = out.logits.data() + static_cast<size_t>(row) * vocab;
        run.logits.emplace_back(l, l + vocab);
      }
      done[s] += static_cast<int64_t>(batch[s].tokens.size());
      if (done[s] == static_cast<int64_t>(seq[s].size())) {
        const float* last = run.logits.back().data();
        const int32_t next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
        seq[s].push_back(next);
        run.greedy.push_back(next);
      }
    }
  }
  return run;
}

// Every rank of a group in its own thread; returns each rank's run. No rank
// closes its connections before all have left their last collective: a rank
// that is done may otherwise close while its peer still waits on that
// collective's completion, which Gloo reports as "connection closed by peer".
std::vector<GroupRun> DriveGroup(const std::string& dir, int world, bool ep,
                            std::vector<std::vector<int32_t>> placement = {}) {
  parallel::InMemoryStore store;
  std::vector<GroupRun> runs(world);
  std::vector<std::thread> threads;
  std::latch done(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto m = Open(dir, nullptr, placement, r, world, ep);
      parallel::GlooOptions go;
      go.prefix = "test";
      auto comm = parallel::CreateGlooCommunicator(r, world, store, go);
      if (comm.ok()) {
        m->SetCommunicator(std::move(*comm));
        runs[r] = Drive(*m);
      } else {
        ADD_FAILURE() << comm.status();
      }
      done.arrive_and_wait();
    });
  }
  for (auto& t : threads) t.join();
  return runs;
}

double MaxDiff(const GroupRun& a, const GroupRun& b) {
  EXPECT_EQ(a.logits.size(), b.logits.size());
  double d = 0;
  for (size_t i = 0; i < a.logits.size() && i < b.logits.size(); ++i) {
    for (size_t j = 0; j < a.logits[i].size(); ++j) d = std::max<double>(d, std::abs(a.logits[i][j] - b.logits[i][j]));
  }
  return d;
}

void ExpectSameAsSingle(const std::vector<GroupRun>& runs, const GroupRun& single, const char* what) {
  ASSERT_FALSE(single.logits.empty());
  for (size_t r = 0; r < runs.size(); ++r) {
    const double d = MaxDiff(runs[r], single);
    EXPECT_LT(d, 1e-4) << what << " rank " << r;
    EXPECT_EQ(runs[r].greedy, single.greedy) << what << " rank " << r;
  }
  std::printf("%s: max |dlogit| %.2e over %zu positions\n", what, MaxDiff(runs[0], single), single.logits.size());
}

TEST(ShardPlanTest, SplitsAndRefusals) {
  const ModelConfig c = *PresetConfig("20b");
  auto p = PlanShard(c, 1, 2, false);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->head_begin, 32);
  EXPECT_EQ(p->kv_head_begin, 4);
  EXPECT_EQ(p->inter_begin, 1440);  // 45 of the 90 MXFP4 blocks
  EXPECT_EQ(p->vocab_begin, 100544);
  // 90 blocks over 4 ranks: 23, 23, 22, 22 blocks.
  auto p4 = PlanShard(c, 3, 4, false);
  ASSERT_TRUE(p4.ok());
  EXPECT_EQ(p4->inter_begin, 68 * 32);
  EXPECT_EQ(p4->inter_end, 2880);
  const auto bad = PlanShard(c, 0, 3, false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("does not divide the model's 8 KV heads"), std::string::npos);
  EXPECT_FALSE(PlanShard(*PresetConfig("tiny"), 0, 4, false).ok());  // 2 KV heads
  // Expert parallel: 32 experts, 8 per rank, contiguous by default.
  auto e = PlanShard(c, 2, 4, true);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->local_expert[0][16], 0);
  EXPECT_EQ(e->local_expert[0][23], 7);
  EXPECT_EQ(e->local_expert[0][24], -1);
  auto lopsided = ContiguousPlacement(c.num_hidden_layers, 32, 4);
  lopsided[3][0] = 1;
  EXPECT_FALSE(PlanShard(c, 0, 4, true, lopsided).ok());
}

TEST(ShardPlanTest, BalancedPlacementAgainstBruteForce) {
  // 8 experts over 2 ranks: the greedy split's imbalance against the best of all 70 splits.
  const std::vector<int64_t> counts = {90, 10, 40, 40, 30, 5, 60, 25};
  const auto placed = BalancedPlacement({counts}, 2)[0];
  int64_t load[2] = {0, 0};
  int held[2] = {0, 0};
  for (int e = 0; e < 8; ++e) load[placed[e]] += counts[e], ++held[placed[e]];
  EXPECT_EQ(held[0], 4);
  EXPECT_EQ(held[1], 4);
  int64_t best = 1 << 30;
  for (int mask = 0; mask < 256; ++mask) {
    if (__builtin_popcount(mask) != 4) continue;
    int64_t a = 0, b = 0;
    for (int e = 0; e < 8; ++e) ((mask >> e) & 1 ? a : b) += counts[e];
    best = std::min<int64_t>(best, std::abs(a - b));
  }
  EXPECT_LE(std::abs(load[0] - load[1]), best + 20);  // greedy LPT: within the smallest count's reach
  const std::string text =
      "# TYPE moeserve_worker_expert_selections_total counter\n"
      "moeserve_worker_expert_selections_total{expert=\"1\",layer=\"0\"} 7\n"
      "moeserve_worker_expert_selections_total{layer=\"1\",expert=\"0\"} 3.000000e+00\n";
  auto parsed = ParseExpertCounts(text, 2, 2);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)[0][1], 7);
  EXPECT_EQ((*parsed)[1][0], 3);
  EXPECT_FALSE(ParseExpertCounts("moeserve_worker_expert_selections_total{layer=\"5\",expert=\"0\"} 1\n", 2, 2).ok());
  EXPECT_FALSE(ParseExpertCounts("nothing here\n", 2, 2).ok());
}

TEST(ParallelTest, TensorParallelMatchesSingleProcess) {
  const std::string dir = MidCheckpoint();
  auto single = Open(dir, nullptr);
  const GroupRun ref = Drive(*single);
  ExpectSameAsSingle(DriveGroup(dir, 2, false), ref, "TP=2");
  ExpectSameAsSingle(DriveGroup(dir, 4, false), ref, "TP=4");
}

TEST(ParallelTest, TinyCheckpointSplitsItsTwoKvHeads) {
  const std::string dir = testing::TinyCheckpoint("parallel_tiny", "mxfp4", "bf16", 4.0, 3);
  auto single = Open(dir, nullptr);
  const GroupRun ref = Drive(*single);
  ExpectSameAsSingle(DriveGroup(dir, 2, false), ref, "tiny TP=2");
  ExpectSameAsSingle(DriveGroup(dir, 2, true), ref, "tiny EP=2");
}

TEST(ParallelTest, TensorParallelDenseExperts) {
  const std::string dir = MidCheckpoint("bf16");
  auto single = Open(dir, nullptr);
  ExpectSameAsSingle(DriveGroup(dir, 2, false), Drive(*single), "TP=2 bf16 experts");
}

TEST(ParallelTest, ExpertParallelMatchesSingleProcess) {
  const std::string dir = MidCheckpoint();
  auto single = Open(dir, nullptr);
  const GroupRun ref = Drive(*single);
  ExpectSameAsSingle(DriveGroup(dir, 2, true), ref, "EP=2");
  ExpectSameAsSingle(DriveGroup(dir, 4, true), ref, "EP=4");
  // A balanced placement from the single run's own selection counts.
  std::vector<std::vector<int64_t>> counts(4, std::vector<int64_t>(16));
  for (int l = 0; l < 4; ++l)
    for (int e = 0; e < 16; ++e) counts[l][e] = single->expert_counts()[l * 16 + e];
  const auto placement = BalancedPlacement(counts, 2);
  ASSERT_NE(placement, ContiguousPlacement(4, 16, 2));
  ExpectSameAsSingle(DriveGroup(dir, 2, true, placement), ref, "EP=2 balanced");
}

TEST(ParallelTest, ShardHoldsOnlyItsPart) {
  const std::string dir = MidCheckpoint();
  auto w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok());
  auto plan = PlanShard((*w)->config, 1, 4, true);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(ShardWeights(**w, *plan).ok());
  const ModelWeights& s = **w;
  EXPECT_EQ(s.config.num_attention_heads, 4);
  EXPECT_EQ(s.config.num_key_value_heads, 2);
  EXPECT_EQ(s.layers[0].gate_up.num_experts, 4);
  EXPECT_EQ(s.layers[0].q.rows, 4 * 16);
  EXPECT_EQ(s.layers[0].o.cols, 4 * 16);
  EXPECT_EQ(s.embed.rows, 250);  // 1001 = 251 + 250 + 250 + 250
  EXPECT_FALSE(ShardWeights(*w.value(), *plan).ok());  // twice
}

TEST(ParallelTest, AbsentRankFailsTheJoinClearly) {
  parallel::InMemoryStore store;
  parallel::GlooOptions go;
  go.prefix = "absent";
  go.timeout = std::chrono::milliseconds(800);
  auto comm = parallel::CreateGlooCommunicator(0, 2, store, go);
  ASSERT_FALSE(comm.ok());
  EXPECT_NE(comm.status().message().find("did not join"), std::string::npos) << comm.status();
}

TEST(ParallelTest, UnjoinedShardRefusesToStep) {
  auto m = Open(MidCheckpoint(), nullptr, {}, 0, 2, false);
  std::vector<int32_t> t = {1, 2, 3};
  SequenceInput in;
  in.tokens = t;
  std::vector<int32_t> table = {0, 1};
  in.block_tables[0] = in.block_tables[1] = table;
  ForwardOutput out;
  const absl::Status st = m->Forward({&in, 1}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
}

TEST(ParallelTest, CollectivesAgainstPlainSums) {
  // bf16 and f32 all-reduce, all-gather and broadcast over 3 ranks, against sums computed here.
  parallel::InMemoryStore store;
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  std::latch done(3);  // as in DriveGroup: nobody closes before all are through
  for (int r = 0; r < 3; ++r) {
    ts.emplace_back([&, r] {
      parallel::GlooOptions go;
      go.prefix = "coll";
      auto comm = parallel::CreateGlooCommunicator(r, 3, store, go);
      if (!comm.ok()) {
        ++failures;
        return done.count_down();
      }
      parallel::Communicator& c = **comm;
      std::vector<float> f = {1.0f * r, 2.5f, -1.0f * r * r};
      if (!c.AllReduceSum(f.data(), 3, parallel::DataType::kF32).ok() || f[0] != 3 || f[1] != 7.5f || f[2] != -5) {
        ++failures;
      }
      std::vector<uint16_t> b = {F32ToBf16(0.5f), F32ToBf16(r + 1.0f)};
      if (!c.AllReduceSum(b.data(), 2, parallel::DataType::kBF16).ok() || Bf16ToF32(b[0]) != 1.5f ||
          Bf16ToF32(b[1]) != 6.0f) {
        ++failures;
      }
      const int32_t mine[2] = {r, 10 * r};
      std::vector<int32_t> all(6);
      if (!c.AllGather(mine, all.data(), 2, parallel::DataType::kI32).ok() ||
          all != std::vector<int32_t>{0, 0, 1, 10, 2, 20}) {
        ++failures;
      }
      int32_t token = r == 1 ? 42 : -1;
      if (!c.BroadcastHost(&token, 1, parallel::DataType::kI32, 1).ok() || token != 42) ++failures;
      if (!c.Barrier().ok()) ++failures;
      done.arrive_and_wait();
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace moeserve
