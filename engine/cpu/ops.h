// CPU implementations of the gpt-oss ops the forward pass is written against.
//
// Shapes are in the comments; every row-major activation has an explicit
// leading dimension. Functions that take a ThreadPool split their work over it;
// the others work on one row and are called from parallel loops.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/lora.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace moeserve::cpu {

// y = x / sqrt(mean(x^2) + eps) * w          x, w, y: [n]
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y);

// y[t] = W x[t] + bias (bias may be null)    x: [num_tokens, ldx]  y: [num_tokens, ldy]
void Linear(ThreadPool& pool, const Matrix& w, const float* bias, const float* x, int64_t ldx, int num_tokens,
            float* y, int64_t ldy);

// Rows [o_begin, o_end) of Linear on the calling thread.
void LinearRows(const Matrix& w, const float* bias, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
                int64_t o_end, float* y, int64_t ldy);

// Several Linear ops on the same input in one parallel region (q, k and v).
struct LinearOut {
  const Matrix* w;
  const float* bias;
  float* y;     // [num_tokens, ldy]
  int64_t ldy;
};
void LinearMany(ThreadPool& pool, std::span<const LinearOut> outs, const float* x, int64_t ldx, int num_tokens);

// cos/sin of one position for every rotary pair, scaled by `mscale`.  cos, sin: [head_dim/2]
void RopeCosSin(int64_t pos, const std::vector<float>& inv_freq, float mscale, float* cos, float* sin);
// The same quantities computed the way ggml does (llama.cpp comparisons only):
// angles by repeated fp32 multiplication with base^(-2/d), ramp ends floored
// and ceiled, the YaRN blend applied to angles. `yarn` false: plain RoPE.
void RopeCosSinGgml(int64_t pos, int head_dim, float base, bool yarn, float factor, float low, float high,
                    float* cos, float* sin);
// Half-split (NeoX) rotation of each head in place.   v: [num_heads, head_dim]
void ApplyRope(float* v, int num_heads, int head_dim, const float* cos, const float* sin);

// Clamped SwiGLU on interleaved gate/up: out[j] = g' * sigmoid(alpha g') * (u' + 1)
// with g' = min(g, limit), u' = clamp(u, -limit, limit).   gate_up: [2n]  out: [n]
void SwiGlu(const float* gate_up, int64_t n, float limit, float alpha, float* out);

// Top-k experts by logit, then softmax over the selected logits.
// idx, weight: [k], in descending logit order (ties: lower expert id first).
void TopKSoftmax(const float* logits, int num_experts, int k, int* idx, float* weight);

// One expert's projection for several tokens:  y[t] = W_e x[t] + b_e.
// For MXFP4 experts x must be permuted (PermuteForMxfp4) per row. Rows
// [o_begin, o_end) only; bias is added.
void ExpertGemm(const ExpertMatrix& m, int expert, const float* x, int64_t ldx, int num_tokens, int64_t o_begin,
                int64_t o_end, float* y, int64_t ldy);

// The experts of a list of (row, expert) pairs, each pair's output unweighted:
//   y[p] = W2_e SwiGLU(W1_e h[pair_row[p]] + b1_e) + b2_e,  e = pair_expert[p]
// with e an index into gate_up/down's experts; pairs with e < 0 are skipped
// (their rows of y untouched). Pairs are grouped by expert so each expert's
// weights are read once.   h: [rows, ldh]  y: [pairs, ldy]
// With `lora`, each pair's adapter also updates its expert's projections:
// gate_up += its scale · B (A h) before SwiGLU, down likewise after.
struct ExpertLora {
  int64_t layer = 0;
  std::span<const int32_t> pair_adapter;          // per pair: an index into `adapters`, -1: none
  std::span<const LoraAdapter* const> adapters;  // by slot (null where empty)
};
void ExpertPairs(ThreadPool& pool, const ExpertMatrix& gate_up, const ExpertMatrix& down, float limit, float alpha,
                 const float* h, int64_t ldh, std::span<const int32_t> pair_row, std::span<const int32_t> pair_expert,
                 float* y, int64_t ldy, const ExpertLora* lora = nullptr);

// A LoRA update in the manner of Punica's shrink / expand:
//   y[y_rows[i]] += scale_e · B_e (A_e x[x_rows[i]])
// with expert e's factors of `f` (e = 0 for dense targets). The shrink is one
// small GEMM on the calling thread; with a pool the expand is split over the
// output features.
void LoraApply(ThreadPool* pool, const LoraFactors& f, int64_t e, const float* x, int64_t ldx,
               std::span<const int32_t> x_rows, float* y, int64_t ldy, std::span<const int32_t> y_rows);

}  // namespace moeserve::cpu
