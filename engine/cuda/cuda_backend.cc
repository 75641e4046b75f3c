#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "engine/cpu/ops.h"
#include "engine/cuda/ops.h"
#include "engine/forward.h"
#include "engine/kv_layout.h"

namespace moeserve::cuda {
namespace {

constexpr int kLogitRows = 64;  // lm_head rows per chunk (the logits buffer is kLogitRows x vocab)

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// Kernel grids put pairs (rows x top-k) on gridDim.y, which holds 65535.
int64_t MaxRows(const ModelConfig& c, const CudaOptions& o) {
  return std::clamp<int64_t>(o.max_rows_per_chunk, 1, 65535 / std::max<int64_t>(1, c.num_experts_per_tok));
}

// Token masks of a logits chunk: kLogitRows x the vocabulary's mask words.
size_t MaskBytes(const ModelConfig& c) { return static_cast<size_t>(kLogitRows) * TokenMaskWords(c.vocab_size) * 4; }

size_t WorkFloats(const ModelConfig& c, int64_t R) {
  const int64_t P = R * c.num_experts_per_tok, hs = c.hidden_size, inter = c.intermediate_size;
  return static_cast<size_t>(R * (3 * hs + 2 * c.q_dim() + 2 * c.kv_dim() + c.num_local_experts +
                                  c.num_experts_per_tok) +
                             P * (2 * inter + inter + hs) + kLogitRows * (c.vocab_size + hs));
}

size_t Align256(size_t b) { return (b + 255) & ~size_t{255}; }

// The step's device workspace (activations, routing, indices) and a 64 MiB
// reserve for the CUDA context's own allocations.
size_t WorkspaceBytes(const ModelConfig& c, const CudaOptions& o) {
  const int64_t R = MaxRows(c, o), P = R * c.num_experts_per_tok;
  const size_t ints = static_cast<size_t>(R * c.num_experts_per_tok + P + P + R + kLogitRows);
  const size_t int64s = static_cast<size_t>(R * (1 + 2 * kNumCacheGroups) + c.num_hidden_layers * c.num_local_experts);
  return Align256(WorkFloats(c, R) * 4) + Align256(ints * 4) + Align256(int64s * 8) + Align256(MaskBytes(c)) +
         (64 << 20);
}

}  // namespace

absl::StatusOr<HybridPlan> CudaBackend::PlanMemory(const ModelConfig& c, const ShardPlan& shard,
                                                   const CudaOptions& o, int64_t device_bytes) {
  const int64_t h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), ne = c.num_local_experts;
  const int64_t vocab = shard.vocab_end - shard.vocab_begin;
  int64_t dense = 2 * Align256(vocab * h * 2) + Align256(h * 4) + Align256(h / 2 * 4);
  const int64_t per_layer = 2 * Align256(h * 4) + Align256(qd * 4) + 2 * Align256(kvd * 4) + Align256(h * 4) +
                            Align256(c.num_attention_heads * 4) + Align256(ne * h * 4) + Align256(ne * 4) +
                            Align256(qd * h * 2) + 2 * Align256(kvd * h * 2) + Align256(h * qd * 2);
  dense += c.num_hidden_layers * per_layer;
  if (shard.sharded()) dense += Align256(shard.world_size * kLogitRows * shard.vocab_stride * 4);
  const int64_t other = dense + static_cast<int64_t>(WorkspaceBytes(c, o));
  const int64_t kv_min = KvMinBytes(c, o.max_model_len, o.block_size, o.kv_dtype, o.max_num_seqs);
  return PlanHybrid(c, static_cast<int64_t>(static_cast<double>(device_bytes) * o.gpu_memory_utilization), other,
                    kv_min, o.n_cpu_moe, o.expert_cache_bytes);
}

namespace {
}  // namespace

