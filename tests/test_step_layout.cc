// The host-side layout a device backend consumes (engine/batch.h,
// engine/kv_layout.h), checked on the CPU: KV row addresses form a bijection
// onto each pool in the documented order, and a ragged batch flattens into
// rows whose slots, table offsets and logit rows agree with the batch and with
// the CPU backend's ForwardOutput.
#include <gtest/gtest.h>

#include <set>

#include "engine/kv_layout.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/batch.h"
#include "tests/test_util.h"
#include "tools/checkpoint_gen.h"

namespace moeserve {
namespace {

TEST(KvLayout, RowsTileEachPoolInTheDocumentedOrder) {
  const ModelConfig c = *PresetConfig("tiny");  // layers alternate sliding / full
  for (KvDtype dt : {KvDtype::kBf16, KvDtype::kF32, KvDtype::kFp8}) {
    KvCacheOptions o;
    o.block_size = 4;
    o.num_blocks[kFullGroup] = 10;
    o.num_blocks[kSlidingGroup] = 7;
    o.dtype = dt;
    KvCache kv(c, o);
    const int64_t row_bytes = c.kv_dim() * (dt == KvDtype::kF32 ? 4 : dt == KvDtype::kBf16 ? 2 : 1);
    for (int g = 0; g < kNumCacheGroups; ++g) {
      std::set<int64_t> seen;
      int layer_in_group = 0;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        if (kv.group_of_layer(l) != g) continue;
        for (int64_t b = 0; b < o.num_blocks[g]; ++b) {
          for (int value = 0; value < 2; ++value) {
            for (int s = 0; s < o.block_size; ++s) {
              const int64_t off = static_cast<const uint8_t*>(kv.Row(l, value, b, s)) - kv.pool_base(g);
              EXPECT_EQ(off % row_bytes, 0);
              EXPECT_TRUE(seen.insert(off).second) << "two rows share bytes";
              // [layer_in_group][block][K|V][slot]
              const int64_t want = (((layer_in_group * o.num_blocks[g] + b) * 2 + value) * o.block_size + s) * row_bytes;
              EXPECT_EQ(off, want);
              EXPECT_EQ(off, layer_in_group * KvLayerBytes(o.num_blocks[g], o.block_size, row_bytes) +
                                 KvRowOffset(b * o.block_size + s, value, o.block_size, row_bytes));
            }
          }
        }
        ++layer_in_group;
      }
      // Every row of the pool, nothing outside it.
      const int64_t pool = static_cast<int64_t>(KvCache::BytesPerBlock(c, g, o.block_size, dt)) * o.num_blocks[g];
      EXPECT_EQ(static_cast<int64_t>(seen.size()) * row_bytes, pool);
      EXPECT_LT(*seen.rbegin(), pool);
    }
  }
}

TEST(StepLayout, RaggedBatchAgreesWithTheBatchAndTheCpuBackend) {
  const std::string dir = testing::TinyCheckpoint("layout", "mxfp4", "bf16", 1.0);
  auto w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok());
  CpuOptions mo;
  mo.num_threads = 1;
  mo.kv.block_size = 4;
  mo.kv.num_blocks[0] = mo.kv.num_blocks[1] = 64;
  CpuBackend m(std::move(*w), mo);
  const ModelConfig& c = m.config();
  const std::vector<std::vector<int32_t>> tokens = {testing::RandomTokens(9, 500, 1), testing::RandomTokens(1, 500, 2),
                                                    testing::RandomTokens(5, 500, 3)};
  std::vector<std::vector<int32_t>> full = {{3, 9, 4, 60, 61, 62}, {7, 8, 1, 2, 5}, {11, 12, 13, 14, 15}};
  std::vector<std::vector<int32_t>> sliding = {{-1, 19, 20, 21, 22, 23}, {30, 31, 32, 33, 34}, {40, 41, 42, 43, 44}};
  const int64_t start[] = {12, 17, 0};  // sequence 0's first sliding block is behind the window (released: -1)
  std::vector<SequenceInput> batch(3);
  for (int s = 0; s < 3; ++s) {
    batch[s].tokens = tokens[s];
    batch[s].start_pos = start[s];
    batch[s].block_tables[kFullGroup] = full[s];
    batch[s].block_tables[kSlidingGroup] = sliding[s];
    batch[s].all_logits = s == 2;
  }
  ASSERT_TRUE(ValidateBatch(c, m.kv_options(), batch).ok());
  const StepLayout L = LayOutStep(c, m.kv_options(), batch);
  ASSERT_EQ(L.ids.size(), 15u);
  int row = 0;
  for (int s = 0; s < 3; ++s) {
    for (size_t i = 0; i < tokens[s].size(); ++i, ++row) {
      const int64_t p = start[s] + static_cast<int64_t>(i);
      EXPECT_EQ(L.ids[row], tokens[s][i]);
      EXPECT_EQ(L.pos[row], p);
      for (int g = 0; g < kNumCacheGroups; ++g) {
        const auto& table = g == kFullGroup ? full[s] : sliding[s];
        EXPECT_EQ(L.tables[L.table_offset[g][row] + p / 4], table[p / 4]) << "row " << row << " group " << g;
        EXPECT_EQ(L.slots[g][row], table[p / 4] * 4 + p % 4);
        EXPECT_GE(L.slots[g][row], 0);
      }
    }
  }
  // Logit rows: the last row of sequences 0 and 1, every row of sequence 2 — as the CPU backend returns them.
  EXPECT_EQ(L.logit_rows, (std::vector<int32_t>{8, 9, 10, 11, 12, 13, 14}));
  ForwardOutput out;
  ASSERT_TRUE(m.Forward(batch, &out).ok());
  EXPECT_EQ(L.first_row, out.first_row);
  EXPECT_EQ(L.num_rows, out.num_rows);
  EXPECT_EQ(out.logits.size(), L.logit_rows.size() * static_cast<size_t>(c.vocab_size));
}

}  // namespace
}  // namespace moeserve
