// gpt-oss model configuration, parsed from a Hugging Face `config.json`.
//
// Every field of the published gpt-oss config is read and validated; the
// derived quantities the forward pass needs (YaRN frequencies, which layers
// slide) are methods so they are computed in exactly one place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace moeserve {

// The two attention kinds of gpt-oss. Sliding layers attend to the last
// `sliding_window` positions; full layers to the whole prefix.
enum class LayerType { kSlidingAttention, kFullAttention };

struct RopeScaling {
  std::string rope_type = "yarn";  // only "yarn" (or none) is supported
  double factor = 32.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  int64_t original_max_position_embeddings = 4096;
  bool truncate = false;  // true: floor/ceil the ramp ends (ggml, HF default)
};

struct QuantizationConfig {
  std::string quant_method;  // "mxfp4" or empty for dense experts
  std::vector<std::string> modules_to_not_convert;
};

struct ModelConfig {
  std::vector<std::string> architectures = {"GptOssForCausalLM"};
  std::string model_type = "gpt_oss";
  int64_t num_hidden_layers = 24;
  int64_t hidden_size = 2880;
  int64_t intermediate_size = 2880;
  int64_t num_attention_heads = 64;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 64;
  int64_t num_local_experts = 32;
  int64_t num_experts_per_tok = 4;
  int64_t vocab_size = 201088;
  int64_t sliding_window = 128;
  int64_t max_position_embeddings = 131072;
  int64_t initial_context_length = 4096;
  double rope_theta = 150000.0;
  double rms_norm_eps = 1e-5;
  double swiglu_limit = 7.0;
  double swiglu_alpha = 1.702;
  bool attention_bias = true;
  bool tie_word_embeddings = false;
  bool has_rope_scaling = true;
  RopeScaling rope_scaling;
  std::vector<LayerType> layer_types;
  QuantizationConfig quantization_config;
  int64_t eos_token_id = 200002;        // config.json's (its first, when it holds a list)
  // Every token that ends a generation: config.json's eos_token_id (a number
  // or a list) and, when the directory has one, generation_config.json's,
  // without repeats, in that order. The one source of stop ids for the engine,
  // the worker (Describe) and the router.
  std::vector<int64_t> eos_token_ids = {200002};
  int64_t pad_token_id = 199999;
  double router_aux_loss_coef = 0.9;
  std::string hidden_act = "silu";

  // The exact gpt-oss-20b / gpt-oss-120b shapes.
  static ModelConfig GptOss20b();
  static ModelConfig GptOss120b();

  bool experts_mxfp4() const { return quantization_config.quant_method == "mxfp4"; }
  bool is_sliding(int64_t layer) const {
    return layer_types[layer] == LayerType::kSlidingAttention;
  }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }

  // Per-pair RoPE inverse frequencies (head_dim / 2 of them) after YaRN, and the
  // YaRN magnitude scale applied to cos and sin. `round_ramp` floors/ceils the
  // ramp ends the way ggml does (for comparisons with llama.cpp).
  std::vector<float> RopeInvFreq(bool round_ramp) const;
  // YaRN's ramp ends (pair indices) [low, high]; `round_ramp`: floored/ceiled as ggml does.
  std::pair<double, double> YarnRamp(bool round_ramp) const;
  float RopeMscale() const;

  // Checks internal consistency (positive sizes, divisibility, layer types).
  absl::Status Validate() const;
  // Serialises to the Hugging Face config.json form.
  std::string ToJson() const;
};

// Parses config.json text; `origin` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& origin);
// Reads and parses `<model_dir>/config.json`, and adds the eos ids of
// `<model_dir>/generation_config.json` when that file exists.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace moeserve
