// The gpt-oss forward pass (spec §2), literal about the math:
//   x = E[token]
//   per layer:
//     h = RMSNorm(x); q, k, v = W h + b; RoPE(q, k); k, v to the paged cache
//     x += Wo Attention(q, K, V; sinks, sliding window on sliding layers) + bo
//     h = RMSNorm(x); top-4 of (Wr h + br), softmax over the four
//     x += sum_e w_e (W2_e SwiGLU(W1_e h + b1_e) + b2_e)
//   logits = lm_head RMSNorm(x)
// On a rank of a tensor/expert-parallel group (engine/parallel/shard.h) `c`
// holds the rank's head and intermediate sizes, and the partial sums of the
// embedding, o_proj and the experts are all-reduced before they are added.
#include "engine/forward.h"

#include <algorithm>
#include <vector>

#include "base/status.h"

namespace moeserve {

absl::Status GptOssForward(const ModelConfig& c, const ShardPlan& shard, const KvCacheOptions& kv, ForwardOps& ops,
                           std::span<const SequenceInput> batch, ForwardOutput* out) {
  RETURN_IF_ERROR(ValidateBatch(c, kv, batch));
  const StepLayout step = LayOutStep(c, kv, batch);
  out->vocab_size = c.vocab_size;
  out->first_row = step.first_row;
  out->num_rows = step.num_rows;
  out->logits.resize(step.logit_rows.size() * static_cast<size_t>(c.vocab_size));

  const int n = step.num_rows_total();
  const bool sharded = shard.sharded();
  const int heads = static_cast<int>(c.num_attention_heads), kv_heads = static_cast<int>(c.num_key_value_heads);
  size_t next_logit = 0;  // logit_rows[next_logit] is the next row to return logits for
  // Token masks per returned row: a sequence's mask applies to its last row.
  std::vector<const uint32_t*> row_masks(step.logit_rows.size(), nullptr);
  for (size_t s = 0; s < batch.size(); ++s) {
    if (!batch[s].token_mask.empty()) row_masks[step.first_row[s] + step.num_rows[s] - 1] = batch[s].token_mask.data();
  }
  for (int r0 = 0; r0 < n; r0 += ops.max_rows()) {
    const int r1 = std::min(n, r0 + ops.max_rows());
    RETURN_IF_ERROR(ops.BeginChunk(step, r0, r1));
    const Tensor x = ops.Buffer(Act::kX), h = ops.Buffer(Act::kH), q = ops.Buffer(Act::kQ), k = ops.Buffer(Act::kK),
                 v = ops.Buffer(Act::kV), attn = ops.Buffer(Act::kAttn), o = ops.Buffer(Act::kO);

    ops.Embed(x);
    if (sharded) RETURN_IF_ERROR(ops.AllReduce(x));  // each rank embedded its part of the vocabulary
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      // Attention block (spec §2.4).
      ops.RmsNorm(l, Norm::kAttention, x, h);
      ops.Linear(l, h, {{Dense::kQ, q}, {Dense::kK, k}, {Dense::kV, v}});
      ops.Rope(q, heads);
      ops.Rope(k, kv_heads);
      ops.KvWrite(l, k, v);
      RETURN_IF_ERROR(ops.Attention(l, q, attn));
      ops.Linear(l, attn, {{Dense::kO, o}});
      if (sharded) RETURN_IF_ERROR(ops.AllReduce(o));  // each rank's heads' share of o_proj
      ops.Add(x, o);

      // MoE block (spec §2.5).
      ops.RmsNorm(l, Norm::kMlp, x, h);
      ASSIGN_OR_RETURN(const Routing routing, ops.Route(l, h));
      ops.Experts(l, h, routing, o);
      if (sharded) RETURN_IF_ERROR(ops.AllReduce(o));  // each rank's experts (or intermediate range)
      ops.Add(x, o);
    }

    // Logits for this chunk's rows that return them.
    std::vector<int32_t> rows;
    const size_t first = next_logit;
    for (; next_logit < step.logit_rows.size() && step.logit_rows[next_logit] < r1; ++next_logit) {
      rows.push_back(step.logit_rows[next_logit] - r0);
    }
    if (!rows.empty()) {
      RETURN_IF_ERROR(ops.Logits(x, rows, std::span<const uint32_t* const>(row_masks).subspan(first, rows.size()),
                                 out->logits.data() + first * static_cast<size_t>(c.vocab_size)));
    }
  }
  return ops.EndStep();
}

}  // namespace moeserve
