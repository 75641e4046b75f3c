#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "base/status.h"
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
  if (weights->shard.sharded()) {
    return absl::UnimplementedError(
        "tensor/expert-parallel ranks run on the CPU backend so far; the CUDA backend takes a whole model");
  }
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
  };
  std::vector<Piece> pieces;
  auto add = [&](const void* src, size_t bytes, const void** dst) { pieces.push_back({src, bytes, dst}); };
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
  }
  // 256-byte aligned offsets in one allocation.
  auto align = [](size_t b) { return (b + 255) & ~size_t{255}; };
  size_t total = 0;
  for (const Piece& p : pieces) total += align(p.bytes);
  weight_bytes_ = static_cast<int64_t>(total);

  // The step workspace, for max_rows rows.
  // Kernel grids put pairs (rows x top-k) on gridDim.y, which holds 65535.
  max_rows_ = std::clamp<int64_t>(o.max_rows_per_chunk, 1, 65535 / std::max<int64_t>(1, topk));
  const int64_t R = max_rows_, P = R * topk;
  const size_t f = 4;
  const size_t work_floats = static_cast<size_t>(R * (3 * hs + 2 * qd + 2 * kvd + ne + topk) +
                                                 P * (2 * inter + inter + hs) + kLogitRows * (c.vocab_size + hs));
  const size_t work_ints = static_cast<size_t>(R * topk + P + P + R + kLogitRows);
  const size_t work_int64 = static_cast<size_t>(R * (1 + 2 * kNumCacheGroups) + c.num_hidden_layers * ne);
  const size_t workspace = align(work_floats * f) + align(work_ints * 4) + align(work_int64 * 8) + (64 << 20);

  // KV pools from what is left under the utilization cap.
  ASSIGN_OR_RETURN(const int64_t budget,
                   GpuKvBudget(static_cast<int64_t>(info_.total_bytes), static_cast<int64_t>(info_.free_bytes),
                               o.gpu_memory_utilization, weight_bytes_, static_cast<int64_t>(workspace)));
  ASSIGN_OR_RETURN(const auto blocks, PlanKvBlocks(c, budget, o.block_size, o.kv_f32, o.max_num_seqs));
  kv_.block_size = o.block_size;
  kv_.f32 = o.kv_f32;
  for (int g = 0; g < kNumCacheGroups; ++g) kv_.num_blocks[g] = blocks[g];

  // Weights.
  ASSIGN_OR_RETURN(DeviceBuffer wbuf, DeviceBuffer::Allocate(total));
  char* base = wbuf.as<char>();
  size_t off = 0, done = 0, next_report = 0;
  const size_t step = std::max<size_t>(total / 20, 1);
  for (const Piece& p : pieces) {
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
    const size_t bytes = KvCache::BytesPerBlock(c, g, kv_.block_size, kv_.f32) * kv_.num_blocks[g];
    if (bytes == 0) continue;
    ASSIGN_OR_RETURN(DeviceBuffer kb, DeviceBuffer::Allocate(bytes));
    kv_base[g] = kb.as<char>();
    buffers_.push_back(std::move(kb));
  }
  const int64_t row_bytes = kvd * (kv_.f32 ? 4 : 2);
  int in_group[kNumCacheGroups] = {0, 0};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int g = c.is_sliding(l) ? kSlidingGroup : kFullGroup;
    layer_group_.push_back(g);
    kv_layers_.push_back({kv_base[g] + in_group[g]++ * KvLayerBytes(kv_.num_blocks[g], kv_.block_size, row_bytes),
                          kv_.block_size, static_cast<int>(c.num_key_value_heads), static_cast<int>(c.head_dim),
                          !kv_.f32});
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
  return absl::OkStatus();
}

absl::Status CudaBackend::Forward(std::span<const SequenceInput> batch, ForwardOutput* out) {
  if (shard().sharded() && !comm_) return absl::FailedPreconditionError("the group has not met yet (Init)");
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

void CudaBackend::Embed(Tensor x) { EmbeddingBf16(embed_, ids_, static_cast<int>(x.rows), x.cols, x.data, stream_); }

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
  ExpertMxfp4(d.gu_blocks, d.gu_scales, d.gu_bias, 2 * inter, hs, h.data, h.ld, pair_row_, routing.idx, pairs, gate_up_,
              2 * inter, stream_);
  SwiGlu(gate_up_, 2 * inter, pairs, inter, static_cast<float>(c.swiglu_limit), static_cast<float>(c.swiglu_alpha),
         act_, inter, stream_);
  ExpertMxfp4(d.down_blocks, d.down_scales, d.down_bias, hs, inter, act_, inter, pair_identity_, routing.idx, pairs,
              down_, hs, stream_);
  MoeCombine(down_, hs, routing.weight, static_cast<int>(h.rows), k, hs, out.data, out.ld, stream_);
}

absl::Status CudaBackend::Logits(Tensor x, std::span<const int32_t> rows, float* logits) {
  const ModelConfig& c = config();
  const int64_t hs = c.hidden_size;
  // kLogitRows at a time: gather, final norm, lm_head, copy back.
  for (size_t a = 0; a < rows.size(); a += kLogitRows) {
    const int cnt = static_cast<int>(std::min<size_t>(kLogitRows, rows.size() - a));
    RETURN_IF_ERROR(
        Cuda(cudaMemcpyAsync(logit_rows_, rows.data() + a, cnt * 4, cudaMemcpyHostToDevice, stream_), "logit rows"));
    GatherRows(x.data, x.ld, logit_rows_, cnt, hs, final_rows_, hs, stream_);
    cuda::RmsNorm(final_rows_, hs, final_norm_, cnt, hs, static_cast<float>(c.rms_norm_eps), final_rows_, hs, stream_);
    LinearBf16(lm_head_, c.vocab_size, hs, nullptr, final_rows_, hs, cnt, logits_, c.vocab_size, stream_);
    RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(logits + a * c.vocab_size, logits_,
                                         static_cast<size_t>(cnt) * c.vocab_size * 4, cudaMemcpyDeviceToHost, stream_),
                         "logits"));
    RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "lm_head"));
  }
  return Check("logits");
}

absl::Status CudaBackend::EndStep() {
  std::vector<int64_t> counts(expert_counts_.size());
  RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(counts.data(), counts_, counts.size() * 8, cudaMemcpyDeviceToHost, stream_),
                       "expert counts"));
  RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "forward"));
  RETURN_IF_ERROR(Check("forward"));
  expert_counts_ = std::move(counts);
  return absl::OkStatus();
}

}  // namespace moeserve::cuda
