// The whole model on CUDA against the CPU backend on generated checkpoints:
// logits at every position of a ragged batch with chunked prefill, decode
// steps, the sliding window and shuffled block ids, greedy tokens, expert
// counts, and row chunking of a step larger than the workspace. Label `gpu`;
// skipped without a CUDA device. MOESERVE_SLOW_TESTS=1 adds the full
// gpt-oss-20b shape (a 13.8 GB random checkpoint, written on first use, or MOESERVE_20B_DIR).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "engine/cuda/cuda_backend.h"
#include "engine/cpu/cpu_backend.h"
#include "tests/test_util.h"
#include "tools/checkpoint_gen.h"
#include "tools/lora_gen.h"

namespace moeserve {
namespace {

using testing::RandomTokens;

struct Step {
  std::vector<std::vector<float>> rows;  // logits per (sequence, position), in plan order
  std::vector<int64_t> experts;
};

// Runs the same plan of steps on a backend: sequences prefilled in chunks,
// then decoded, with block tables interleaved across sequences.
Step Run(Backend& m, const std::vector<std::vector<int32_t>>& seqs, const std::vector<std::vector<size_t>>& plan,
         int bs, const std::vector<int>& adapters = {}) {
  const int n = static_cast<int>(seqs.size());
  std::vector<std::vector<int32_t>> tables(n);
  for (int s = 0; s < n; ++s) {
    for (int b = 0; b < 64; ++b) tables[s].push_back((s + n * b * 7) % (n * 64));  // shuffled, disjoint per sequence
  }
  Step out;
  std::vector<size_t> done(n, 0);
  for (const auto& step : plan) {
    std::vector<SequenceInput> batch;
    for (int s = 0; s < n; ++s) {
      if (step[s] == 0) continue;
      SequenceInput in;
      in.tokens = std::span(seqs[s]).subspan(done[s], step[s]);
      in.start_pos = static_cast<int64_t>(done[s]);
      in.block_tables[0] = tables[s];
      in.block_tables[1] = tables[s];
      in.all_logits = true;
      if (!adapters.empty()) in.adapter = adapters[s];
      batch.push_back(in);
      done[s] += step[s];
    }
    ForwardOutput fo;
    const absl::Status st = m.Forward(batch, &fo);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return out;
    for (size_t i = 0; i < batch.size(); ++i) {
      for (int j = 0; j < fo.num_rows[i]; ++j) {
        out.rows.emplace_back(fo.Row(static_cast<int>(i), j), fo.Row(static_cast<int>(i), j) + fo.vocab_size);
      }
    }
  }
  out.experts = m.expert_counts();
  (void)bs;
  return out;
}

// bf16 (or fp8) K/V: both backends store K/V rounded; their f32 K/V differ in
// the last bits (summation order), so a value may round to the neighbouring
// bf16 (or E4M3) value.
void Compare(const std::string& dir, int max_rows, double tolerance, KvDtype kv_dtype = KvDtype::kF32) {
  auto wc = LoadModelWeights(dir);
  auto wg = LoadModelWeights(dir);
  ASSERT_TRUE(wc.ok() && wg.ok());
  const ModelConfig c = (*wc)->config;
  CpuOptions mo;
  mo.num_threads = 2;
  mo.kv.block_size = 16;
  mo.kv.dtype = kv_dtype;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = 3 * 64;
  CpuBackend cpu(std::move(*wc), mo);
  cuda::CudaOptions co;
  co.block_size = 16;
  co.kv_dtype = kv_dtype;
  co.max_num_seqs = 256;  // enough sliding blocks for the shuffled ids below
  co.max_rows_per_chunk = max_rows;
  co.gpu_memory_utilization = 0.5;
  size_t free_before = 0, free_after = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  auto gpu = cuda::CudaBackend::Create(std::move(*wg), co);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  // --gpu-memory-utilization: weights, workspace and KV pools fill this process's share
  // (utilization x total, less what others held before) up to the workspace's 64 MiB reserve.
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  const double share = 0.5 * static_cast<double>(total) - static_cast<double>(total - free_before);
  const double allocated = static_cast<double>(free_before) - static_cast<double>(free_after);
  EXPECT_LE(allocated, share);
  EXPECT_GE(allocated, share - 128.0 * (1 << 20)) << "the KV pools take what is left";
  ASSERT_GE((*gpu)->kv_options().num_blocks[0], 3 * 64);
  ASSERT_GE((*gpu)->kv_options().num_blocks[1], 3 * 64);

  const int vocab = static_cast<int>(std::min<int64_t>(c.vocab_size, 50000));
  const std::vector<std::vector<int32_t>> seqs = {RandomTokens(150, vocab, 1), RandomTokens(40, vocab, 2),
                                                  RandomTokens(90, vocab, 3)};
  // Prefill chunks mixed with decode; sequence 0 runs past the sliding window.
  const std::vector<std::vector<size_t>> plan = {{100, 30, 7}, {20, 1, 60}, {1, 1, 1}, {29, 8, 22}};
  const Step want = Run(cpu, seqs, plan, 16);
  const Step got = Run(**gpu, seqs, plan, 16);
  ASSERT_EQ(got.rows.size(), want.rows.size());
  double worst = 0;
  int greedy_same = 0;
  for (size_t r = 0; r < want.rows.size(); ++r) {
    double num = 0, den = 0;
    for (size_t t = 0; t < want.rows[r].size(); ++t) {
      ASSERT_FALSE(std::isnan(got.rows[r][t])) << "row " << r;
      num += (got.rows[r][t] - want.rows[r][t]) * (got.rows[r][t] - want.rows[r][t]);
      den += want.rows[r][t] * want.rows[r][t];
    }
    worst = std::max(worst, num / den);
    const auto argmax = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    greedy_same += argmax(got.rows[r]) == argmax(want.rows[r]);
  }
  EXPECT_LT(worst, tolerance) << "worst per-position NMSE of the logits";
  EXPECT_GE(greedy_same, static_cast<int>(want.rows.size()) - 1) << "greedy tokens agree";
  // Expert selections: the same but for near-ties of router logits that f32 rounding may order differently.
  ASSERT_EQ(got.experts.size(), want.experts.size());
  int64_t sum_got = 0, sum_want = 0, worst_count = 0;
  for (size_t i = 0; i < want.experts.size(); ++i) {
    sum_got += got.experts[i];
    sum_want += want.experts[i];
    worst_count = std::max<int64_t>(worst_count, std::abs(got.experts[i] - want.experts[i]));
  }
  EXPECT_EQ(sum_got, sum_want);
  EXPECT_LE(worst_count, 2) << "expert selections";
}

TEST(CudaBackend, TinyCheckpointMatchesTheCpu) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Compare(testing::TinyCheckpoint("cuda_tiny", "mxfp4", "bf16", 1.0), 2048, 1e-8);
}

// Structured output: a sequence's token mask leaves exactly the allowed
// logits (bit for bit those of the same step without a mask) and makes the
// others -inf, on both backends; a sequence without one is untouched; a mask
// of the wrong size, or one allowing nothing, is refused.
TEST(CudaBackend, TokenMasksApplyOnBothBackends) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::string dir = testing::TinyCheckpoint("cuda_mask", "mxfp4", "bf16", 1.0);
  auto wc = LoadModelWeights(dir);
  auto wg = LoadModelWeights(dir);
  ASSERT_TRUE(wc.ok() && wg.ok());
  const int64_t vocab = (*wc)->config.vocab_size;
  CpuOptions mo;
  mo.num_threads = 2;
  mo.kv.block_size = 16;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = 64;
  CpuBackend cpu(std::move(*wc), mo);
  cuda::CudaOptions co;
  co.block_size = 16;
  co.gpu_memory_utilization = 0.5;
  auto gpu = cuda::CudaBackend::Create(std::move(*wg), co);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int64_t words = TokenMaskWords(vocab);
  std::vector<uint32_t> mask(words);
  std::mt19937 rng(5);
  for (auto& w : mask) w = rng() & rng();  // about a quarter of the tokens
  const std::vector<int32_t> a = RandomTokens(20, static_cast<int>(std::min<int64_t>(vocab, 50000)), 6);
  const std::vector<int32_t> b = RandomTokens(9, static_cast<int>(std::min<int64_t>(vocab, 50000)), 7);
  std::vector<int32_t> ta, tb;
  for (int i = 0; i < 4; ++i) ta.push_back(i), tb.push_back(8 + i);
  for (Backend* m : {static_cast<Backend*>(&cpu), static_cast<Backend*>(gpu->get())}) {
    auto step = [&](bool masked, ForwardOutput* fo) {
      std::vector<SequenceInput> batch(2);
      batch[0].tokens = a;
      batch[0].block_tables[0] = batch[0].block_tables[1] = ta;
      batch[1].tokens = b;
      batch[1].block_tables[0] = batch[1].block_tables[1] = tb;
      if (masked) batch[0].token_mask = mask;
      return m->Forward(batch, fo);
    };
    ForwardOutput plain, masked;
    ASSERT_TRUE(step(false, &plain).ok());
    ASSERT_TRUE(step(true, &masked).ok());  // the same positions again: the same K/V, the same logits
    int64_t allowed = 0;
    for (int64_t t = 0; t < vocab; ++t) {
      const bool in = (mask[t / 32] >> (t % 32)) & 1u;
      allowed += in;
      if (in) ASSERT_EQ(masked.Row(0)[t], plain.Row(0)[t]) << m->device() << " token " << t;
      else ASSERT_EQ(masked.Row(0)[t], -INFINITY) << m->device() << " token " << t;
      ASSERT_EQ(masked.Row(1)[t], plain.Row(1)[t]) << m->device() << " unmasked sequence, token " << t;
    }
    EXPECT_GT(allowed, vocab / 8);
    std::vector<SequenceInput> bad(1);
    bad[0].tokens = a;
    bad[0].block_tables[0] = bad[0].block_tables[1] = ta;
    std::vector<uint32_t> short_mask(words - 1, ~0u), none(words, 0);
    ForwardOutput fo;
    bad[0].token_mask = short_mask;
    EXPECT_FALSE(m->Forward(bad, &fo).ok());
    bad[0].token_mask = none;
    EXPECT_FALSE(m->Forward(bad, &fo).ok());
  }
}

