#include "engine/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace moeserve {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxConfigBytes = 1 << 20;

// adapter_config.json as far as it changes the math or must be refused.
struct PeftConfig {
  int64_t r = 8;
  double alpha = 8;
  bool rslora = false;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
};

absl::Status ConfigError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

bool Truthy(const json& j) { return !j.is_null() && !(j.is_boolean() && !j.get<bool>()); }

// A rank/alpha pattern that std::regex (a backtracking matcher) could take
// exponential time or deep recursion on: longer than 256 characters, or a
// group repeated by `*`, `+` or `{...}` that itself holds a quantifier or an
// alternation, as in (a+)+ or (a|aa)*. PEFT's keys are module names or
// simple expressions such as `layers\.[0-9]+\.self_attn\.o_proj`.
absl::Status CheckPatternCost(const std::string& key) {
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("adapter_config.json: pattern \"", key.substr(0, 64), "\" ", why));
  };
  if (key.size() > 256) return refuse("is longer than 256 characters");
  std::vector<bool> risky = {false};  // per open group: it holds a quantifier or `|`
  bool in_class = false;
  bool after_risky_group = false;  // the last atom was a group that holds one
  for (size_t i = 0; i < key.size(); ++i) {
    const char c = key[i];
    bool closed_risky_group = false;
    if (in_class) {
      if (c == '\\') ++i;
      else if (c == ']') in_class = false;
      continue;
    }
    switch (c) {
      case '\\': ++i; break;
      case '[': in_class = true; break;
      case '(': risky.push_back(false); break;
      case ')':
        if (risky.size() > 1) {
          closed_risky_group = risky.back();
          risky.pop_back();
          if (closed_risky_group) risky.back() = true;
        }
        break;
      case '*':
      case '+':
      case '{':
        if (after_risky_group) {
          return refuse("repeats a group that holds a quantifier or an alternation (slow to match); "
                        "write it without the nested repetition");
        }
        risky.back() = true;
        break;
      case '|':
      case '?': risky.back() = true; break;
      default: break;
    }
    after_risky_group = closed_risky_group;
  }
  return absl::OkStatus();
}

absl::StatusOr<PeftConfig> ReadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path, " (is this a PEFT adapter directory?)"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > kMaxConfigBytes) return ConfigError(path, "over 1 MB");
  // Ordered: the first rank/alpha pattern key that matches decides, in the
  // file's order (PEFT iterates the dict it loaded).
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return ConfigError(path, "not a JSON object");
  PeftConfig c;
  if (j.contains("peft_type") && !(j["peft_type"].is_string() && j["peft_type"].get<std::string>() == "LORA")) {
    return ConfigError(path, absl::StrCat("peft_type ", j["peft_type"].dump(), " is not LORA"));
  }
  if (j.contains("use_dora") && Truthy(j["use_dora"])) return ConfigError(path, "DoRA (use_dora) is not supported");
  if (j.contains("lora_bias") && Truthy(j["lora_bias"])) return ConfigError(path, "lora_bias is not supported");
  if (j.contains("fan_in_fan_out") && Truthy(j["fan_in_fan_out"])) {
    return ConfigError(path, "fan_in_fan_out (Conv1D layouts) is not supported");
  }
  if (j.contains("bias") && !(j["bias"].is_string() && j["bias"].get<std::string>() == "none")) {
    return ConfigError(path, absl::StrCat("bias ", j["bias"].dump(), ": trained base biases are not supported"));
  }
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() &&
      !(j["modules_to_save"].is_array() && j["modules_to_save"].empty())) {
    return ConfigError(path, absl::StrCat("modules_to_save ", j["modules_to_save"].dump(),
                                          ": fully trained modules are not supported (merge them into the base)"));
  }
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0) {
    return ConfigError(path, "r must be a positive integer");
  }
  c.r = j["r"].get<int64_t>();
  c.alpha = static_cast<double>(c.r);
  if (j.contains("lora_alpha")) {
    if (!j["lora_alpha"].is_number()) return ConfigError(path, "lora_alpha must be a number");
    c.alpha = j["lora_alpha"].get<double>();
  }
  if (j.contains("use_rslora")) {
    if (!j["use_rslora"].is_boolean()) return ConfigError(path, "use_rslora must be true or false");
    c.rslora = j["use_rslora"].get<bool>();
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_object()) return ConfigError(path, absl::StrCat(key, " must be an object"));
    for (const auto& [k, v] : j[key].items()) {
      RETURN_IF_ERROR(CheckPatternCost(k));  // once per key, before any match
      if (std::string(key) == "rank_pattern") {
        if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
          return ConfigError(path, absl::StrCat("rank_pattern[\"", k, "\"] must be a positive integer"));
        }
        c.rank_pattern.emplace_back(k, v.get<int64_t>());
      } else {
        if (!v.is_number()) return ConfigError(path, absl::StrCat("alpha_pattern[\"", k, "\"] must be a number"));
        c.alpha_pattern.emplace_back(k, v.get<double>());
      }
    }
  }
  if (j.contains("target_parameters") && !j["target_parameters"].is_null()) {
    if (!j["target_parameters"].is_array()) return ConfigError(path, "target_parameters must be a list");
    for (const json& t : j["target_parameters"]) {
      const std::string s = t.is_string() ? t.get<std::string>() : t.dump();
      const bool known = t.is_string() && (absl::EndsWith(s, "experts.gate_up_proj") ||
                                           absl::EndsWith(s, "experts.down_proj") || absl::EndsWith(s, "router.weight"));
      if (!known) {
        return ConfigError(path, absl::StrCat("target_parameters entry ", t.dump(),
                                              ": gpt-oss parameters that take LoRA are mlp.experts.gate_up_proj, "
                                              "mlp.experts.down_proj and mlp.router.weight"));
      }
    }
  }
  return c;
}

