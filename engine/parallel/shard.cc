#include "engine/parallel/shard.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/weights.h"

namespace moeserve {

std::pair<int64_t, int64_t> ShardPlan::Split(int64_t n, int world, int r) {
  const int64_t base = n / world, rem = n % world;
  const int64_t begin = r * base + std::min<int64_t>(r, rem);
  return {begin, begin + base + (r < rem ? 1 : 0)};
}

std::vector<std::vector<int32_t>> ContiguousPlacement(int64_t layers, int64_t experts, int world_size) {
  std::vector<int32_t> one(experts);
  for (int64_t e = 0; e < experts; ++e) one[e] = static_cast<int32_t>(e * world_size / experts);
  return std::vector<std::vector<int32_t>>(layers, one);
}

std::vector<std::vector<int32_t>> BalancedPlacement(const std::vector<std::vector<int64_t>>& counts,
                                                     int world_size) {
  std::vector<std::vector<int32_t>> out;
  for (const std::vector<int64_t>& layer : counts) {
    const int64_t experts = static_cast<int64_t>(layer.size());
    const int64_t per_rank = experts / world_size;
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return layer[a] > layer[b]; });
    std::vector<int64_t> load(world_size, 0), held(world_size, 0);
    std::vector<int32_t> rank_of(experts, 0);
    for (int e : order) {
      int best = -1;
      for (int r = 0; r < world_size; ++r) {
        if (held[r] < per_rank && (best < 0 || load[r] < load[best])) best = r;
      }
      rank_of[e] = best;
      load[best] += layer[e];
      ++held[best];
    }
    out.push_back(std::move(rank_of));
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<int64_t>>> ParseExpertCounts(const std::string& text, int64_t layers,
                                                                    int64_t experts) {
  std::vector<std::vector<int64_t>> counts(layers, std::vector<int64_t>(experts, 0));
  static const std::regex kLine(
      R"(^moeserve_worker_expert_selections_total\{([^}]*)\}\s+([0-9.eE+]+))");
  static const std::regex kLayer(R"(layer="(\d+)\")"), kExpert(R"(expert="(\d+)\")");
  size_t pos = 0;
  int found = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    std::smatch m, ml, me;
    if (!std::regex_search(line, m, kLine)) continue;
    const std::string labels = m[1].str();
    int64_t l, e;
    double v;
    if (!std::regex_search(labels, ml, kLayer) || !std::regex_search(labels, me, kExpert) ||
        !absl::SimpleAtoi(ml[1].str(), &l) || !absl::SimpleAtoi(me[1].str(), &e) ||
        !absl::SimpleAtod(m[2].str(), &v)) {
      return absl::InvalidArgumentError(absl::StrCat("expert counts: cannot read \"", line, "\""));
    }
    if (l < 0 || l >= layers || e < 0 || e >= experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert counts: layer ", l, " expert ", e,
                                                     " is outside this model (", layers, " layers of ", experts,
                                                     " experts)"));
    }
    counts[l][e] = static_cast<int64_t>(v);
    ++found;
  }
  if (found == 0) {
    return absl::InvalidArgumentError("expert counts: no moeserve_worker_expert_selections_total samples found");
  }
  return counts;
}

