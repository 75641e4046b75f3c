// --n-cpu-moe: the experts of the first layers in host memory, run by the CPU
// kernels inside the CUDA backend's forward, against the all-device run of the
// same backend (under the CUDA emulation in CI, on a lent GPU there): the same
// logits whether the device cache of host experts is empty, holds them all,
// or changes every step, also with a LoRA adapter; auto picks the split from a
// small device budget.
// Label gpu/emu; skipped without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/cuda/cuda_backend.h"
#include "engine/kv_cache.h"
#include "tests/test_util.h"
#include "tools/checkpoint_gen.h"
#include "tools/lora_gen.h"

namespace moeserve {
namespace {

using testing::RandomTokens;

const std::string& Checkpoint() {
  static const std::string dir = testing::TinyCheckpoint("cuda_hybrid", "mxfp4", "bf16", 4.0, 9);
  return dir;
}

cuda::CudaOptions Options() {
  cuda::CudaOptions co;
  co.block_size = 16;
  co.kv_dtype = KvDtype::kF32;
  co.max_num_seqs = 8;
  co.max_model_len = 256;
  co.gpu_memory_utilization = 0.95;
  co.max_rows_per_chunk = 64;
  co.cpu_threads = 2;
  co.progress = false;
  return co;
}

std::unique_ptr<cuda::CudaBackend> Open(const cuda::CudaOptions& co) {
  auto w = LoadModelWeights(Checkpoint());
  EXPECT_TRUE(w.ok());
  auto m = cuda::CudaBackend::Create(std::move(*w), co);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// Logits of every position: two sequences, a prefill then decode steps.
// With `adapter` >= 0, the second sequence runs that LoRA slot.
std::vector<std::vector<float>> Drive(Backend& m, int adapter = -1) {
  const int vocab = static_cast<int>(m.config().vocab_size);
  std::vector<int32_t> seq[2] = {RandomTokens(30, vocab, 1), RandomTokens(11, vocab, 2)};
  std::vector<int32_t> tables[2];
  for (int b = 0; b < 8; ++b) tables[0].push_back(b), tables[1].push_back(15 - b);
  std::vector<std::vector<float>> rows;
  int64_t done[2] = {0, 0};
  for (int step = 0; step < 8; ++step) {
    std::vector<SequenceInput> batch(2);
    for (int s = 0; s < 2; ++s) {
      const int64_t n = step == 0 ? static_cast<int64_t>(seq[s].size()) : 1;
      batch[s].tokens = std::span<const int32_t>(seq[s]).subspan(done[s], n);
      batch[s].start_pos = done[s];
      batch[s].block_tables[0] = batch[s].block_tables[1] = tables[s];
      batch[s].all_logits = true;
      if (s == 1) batch[s].adapter = adapter;
    }
    ForwardOutput out;
    const absl::Status st = m.Forward(batch, &out);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return rows;
    int r = 0;
    for (int s = 0; s < 2; ++s) {
      for (size_t i = 0; i < batch[s].tokens.size(); ++i, ++r) {
        rows.emplace_back(out.Row(s, static_cast<int>(i)), out.Row(s, static_cast<int>(i)) + vocab);
      }
      done[s] += static_cast<int64_t>(batch[s].tokens.size());
      const std::vector<float>& last = rows.back();
      seq[s].push_back(static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin()));
    }
  }
  return rows;
}

double MaxDiff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    for (size_t j = 0; j < a[i].size(); ++j) d = std::max<double>(d, std::abs(a[i][j] - b[i][j]));
  return d;
}

TEST(CudaHybrid, HostExpertsMatchAllDeviceWhateverTheCache) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::CudaOptions all = Options();
  all.n_cpu_moe = 0;
  auto ref_model = Open(all);
  ASSERT_TRUE(ref_model);
  const auto ref = Drive(*ref_model);
  const int64_t expert = ExpertBytes(ref_model->config());
  ref_model.reset();  // its KV pools took the device's share

