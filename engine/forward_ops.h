// The op interface the gpt-oss forward pass (engine/forward.cc) is written
// against. Each backend implements it on its own memory: the CPU backend
// (engine/cpu/cpu_backend.h) on host buffers and a thread pool, the CUDA
// backend (engine/cuda/cuda_backend.h) on device buffers and kernels. The
// forward never reads a tensor; it only says which op runs on which buffers,
// so the math is written once and both backends run it in the same order.
//
// A step runs in row chunks of at most max_rows() rows (a row is one token),
// each chunk through every layer, then its logits: attention only looks back,
// so earlier chunks' K/V are in the cache when later chunks attend.
//
// Thread-safety: one step at a time.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/batch.h"

namespace moeserve {

// A [rows, cols] view of f32 activations in a backend's memory, row stride ld.
struct Tensor {
  float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
};

// The activation buffers of a chunk:  x: residual stream [rows, hidden]
// h: normalized [rows, hidden]  q, attn: [rows, heads * head_dim]
// k, v: [rows, kv_heads * head_dim]  o: a block's output [rows, hidden]
enum class Act { kX, kH, kQ, kK, kV, kAttn, kO };
// The dense projections of a layer (nn.Linear with bias).
enum class Dense { kQ, kK, kV, kO };
// The RMSNorm weights of a layer.
enum class Norm { kAttention, kMlp };

// Each row's top-k experts and their weights, [rows, k], in the backend's memory.
struct Routing {
  const int32_t* idx = nullptr;
  const float* weight = nullptr;
};

class ForwardOps {
 public:
  virtual ~ForwardOps() = default;

  // Rows one chunk may hold.
  virtual int max_rows() const = 0;
  // Starts rows [r0, r1) of `step`: their token ids, positions, KV slots and
  // block tables go to the backend.
  virtual absl::Status BeginChunk(const StepLayout& step, int r0, int r1) = 0;
  // The chunk's buffer `which` (rows = the chunk's rows).
  virtual Tensor Buffer(Act which) = 0;

  // x[r] = embedding[ids[r]] (a rank holding part of the vocabulary writes
  // zeros for the other ids; AllReduce completes the rows)
  virtual void Embed(Tensor x) = 0;
  // y = x / sqrt(mean(x^2) + eps) * w, w the layer's `which` norm weight.
  virtual void RmsNorm(int64_t layer, Norm which, Tensor x, Tensor y) = 0;
  // y = W x + b for each projection of the same input x.
  struct Projection {
    Dense w;
    Tensor y;
  };
  virtual void Linear(int64_t layer, Tensor x, std::initializer_list<Projection> outs) = 0;
  // YaRN RoPE (half-split rotation) of every head of each row at its position.
  virtual void Rope(Tensor x, int num_heads) = 0;
  // Stores each row's k and v in the layer's KV cache at the row's slot.
  virtual void KvWrite(int64_t layer, Tensor k, Tensor v) = 0;
  // out = softmax([q.K^T * scale, sink]) V per query head over the row's
  // cached positions (the last `sliding_window` on sliding layers); GQA.
  virtual absl::Status Attention(int64_t layer, Tensor q, Tensor out) = 0;
  // x += y
  virtual void Add(Tensor x, Tensor y) = 0;
  // x = the sum of x over the ranks of a tensor/expert-parallel group
  // (engine/parallel/shard.h); nothing on a single rank.
  virtual absl::Status AllReduce(Tensor x) = 0;
  // Router logits Wr h + br; top-k experts (ties: lower id), softmax over
  // them. Counts the selections (expert_counts).
  virtual absl::StatusOr<Routing> Route(int64_t layer, Tensor h) = 0;
  // out[r] = sum_s weight[r, s] (W2_e SwiGLU(W1_e h[r] + b1_e) + b2_e), e = idx[r, s]
  // — the experts, with rows grouped however suits the backend.
  virtual void Experts(int64_t layer, Tensor h, const Routing& routing, Tensor out) = 0;
  // logits[i] = lm_head RMSNorm(x[rows[i]]) with the final norm, written to
  // host memory [rows.size(), vocab]; rows are chunk-local. A rank holding
  // part of the vocabulary gathers the other ranks' parts. masks[i], when not
  // null, is row i's token mask (engine/batch.h): the logits of the tokens it
  // leaves out are -inf.
  virtual absl::Status Logits(Tensor x, std::span<const int32_t> rows, std::span<const uint32_t* const> masks,
                              float* logits) = 0;
  // The step's last op: results and counters are final after it.
  virtual absl::Status EndStep() = 0;
};

}  // namespace moeserve