CudaBackend::~CudaBackend() {
  buffers_.clear();
  if (stream_) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(std::unique_ptr<ModelWeights> weights,
                                                                 const CudaOptions& options) {
  if (DeviceCount() <= options.device) {
    return absl::UnavailableError(absl::StrCat("no CUDA device ", options.device, " (", DeviceCount(), " found)"));
  }
  const ModelConfig& c = weights->config;
  // What the GPU path runs: BF16 dense weights and MXFP4 experts, as gpt-oss ships.
  auto dense_ok = [](const Matrix& m) { return m.dtype == DType::kBF16 && m.owned.empty(); };
  if (!dense_ok(weights->embed) || !dense_ok(weights->lm_head)) {
    return absl::UnimplementedError("the CUDA backend needs BF16 embedding and lm_head weights");
  }
  for (const LayerWeights& lw : weights->layers) {
    if (!dense_ok(lw.q) || !dense_ok(lw.k) || !dense_ok(lw.v) || !dense_ok(lw.o)) {
      return absl::UnimplementedError("the CUDA backend needs BF16 attention weights");
    }
    if (!lw.gate_up.mxfp4 || !lw.down.mxfp4) return absl::UnimplementedError("the CUDA backend needs MXFP4 experts");
    if (lw.router.dtype != DType::kF32) return absl::InternalError("router weights are expected as an f32 copy");
  }
  if (c.hidden_size % 32 != 0 || c.intermediate_size % 32 != 0 || c.q_dim() % 8 != 0 || c.head_dim > 256) {
    return absl::UnimplementedError(
        "the CUDA backend needs hidden and intermediate sizes divisible by 32, q_dim by 8 and head_dim <= 256");
  }
  std::unique_ptr<CudaBackend> m(new CudaBackend());
  m->weights_ = std::move(weights);
  ASSIGN_OR_RETURN(m->info_, Describe(options.device));
  RETURN_IF_ERROR(Cuda(cudaStreamCreate(&m->stream_), "cudaStreamCreate"));
  RETURN_IF_ERROR(m->Upload(options));
  return m;
}

absl::Status CudaBackend::Upload(const CudaOptions& o) {
  const ModelConfig& c = weights_->config;
  const ModelWeights& w = *weights_;
  const int64_t hs = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), ne = c.num_local_experts;
  const int64_t inter = c.intermediate_size, topk = c.num_experts_per_tok;

  // Everything to copy, to count the bytes first.
  struct Piece {
    const void* src;
    size_t bytes;
    const void** dst;
    int expert_layer;  // >= 0: a piece of that layer's experts (may stay on the host)
  };
  std::vector<Piece> pieces;
  int expert_layer = -1;
  auto add = [&](const void* src, size_t bytes, const void** dst) {
    pieces.push_back({src, bytes, dst, expert_layer});
  };
  auto add_dense = [&](const Matrix& mt, const uint16_t** dst) {
    add(mt.data, static_cast<size_t>(mt.rows * mt.cols) * 2, reinterpret_cast<const void**>(dst));
  };
  auto add_f32 = [&](const std::vector<float>& v, const float** dst) {
    add(v.data(), v.size() * 4, reinterpret_cast<const void**>(dst));
  };
  add_dense(w.embed, &embed_);
  add_dense(w.lm_head, &lm_head_);
  add_f32(w.final_norm, &final_norm_);
  const std::vector<float> inv_freq = c.RopeInvFreq(/*round_ramp=*/false);
  add_f32(inv_freq, &inv_freq_);
  mscale_ = static_cast<float>(c.RopeMscale());
  layers_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerDev& d = layers_[l];
    add_f32(lw.attn_norm, &d.attn_norm);
    add_f32(lw.mlp_norm, &d.mlp_norm);
    add_f32(lw.q_bias, &d.q_bias);
    add_f32(lw.k_bias, &d.k_bias);
    add_f32(lw.v_bias, &d.v_bias);
    add_f32(lw.o_bias, &d.o_bias);
    add_f32(lw.sinks, &d.sinks);
    add(lw.router.data, static_cast<size_t>(lw.router.rows * lw.router.cols) * 4,
        reinterpret_cast<const void**>(&d.router));
    add_f32(lw.router_bias, &d.router_bias);
    add_dense(lw.q, &d.q);
    add_dense(lw.k, &d.k);
    add_dense(lw.v, &d.v);
    add_dense(lw.o, &d.o);
    const ExpertMatrix& gu = lw.gate_up;
    const ExpertMatrix& dn = lw.down;
    expert_layer = static_cast<int>(l);
    add(gu.blocks, static_cast<size_t>(gu.num_experts * gu.rows * gu.cols / 2),
        reinterpret_cast<const void**>(&d.gu_blocks));
    add(gu.scales, static_cast<size_t>(gu.num_experts * gu.rows * gu.cols / 32),
        reinterpret_cast<const void**>(&d.gu_scales));
    add_f32(gu.bias, &d.gu_bias);
    add(dn.blocks, static_cast<size_t>(dn.num_experts * dn.rows * dn.cols / 2),
        reinterpret_cast<const void**>(&d.down_blocks));
    add(dn.scales, static_cast<size_t>(dn.num_experts * dn.rows * dn.cols / 32),
        reinterpret_cast<const void**>(&d.down_scales));
    add_f32(dn.bias, &d.down_bias);
    expert_layer = -1;
  }
  // 256-byte aligned offsets in one allocation.
  auto align = [](size_t b) { return (b + 255) & ~size_t{255}; };
  size_t dense_total = 0;
  for (const Piece& p : pieces) {
    if (p.expert_layer < 0) dense_total += align(p.bytes);
  }

  // The step workspace, for max_rows rows.
  max_rows_ = MaxRows(c, o);
  const int64_t R = max_rows_, P = R * topk;
  const size_t f = 4;
  const size_t work_floats = WorkFloats(c, R);
  const size_t work_ints = static_cast<size_t>(R * topk + P + P + R + kLogitRows);
  const size_t work_int64 = static_cast<size_t>(R * (1 + 2 * kNumCacheGroups) + c.num_hidden_layers * ne);
  const size_t workspace = WorkspaceBytes(c, o);

  // Which layers' experts stay on the host (--n-cpu-moe), the expert cache,
  // and the KV pools from what is left under the utilization cap.
  int64_t usable = static_cast<int64_t>(static_cast<double>(info_.total_bytes) * o.gpu_memory_utilization) -
                   static_cast<int64_t>(info_.total_bytes - info_.free_bytes);
  if (o.device_memory_limit > 0) usable = std::min(usable, o.device_memory_limit);
  const int64_t kv_min = KvMinBytes(c, o.max_model_len, o.block_size, o.kv_dtype, o.max_num_seqs);
  const int64_t other = static_cast<int64_t>(dense_total + workspace);
  ASSIGN_OR_RETURN(HybridPlan plan, PlanHybrid(c, usable, other, kv_min, o.n_cpu_moe, o.expert_cache_bytes));
  plan_ = plan;
  size_t total = dense_total;
  for (const Piece& p : pieces) {
    if (p.expert_layer >= plan.n_cpu_moe) total += align(p.bytes);
  }
  weight_bytes_ = static_cast<int64_t>(total);
  ASSIGN_OR_RETURN(int64_t budget,
                   GpuKvBudget(static_cast<int64_t>(info_.total_bytes), static_cast<int64_t>(info_.free_bytes),
                               o.gpu_memory_utilization, weight_bytes_ + plan.cache_bytes,
                               static_cast<int64_t>(workspace)));
  budget = std::min(budget, plan.kv_bytes);
  ASSIGN_OR_RETURN(const auto blocks, PlanKvBlocks(c, budget, o.block_size, o.kv_dtype, o.max_num_seqs));
  if (plan.n_cpu_moe > 0 && o.progress) {
    std::fprintf(stderr,
                 "moeserve: experts of layers 0-%d (%.2f GB) stay in host memory and run on the CPU; %lld of them "
                 "cached on %s (%.2f GB); %.2f GB of weights and %.2f GB of KV on the device\n",
                 plan.n_cpu_moe - 1, plan.host_expert_bytes / 1e9, static_cast<long long>(plan.cache_slots),
                 info_.name.c_str(), plan.cache_bytes / 1e9, weight_bytes_ / 1e9, budget / 1e9);
  }
  kv_.block_size = o.block_size;
  kv_.dtype = o.kv_dtype;
  for (int g = 0; g < kNumCacheGroups; ++g) kv_.num_blocks[g] = blocks[g];

  // Weights.
  ASSIGN_OR_RETURN(DeviceBuffer wbuf, DeviceBuffer::Allocate(total));
  char* base = wbuf.as<char>();
  size_t off = 0, done = 0, next_report = 0;
  const size_t step = std::max<size_t>(total / 20, 1);
  for (const Piece& p : pieces) {
    if (p.expert_layer >= 0 && p.expert_layer < plan.n_cpu_moe) {
      *p.dst = nullptr;  // stays on the host
      continue;
    }
    if (p.bytes > 0) {
      RETURN_IF_ERROR(Cuda(cudaMemcpy(base + off, p.src, p.bytes, cudaMemcpyHostToDevice), "copying weights"));
    }
    *p.dst = base + off;
    off += align(p.bytes);
    done += p.bytes;
    if (o.progress && done >= next_report) {
      std::fprintf(stderr, "moeserve: weights to %s: %3.0f%% (%.2f of %.2f GB)\n", info_.name.c_str(),
                   100.0 * static_cast<double>(done) / static_cast<double>(total), done / 1e9, total / 1e9);
      next_report = done + step;
    }
  }
  buffers_.push_back(std::move(wbuf));

  // KV pools: [layer_in_group][block][K|V][slot][kv_heads * head_dim].
  char* kv_base[kNumCacheGroups] = {nullptr, nullptr};
  for (int g = 0; g < kNumCacheGroups; ++g) {
    const size_t bytes = KvCache::BytesPerBlock(c, g, kv_.block_size, kv_.dtype) * kv_.num_blocks[g];
    if (bytes == 0) continue;
    ASSIGN_OR_RETURN(DeviceBuffer kb, DeviceBuffer::Allocate(bytes));
    kv_base[g] = kb.as<char>();
    buffers_.push_back(std::move(kb));
  }
  const int64_t row_bytes = kvd * KvDtypeBytes(kv_.dtype);
  int in_group[kNumCacheGroups] = {0, 0};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int g = c.is_sliding(l) ? kSlidingGroup : kFullGroup;
    layer_group_.push_back(g);
    kv_layers_.push_back({kv_base[g] + in_group[g]++ * KvLayerBytes(kv_.num_blocks[g], kv_.block_size, row_bytes),
                          kv_.block_size, static_cast<int>(c.num_key_value_heads), static_cast<int>(c.head_dim),
                          kv_.dtype});
  }

  // Workspace.
  ASSIGN_OR_RETURN(DeviceBuffer fw, DeviceBuffer::Allocate(work_floats * f));
  float* fp = fw.as<float>();
  auto take = [&](int64_t n) {
    float* p = fp;
    fp += n;
    return p;
  };
  x_ = take(R * hs), h_ = take(R * hs), o_ = take(R * hs), q_ = take(R * qd), attn_ = take(R * qd);
  k_ = take(R * kvd), v_ = take(R * kvd), router_logits_ = take(R * ne), topk_w_ = take(R * topk);
  gate_up_ = take(P * 2 * inter), act_ = take(P * inter), down_ = take(P * hs);
  logits_ = take(static_cast<int64_t>(kLogitRows) * c.vocab_size);
  final_rows_ = take(static_cast<int64_t>(kLogitRows) * hs);
  buffers_.push_back(std::move(fw));
  ASSIGN_OR_RETURN(DeviceBuffer iw, DeviceBuffer::Allocate(work_ints * 4));
  int32_t* ip = iw.as<int32_t>();
  topk_idx_ = ip, ip += R * topk;
  pair_row_ = ip, ip += P;
  pair_identity_ = ip, ip += P;
  ids_ = ip, ip += R;
  logit_rows_ = ip;
  buffers_.push_back(std::move(iw));
  ASSIGN_OR_RETURN(DeviceBuffer mw, DeviceBuffer::Allocate(MaskBytes(c)));
  mask_words_ = mw.as<uint32_t>();
  buffers_.push_back(std::move(mw));
  ASSIGN_OR_RETURN(DeviceBuffer lw, DeviceBuffer::Allocate(work_int64 * 8));
  int64_t* lp = lw.as<int64_t>();
  pos_ = lp, lp += R;
  for (int g = 0; g < kNumCacheGroups; ++g) {
    slots_[g] = lp, lp += R;
    table_offset_[g] = lp, lp += R;
  }
  counts_ = lp;
  RETURN_IF_ERROR(Cuda(cudaMemset(counts_, 0, c.num_hidden_layers * ne * 8), "cudaMemset"));
  buffers_.push_back(std::move(lw));
  // Pair p of a chunk is (row p / topk, its s-th expert); the down projection reads pair p's activation row p.
  std::vector<int32_t> pr(P), pid(P);
  for (int64_t p = 0; p < P; ++p) pr[p] = static_cast<int32_t>(p / topk), pid[p] = static_cast<int32_t>(p);
  RETURN_IF_ERROR(Cuda(cudaMemcpy(pair_row_, pr.data(), P * 4, cudaMemcpyHostToDevice), "pair rows"));
  RETURN_IF_ERROR(Cuda(cudaMemcpy(pair_identity_, pid.data(), P * 4, cudaMemcpyHostToDevice), "pair ids"));
  expert_counts_.assign(c.num_hidden_layers * ne, 0);
  const ShardPlan& sp = shard();
  if (sp.expert_parallel) {
    // Per layer, global expert id -> this rank's index (-1: another rank's), and the pairs' mapped ids.
    std::vector<int32_t> map;
    for (const auto& layer : sp.local_expert) map.insert(map.end(), layer.begin(), layer.end());
    ASSIGN_OR_RETURN(DeviceBuffer mb, DeviceBuffer::Allocate(map.size() * 4 + P * 4));
    local_map_ = mb.as<int32_t>();
    pair_local_ = local_map_ + map.size();
    RETURN_IF_ERROR(Cuda(cudaMemcpy(local_map_, map.data(), map.size() * 4, cudaMemcpyHostToDevice), "expert map"));
    buffers_.push_back(std::move(mb));
  }
  if (sp.sharded()) {
    // The ranks' logits side by side: [world, kLogitRows, vocab_stride].
    ASSIGN_OR_RETURN(DeviceBuffer gb,
                     DeviceBuffer::Allocate(static_cast<size_t>(sp.world_size) * kLogitRows * sp.vocab_stride * 4));
    gathered_ = gb.as<float>();
    buffers_.push_back(std::move(gb));
  }
  if (plan.n_cpu_moe > 0) RETURN_IF_ERROR(SetUpHostExperts(o, P));
  return absl::OkStatus();
}

