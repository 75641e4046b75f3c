// CUDA implementations of the engine's ops (issue: the CUDA backend), one
// launcher per op, each the device counterpart of a CPU op in engine/cpu/ and
// tested against it by tests/gpu/test_cuda_ops.cc.
//
// Conventions (as engine/cpu/ops.h): activations are f32, row-major, with an
// explicit leading dimension; dense weights are BF16 [rows, k] ("nn.Linear");
// MXFP4 expert weights are Hugging Face's blocks [experts, rows, k/32, 16]
// (low nibble = even column) and E8M0 scales [experts, rows, k/32]. Every
// pointer is device memory; every launcher is asynchronous on `stream` and
// reports launch errors through cudaGetLastError (see Check()).
//
// Compiled for sm_86 (Ampere, RTX 30xx) and sm_90 (Hopper) with no
// architecture-specific instructions: correctness first; tensor-core and
// Hopper kernels come later behind the same functions.
#pragma once

#include "engine/cuda/runtime.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/kv_dtype.h"

namespace moeserve::cuda {

// OK, or the pending CUDA error with `what` in the message.
absl::Status Check(const char* what);

// out[r] = bf16 table row ids[r], as f32.   table: [vocab, hidden]  out: [rows, hidden]
// A table holding ids [vocab_begin, vocab_end) only (a tensor-parallel rank's
// part) writes zeros for the other ids.
void EmbeddingBf16(const uint16_t* table, const int32_t* ids, int rows, int64_t hidden, float* out,
                   cudaStream_t stream, int64_t vocab_begin = 0, int64_t vocab_end = INT64_MAX);

// out[i] = map[in[i]] for i < n (global expert ids to a rank's, -1: another rank's).
void MapIds(const int32_t* in, int n, const int32_t* map, int32_t* out, cudaStream_t stream);

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w       x: [rows, ldx]  w: [n]  y: [rows, ldy]
void RmsNorm(const float* x, int64_t ldx, const float* w, int rows, int64_t n, float eps, float* y, int64_t ldy,
             cudaStream_t stream);

// y[t, o] = sum_k W[o, k] x[t, k] + bias[o]   (bias may be null; y is overwritten)
//   W: bf16 [rows, k]  x: [num_tokens, ldx]  y: [num_tokens, ldy]. k % 8 == 0.
void LinearBf16(const uint16_t* w, int64_t rows, int64_t k, const float* bias, const float* x, int64_t ldx,
                int num_tokens, float* y, int64_t ldy, cudaStream_t stream);

// The same with f32 weights (the router).   W: f32 [rows, k]. k % 4 == 0.
void LinearF32(const float* w, int64_t rows, int64_t k, const float* bias, const float* x, int64_t ldx,
               int num_tokens, float* y, int64_t ldy, cudaStream_t stream);

// dst[i] = src[idx[i]]   (rows of n floats)   src: [*, lds]  dst: [rows, ldd]
void GatherRows(const float* src, int64_t lds, const int32_t* idx, int rows, int64_t n, float* dst, int64_t ldd,
                cudaStream_t stream);

// counts[idx[i]] += 1 for i < n (expert selections, for metrics; pass counts + layer * experts).
void CountExperts(const int32_t* idx, int n, int64_t* counts, cudaStream_t stream);

// NeoX (half-split) rotation of every head of each row at its position:
// angle_i = pos * inv_freq[i], cos/sin scaled by mscale (YaRN).
//   x: [rows, ldx] holding num_heads heads of head_dim; pos: [rows]; inv_freq: [head_dim/2]
void Rope(float* x, int64_t ldx, int rows, int num_heads, int head_dim, const int64_t* pos, const float* inv_freq,
          float mscale, cudaStream_t stream);

// One layer's paged KV cache as engine/kv_cache.h lays it out:
//   [block][K|V][slot 0..block_size)[kv_heads * head_dim], bf16 or f32.
struct KvLayer {
  void* base;          // this layer's first block
  int block_size;
  int kv_heads;
  int head_dim;
  KvDtype dtype;
};

// Writes the K and V rows of new tokens: slot[r] = block * block_size + offset (-1: skip).
//   k: [rows, ldk]  v: [rows, ldv], each kv_heads * head_dim wide
void KvWrite(KvLayer kv, const float* k, int64_t ldk, const float* v, int64_t ldv, const int64_t* slot, int rows,
             cudaStream_t stream);

// Attention of each query row over its sequence's cached keys (spec §2.4):
// scores q.k * scale; softmax with one sink logit per query head (it takes
// probability mass but has no value); GQA (num_heads / kv_heads query heads per
// KV head); keys [pos - window + 1, pos] when window > 0, else [0, pos].
//   q: [rows, ldq] (num_heads * head_dim)  pos: [rows]
//   tables: flat block tables; table_offset[r]: where row r's sequence table starts
//   sinks: [num_heads]  out: [rows, ldo]
// InvalidArgument unless 1 <= head_dim <= 256 and 1 <= num_heads / kv_heads <= 32 (a whole number).
absl::Status PagedAttention(KvLayer kv, const float* q, int64_t ldq, int rows, int num_heads, const int64_t* pos,
                    const int32_t* tables, const int64_t* table_offset, int64_t window, const float* sinks,
                    float scale, float* out, int64_t ldo, cudaStream_t stream);

// Top-k experts by logit (ties: lower id first), softmax over the selected.
//   logits: [rows, num_experts]  idx, weight: [rows, k].
// InvalidArgument unless 1 <= k <= min(8, num_experts) and num_experts <= 256.
absl::Status TopKSoftmax(const float* logits, int rows, int num_experts, int k, int32_t* idx, float* weight,
                 cudaStream_t stream);

// One MXFP4 expert projection per (row, expert) pair:
//   y[p, o] = sum_c W_{expert[p]}[o, c] x[row[p], c] + bias[expert[p], o]
//   blocks: [experts, rows_out, k/32, 16]  scales: [experts, rows_out, k/32]  bias: [experts, rows_out] or null
//   x: [*, ldx]  pair_row, pair_expert: [num_pairs]  y: [num_pairs, ldy]. k % 32 == 0.
// A pair whose expert is -1 gets zeros (computed elsewhere, e.g. on the host).
void ExpertMxfp4(const uint8_t* blocks, const uint8_t* scales, const float* bias, int64_t rows_out, int64_t k,
                 const float* x, int64_t ldx, const int32_t* pair_row, const int32_t* pair_expert, int num_pairs,
                 float* y, int64_t ldy, cudaStream_t stream);

// Clamped SwiGLU on interleaved gate/up (spec §2.5), row by row:
//   out[r, j] = g' sigmoid(alpha g') (u' + 1), g' = min(gate_up[r, 2j], limit), u' = clamp(gate_up[r, 2j+1], ±limit)
void SwiGlu(const float* gate_up, int64_t ld_in, int rows, int64_t n, float limit, float alpha, float* out,
            int64_t ld_out, cudaStream_t stream);

// out[r] = sum_s weight[r, s] * y[r * k + s]     (the pairs of row r are rows r*k .. r*k+k-1 of y)
//   out: [rows, ldo]  y: [rows * k, ldy]  weight: [rows, k]
void MoeCombine(const float* y, int64_t ldy, const float* weight, int rows, int k, int64_t n, float* out, int64_t ldo,
                cudaStream_t stream);

// x[r] += y[r]       x: [rows, ldx]  y: [rows, ldy]
void AddInPlace(float* x, int64_t ldx, const float* y, int64_t ldy, int rows, int64_t n, cudaStream_t stream);

// Greedy sampling and its logprob: ids[r] = argmax logits[r] (lowest id on ties),
// logprob[r] = logits[r, ids[r]] - logsumexp(logits[r]).   logits: [rows, vocab]
void ArgmaxLogprob(const float* logits, int rows, int64_t vocab, int32_t* ids, float* logprob, cudaStream_t stream);

// LoRA (engine/lora.h) on the device. An adapter's factors in f32, one entry
// per (layer, target, expert): A [rank, in], B [out, rank], its scale; a = null
// where the adapter leaves the expert alone.
struct LoraEntry {
  const float* a;
  const float* b;
  float scale;
  int32_t rank;
};
// For items i < items (rows, or (row, expert) pairs):
//   y[i] += scale · B (A x[x_row[i]])
// with the entry tables[slot][entry_base + item_expert[i]] of slot =
// row_adapter[slot_row[i]]; null maps are the identity, a null item_expert
// means entry 0; slot -1, an empty slot or a null entry leaves y[i] alone.
//   tables: [slots] device pointers (null: empty)  t: [items, max_rank] scratch
//   (max_rank >= every entry's rank)  x: [*, ldx] (in wide)  y: [items, ldy] (out wide)
void LoraApply(const LoraEntry* const* tables, int64_t entry_base, const float* x, int64_t ldx, int64_t in,
               const int32_t* x_row, const int32_t* slot_row, const int32_t* item_expert, const int32_t* row_adapter,
               int items, float* t, int64_t max_rank, float* y, int64_t ldy, int64_t out, cudaStream_t stream);

// Structured output: logits[r, t] = -inf where bit t of masks[r] is clear
// (bit t is bit t % 32 of word t / 32).   logits: [rows, vocab]  masks: [rows, words]
void MaskLogits(float* logits, int rows, int64_t vocab, const uint32_t* masks, int64_t words, cudaStream_t stream);

}  // namespace moeserve::cuda