absl::StatusOr<ShardPlan> PlanShard(const ModelConfig& c, int rank, int world_size, bool expert_parallel,
                                    std::vector<std::vector<int32_t>> placement) {
  if (world_size < 1 || world_size > 64) return absl::InvalidArgumentError("the group size must be in [1, 64]");
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside a group of ", world_size));
  }
  ShardPlan p;
  p.rank = rank;
  p.world_size = world_size;
  p.expert_parallel = expert_parallel && world_size > 1;
  p.num_heads = c.num_attention_heads;
  p.num_kv_heads = c.num_key_value_heads;
  p.intermediate_size = c.intermediate_size;
  p.vocab_size = c.vocab_size;
  if (c.num_key_value_heads % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tensor-parallel-size ", world_size, " does not divide the model's ",
                                                   c.num_key_value_heads, " KV heads (use a divisor of ",
                                                   c.num_key_value_heads, ")"));
  }
  std::tie(p.head_begin, p.head_end) = ShardPlan::Split(c.num_attention_heads, world_size, rank);
  std::tie(p.kv_head_begin, p.kv_head_end) = ShardPlan::Split(c.num_key_value_heads, world_size, rank);
  std::tie(p.vocab_begin, p.vocab_end) = ShardPlan::Split(c.vocab_size, world_size, rank);
  p.vocab_stride = (c.vocab_size + world_size - 1) / world_size;
  const int64_t layers = c.num_hidden_layers, experts = c.num_local_experts;
  if (p.expert_parallel) {
    if (experts % world_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("expert parallel over ", world_size, " ranks needs the ", experts,
                                                     " experts to divide evenly"));
    }
    if (placement.empty()) placement = ContiguousPlacement(layers, experts, world_size);
    if (static_cast<int64_t>(placement.size()) != layers) {
      return absl::InvalidArgumentError(absl::StrCat("expert placement has ", placement.size(), " layers, the model ",
                                                     layers));
    }
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<int64_t> per_rank(world_size, 0);
      if (static_cast<int64_t>(placement[l].size()) != experts) {
        return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " names ", placement[l].size(),
                                                       " experts, the model has ", experts));
      }
      for (int32_t r : placement[l]) {
        if (r < 0 || r >= world_size) {
          return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " names rank ", r));
        }
        ++per_rank[r];
      }
      for (int r = 0; r < world_size; ++r) {
        if (per_rank[r] != experts / world_size) {
          return absl::InvalidArgumentError(absl::StrCat("expert placement: layer ", l, " gives rank ", r, " ",
                                                         per_rank[r], " experts, not ", experts / world_size));
        }
      }
    }
    p.expert_rank = placement;
    p.inter_begin = 0;
    p.inter_end = c.intermediate_size;
    for (int64_t l = 0; l < layers; ++l) {
      std::vector<int32_t> local(experts, -1);
      int32_t next = 0;
      for (int64_t e = 0; e < experts; ++e) {
        if (placement[l][e] == rank) local[e] = next++;
      }
      p.local_expert.push_back(std::move(local));
    }
  } else {
    // Whole 32-wide MXFP4 blocks per rank (dense experts split anywhere).
    const int64_t unit = c.experts_mxfp4() ? 32 : 1;
    const int64_t units = c.intermediate_size / unit;
    if (units < world_size) {
      return absl::InvalidArgumentError(absl::StrCat("the experts' intermediate size ", c.intermediate_size,
                                                     " is too small to split over ", world_size, " ranks"));
    }
    const auto [u0, u1] = ShardPlan::Split(units, world_size, rank);
    p.inter_begin = u0 * unit;
    p.inter_end = rank == world_size - 1 ? c.intermediate_size : u1 * unit;
    std::vector<int32_t> identity(experts);
    std::iota(identity.begin(), identity.end(), 0);
    p.local_expert.assign(layers, identity);
  }
  return p;
}