absl::Status CudaBackend::SetUpHostExperts(const CudaOptions& o, int64_t max_pairs) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size, inter = c.intermediate_size, ne = c.num_local_experts;
  host_pool_ = std::make_unique<ThreadPool>(o.cpu_threads);
  cache_policy_ = o.expert_cache_policy;
  ASSIGN_OR_RETURN(DeviceBuffer hd, DeviceBuffer::Allocate(max_pairs * hs * 4));
  host_down_dev_ = hd.as<float>();
  buffers_.push_back(std::move(hd));
  ASSIGN_OR_RETURN(DeviceBuffer ps, DeviceBuffer::Allocate(max_pairs * 4));
  pair_slot_ = ps.as<int32_t>();
  buffers_.push_back(std::move(ps));
  ASSIGN_OR_RETURN(DeviceBuffer pe, DeviceBuffer::Allocate(max_pairs * 4));
  pair_lora_expert_ = pe.as<int32_t>();
  buffers_.push_back(std::move(pe));
  slot_of_.assign(plan_.n_cpu_moe, std::vector<int32_t>(ne, -1));
  score_.assign(plan_.n_cpu_moe * ne, 0.0);
  const int64_t slots = plan_.cache_slots;
  slot_owner_.assign(slots, -1);
  if (slots > 0) {
    // [slot, ...] arrays in the kernels' layouts, one expert per slot.
    auto alloc = [&](int64_t bytes, auto** out) -> absl::Status {
      ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(std::max<int64_t>(bytes, 256)));
      *out = b.as<std::remove_pointer_t<std::remove_reference_t<decltype(*out)>>>();
      buffers_.push_back(std::move(b));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(alloc(slots * 2 * inter * hs / 2, &cache_.gu_blocks));
    RETURN_IF_ERROR(alloc(slots * 2 * inter * hs / 32, &cache_.gu_scales));
    RETURN_IF_ERROR(alloc(slots * 2 * inter * 4, &cache_.gu_bias));
    RETURN_IF_ERROR(alloc(slots * hs * inter / 2, &cache_.down_blocks));
    RETURN_IF_ERROR(alloc(slots * hs * inter / 32, &cache_.down_scales));
    RETURN_IF_ERROR(alloc(slots * hs * 4, &cache_.down_bias));
    // Filled in (layer, expert) order until the first refresh knows better.
    int64_t s = 0;
    for (int64_t id = 0; id < plan_.n_cpu_moe * ne && s < slots; ++id) {
      if (shard().local_expert[id / ne][id % ne] >= 0) RETURN_IF_ERROR(LoadSlot(s++, id / ne, id % ne));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::LoadSlot(int64_t slot, int64_t layer, int64_t global) {
  int64_t expert = global;
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size, inter = c.intermediate_size, ne = c.num_local_experts;
  if (const int64_t old = slot_owner_[slot]; old >= 0) slot_of_[old / ne][old % ne] = -1;
  const LayerWeights& lw = weights_->layers[layer];
  expert = shard().local_expert[layer][expert];  // the weights' index on this rank
  auto copy = [&](void* dst, const void* src, size_t bytes) {
    return Cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "expert cache");
  };
  const size_t gub = 2 * inter * hs / 2, gus = 2 * inter * hs / 32, dnb = hs * inter / 2, dns = hs * inter / 32;
  RETURN_IF_ERROR(copy(const_cast<uint8_t*>(cache_.gu_blocks) + slot * gub, lw.gate_up.blocks + expert * gub, gub));
  RETURN_IF_ERROR(copy(const_cast<uint8_t*>(cache_.gu_scales) + slot * gus, lw.gate_up.scales + expert * gus, gus));
  RETURN_IF_ERROR(copy(const_cast<float*>(cache_.gu_bias) + slot * 2 * inter, lw.gate_up.bias.data() + expert * 2 * inter,
                       2 * inter * 4));
  RETURN_IF_ERROR(copy(const_cast<uint8_t*>(cache_.down_blocks) + slot * dnb, lw.down.blocks + expert * dnb, dnb));
  RETURN_IF_ERROR(copy(const_cast<uint8_t*>(cache_.down_scales) + slot * dns, lw.down.scales + expert * dns, dns));
  RETURN_IF_ERROR(copy(const_cast<float*>(cache_.down_bias) + slot * hs, lw.down.bias.data() + expert * hs, hs * 4));
  slot_owner_[slot] = layer * ne + global;
  slot_of_[layer][global] = static_cast<int32_t>(slot);
  ++cache_stats_.loads;
  return absl::OkStatus();
}

// Between steps, never inside one: the slots go to the host experts routing
// selects most (counts of recent steps, halved each refresh), a few loads per
// refresh so a change of workload does not stall one step.
absl::Status CudaBackend::RefreshExpertCache() {
  const int64_t slots = static_cast<int64_t>(slot_owner_.size());
  if (slots == 0) return absl::OkStatus();
  const int64_t ne = config().num_local_experts, candidates = plan_.n_cpu_moe * ne;
  if (cache_policy_ == ExpertCachePolicy::kThrash) {
    // Tests: a different set of experts every step.
    for (int64_t s = 0; s < slots; ++s) {
      int64_t id = (thrash_next_++) % candidates;
      for (int64_t tries = 0; tries < candidates && shard().local_expert[id / ne][id % ne] < 0; ++tries) {
        id = (thrash_next_++) % candidates;
      }
      if (slot_of_[id / ne][id % ne] < 0 && shard().local_expert[id / ne][id % ne] >= 0) {
        RETURN_IF_ERROR(LoadSlot(s, id / ne, id % ne));
      }
    }
    return absl::OkStatus();
  }
  for (int64_t id = 0; id < candidates; ++id) {
    score_[id] = 0.5 * score_[id] + static_cast<double>(expert_counts_[id] - counts_seen_[id]);
  }
  counts_seen_.assign(expert_counts_.begin(), expert_counts_.begin() + candidates);
  std::vector<int64_t> order(candidates);
  for (int64_t i = 0; i < candidates; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score_[a] > score_[b]; });
  // The wanted set: the top `slots`. Evict the cached experts outside it, coldest first.
  std::vector<char> wanted(candidates, 0);
  for (int64_t i = 0; i < slots && i < candidates; ++i) wanted[order[i]] = 1;
  std::vector<int64_t> free_slots;
  for (int64_t s = 0; s < slots; ++s) {
    if (slot_owner_[s] < 0 || !wanted[slot_owner_[s]]) free_slots.push_back(s);
  }
  std::stable_sort(free_slots.begin(), free_slots.end(), [&](int64_t a, int64_t b) {
    return (slot_owner_[a] < 0 ? -1.0 : score_[slot_owner_[a]]) < (slot_owner_[b] < 0 ? -1.0 : score_[slot_owner_[b]]);
  });
  constexpr int kMaxLoadsPerRefresh = 8;
  int loads = 0;
  for (int64_t i = 0; i < slots && i < candidates && loads < kMaxLoadsPerRefresh && !free_slots.empty(); ++i) {
    const int64_t id = order[i];
    if (slot_of_[id / ne][id % ne] >= 0 || score_[id] <= 0.0 || shard().local_expert[id / ne][id % ne] < 0) continue;
    const int64_t s = free_slots.front();
    free_slots.erase(free_slots.begin());
    RETURN_IF_ERROR(LoadSlot(s, id / ne, id % ne));
    ++loads;
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::SetLoraAdapter(int slot, std::shared_ptr<const LoraAdapter> adapter) {
  if (slot < 0 || slot >= kMaxLoraSlots) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA slot ", slot, " outside [0, ", kMaxLoraSlots, ")"));
  }
  if (adapter && shard().sharded()) {
    return absl::UnimplementedError("LoRA adapters on tensor/expert-parallel ranks are not supported yet");
  }
  const ModelConfig& c = config();
  if (adapter && static_cast<int64_t>(adapter->layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError("the adapter's layer count is not the model's");
  }
  // Steps in flight may read the slot's old factors.
  RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "LoRA"));
  if (!lora_tables_.get()) {
    ASSIGN_OR_RETURN(lora_tables_, DeviceBuffer::Allocate(kMaxLoraSlots * sizeof(void*)));
    RETURN_IF_ERROR(Cuda(cudaMemset(lora_tables_.get(), 0, kMaxLoraSlots * sizeof(void*)), "LoRA tables"));
    ASSIGN_OR_RETURN(lora_rows_, DeviceBuffer::Allocate(max_rows_ * 4));
  }
  if (slot >= static_cast<int>(lora_.size())) lora_.resize(slot + 1);
  const LoraEntry* table = nullptr;
  if (!adapter) {
    lora_[slot].reset();
  } else {
    // Entries [layer][target][expert]; factors packed in f32.
    const int64_t E = c.num_local_experts;
    std::vector<LoraEntry> entries(static_cast<size_t>(c.num_hidden_layers) * kNumLoraTargets * E,
                                   LoraEntry{nullptr, nullptr, 0.0f, 0});
    size_t floats = 0;
    for (const auto& layer : adapter->layers)
      for (const LoraFactors& f : layer) floats += static_cast<size_t>(f.experts) * f.rank * (f.in + f.out);
    auto dev = std::make_unique<LoraDevice>();
    dev->host = adapter;
    ASSIGN_OR_RETURN(dev->factors, DeviceBuffer::Allocate(std::max<size_t>(floats, 1) * 4));
    ASSIGN_OR_RETURN(dev->entries, DeviceBuffer::Allocate(entries.size() * sizeof(LoraEntry)));
    std::vector<float> host(floats);
    const float* base = dev->factors.as<float>();
    size_t at = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      for (int t = 0; t < kNumLoraTargets; ++t) {
        const LoraFactors& f = adapter->layers[l][t];
        for (int64_t e = 0; e < f.experts; ++e) {
          const size_t na = static_cast<size_t>(f.rank) * f.in, nb = static_cast<size_t>(f.out) * f.rank;
          ConvertToF32(f.dtype, f.A(e).data, host.data() + at, na);
          ConvertToF32(f.dtype, f.B(e).data, host.data() + at + na, nb);
          if (f.active[e]) entries[(l * kNumLoraTargets + t) * E + e] = {base + at, base + at + na, f.scale[e],
                                                                          static_cast<int32_t>(f.rank)};
          at += na + nb;
        }
      }
    }
    RETURN_IF_ERROR(Cuda(cudaMemcpy(dev->factors.get(), host.data(), floats * 4, cudaMemcpyHostToDevice), "LoRA factors"));
    RETURN_IF_ERROR(Cuda(cudaMemcpy(dev->entries.get(), entries.data(), entries.size() * sizeof(LoraEntry),
                                    cudaMemcpyHostToDevice), "LoRA entries"));
    table = dev->entries.as<LoraEntry>();
    lora_[slot] = std::move(dev);
  }
  RETURN_IF_ERROR(Cuda(cudaMemcpy(lora_tables_.as<const LoraEntry*>() + slot, &table, sizeof(table),
                                  cudaMemcpyHostToDevice), "LoRA tables"));
  // The shrink's scratch: one row of the widest rank per (row, expert) pair.
  int64_t rank = 0;
  for (const auto& d : lora_)
    if (d) rank = std::max(rank, d->host->max_rank);
  if (rank > lora_max_rank_) {
    ASSIGN_OR_RETURN(lora_scratch_, DeviceBuffer::Allocate(max_rows_ * c.num_experts_per_tok * rank * 4));
    lora_max_rank_ = rank;
  }
  return absl::OkStatus();
}