// LoRA adapters of every layout in one ragged batch with the base model: the
// device's shrink/expand against the CPU backend's.
TEST(CudaBackend, LoraAdaptersMatchTheCpu) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::string dir = testing::TinyCheckpoint("cuda_lora", "mxfp4", "bf16", 1.0);
  auto wc = LoadModelWeights(dir);
  auto wg = LoadModelWeights(dir);
  ASSERT_TRUE(wc.ok() && wg.ok());
  const ModelConfig c = (*wc)->config;
  CpuOptions mo;
  mo.num_threads = 2;
  mo.kv.block_size = 16;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = 4 * 64;
  mo.kv.dtype = KvDtype::kF32;
  CpuBackend cpu(std::move(*wc), mo);
  cuda::CudaOptions co;
  co.block_size = 16;
  co.kv_dtype = KvDtype::kF32;
  co.max_num_seqs = 256;
  co.max_rows_per_chunk = 64;  // chunks: the row slots are per chunk
  co.gpu_memory_utilization = 0.5;
  co.progress = false;
  auto gpu = cuda::CudaBackend::Create(std::move(*wg), co);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_GE((*gpu)->kv_options().num_blocks[1], 4 * 64);
  const std::vector<std::pair<std::string, std::function<void(LoraGenOptions&)>>> layouts = {
      {"attention", [](LoraGenOptions& o) { o.dtype = "f32"; }},
      {"per-expert", [](LoraGenOptions& o) { o.skip_expert = 3; }},
      {"fused", [](LoraGenOptions& o) { o.router = o.rslora = true; o.rank = 16; }}};
  for (int a = 0; a < 3; ++a) {
    LoraGenOptions o;
    o.layout = layouts[a].first;
    o.seed = 20 + a;
    layouts[a].second(o);
    const std::string adir = testing::TempDir("cuda_lora_" + std::to_string(a));
    ASSERT_TRUE(GenerateLoraAdapter(adir, c, o).ok());
    auto ad = LoadLoraAdapter(adir, c);
    ASSERT_TRUE(ad.ok()) << ad.status();
    ASSERT_TRUE(cpu.SetLoraAdapter(a + 2, *ad).ok());
    ASSERT_TRUE((*gpu)->SetLoraAdapter(a + 2, *ad).ok());
  }
  const int vocab = static_cast<int>(c.vocab_size);
  const std::vector<std::vector<int32_t>> seqs = {RandomTokens(70, vocab, 1), RandomTokens(40, vocab, 2),
                                                  RandomTokens(50, vocab, 3), RandomTokens(30, vocab, 4)};
  const std::vector<std::vector<size_t>> plan = {{40, 30, 7, 20}, {20, 1, 30, 1}, {1, 1, 1, 1}, {9, 8, 12, 8}};
  const std::vector<int> adapters = {-1, 2, 3, 4};
  const Step want = moeserve::Run(cpu, seqs, plan, 16, adapters);
  const Step got = moeserve::Run(**gpu, seqs, plan, 16, adapters);
  const Step base = moeserve::Run(cpu, seqs, plan, 16);
  ASSERT_EQ(got.rows.size(), want.rows.size());
  double worst = 0, changed = 0;
  for (size_t r = 0; r < want.rows.size(); ++r) {
    double num = 0, den = 0, moved = 0;
    for (size_t t = 0; t < want.rows[r].size(); ++t) {
      num += (got.rows[r][t] - want.rows[r][t]) * (got.rows[r][t] - want.rows[r][t]);
      den += want.rows[r][t] * want.rows[r][t];
      moved += (base.rows[r][t] - want.rows[r][t]) * (base.rows[r][t] - want.rows[r][t]);
    }
    worst = std::max(worst, num / den);
    changed = std::max(changed, moved / den);
  }
  EXPECT_LT(worst, 1e-8) << "worst per-position NMSE of the logits";
  EXPECT_GT(changed, 1e-3) << "the adapters change nothing";
  // Unloading: the slot is empty on the device too.
  ASSERT_TRUE((*gpu)->SetLoraAdapter(3, nullptr).ok());
  SequenceInput in;
  in.tokens = std::span(seqs[0]).subspan(0, 5);
  const std::vector<int32_t> table = {0, 1};
  in.block_tables[0] = in.block_tables[1] = table;
  in.adapter = 3;
  ForwardOutput fo;
  EXPECT_EQ((*gpu)->Forward({&in, 1}, &fo).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaBackend, Bf16KvCacheMatchesTheCpu) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Compare(testing::TinyCheckpoint("cuda_tiny", "mxfp4", "bf16", 1.0), 2048, 1e-5, KvDtype::kBf16);
}