// PEFT's pattern match: `key` matches a module name that is it, or ends in
// "." followed by it (key a regular expression; a key with no metacharacter
// is compared as text).
absl::StatusOr<bool> PatternMatches(const std::string& key, const std::string& module) {
  if (key.find_first_of("\\^$.|?*+()[]{}") == std::string::npos) {
    return module == key || (module.size() > key.size() && absl::EndsWith(module, key) &&
                             module[module.size() - key.size() - 1] == '.');
  }
  try {
    return std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"));
  } catch (const std::regex_error&) {
    return absl::InvalidArgumentError(absl::StrCat("adapter_config.json: pattern \"", key, "\" is not a valid regex"));
  }
}

// The value of the first pattern key matching the module (or its parameter), if any.
template <typename T>
absl::Status ApplyPattern(const std::vector<std::pair<std::string, T>>& pattern, const std::string& module,
                          const std::string& param, T* value) {
  for (const auto& [key, v] : pattern) {
    ASSIGN_OR_RETURN(const bool hit, PatternMatches(key, module));
    ASSIGN_OR_RETURN(const bool hit2, PatternMatches(key, param));
    if (hit || hit2) {
      *value = v;
      break;
    }
  }
  return absl::OkStatus();
}

// "" or ".base_layer" repeated: how deep PEFT nested a ParamWrapper.
bool OnlyBaseLayers(absl::string_view rest) {
  while (absl::ConsumePrefix(&rest, ".base_layer")) {
  }
  return rest.empty();
}

// One parsed tensor name.
struct Key {
  int64_t layer = -1;
  std::string module;  // after "layers.N.", before ".lora_A.weight"
  bool is_a = false;
};

constexpr absl::string_view kPrefixes[] = {"base_model.model.model.layers.", "base_model.model.layers.",
                                          "model.layers.", "layers."};

absl::StatusOr<Key> ParseKey(const std::string& file, const std::string& name) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", name, ": ", why));
  };
  if (name.find("lora_magnitude_vector") != std::string::npos) return bad("DoRA magnitudes are not supported");
  if (name.find("lora_embedding_") != std::string::npos) return bad("LoRA on embeddings is not supported");
  absl::string_view rest = name;
  bool prefixed = false;
  for (absl::string_view p : kPrefixes) {
    if (absl::ConsumePrefix(&rest, p)) {
      prefixed = true;
      break;
    }
  }
  Key k;
  if (absl::EndsWith(rest, ".lora_A.weight")) {
    k.is_a = true;
    rest.remove_suffix(absl::string_view(".lora_A.weight").size());
  } else if (absl::EndsWith(rest, ".lora_B.weight")) {
    rest.remove_suffix(absl::string_view(".lora_B.weight").size());
  } else if (absl::EndsWith(rest, ".lora_B.bias")) {
    return bad("LoRA biases (lora_bias) are not supported");
  } else {
    return bad("not a LoRA factor (expected a name ending in .lora_A.weight or .lora_B.weight)");
  }
  const size_t dot = rest.find('.');
  if (!prefixed || dot == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dot), &k.layer)) {
    return bad(
        "unknown LoRA target: gpt-oss takes LoRA on model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.router "
        "and the experts (model.layers.N.mlp.experts...)");
  }
  k.module = std::string(rest.substr(dot + 1));
  return k;
}