void CudaBackend::ApplyLora(int64_t layer, LoraTarget target, const float* x, int64_t ldx, int64_t in,
                            const int32_t* x_row, const int32_t* slot_row, const int32_t* item_expert, int items,
                            float* y, int64_t ldy, int64_t out) {
  if (!chunk_lora_) return;
  const int64_t base = (layer * kNumLoraTargets + static_cast<int>(target)) * config().num_local_experts;
  LoraApply(lora_tables_.as<const LoraEntry* const>(), base, x, ldx, in, x_row, slot_row, item_expert,
            lora_rows_.as<int32_t>(), items, lora_scratch_.as<float>(), lora_max_rank_, y, ldy, out, stream_);
}

absl::Status CudaBackend::Forward(std::span<const SequenceInput> batch, ForwardOutput* out) {
  if (shard().sharded() && !comm_) return absl::FailedPreconditionError("the group has not met yet (Init)");
  for (size_t s = 0; s < batch.size(); ++s) {
    const int32_t a = batch[s].adapter;
    if (a >= 0 && (a >= static_cast<int32_t>(lora_.size()) || !lora_[a])) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": no LoRA adapter in slot ", a));
    }
  }
  if (counts_seen_.empty()) counts_seen_.assign(static_cast<size_t>(plan_.n_cpu_moe) * config().num_local_experts, 0);
  RETURN_IF_ERROR(RefreshExpertCache());
  return GptOssForward(config(), shard(), kv_, *this, batch, out);
}

