#include "engine/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moeserve {
namespace {

using json = nlohmann::json;

// Reads an optional field with a type check; a wrong type is an error that
// names the file and the key.
template <typename T>
absl::Status Read(const json& j, const char* key, const std::string& origin, T* out,
                  bool required = false) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(origin, ": missing \"", key, "\""));
    return absl::OkStatus();
  }
  bool ok;
  if constexpr (std::is_same_v<T, bool>) ok = it->is_boolean();
  else if constexpr (std::is_integral_v<T>) ok = it->is_number_integer();
  else if constexpr (std::is_floating_point_v<T>) ok = it->is_number();
  else ok = it->is_string();
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": \"", key, "\" has the wrong type (", it->type_name(), ")"));
  }
  *out = it->get<T>();
  return absl::OkStatus();
}

}  // namespace

ModelConfig ModelConfig::GptOss20b() {
  ModelConfig c;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
  }
  c.quantization_config.quant_method = "mxfp4";
  c.quantization_config.modules_to_not_convert = {
      "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"};
  return c;
}

ModelConfig ModelConfig::GptOss120b() {
  ModelConfig c = GptOss20b();
  c.num_hidden_layers = 36;
  c.num_local_experts = 128;
  c.layer_types.clear();
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
  }
  return c;
}

std::vector<float> ModelConfig::RopeInvFreq(bool round_ramp) const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(half);
  const double d = static_cast<double>(head_dim);
  const double base = rope_theta;
  if (!has_rope_scaling || rope_scaling.factor <= 1.0) {
    for (int64_t i = 0; i < half; ++i) inv[i] = static_cast<float>(1.0 / std::pow(base, 2.0 * i / d));
    return inv;
  }
  const RopeScaling& s = rope_scaling;
  const auto [low, high] = YarnRamp(round_ramp || s.truncate);
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(base, 2.0 * i / d);
    const double extrapolated = 1.0 / freq;
    const double interpolated = 1.0 / (s.factor * freq);
    double ramp = (static_cast<double>(i) - low) / std::max(0.001, high - low);
    ramp = std::clamp(ramp, 0.0, 1.0);
    const double mask = 1.0 - ramp;  // 1: keep the original frequency
    inv[i] = static_cast<float>(interpolated * (1.0 - mask) + extrapolated * mask);
  }
  return inv;
}

std::pair<double, double> ModelConfig::YarnRamp(bool round_ramp) const {
  const double d = static_cast<double>(head_dim);
  const double l0 = static_cast<double>(rope_scaling.original_max_position_embeddings);
  // Dimension index at which a pair completes `n_rot` rotations over l0 tokens.
  auto corr_dim = [&](double n_rot) { return (d * std::log(l0 / (n_rot * 2.0 * M_PI))) / (2.0 * std::log(rope_theta)); };
  double low = corr_dim(rope_scaling.beta_fast), high = corr_dim(rope_scaling.beta_slow);
  if (round_ramp) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  // Hugging Face's find_correction_range clamps in both modes: a short
  // original context puts `low` below 0 (tiny test configs), which would
  // otherwise blend the highest frequencies too.
  return {std::max(0.0, low), std::min(d - 1, high)};
}

float ModelConfig::RopeMscale() const {
  if (!has_rope_scaling || rope_scaling.factor <= 1.0) return 1.0f;
  return static_cast<float>(0.1 * std::log(rope_scaling.factor) + 1.0);
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](int64_t v) { return v > 0 && v < (int64_t{1} << 31); };
  if (!positive(num_hidden_layers) || !positive(hidden_size) || !positive(intermediate_size) ||
      !positive(num_attention_heads) || !positive(num_key_value_heads) || !positive(head_dim) ||
      !positive(num_local_experts) || !positive(num_experts_per_tok) || !positive(vocab_size) ||
      !positive(max_position_embeddings)) {
    return absl::InvalidArgumentError("config: sizes must be positive and below 2^31");
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return absl::InvalidArgumentError("config: num_attention_heads must be a multiple of num_key_value_heads");
  }
  if (head_dim % 2 != 0) return absl::InvalidArgumentError("config: head_dim must be even");
  if (num_experts_per_tok > num_local_experts) {
    return absl::InvalidArgumentError("config: num_experts_per_tok exceeds num_local_experts");
  }
  if (static_cast<int64_t>(layer_types.size()) != num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("config: layer_types has ", layer_types.size(),
                                                   " entries, num_hidden_layers is ", num_hidden_layers));
  }
  bool any_sliding = false;
  for (LayerType t : layer_types) any_sliding |= t == LayerType::kSlidingAttention;
  if (any_sliding && sliding_window <= 0) {
    return absl::InvalidArgumentError("config: sliding layers need sliding_window > 0");
  }
  if (experts_mxfp4() && (hidden_size % 32 != 0 || intermediate_size % 32 != 0)) {
    return absl::InvalidArgumentError("config: MXFP4 experts need hidden_size and intermediate_size divisible by 32");
  }
  if (!quantization_config.quant_method.empty() && !experts_mxfp4()) {
    return absl::InvalidArgumentError(absl::StrCat("config: unsupported quant_method \"",
                                                   quantization_config.quant_method, "\""));
  }
  if (has_rope_scaling && rope_scaling.rope_type != "yarn") {
    return absl::InvalidArgumentError(absl::StrCat("config: unsupported rope_type \"", rope_scaling.rope_type, "\""));
  }
  if (!(rms_norm_eps > 0) || !(rope_theta > 1) || !(swiglu_limit > 0)) {
    return absl::InvalidArgumentError("config: rms_norm_eps, rope_theta and swiglu_limit must be positive");
  }
  if (tie_word_embeddings) return absl::InvalidArgumentError("config: tied embeddings are not gpt-oss");
  return absl::OkStatus();
}

