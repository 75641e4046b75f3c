#include "engine/step_layout.h"

namespace moeserve {

StepLayout LayOutStep(const ModelConfig& c, const KvCacheOptions& kv, std::span<const SequenceInput> batch) {
  StepLayout L;
  const int bs = kv.block_size;
  std::vector<int64_t> seq_offset[kNumCacheGroups];
  bool used[kNumCacheGroups];
  for (int g = 0; g < kNumCacheGroups; ++g) {
    used[g] = KvCache::LayersInGroup(c, g) > 0;
    for (const SequenceInput& in : batch) {
      seq_offset[g].push_back(static_cast<int64_t>(L.tables.size()));
      L.tables.insert(L.tables.end(), in.block_tables[g].begin(), in.block_tables[g].end());
    }
  }
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    const int cnt = static_cast<int>(in.tokens.size());
    const int want = in.all_logits ? cnt : 1;
    L.first_row.push_back(static_cast<int>(L.logit_rows.size()));
    L.num_rows.push_back(want);
    for (int i = 0; i < cnt; ++i) {
      const int64_t p = in.start_pos + i;
      const int row = static_cast<int>(L.ids.size());
      L.ids.push_back(in.tokens[i]);
      L.pos.push_back(p);
      for (int g = 0; g < kNumCacheGroups; ++g) {
        L.slots[g].push_back(used[g] ? static_cast<int64_t>(in.block_tables[g][p / bs]) * bs + p % bs : -1);
        L.table_offset[g].push_back(seq_offset[g][s]);
      }
      if (i >= cnt - want) L.logit_rows.push_back(row);
    }
  }
  return L;
}

}  // namespace moeserve