absl::Status CudaBackend::BeginChunk(const StepLayout& step, int r0, int r1) {
  const int n = r1 - r0;
  rows_ = n;
  cudaStream_t s = stream_;
  if (r0 == 0) {  // the step's block tables, once
    if (static_cast<int64_t>(step.tables.size()) > tables_capacity_) {
      tables_capacity_ = std::max<int64_t>(static_cast<int64_t>(step.tables.size()) * 2, 4096);
      ASSIGN_OR_RETURN(DeviceBuffer tb, DeviceBuffer::Allocate(tables_capacity_ * 4));
      tables_ = tb.as<int32_t>();
      buffers_.push_back(std::move(tb));
    }
    if (!step.tables.empty()) {
      RETURN_IF_ERROR(
          Cuda(cudaMemcpyAsync(tables_, step.tables.data(), step.tables.size() * 4, cudaMemcpyHostToDevice, s),
               "block tables"));
    }
  }
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(ids_, step.ids.data() + r0, n * 4, cudaMemcpyHostToDevice, s), "ids"));
  chunk_lora_ = std::any_of(step.adapter.begin() + r0, step.adapter.begin() + r1, [](int32_t a) { return a >= 0; });
  chunk_adapter_ = step.adapter.data() + r0;
  if (chunk_lora_) {
    RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(lora_rows_.get(), step.adapter.data() + r0, n * 4, cudaMemcpyHostToDevice, s),
                         "LoRA rows"));
  }
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(pos_, step.pos.data() + r0, n * 8, cudaMemcpyHostToDevice, s), "positions"));
  for (int g = 0; g < kNumCacheGroups; ++g) {
    RETURN_IF_ERROR(
        Cuda(cudaMemcpyAsync(slots_[g], step.slots[g].data() + r0, n * 8, cudaMemcpyHostToDevice, s), "slots"));
    RETURN_IF_ERROR(
        Cuda(cudaMemcpyAsync(table_offset_[g], step.table_offset[g].data() + r0, n * 8, cudaMemcpyHostToDevice, s),
             "table offsets"));
  }
  return absl::OkStatus();
}