// Where a module's factors go.
struct Site {
  LoraTarget target;
  int64_t expert = -1;  // per-expert layout: the expert; -1 for dense targets and fused experts
  bool fused = false;
};

struct Pair {
  const TensorView* a = nullptr;
  const TensorView* b = nullptr;
};

// Collects every expert's factors of one (layer, target) in f32.
struct Accumulator {
  int64_t experts = 0, in = 0, out = 0;
  std::vector<int64_t> rank;             // [experts], 0 where absent
  std::vector<float> scale;              // [experts]
  std::vector<std::vector<float>> a, b;  // per expert: [rank, in], [out, rank]
  bool all_bf16 = true;
};

}  // namespace

const char* LoraTargetName(LoraTarget t) {
  static const char* kNames[] = {"q_proj", "k_proj", "v_proj", "o_proj", "router", "experts.gate_up", "experts.down"};
  return kNames[static_cast<int>(t)];
}

namespace {
// Expert e's [rows, cols] matrix of a stack of them.
Matrix StackedMatrix(const std::vector<uint8_t>& bytes, DType dtype, int64_t e, int64_t rows, int64_t cols) {
  Matrix m;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  m.data = bytes.data() + static_cast<size_t>(e) * rows * cols * DTypeSize(dtype);
  return m;
}
}  // namespace

Matrix LoraFactors::A(int64_t e) const { return StackedMatrix(a, dtype, e, rank, in); }
Matrix LoraFactors::B(int64_t e) const { return StackedMatrix(b, dtype, e, out, rank); }

