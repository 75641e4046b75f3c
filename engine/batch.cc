#include "engine/batch.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace moeserve {

bool TokenMaskAllowsAny(std::span<const uint32_t> mask, int64_t vocab) {
  for (int64_t w = 0; w < static_cast<int64_t>(mask.size()) && w < TokenMaskWords(vocab); ++w) {
    const int64_t valid = std::min<int64_t>(32, vocab - 32 * w);
    const uint32_t bits = valid == 32 ? 0xffffffffu : ((1u << valid) - 1);
    if (mask[w] & bits) return true;
  }
  return false;
}

void ApplyTokenMask(float* logits, int64_t vocab, const uint32_t* mask) {
  for (int64_t t = 0; t < vocab; ++t) {
    if (!((mask[t >> 5] >> (t & 31)) & 1u)) logits[t] = -INFINITY;
  }
}

absl::Status ValidateBatch(const ModelConfig& c, const KvCacheOptions& kv, std::span<const SequenceInput> batch) {
  const int bs = kv.block_size;
  const bool used[kNumCacheGroups] = {KvCache::LayersInGroup(c, kFullGroup) > 0,
                                      KvCache::LayersInGroup(c, kSlidingGroup) > 0};
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no tokens"));
    if (in.start_pos < 0 || in.start_pos + static_cast<int64_t>(in.tokens.size()) > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": bad start position ", in.start_pos));
    }
    if (in.adapter < -1) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": adapter slot ", in.adapter));
    for (int32_t t : in.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": token id ", t, " outside [0, ", c.vocab_size, ")"));
      }
    }
    if (!in.token_mask.empty()) {
      if (static_cast<int64_t>(in.token_mask.size()) != TokenMaskWords(c.vocab_size)) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": a token mask of ", in.token_mask.size(),
                                                       " words; the vocabulary needs ", TokenMaskWords(c.vocab_size)));
      }
      if (!TokenMaskAllowsAny(in.token_mask, c.vocab_size)) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": the token mask allows no token"));
    }
    const int64_t end = in.start_pos + static_cast<int64_t>(in.tokens.size());  // one past the last position
    for (int g = 0; g < kNumCacheGroups; ++g) {
      if (!used[g]) continue;
      int64_t first = 0;
      if (g == kSlidingGroup) first = std::max<int64_t>(0, in.start_pos - c.sliding_window + 1);
      const int64_t b0 = first / bs, b1 = (end - 1) / bs;
      if (static_cast<int64_t>(in.block_tables[g].size()) <= b1) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block table of cache group ", g, " has ",
                                                       in.block_tables[g].size(), " blocks, positions up to ", end - 1,
                                                       " need ", b1 + 1));
      }
      for (int64_t b = b0; b <= b1; ++b) {
        const int32_t id = in.block_tables[g][b];
        if (id < 0 || id >= kv.num_blocks[g]) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": block id ", id, " of cache group ", g,
                                                         " outside [0, ", kv.num_blocks[g], ")"));
        }
      }
    }
  }
  return absl::OkStatus();
}

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
      L.adapter.push_back(in.adapter);
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