Tensor CudaBackend::Buffer(Act which) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  switch (which) {
    case Act::kX:
      return {x_, rows_, hs, hs};
    case Act::kH:
      return {h_, rows_, hs, hs};
    case Act::kQ:
      return {q_, rows_, qd, qd};
    case Act::kK:
      return {k_, rows_, kvd, kvd};
    case Act::kV:
      return {v_, rows_, kvd, kvd};
    case Act::kAttn:
      return {attn_, rows_, qd, qd};
    case Act::kO:
      return {o_, rows_, hs, hs};
  }
  return {};
}

void CudaBackend::Embed(Tensor x) {
  EmbeddingBf16(embed_, ids_, static_cast<int>(x.rows), x.cols, x.data, stream_, shard().vocab_begin,
                shard().vocab_end);
}

void CudaBackend::RmsNorm(int64_t layer, Norm which, Tensor x, Tensor y) {
  const LayerDev& d = layers_[layer];
  cuda::RmsNorm(x.data, x.ld, which == Norm::kAttention ? d.attn_norm : d.mlp_norm, static_cast<int>(x.rows), x.cols,
                static_cast<float>(config().rms_norm_eps), y.data, y.ld, stream_);
}

void CudaBackend::Linear(int64_t layer, Tensor x, std::initializer_list<Projection> outs) {
  const LayerDev& d = layers_[layer];
  for (const Projection& p : outs) {
    const uint16_t* w = p.w == Dense::kQ ? d.q : p.w == Dense::kK ? d.k : p.w == Dense::kV ? d.v : d.o;
    const float* b = p.w == Dense::kQ ? d.q_bias : p.w == Dense::kK ? d.k_bias : p.w == Dense::kV ? d.v_bias : d.o_bias;
    LinearBf16(w, p.y.cols, x.cols, b, x.data, x.ld, static_cast<int>(x.rows), p.y.data, p.y.ld, stream_);
    static constexpr LoraTarget kTarget[] = {LoraTarget::kQ, LoraTarget::kK, LoraTarget::kV, LoraTarget::kO};
    ApplyLora(layer, kTarget[static_cast<int>(p.w)], x.data, x.ld, x.cols, nullptr, nullptr, nullptr,
              static_cast<int>(x.rows), p.y.data, p.y.ld, p.y.cols);
  }
}

void CudaBackend::Rope(Tensor x, int num_heads) {
  cuda::Rope(x.data, x.ld, static_cast<int>(x.rows), num_heads, static_cast<int>(config().head_dim), pos_, inv_freq_,
             mscale_, stream_);
}

void CudaBackend::KvWrite(int64_t layer, Tensor k, Tensor v) {
  cuda::KvWrite(kv_layers_[layer], k.data, k.ld, v.data, v.ld, slots_[layer_group_[layer]], static_cast<int>(k.rows),
                stream_);
}

absl::Status CudaBackend::Attention(int64_t layer, Tensor q, Tensor out) {
  const ModelConfig& c = config();
  const int g = layer_group_[layer];
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return PagedAttention(kv_layers_[layer], q.data, q.ld, static_cast<int>(q.rows),
                        static_cast<int>(c.num_attention_heads), pos_, tables_, table_offset_[g],
                        g == kSlidingGroup ? c.sliding_window : 0, layers_[layer].sinks, scale, out.data, out.ld,
                        stream_);
}

absl::Status CudaBackend::AllReduce(Tensor x) {
  if (!comm_) return absl::OkStatus();
  return comm_->AllReduceSum(x.data, x.rows * x.ld, parallel::DataType::kF32);  // stream-ordered
}

