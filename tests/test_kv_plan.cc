// KV pool sizing: blocks per cache group from a byte budget (the CPU's
// --kv-cache-memory, the GPU's leftover under --gpu-memory-utilization), with
// the expected numbers worked out by hand from the published gpt-oss-20b shape.
#include <gtest/gtest.h>

#include "engine/config.h"
#include "engine/kv_cache.h"
#include "tools/checkpoint_gen.h"

namespace moeserve {
namespace {

TEST(KvPlan, Gpt20bBlocks) {
  const ModelConfig c = *PresetConfig("20b");  // 24 layers, half sliding; 8 KV heads of 64
  // One block of one layer: K and V, 16 slots, 8 * 64 bf16 values = 2 * 16 * 512 * 2 bytes = 32 KiB.
  EXPECT_EQ(KvCache::BytesPerBlock(c, kFullGroup, 16, KvDtype::kBf16), size_t{12} * 32768);
  EXPECT_EQ(KvCache::BytesPerBlock(c, kSlidingGroup, 16, KvDtype::kBf16), size_t{12} * 32768);
  EXPECT_EQ(KvCache::BytesPerBlock(c, kFullGroup, 16, KvDtype::kF32), size_t{12} * 65536);
  EXPECT_EQ(KvCache::BytesPerBlock(c, kFullGroup, 16, KvDtype::kFp8), size_t{12} * 16384);
  EXPECT_EQ(KvCache::LayersInGroup(c, kFullGroup), 12);
  EXPECT_EQ(KvCache::LayersInGroup(c, kSlidingGroup), 12);
  // 4 GiB, 64 sequences: the window of 128 tokens is 8 blocks, + 2 = 10 per sequence = 640 sliding
  // blocks (240 MiB), less than an eighth of the budget: 512 MiB / 384 KiB = 1365 sliding blocks;
  // the rest, 4194304 - 1365 * 384 = 3670144 KiB, is 9557 full blocks.
  auto p = PlanKvBlocks(c, int64_t{4} << 30, 16, KvDtype::kBf16, 64);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)[kSlidingGroup], 1365);
  EXPECT_EQ((*p)[kFullGroup], 9557);
  // 1 GiB, 256 sequences: 2560 blocks (960 MiB) are needed, more than the eighth.
  auto many = PlanKvBlocks(c, int64_t{1} << 30, 16, KvDtype::kBf16, 256);
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ((*many)[kSlidingGroup], 2560);
  EXPECT_EQ((*many)[kFullGroup], 170);
  // Too small: the sliding pool alone does not fit.
  auto small = PlanKvBlocks(c, int64_t{200} << 20, 16, KvDtype::kBf16, 64);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("sliding-window pool"), std::string::npos);
  EXPECT_FALSE(PlanKvBlocks(c, int64_t{1} << 30, 0, KvDtype::kBf16, 64).ok());
  // fp8: blocks of 192 KiB; an eighth is 2730 sliding blocks, the rest (4194304 - 2730 * 192) / 192 = 19115
  // full blocks: twice the tokens of bf16.
  auto f = PlanKvBlocks(c, int64_t{4} << 30, 16, KvDtype::kFp8, 64);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)[kSlidingGroup], 2730);
  EXPECT_EQ((*f)[kFullGroup], 19115);
  KvDtype d;
  EXPECT_TRUE(ParseKvDtype("fp8_e4m3", &d) && d == KvDtype::kFp8);
  EXPECT_FALSE(ParseKvDtype("fp8_e5m2", &d));
}

TEST(KvPlan, GpuBudget) {
  const int64_t GiB = int64_t{1} << 30;
  // An RTX 3090 (24 GiB) with 1 GiB held by the desktop, 0.9 utilization, 13 GiB of weights, 1 GiB
  // workspace: 21.6 - 1 - 13 - 1 = 6.6 GiB for the KV cache.
  auto b = GpuKvBudget(24 * GiB, 23 * GiB, 0.9, 13 * GiB, GiB);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, static_cast<int64_t>(24 * GiB * 0.9) - GiB - 13 * GiB - GiB);
  // A 12 GiB card cannot hold gpt-oss-20b's 13 GiB of weights: a clear error with the numbers.
  auto no = GpuKvBudget(12 * GiB, 12 * GiB, 0.9, 13 * GiB, GiB);
  EXPECT_EQ(no.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(no.status().message().find("the weights need 13312 MiB"), std::string::npos) << no.status();
  EXPECT_FALSE(GpuKvBudget(24 * GiB, 24 * GiB, 0.0, GiB, GiB).ok());
  EXPECT_FALSE(GpuKvBudget(24 * GiB, 24 * GiB, 1.5, GiB, GiB).ok());
}

}  // namespace
}  // namespace moeserve
