// gpt-oss weights as views into a memory-mapped checkpoint.
//
// Large matrices (embedding, attention projections, experts, lm_head) are used
// in place from the mapping, never copied. Small vectors (norms, biases,
// sinks, router) are converted to f32 copies: a few MB for gpt-oss-20b.
// Loading checks that every expected tensor is present with the dtype and
// shape the config implies, naming the file and tensor when one is not.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/parallel/shard.h"
#include "engine/safetensors.h"

namespace moeserve {

// A [rows, cols] row-major matrix (nn.Linear: rows = out features).
struct Matrix {
  DType dtype = DType::kF32;  // kF32 or kBF16
  const void* data = nullptr;
  int64_t rows = 0, cols = 0;
  std::vector<float> owned;       // backing store when the matrix was converted
  std::vector<uint8_t> owned_raw;  // backing store of a shard's copied columns (dtype kept)
};

// The experts of one projection of one layer.
//  MXFP4: blocks [E, rows, cols/32, 16] and scales [E, rows, cols/32], as HF stores them.
//  Dense: HF's dense layout, transposed: [E, cols (in), rows (out)].
struct ExpertMatrix {
  bool mxfp4 = true;
  DType dtype = DType::kU8;
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  const void* dense = nullptr;             // BF16 or F32 [E, cols, rows], in place or in `owned`
  int64_t num_experts = 0, rows = 0, cols = 0;
  std::vector<float> owned;                // F16 experts, converted once to F32
  std::vector<float> bias;  // [E, rows]
  // Backing stores of a shard's copy (engine/parallel/shard.h).
  std::vector<uint8_t> owned_blocks, owned_scales, owned_dense;
};

struct LayerWeights {
  std::vector<float> attn_norm, mlp_norm;                 // [H]
  Matrix q, k, v, o;                                      // [QD,H] [KV,H] [KV,H] [H,QD]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;      // [QD] [KV] [KV] [H]
  std::vector<float> sinks;                               // [num_heads]
  Matrix router;                                          // [E, H], f32 copy
  std::vector<float> router_bias;                         // [E]
  ExpertMatrix gate_up;                                   // rows = 2I, interleaved gate/up
  ExpertMatrix down;                                      // rows = H, cols = I
};

struct ModelWeights {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;  // owns the mappings the views point into
  Matrix embed;                            // [V, H]
  Matrix lm_head;                          // [V, H]
  std::vector<float> final_norm;           // [H]
  std::vector<LayerWeights> layers;
  // The part of the model these weights are (the whole model unless cut by
  // ShardWeights); `config` then holds this rank's head, KV-head and
  // intermediate sizes, `shard` the whole model's.
  ShardPlan shard;
};

// Opens `<model_dir>` (config.json + safetensors) and validates every tensor.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& model_dir);

}  // namespace moeserve