void CudaBackend::Add(Tensor x, Tensor y) {
  AddInPlace(x.data, x.ld, y.data, y.ld, static_cast<int>(x.rows), x.cols, stream_);
}

absl::StatusOr<Routing> CudaBackend::Route(int64_t layer, Tensor h) {
  const ModelConfig& c = config();
  const LayerDev& d = layers_[layer];
  const int ne = static_cast<int>(c.num_local_experts), k = static_cast<int>(c.num_experts_per_tok);
  const int rows = static_cast<int>(h.rows);
  LinearF32(d.router, ne, h.cols, d.router_bias, h.data, h.ld, rows, router_logits_, ne, stream_);
  ApplyLora(layer, LoraTarget::kRouter, h.data, h.ld, h.cols, nullptr, nullptr, nullptr, rows, router_logits_, ne, ne);
  RETURN_IF_ERROR(TopKSoftmax(router_logits_, rows, ne, k, topk_idx_, topk_w_, stream_));
  CountExperts(topk_idx_, rows * k, counts_ + layer * ne, stream_);
  return Routing{topk_idx_, topk_w_};
}

void CudaBackend::Experts(int64_t layer, Tensor h, const Routing& routing, Tensor out) {
  // One (row, expert) pair per selection: pair p is row p / k with its (p % k)-th expert.
  const ModelConfig& c = config();
  const LayerDev& d = layers_[layer];
  const int64_t hs = c.hidden_size, inter = c.intermediate_size;
  const int k = static_cast<int>(c.num_experts_per_tok);
  const int pairs = static_cast<int>(h.rows) * k;
  if (layer < plan_.n_cpu_moe) {
    if (absl::Status st = HostExperts(layer, h, routing, out); !st.ok() && host_error_.ok()) host_error_ = st;
    return;
  }
  // Expert parallel: this rank's experts by its index, the others' pairs zero.
  const int32_t* experts = routing.idx;
  if (local_map_) {
    MapIds(routing.idx, pairs, local_map_ + layer * c.num_local_experts, pair_local_, stream_);
    experts = pair_local_;
  }
  ExpertMxfp4(d.gu_blocks, d.gu_scales, d.gu_bias, 2 * inter, hs, h.data, h.ld, pair_row_, experts, pairs, gate_up_,
              2 * inter, stream_);
  ApplyLora(layer, LoraTarget::kGateUp, h.data, h.ld, hs, pair_row_, pair_row_, experts, pairs, gate_up_, 2 * inter,
            2 * inter);
  SwiGlu(gate_up_, 2 * inter, pairs, inter, static_cast<float>(c.swiglu_limit), static_cast<float>(c.swiglu_alpha),
         act_, inter, stream_);
  ExpertMxfp4(d.down_blocks, d.down_scales, d.down_bias, hs, inter, act_, inter, pair_identity_, experts, pairs,
              down_, hs, stream_);
  ApplyLora(layer, LoraTarget::kDown, act_, inter, inter, nullptr, pair_row_, experts, pairs, down_, hs, hs);
  MoeCombine(down_, hs, routing.weight, static_cast<int>(h.rows), k, hs, out.data, out.ld, stream_);
}

// A layer whose experts live on the host: the pairs whose expert is in the
// device cache run on the GPU (launched first, asynchronous), the rest on the
// CPU meanwhile; the CPU's outputs are added to the GPU's (zeros for the
// pairs it did not run) and combined as on an all-device layer.
absl::Status CudaBackend::HostExperts(int64_t layer, Tensor h, const Routing& routing, Tensor out) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size, inter = c.intermediate_size;
  const int k = static_cast<int>(c.num_experts_per_tok);
  const int rows = static_cast<int>(h.rows), pairs = rows * k;
  host_idx_.resize(pairs);
  host_h_.resize(static_cast<size_t>(rows) * hs);
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(host_idx_.data(), routing.idx, pairs * 4, cudaMemcpyDeviceToHost, stream_),
                       "routing to host"));
  // Chunk buffers are contiguous (ld == hidden).
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(host_h_.data(), h.data, static_cast<size_t>(rows) * h.ld * 4,
                                       cudaMemcpyDeviceToHost, stream_),
                       "activations to host"));
  RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "activations to host"));
  host_slot_.resize(pairs);
  host_expert_.resize(pairs);
  host_row_.resize(pairs);
  int on_device = 0;
  const std::vector<int32_t>& local = shard().local_expert[layer];
  for (int p = 0; p < pairs; ++p) {
    const int32_t slot = slot_of_[layer][host_idx_[p]];
    host_slot_[p] = slot;
    host_expert_[p] = slot >= 0 ? -1 : local[host_idx_[p]];  // -1 too for another rank's expert
    host_row_[p] = p / k;
    on_device += slot >= 0;
  }
  cache_stats_.hits += on_device;
  cache_stats_.misses += pairs - on_device;
  // The cached experts on the GPU, while the CPU computes the others.
  if (on_device > 0) {
    RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(pair_slot_, host_slot_.data(), pairs * 4, cudaMemcpyHostToDevice, stream_),
                         "pair slots"));
    ExpertMxfp4(cache_.gu_blocks, cache_.gu_scales, cache_.gu_bias, 2 * inter, hs, h.data, h.ld, pair_row_, pair_slot_,
                pairs, gate_up_, 2 * inter, stream_);
    if (chunk_lora_) {  // LoRA of the cached pairs, by their experts' ids (-1: the host computes the pair)
      host_lora_expert_.resize(pairs);
      for (int p = 0; p < pairs; ++p) host_lora_expert_[p] = host_slot_[p] >= 0 ? host_idx_[p] : -1;
      RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(pair_lora_expert_, host_lora_expert_.data(), pairs * 4,
                                           cudaMemcpyHostToDevice, stream_), "pair experts"));
      ApplyLora(layer, LoraTarget::kGateUp, h.data, h.ld, hs, pair_row_, pair_row_, pair_lora_expert_, pairs, gate_up_,
                2 * inter, 2 * inter);
    }
    SwiGlu(gate_up_, 2 * inter, pairs, inter, static_cast<float>(c.swiglu_limit), static_cast<float>(c.swiglu_alpha),
           act_, inter, stream_);
    ExpertMxfp4(cache_.down_blocks, cache_.down_scales, cache_.down_bias, hs, inter, act_, inter, pair_identity_,
                pair_slot_, pairs, down_, hs, stream_);
    if (chunk_lora_) {
      ApplyLora(layer, LoraTarget::kDown, act_, inter, inter, nullptr, pair_row_, pair_lora_expert_, pairs, down_, hs, hs);
    }
  } else {
    RETURN_IF_ERROR(Cuda(cudaMemsetAsync(down_, 0, static_cast<size_t>(pairs) * hs * 4, stream_), "memset"));
  }
  host_down_.assign(static_cast<size_t>(pairs) * hs, 0.0f);
  const LayerWeights& lw = weights_->layers[layer];
  // LoRA of the host pairs: the CPU kernels' own path, with the host copies of the adapters.
  cpu::ExpertLora lora;
  if (chunk_lora_) {
    host_pair_adapter_.resize(pairs);
    for (int p = 0; p < pairs; ++p) host_pair_adapter_[p] = chunk_adapter_[p / k];
    lora_host_ptrs_.assign(lora_.size(), nullptr);
    for (size_t s = 0; s < lora_.size(); ++s) lora_host_ptrs_[s] = lora_[s] ? lora_[s]->host.get() : nullptr;
    lora = {layer, host_pair_adapter_, lora_host_ptrs_};
  }
  cpu::ExpertPairs(*host_pool_, lw.gate_up, lw.down, static_cast<float>(c.swiglu_limit),
                   static_cast<float>(c.swiglu_alpha), host_h_.data(), hs, host_row_, host_expert_, host_down_.data(), hs,
                   chunk_lora_ ? &lora : nullptr);
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(host_down_dev_, host_down_.data(), host_down_.size() * 4,
                                       cudaMemcpyHostToDevice, stream_),
                       "host experts to device"));
  AddInPlace(down_, hs, host_down_dev_, hs, pairs, hs, stream_);
  MoeCombine(down_, hs, routing.weight, rows, k, hs, out.data, out.ld, stream_);
  // host_down_ is reused by the next host layer: the copy must have read it.
  return Cuda(cudaStreamSynchronize(stream_), "host experts");
}