size_t LoraAdapter::bytes() const {
  size_t n = 0;
  for (const auto& layer : layers)
    for (const LoraFactors& f : layer) n += f.bytes();
  return n;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> LoadLoraAdapter(const std::string& dir, const ModelConfig& c,
                                                                   const LoraLoadOptions& options) {
  namespace fs = std::filesystem;
  const std::string config_path = dir + "/adapter_config.json";
  ASSIGN_OR_RETURN(const PeftConfig pc, ReadConfig(config_path));
  const std::string path = dir + "/adapter_model.safetensors";
  if (!fs::exists(path)) {
    if (fs::exists(dir + "/adapter_model.bin")) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": adapter_model.bin (pickle) is not read; save the adapter "
                                                          "with safe_serialization (adapter_model.safetensors)"));
    }
    return absl::NotFoundError(absl::StrCat(dir, ": no adapter_model.safetensors"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));

  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts;
  auto dims = [&](LoraTarget t) -> std::pair<int64_t, int64_t> {  // (in, out)
    switch (t) {
      case LoraTarget::kQ: return {H, c.q_dim()};
      case LoraTarget::kK:
      case LoraTarget::kV: return {H, c.kv_dim()};
      case LoraTarget::kO: return {c.q_dim(), H};
      case LoraTarget::kRouter: return {H, E};
      case LoraTarget::kGateUp: return {H, 2 * I};
      case LoraTarget::kDown: return {I, H};
    }
    return {0, 0};
  };

  // Pair every lora_A with its lora_B by module.
  std::map<std::pair<int64_t, std::string>, Pair> pairs;
  for (const auto& [name, view] : file->tensors()) {
    ASSIGN_OR_RETURN(const Key k, ParseKey(path, name));
    if (k.layer < 0 || k.layer >= c.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, ": layer ", k.layer, " of a model with ",
                                                     c.num_hidden_layers, " layers (another base model?)"));
    }
    if (view.dtype == DType::kU8 || view.shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " is ", DTypeName(view.dtype), " ",
                                                     view.ShapeString(), ", expected a 2-D float tensor"));
    }
    Pair& p = pairs[{k.layer, k.module}];
    (k.is_a ? p.a : p.b) = &view;
  }
  if (pairs.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": the adapter holds no LoRA factors"));

  std::map<std::pair<int64_t, int>, Accumulator> acc;
  for (const auto& [where, p] : pairs) {
    const auto& [layer, module] = where;
    const TensorView* any = p.a ? p.a : p.b;
    auto bad = [&](const TensorView* t, const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t->name, " ", t->ShapeString(), ": ", why));
    };
    // The module's site: by name, then (PEFT's ParamWrapper) by shape.
    Site site{LoraTarget::kQ};
    bool by_shape = false;
    absl::string_view m = module;
    if (m == "self_attn.q_proj") site.target = LoraTarget::kQ;
    else if (m == "self_attn.k_proj") site.target = LoraTarget::kK;
    else if (m == "self_attn.v_proj") site.target = LoraTarget::kV;
    else if (m == "self_attn.o_proj") site.target = LoraTarget::kO;
    else if (m == "mlp.router") site.target = LoraTarget::kRouter;
    else if (absl::ConsumePrefix(&m, "mlp.experts.gate_up_projs.") || absl::ConsumePrefix(&m, "mlp.experts.down_projs.")) {
      site.target = absl::StrContains(module, "gate_up_projs") ? LoraTarget::kGateUp : LoraTarget::kDown;
      if (!absl::SimpleAtoi(m, &site.expert) || site.expert < 0 || site.expert >= E) {
        return bad(any, absl::StrCat("expert index \"", m, "\" outside this model's ", E, " experts"));
      }
    } else if (m == "mlp.experts.gate_up_proj" || m == "mlp.experts.down_proj") {
      site.target = m == "mlp.experts.gate_up_proj" ? LoraTarget::kGateUp : LoraTarget::kDown;
      site.fused = true;
    } else if (absl::ConsumePrefix(&m, "mlp.experts") && OnlyBaseLayers(m)) {
      site.fused = by_shape = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", any->name, ": unknown LoRA target \"", module,
          "\" (gpt-oss takes LoRA on self_attn.{q,k,v,o}_proj, mlp.router, mlp.experts.gate_up_projs.N / "
          "down_projs.N, and the fused mlp.experts.gate_up_proj / down_proj)"));
    }
    if (!p.a || !p.b) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", any->name, " has no ", p.a ? "lora_B" : "lora_A", " partner"));
    }
    if (by_shape) {
      const int64_t out = p.b->shape[0], in = p.a->shape[1];
      const bool gate_up = out == 2 * I && in == H, down = out == H && in == I;
      if (gate_up == down) {
        return bad(p.b, gate_up ? "fits both experts.gate_up_proj and experts.down_proj"
                                : absl::StrCat("fits neither experts.gate_up_proj (lora_B [", 2 * I, ", r·", E,
                                               "]) nor experts.down_proj (lora_B [", H, ", r·", E, "]) of this model"));
      }
      site.target = gate_up ? LoraTarget::kGateUp : LoraTarget::kDown;
    }
    const auto [in, out] = dims(site.target);
    const int64_t n = site.fused ? E : 1;  // experts in this pair
    const int64_t a_rows = p.a->shape[0];
    if (p.a->shape[1] != in || a_rows % n != 0 || a_rows == 0) {
      return bad(p.a, absl::StrCat("lora_A of ", LoraTargetName(site.target), " must be [", n == 1 ? "r" : "r·E", ", ",
                                   in, "] for this model", n == 1 ? "" : absl::StrCat(" (E = ", E, ")"),
                                   " — is the adapter for another base model?"));
    }
    const int64_t r = a_rows / n;
    if (p.b->shape[0] != out || p.b->shape[1] != a_rows) {
      return bad(p.b, absl::StrCat("lora_B of ", LoraTargetName(site.target), " must be [", out, ", ", a_rows,
                                   "] to match its lora_A ", p.a->ShapeString(), " and this model"));
    }
    // Rank and alpha as PEFT assigns them to the module.
    const std::string module_name = absl::StrCat("model.layers.", layer, ".", module);
    const std::string param_name =
        site.fused ? absl::StrCat("model.layers.", layer, ".mlp.experts.",
                                  site.target == LoraTarget::kGateUp ? "gate_up_proj" : "down_proj")
                   : module_name;
    int64_t want_r = pc.r;
    double alpha = pc.alpha;
    RETURN_IF_ERROR(ApplyPattern(pc.rank_pattern, module_name, param_name, &want_r));
    RETURN_IF_ERROR(ApplyPattern(pc.alpha_pattern, module_name, param_name, &alpha));
    if (r != want_r) {
      return bad(p.a, absl::StrCat("rank ", r, ", but adapter_config.json gives this module r = ", want_r));
    }
    if (options.max_rank > 0 && r > options.max_rank) {
      return bad(p.a, absl::StrCat("rank ", r, " is over the server's --max-lora-rank ", options.max_rank));
    }
    const float scale = static_cast<float>(pc.rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);

    Accumulator& ac = acc[{layer, static_cast<int>(site.target)}];
    const int64_t experts = site.target == LoraTarget::kGateUp || site.target == LoraTarget::kDown ? E : 1;
    if (ac.experts == 0) {
      ac.experts = experts;
      ac.in = in;
      ac.out = out;
      ac.rank.assign(experts, 0);
      ac.scale.assign(experts, 0.0f);
      ac.a.resize(experts);
      ac.b.resize(experts);
    }
    ac.all_bf16 = ac.all_bf16 && p.a->dtype == DType::kBF16 && p.b->dtype == DType::kBF16;
    std::vector<float> fa(p.a->numel()), fb(p.b->numel());
    ConvertToF32(p.a->dtype, p.a->data, fa.data(), fa.size());
    ConvertToF32(p.b->dtype, p.b->data, fb.data(), fb.size());
    const int64_t first = site.fused ? 0 : std::max<int64_t>(site.expert, 0);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t e = first + j;
      if (ac.rank[e] != 0) {
        return bad(p.a, absl::StrCat("a second update for ", LoraTargetName(site.target),
                                     experts > 1 ? absl::StrCat(" of expert ", e) : "", " of layer ", layer));
      }
      ac.rank[e] = r;
      ac.scale[e] = scale;
      // A_e: rows e·r .. e·r + r - 1 of lora_A.
      ac.a[e].assign(fa.begin() + j * r * in, fa.begin() + (j + 1) * r * in);
      // B_e[o, k] = lora_B[o, k·n + j] (fused: rank-major, experts minor).
      ac.b[e].resize(static_cast<size_t>(out) * r);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < r; ++k) ac.b[e][o * r + k] = fb[o * (r * n) + k * n + j];
    }
  }

  auto adapter = std::make_shared<LoraAdapter>();
  adapter->dir = dir;
  adapter->layers.resize(c.num_hidden_layers);
  std::vector<bool> seen(kNumLoraTargets, false);
  for (auto& [where, ac] : acc) {
    const auto [layer, target] = where;
    LoraFactors& f = adapter->layers[layer][target];
    seen[target] = true;
    f.experts = ac.experts;
    f.in = ac.in;
    f.out = ac.out;
    f.rank = *std::max_element(ac.rank.begin(), ac.rank.end());
    f.scale = ac.scale;
    f.dtype = ac.all_bf16 ? DType::kBF16 : DType::kF32;
    f.active.assign(f.experts, 0);
    adapter->max_rank = std::max(adapter->max_rank, f.rank);
    const size_t esz = DTypeSize(f.dtype);
    f.a.assign(static_cast<size_t>(f.experts) * f.rank * f.in * esz, 0);
    f.b.assign(static_cast<size_t>(f.experts) * f.out * f.rank * esz, 0);
    auto put = [&](uint8_t* base, size_t i, float v) {
      if (f.dtype == DType::kBF16) {
        const uint16_t h = F32ToBf16(v);  // exact: the value came from BF16
        std::memcpy(base + i * 2, &h, 2);
      } else {
        std::memcpy(base + i * 4, &v, 4);
      }
    };
    for (int64_t e = 0; e < f.experts; ++e) {
      const int64_t r = ac.rank[e];
      if (r == 0) continue;
      f.active[e] = 1;
      uint8_t* a = f.a.data() + static_cast<size_t>(e) * f.rank * f.in * esz;
      uint8_t* b = f.b.data() + static_cast<size_t>(e) * f.out * f.rank * esz;
      for (int64_t k = 0; k < r; ++k)
        for (int64_t i = 0; i < f.in; ++i) put(a, k * f.in + i, ac.a[e][k * f.in + i]);
      for (int64_t o = 0; o < f.out; ++o)
        for (int64_t k = 0; k < r; ++k) put(b, o * f.rank + k, ac.b[e][o * r + k]);
    }
  }
  std::vector<std::string> parts;
  for (int t = 0; t < kNumLoraTargets; ++t)
    if (seen[t]) parts.push_back(LoraTargetName(static_cast<LoraTarget>(t)));
  adapter->summary = absl::StrJoin(parts, " ");
  return std::shared_ptr<const LoraAdapter>(std::move(adapter));
}

}  // namespace moeserve