  struct Mode {
    const char* name;
    int64_t cache_bytes;
    cuda::ExpertCachePolicy policy;
  } modes[] = {{"cache empty", 0, cuda::ExpertCachePolicy::kHot},
               {"cache full", -1, cuda::ExpertCachePolicy::kHot},
               {"cache thrashing", 3 * expert, cuda::ExpertCachePolicy::kThrash},
               {"cache hot, small", 5 * expert, cuda::ExpertCachePolicy::kHot}};
  for (const Mode& mode : modes) {
    cuda::CudaOptions co = Options();
    co.n_cpu_moe = 3;  // of 4 layers
    co.expert_cache_bytes = mode.cache_bytes;
    co.expert_cache_policy = mode.policy;
    auto m = Open(co);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->hybrid_plan().n_cpu_moe, 3);
    const auto got = Drive(*m);
    const double d = MaxDiff(got, ref);
    const ExpertCacheStats st = m->expert_cache_stats();
    std::printf("%s: %lld slots, %lld hits, %lld misses, %lld loads; max |dlogit| vs all-device %.2e\n", mode.name,
                static_cast<long long>(st.slots), static_cast<long long>(st.hits), static_cast<long long>(st.misses),
                static_cast<long long>(st.loads), d);
    EXPECT_LT(d, 1e-4) << mode.name;
    if (mode.cache_bytes == 0) {
      EXPECT_EQ(st.slots, 0);
      EXPECT_EQ(st.hits, 0);
      EXPECT_GT(st.misses, 0);
    } else if (mode.cache_bytes < 0) {
      EXPECT_EQ(st.slots, 3 * m->config().num_local_experts) << "every host expert cached";
      EXPECT_EQ(st.misses, 0);
    } else if (mode.policy == cuda::ExpertCachePolicy::kThrash) {
      EXPECT_GE(st.loads, 3 * 8) << "the cache changed every step";
      EXPECT_GT(st.hits, 0);
      EXPECT_GT(st.misses, 0);
    }
  }
}

// A LoRA adapter (fused experts and the router) on a sequence beside the base
// model: host experts apply it with the CPU kernels, cached ones on the device.
TEST(CudaHybrid, HostExpertsServeLoraAdapters) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const std::string dir = testing::TempDir("cuda_hybrid_lora");
  LoraGenOptions lo;
  lo.layout = "fused";
  lo.router = true;
  lo.rank = 8;
  auto cfg = LoadModelConfig(Checkpoint());
  ASSERT_TRUE(cfg.ok());
  ASSERT_TRUE(GenerateLoraAdapter(dir, *cfg, lo).ok());
  auto adapter = LoadLoraAdapter(dir, *cfg);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  cuda::CudaOptions all = Options();
  all.n_cpu_moe = 0;
  auto ref_model = Open(all);
  ASSERT_TRUE(ref_model);
  ASSERT_TRUE(ref_model->SetLoraAdapter(1, *adapter).ok());
  const auto ref = Drive(*ref_model, 1);
  const auto base = Drive(*ref_model);
  EXPECT_GT(MaxDiff(ref, base), 0.05) << "the adapter changes nothing";
  const int64_t expert = ExpertBytes(ref_model->config());
  ref_model.reset();
  for (const auto& [name, bytes, policy] :
       {std::tuple<const char*, int64_t, cuda::ExpertCachePolicy>{"cache empty", 0, cuda::ExpertCachePolicy::kHot},
        {"cache thrashing", 3 * expert, cuda::ExpertCachePolicy::kThrash},
        {"cache full", -1, cuda::ExpertCachePolicy::kHot}}) {
    cuda::CudaOptions co = Options();
    co.n_cpu_moe = 3;
    co.expert_cache_bytes = bytes;
    co.expert_cache_policy = policy;
    auto m = Open(co);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->SetLoraAdapter(1, *adapter).ok());
    EXPECT_LT(MaxDiff(Drive(*m, 1), ref), 1e-4) << name;
  }
}

TEST(CudaHybrid, AutoPicksTheSplitFromTheDeviceBudget) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::CudaOptions co = Options();
  co.n_cpu_moe = 0;
  auto whole = Open(co);
  ASSERT_TRUE(whole);
  const ModelConfig c = whole->config();
  const HybridPlan p = whole->hybrid_plan();
  EXPECT_EQ(p.n_cpu_moe, 0);
  const int64_t layer = ExpertLayerBytes(c);
  const int64_t other = p.device_weight_bytes - c.num_hidden_layers * layer;
  const int64_t kv_min = KvMinBytes(c, co.max_model_len, co.block_size, co.kv_dtype, co.max_num_seqs);
  const auto ref = Drive(*whole);
  const int64_t layers = c.num_hidden_layers, expert = ExpertBytes(c);
  whole.reset();
  // A budget that holds all but two layers' experts, and half an expert more.
  cuda::CudaOptions small = Options();
  small.device_memory_limit = other + (layers - 2) * layer + kv_min + expert / 2;
  auto m = Open(small);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->hybrid_plan().n_cpu_moe, 2);
  EXPECT_EQ(m->hybrid_plan().cache_slots, 0) << "half an expert left: no slot";
  EXPECT_LT(MaxDiff(Drive(*m), ref), 1e-4);
  m.reset();
  // Too small even with every layer's experts on the host: a clear error.
  cuda::CudaOptions tiny = Options();
  tiny.device_memory_limit = other / 2;
  auto w = LoadModelWeights(Checkpoint());
  ASSERT_TRUE(w.ok());
  auto bad = cuda::CudaBackend::Create(std::move(*w), tiny);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("does not fit the device even with"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace moeserve