std::string ModelConfig::ToJson() const {
  json j;
  j["architectures"] = architectures;
  j["model_type"] = model_type;
  j["num_hidden_layers"] = num_hidden_layers;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["num_local_experts"] = num_local_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["experts_per_token"] = num_experts_per_tok;
  j["vocab_size"] = vocab_size;
  j["sliding_window"] = sliding_window;
  j["max_position_embeddings"] = max_position_embeddings;
  j["initial_context_length"] = initial_context_length;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["swiglu_limit"] = swiglu_limit;
  j["attention_bias"] = attention_bias;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = hidden_act;
  j["eos_token_id"] = eos_token_id;
  j["pad_token_id"] = pad_token_id;
  j["router_aux_loss_coef"] = router_aux_loss_coef;
  j["output_router_logits"] = false;
  j["use_cache"] = true;
  j["initializer_range"] = 0.02;
  if (has_rope_scaling) {
    j["rope_scaling"] = {{"rope_type", rope_scaling.rope_type},
                         {"factor", rope_scaling.factor},
                         {"beta_fast", rope_scaling.beta_fast},
                         {"beta_slow", rope_scaling.beta_slow},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
                         {"truncate", rope_scaling.truncate}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  json types = json::array();
  for (LayerType t : layer_types) {
    types.push_back(t == LayerType::kSlidingAttention ? "sliding_attention" : "full_attention");
  }
  j["layer_types"] = types;
  if (!quantization_config.quant_method.empty()) {
    j["quantization_config"] = {{"quant_method", quantization_config.quant_method},
                                {"modules_to_not_convert", quantization_config.modules_to_not_convert}};
  }
  return j.dump(2) + "\n";
}

// Appends the ids of an "eos_token_id" value (a number, a list of numbers or
// null) that are not there yet.
absl::Status AddEosIds(const json& v, const std::string& origin, std::vector<int64_t>* ids) {
  if (v.is_null()) return absl::OkStatus();
  const json one = json::array({v});
  const json& list = v.is_array() ? v : one;
  const bool ok = std::all_of(list.begin(), list.end(), [](const json& e) { return e.is_number_integer(); });
  if (ok) {
    for (const json& e : list) {
      if (std::find(ids->begin(), ids->end(), e.get<int64_t>()) == ids->end()) ids->push_back(e.get<int64_t>());
    }
  }
  if (!ok) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"eos_token_id\" must be a token id or a list of them"));
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& origin) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": top level is not an object"));
  ModelConfig c;
  RETURN_IF_ERROR(Read(j, "model_type", origin, &c.model_type));
  if (c.model_type != "gpt_oss") {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": model_type is \"", c.model_type, "\", expected \"gpt_oss\""));
  }
  RETURN_IF_ERROR(Read(j, "num_hidden_layers", origin, &c.num_hidden_layers, true));
  RETURN_IF_ERROR(Read(j, "hidden_size", origin, &c.hidden_size, true));
  RETURN_IF_ERROR(Read(j, "intermediate_size", origin, &c.intermediate_size, true));
  RETURN_IF_ERROR(Read(j, "num_attention_heads", origin, &c.num_attention_heads, true));
  RETURN_IF_ERROR(Read(j, "num_key_value_heads", origin, &c.num_key_value_heads, true));
  RETURN_IF_ERROR(Read(j, "head_dim", origin, &c.head_dim));
  RETURN_IF_ERROR(Read(j, "num_local_experts", origin, &c.num_local_experts, true));
  RETURN_IF_ERROR(Read(j, "experts_per_token", origin, &c.num_experts_per_tok));
  RETURN_IF_ERROR(Read(j, "num_experts_per_tok", origin, &c.num_experts_per_tok));
  RETURN_IF_ERROR(Read(j, "vocab_size", origin, &c.vocab_size, true));
  RETURN_IF_ERROR(Read(j, "sliding_window", origin, &c.sliding_window));
  RETURN_IF_ERROR(Read(j, "max_position_embeddings", origin, &c.max_position_embeddings));
  RETURN_IF_ERROR(Read(j, "initial_context_length", origin, &c.initial_context_length));
  RETURN_IF_ERROR(Read(j, "rope_theta", origin, &c.rope_theta));
  RETURN_IF_ERROR(Read(j, "rms_norm_eps", origin, &c.rms_norm_eps));
  RETURN_IF_ERROR(Read(j, "swiglu_limit", origin, &c.swiglu_limit));
  RETURN_IF_ERROR(Read(j, "swiglu_alpha", origin, &c.swiglu_alpha));
  RETURN_IF_ERROR(Read(j, "attention_bias", origin, &c.attention_bias));
  RETURN_IF_ERROR(Read(j, "tie_word_embeddings", origin, &c.tie_word_embeddings));
  RETURN_IF_ERROR(Read(j, "hidden_act", origin, &c.hidden_act));
  RETURN_IF_ERROR(Read(j, "pad_token_id", origin, &c.pad_token_id));
  RETURN_IF_ERROR(Read(j, "router_aux_loss_coef", origin, &c.router_aux_loss_coef));
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    c.eos_token_ids.clear();
    RETURN_IF_ERROR(AddEosIds(*it, origin, &c.eos_token_ids));
    if (!c.eos_token_ids.empty()) c.eos_token_id = c.eos_token_ids[0];
  } else {
    c.eos_token_ids = {c.eos_token_id};
  }
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"architectures\" is not an array"));
    c.architectures.clear();
    for (const auto& a : *it) {
      if (!a.is_string()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"architectures\" holds a non-string"));
      c.architectures.push_back(a.get<std::string>());
    }
  }

  c.has_rope_scaling = false;
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"rope_scaling\" is not an object"));
    c.has_rope_scaling = true;
    const std::string o = origin + " rope_scaling";
    RETURN_IF_ERROR(Read(*it, "rope_type", o, &c.rope_scaling.rope_type));
    RETURN_IF_ERROR(Read(*it, "type", o, &c.rope_scaling.rope_type));
    RETURN_IF_ERROR(Read(*it, "factor", o, &c.rope_scaling.factor, true));
    RETURN_IF_ERROR(Read(*it, "beta_fast", o, &c.rope_scaling.beta_fast));
    RETURN_IF_ERROR(Read(*it, "beta_slow", o, &c.rope_scaling.beta_slow));
    c.rope_scaling.original_max_position_embeddings = c.initial_context_length;
    RETURN_IF_ERROR(Read(*it, "original_max_position_embeddings", o,
                         &c.rope_scaling.original_max_position_embeddings));
    RETURN_IF_ERROR(Read(*it, "truncate", o, &c.rope_scaling.truncate));
    if (!(c.rope_scaling.factor > 0) || !(c.rope_scaling.beta_fast > 0) || !(c.rope_scaling.beta_slow > 0) ||
        c.rope_scaling.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(o, ": factor, betas and original context must be positive"));
    }
  }

  if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"layer_types\" is not an array"));
    for (const auto& t : *it) {
      if (t == "sliding_attention") c.layer_types.push_back(LayerType::kSlidingAttention);
      else if (t == "full_attention") c.layer_types.push_back(LayerType::kFullAttention);
      else return absl::InvalidArgumentError(absl::StrCat(origin, ": unknown layer type ", t.dump()));
    }
  } else {
    // gpt-oss default: even layers slide, odd layers attend fully.
    for (int64_t i = 0; i < c.num_hidden_layers && i < (int64_t{1} << 20); ++i) {
      c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
    }
  }

  if (auto it = j.find("quantization_config"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(origin, ": \"quantization_config\" is not an object"));
    RETURN_IF_ERROR(Read(*it, "quant_method", origin + " quantization_config", &c.quantization_config.quant_method, true));
    if (auto m = it->find("modules_to_not_convert"); m != it->end() && m->is_array()) {
      for (const auto& s : *m) {
        if (s.is_string()) c.quantization_config.modules_to_not_convert.push_back(s.get<std::string>());
      }
    }
  }
  absl::Status st = c.Validate();
  if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(origin, ": ", st.message()));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(ss.str(), path));
  const std::string gen_path = model_dir + "/generation_config.json";
  if (std::ifstream gen{gen_path}) {
    std::stringstream gs;
    gs << gen.rdbuf();
    const json g = json::parse(gs.str(), nullptr, /*allow_exceptions=*/false);
    if (g.is_discarded() || !g.is_object()) return absl::InvalidArgumentError(absl::StrCat(gen_path, ": not a JSON object"));
    if (auto it = g.find("eos_token_id"); it != g.end()) RETURN_IF_ERROR(AddEosIds(*it, gen_path, &c.eos_token_ids));
  }
  return c;
}

}  // namespace moeserve