// fp8 K/V: the same E4M3 encoding on both backends (engine/fp8.h); a value
// whose f32 inputs differ in the last bit may land on the neighbouring code (6 %).
TEST(CudaBackend, Fp8KvCacheMatchesTheCpu) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Compare(testing::TinyCheckpoint("cuda_tiny", "mxfp4", "bf16", 1.0), 2048, 1e-3, KvDtype::kFp8);
}

TEST(CudaBackend, StepsLargerThanTheWorkspaceRunInChunks) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Compare(testing::TinyCheckpoint("cuda_tiny", "mxfp4", "bf16", 1.0), 13, 1e-8);
}

TEST(CudaBackend, Gpt20bShape) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  if (!std::getenv("MOESERVE_SLOW_TESTS")) GTEST_SKIP() << "set MOESERVE_SLOW_TESTS=1";
  // MOESERVE_20B_DIR: a 20b-shape checkpoint to use (written there when missing; tests/gpu/device_check.sh
  // shares it with the GPU benchmark).
  const char* given = std::getenv("MOESERVE_20B_DIR");
  const std::string dir = given ? std::string(given) : testing::TempDir("cuda_20b");
  if (!std::filesystem::exists(dir + "/config.json")) {
    CheckpointGenOptions o;
    o.config = *PresetConfig("20b");
    o.seed = 1;
    ASSERT_TRUE(GenerateCheckpoint(dir, o).ok());
  }
  Compare(dir, 2048, 1e-7);
}

TEST(CudaBackend, UnsupportedCheckpointsAreClearErrors) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto w = LoadModelWeights(testing::TinyCheckpoint("cuda_dense", "f32", "bf16", 1.0));
  ASSERT_TRUE(w.ok());
  auto m = cuda::CudaBackend::Create(std::move(*w), {});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
  auto w2 = LoadModelWeights(testing::TinyCheckpoint("cuda_tiny", "mxfp4", "bf16", 1.0));
  ASSERT_TRUE(w2.ok());
  cuda::CudaOptions huge;
  huge.gpu_memory_utilization = 1e-6;
  auto m2 = cuda::CudaBackend::Create(std::move(*w2), huge);
  EXPECT_EQ(m2.status().code(), absl::StatusCode::kResourceExhausted) << m2.status();
}

}  // namespace
}  // namespace moeserve