namespace {

// Drops the pages of [p, p + n) of a checkpoint mapping from this process's
// resident set (they stay in the page cache, and come back if read again).
void ReleasePages(const void* p, size_t n) {
  if (!p || n == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n + page - 1) & ~(page - 1);
  madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

size_t ElementSize(DType t) { return t == DType::kBF16 ? 2 : 4; }

// Rows [r0, r1): a view when the matrix is used in place, else a smaller copy.
void SliceRows(Matrix& m, int64_t r0, int64_t r1) {
  const size_t elt = ElementSize(m.dtype);
  const char* src = static_cast<const char*>(m.data) + static_cast<size_t>(r0) * m.cols * elt;
  if (!m.owned.empty()) {
    std::vector<float> copy(reinterpret_cast<const float*>(src),
                            reinterpret_cast<const float*>(src) + (r1 - r0) * m.cols);
    m.owned = std::move(copy);
    m.data = m.owned.data();
  } else {
    m.data = src;
  }
  m.rows = r1 - r0;
}

// Columns [c0, c1), copied in the matrix's dtype.
void SliceCols(Matrix& m, int64_t c0, int64_t c1) {
  const size_t elt = ElementSize(m.dtype);
  std::vector<uint8_t> copy(static_cast<size_t>(m.rows) * (c1 - c0) * elt);
  const auto* src = static_cast<const uint8_t*>(m.data);
  for (int64_t r = 0; r < m.rows; ++r) {
    std::memcpy(&copy[static_cast<size_t>(r) * (c1 - c0) * elt], src + (static_cast<size_t>(r) * m.cols + c0) * elt,
                (c1 - c0) * elt);
  }
  if (m.owned.empty()) ReleasePages(m.data, static_cast<size_t>(m.rows) * m.cols * elt);
  m.owned.clear();
  m.owned.shrink_to_fit();
  m.owned_raw = std::move(copy);
  m.data = m.owned_raw.data();
  m.cols = c1 - c0;
}

template <typename T>
std::vector<T> Slice(const std::vector<T>& v, int64_t b, int64_t e) {
  return std::vector<T>(v.begin() + b, v.begin() + e);
}

// Keeps experts `held` (in that order), output rows [r0, r1) and input columns [c0, c1).
void CutExperts(ExpertMatrix& m, const std::vector<int>& held, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const int64_t n = static_cast<int64_t>(held.size()), rows = r1 - r0, cols = c1 - c0;
  std::vector<float> bias(static_cast<size_t>(n) * rows);
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(m.bias.begin() + held[i] * m.rows + r0, rows, bias.begin() + i * rows);
  }
  if (m.mxfp4) {
    const int64_t groups = m.cols / 32, g0 = c0 / 32, ng = cols / 32;
    std::vector<uint8_t> blocks(static_cast<size_t>(n) * rows * ng * 16), scales(static_cast<size_t>(n) * rows * ng);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = 0; r < rows; ++r) {
        const size_t src = (static_cast<size_t>(held[i]) * m.rows + r0 + r) * groups + g0;
        const size_t dst = (static_cast<size_t>(i) * rows + r) * ng;
        std::memcpy(&blocks[dst * 16], m.blocks + src * 16, ng * 16);
        std::memcpy(&scales[dst], m.scales + src, ng);
      }
    }
    if (m.owned_blocks.empty()) {
      ReleasePages(m.blocks, static_cast<size_t>(m.num_experts) * m.rows * groups * 16);
      ReleasePages(m.scales, static_cast<size_t>(m.num_experts) * m.rows * groups);
    }
    m.owned_blocks = std::move(blocks);
    m.owned_scales = std::move(scales);
    m.blocks = m.owned_blocks.data();
    m.scales = m.owned_scales.data();
  } else {
    // Dense experts are stored [E, cols (in), rows (out)].
    const size_t elt = ElementSize(m.dtype);
    std::vector<uint8_t> dense(static_cast<size_t>(n) * cols * rows * elt);
    const auto* src = static_cast<const uint8_t*>(m.dense);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < cols; ++c) {
        std::memcpy(&dense[(static_cast<size_t>(i) * cols + c) * rows * elt],
                    src + ((static_cast<size_t>(held[i]) * m.cols + c0 + c) * m.rows + r0) * elt, rows * elt);
      }
    }
    if (m.owned.empty() && m.owned_dense.empty()) {
      ReleasePages(m.dense, static_cast<size_t>(m.num_experts) * m.cols * m.rows * elt);
    }
    m.owned.clear();
    m.owned.shrink_to_fit();
    m.owned_dense = std::move(dense);
    m.dense = m.owned_dense.data();
  }
  m.bias = std::move(bias);
  m.num_experts = n;
  m.rows = rows;
  m.cols = cols;
}

}  // namespace

absl::Status ShardWeights(ModelWeights& w, const ShardPlan& p) {
  if (w.shard.sharded()) return absl::FailedPreconditionError("these weights are already a shard");
  if (!p.sharded()) {
    w.shard = p;
    return absl::OkStatus();
  }
  ModelConfig& c = w.config;
  const int64_t hd = c.head_dim;
  SliceRows(w.embed, p.vocab_begin, p.vocab_end);
  SliceRows(w.lm_head, p.vocab_begin, p.vocab_end);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    SliceRows(L.q, p.head_begin * hd, p.head_end * hd);
    SliceRows(L.k, p.kv_head_begin * hd, p.kv_head_end * hd);
    SliceRows(L.v, p.kv_head_begin * hd, p.kv_head_end * hd);
    SliceCols(L.o, p.head_begin * hd, p.head_end * hd);
    L.q_bias = Slice(L.q_bias, p.head_begin * hd, p.head_end * hd);
    L.k_bias = Slice(L.k_bias, p.kv_head_begin * hd, p.kv_head_end * hd);
    L.v_bias = Slice(L.v_bias, p.kv_head_begin * hd, p.kv_head_end * hd);
    if (p.rank != 0) std::fill(L.o_bias.begin(), L.o_bias.end(), 0.0f);  // added once, by rank 0
    L.sinks = Slice(L.sinks, p.head_begin, p.head_end);
    std::vector<int> held;
    for (int64_t e = 0; e < c.num_local_experts; ++e) {
      if (p.local_expert[l][e] >= 0) held.push_back(static_cast<int>(e));
    }
    CutExperts(L.gate_up, held, 2 * p.inter_begin, 2 * p.inter_end, 0, L.gate_up.cols);
    CutExperts(L.down, held, 0, L.down.rows, p.inter_begin, p.inter_end);
    // Tensor parallel: every rank computes a part of each expert, the bias once.
    if (!p.expert_parallel && p.rank != 0) std::fill(L.down.bias.begin(), L.down.bias.end(), 0.0f);
  }
  c.num_attention_heads = p.head_end - p.head_begin;
  c.num_key_value_heads = p.kv_head_end - p.kv_head_begin;
  c.intermediate_size = p.inter_end - p.inter_begin;
  w.shard = p;
  return absl::OkStatus();
}

}  // namespace moeserve