absl::Status CudaBackend::Logits(Tensor x, std::span<const int32_t> rows, std::span<const uint32_t* const> masks,
                                 float* logits) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size;
  // kLogitRows at a time: gather, final norm, lm_head, copy back.
  for (size_t a = 0; a < rows.size(); a += kLogitRows) {
    const int cnt = static_cast<int>(std::min<size_t>(kLogitRows, rows.size() - a));
    RETURN_IF_ERROR(
        Cuda(cudaMemcpyAsync(logit_rows_, rows.data() + a, cnt * 4, cudaMemcpyHostToDevice, stream_), "logit rows"));
    GatherRows(x.data, x.ld, logit_rows_, cnt, hs, final_rows_, hs, stream_);
    cuda::RmsNorm(final_rows_, hs, final_norm_, cnt, hs, static_cast<float>(c.rms_norm_eps), final_rows_, hs, stream_);
    const ShardPlan& sp = shard();
    if (sp.sharded()) {
      // This rank's vocabulary range into its slot, every rank's slots gathered, then laid out per row on the host.
      const int64_t stride = sp.vocab_stride, slot = static_cast<int64_t>(cnt) * stride;
      float* mine = gathered_ + sp.rank * slot;
      LinearBf16(lm_head_, sp.vocab_end - sp.vocab_begin, hs, nullptr, final_rows_, hs, cnt, mine, stride, stream_);
      RETURN_IF_ERROR(comm_->AllGather(mine, gathered_, slot, parallel::DataType::kF32));
      host_gathered_.resize(static_cast<size_t>(sp.world_size) * slot);
      RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(host_gathered_.data(), gathered_, host_gathered_.size() * 4,
                                           cudaMemcpyDeviceToHost, stream_),
                           "logits"));
      RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "lm_head"));
      for (int r = 0; r < sp.world_size; ++r) {
        const auto [v0, v1] = ShardPlan::Split(c.vocab_size, sp.world_size, r);
        for (int i = 0; i < cnt; ++i) {
          std::copy_n(host_gathered_.data() + r * slot + static_cast<int64_t>(i) * stride, v1 - v0,
                      logits + (a + i) * c.vocab_size + v0);
        }
      }
      // The gathered rows are whole only on the host: masks apply there.
      for (int i = 0; i < cnt; ++i) {
        if (masks[a + i]) ApplyTokenMask(logits + (a + i) * c.vocab_size, c.vocab_size, masks[a + i]);
      }
      continue;
    }
    LinearBf16(lm_head_, c.vocab_size, hs, nullptr, final_rows_, hs, cnt, logits_, c.vocab_size, stream_);
    // Token masks on the device: rows without one get all bits set.
    const int64_t words = TokenMaskWords(c.vocab_size);
    if (std::any_of(masks.begin() + a, masks.begin() + a + cnt, [](const uint32_t* m) { return m != nullptr; })) {
      host_masks_.assign(static_cast<size_t>(cnt) * words, 0xffffffffu);
      for (int i = 0; i < cnt; ++i) {
        if (masks[a + i]) std::copy_n(masks[a + i], words, host_masks_.data() + static_cast<size_t>(i) * words);
      }
      RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(mask_words_, host_masks_.data(), host_masks_.size() * 4,
                                           cudaMemcpyHostToDevice, stream_),
                           "token masks"));
      MaskLogits(logits_, cnt, c.vocab_size, mask_words_, words, stream_);
    }
    RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(logits + a * c.vocab_size, logits_,
                                         static_cast<size_t>(cnt) * c.vocab_size * 4, cudaMemcpyDeviceToHost, stream_),
                         "logits"));
    RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "lm_head"));
  }
  return Check("logits");
}

absl::Status CudaBackend::EndStep() {
  if (!host_error_.ok()) {
    const absl::Status st = host_error_;
    host_error_ = absl::OkStatus();
    return st;
  }
  std::vector<int64_t> counts(expert_counts_.size());
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(counts.data(), counts_, counts.size() * 8, cudaMemcpyDeviceToHost, stream_),
                       "expert counts"));
  RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "forward"));
  RETURN_IF_ERROR(Check("forward"));
  expert_counts_ = std::move(counts);
  return absl::OkStatus();
}

}  // namespace moeserve::cuda
