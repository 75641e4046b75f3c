#include "tools/lora_gen.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/dtype.h"
#include "engine/safetensors.h"
#include "tools/checkpoint_gen.h"
#include "nlohmann/json.hpp"

namespace moeserve {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct OutTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// One safetensors file from f32 values stored as `dtype`.
absl::Status WriteSafetensors(const std::string& path, const std::vector<OutTensor>& tensors, DType dtype) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  int64_t off = 0;
  const int64_t esz = static_cast<int64_t>(DTypeSize(dtype));
  for (const OutTensor& t : tensors) {
    const int64_t n = static_cast<int64_t>(t.values.size()) * esz;
    header[t.name] = {{"dtype", DTypeName(dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string hs = header.dump();
  while (hs.size() % 8 != 0) hs.push_back(' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  const uint64_t len = hs.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  std::vector<uint8_t> buf;
  for (const OutTensor& t : tensors) {
    buf.resize(t.values.size() * esz);
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (dtype == DType::kF32) {
        std::memcpy(&buf[i * 4], &t.values[i], 4);
      } else {
        const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(t.values[i]) : F32ToF16(t.values[i]);
        std::memcpy(&buf[i * 2], &h, 2);
      }
    }
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("writing ", path, " failed (disk full?)"));
  return absl::OkStatus();
}

// ---- adapter_config.json semantics, as the merge reads them ----

struct MergeConfig {
  int64_t r = 8;
  double alpha = 8;
  bool rslora = false;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;

  // PEFT: a pattern key applies to a module whose name is it or ends in "." + it.
  static bool Matches(const std::string& key, const std::string& module) {
    return std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"));
  }
  double Scale(const std::string& module, const std::string& param) const {
    int64_t rank = r;
    double a = alpha;
    for (const auto& [k, v] : rank_pattern)
      if (Matches(k, module) || Matches(k, param)) {
        rank = v;
        break;
      }
    for (const auto& [k, v] : alpha_pattern)
      if (Matches(k, module) || Matches(k, param)) {
        a = v;
        break;
      }
    return rslora ? a / std::sqrt(static_cast<double>(rank)) : a / static_cast<double>(rank);
  }
};

absl::StatusOr<MergeConfig> ReadMergeConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(ss.str(), nullptr, false);  // patterns in file order
  if (j.is_discarded() || !j.is_object() || !j.contains("r") || !j["r"].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a LoRA adapter config"));
  }
  MergeConfig c;
  c.r = j["r"].get<int64_t>();
  c.alpha = j.value("lora_alpha", static_cast<double>(c.r));
  c.rslora = j.value("use_rslora", false);
  if (j.contains("rank_pattern") && j["rank_pattern"].is_object())
    for (const auto& [k, v] : j["rank_pattern"].items()) c.rank_pattern.emplace_back(k, v.get<int64_t>());
  if (j.contains("alpha_pattern") && j["alpha_pattern"].is_object())
    for (const auto& [k, v] : j["alpha_pattern"].items()) c.alpha_pattern.emplace_back(k, v.get<double>());
  return c;
}

std::vector<double> ToDouble(const TensorView& t) {
  std::vector<float> f(t.numel());
  ConvertToF32(t.dtype, t.data, f.data(), f.size());
  return std::vector<double>(f.begin(), f.end());
}

}  // namespace

absl::Status GenerateLoraAdapter(const std::string& out_dir, const ModelConfig& c, const LoraGenOptions& o) {
  if (o.layout != "attention" && o.layout != "per-expert" && o.layout != "fused") {
    return absl::InvalidArgumentError(absl::StrCat("LoRA layout \"", o.layout, "\": attention | per-expert | fused"));
  }
  DType dtype;
  if (!ParseDType(o.dtype == "bf16" ? "BF16" : o.dtype == "f16" ? "F16" : o.dtype == "f32" ? "F32" : "?", &dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA dtype \"", o.dtype, "\": bf16 | f16 | f32"));
  }
  if (o.rank <= 0 || o.rank > 4096) return absl::InvalidArgumentError("LoRA rank must be in [1, 4096]");
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts;
  std::vector<OutTensor> tensors;
  uint64_t stream = 0;
  // lora_A uniform with unit-RMS outputs for unit-RMS inputs; lora_B sized so
  // that the update's RMS is ~0.3 whatever the rank and scale.
  auto fill = [&](std::vector<float>& v, double half_range) {
    const uint64_t base = Mix(o.seed ^ Mix(++stream));
    for (size_t i = 0; i < v.size(); ++i) {
      const double u = static_cast<double>(Mix(base + i) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
      v[i] = static_cast<float>(half_range * u);
    }
  };
  auto scale_of = [&](int64_t r, double alpha) { return o.rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r; };
  // A pair for `n` experts stacked as PEFT stores them (n = 1: a Linear).
  auto add_pair = [&](const std::string& module, int64_t in, int64_t out, int64_t r, double alpha, int64_t n) {
    OutTensor a{module + ".lora_A.weight", {n * r, in}, std::vector<float>(static_cast<size_t>(n * r * in))};
    OutTensor b{module + ".lora_B.weight", {out, n * r}, std::vector<float>(static_cast<size_t>(out * n * r))};
    fill(a.values, std::sqrt(3.0 / static_cast<double>(in)));
    fill(b.values, 0.3 * std::sqrt(3.0) / (scale_of(r, alpha) * std::sqrt(static_cast<double>(r))));
    tensors.push_back(std::move(a));
    tensors.push_back(std::move(b));
  };
  const int64_t r_o = o.patterns ? std::max<int64_t>(1, o.rank / 2) : o.rank;
  const double alpha_o = o.patterns ? o.alpha * 3 : o.alpha;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("base_model.model.model.layers.", l, ".");
    add_pair(p + "self_attn.q_proj", H, c.q_dim(), o.rank, o.alpha, 1);
    add_pair(p + "self_attn.k_proj", H, c.kv_dim(), o.rank, o.alpha, 1);
    add_pair(p + "self_attn.v_proj", H, c.kv_dim(), o.rank, o.alpha, 1);
    add_pair(p + "self_attn.o_proj", c.q_dim(), H, r_o, alpha_o, 1);
    if (o.router) add_pair(p + "mlp.router", H, E, o.rank, o.alpha, 1);
    if (o.layout == "per-expert") {
      for (int64_t e = 0; e < E; ++e) {
        if (e == o.skip_expert) continue;
        add_pair(absl::StrCat(p, "mlp.experts.gate_up_projs.", e), H, 2 * I, o.rank, o.alpha, 1);
        add_pair(absl::StrCat(p, "mlp.experts.down_projs.", e), I, H, o.rank, o.alpha, 1);
      }
    } else if (o.layout == "fused") {
      // PEFT wraps the parameters in target_parameters order, each around the
      // last: the first (gate_up_proj) ends up under base_layer.
      add_pair(p + "mlp.experts.base_layer", H, 2 * I, o.rank, o.alpha, E);
      add_pair(p + "mlp.experts", I, H, o.rank, o.alpha, E);
    }
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  RETURN_IF_ERROR(WriteSafetensors(out_dir + "/adapter_model.safetensors", tensors, dtype));

  json targets = json::array({"q_proj", "k_proj", "v_proj", "o_proj"});
  if (o.router) targets.push_back("router");
  if (o.layout == "per-expert") {
    targets.push_back("gate_up_projs.*");  // illustrative: the tensors are the truth
    targets.push_back("down_projs.*");
  }
  json cfg = {{"peft_type", "LORA"},
              {"task_type", "CAUSAL_LM"},
              {"base_model_name_or_path", "openai/gpt-oss (moeserve gen-checkpoint)"},
              {"r", o.rank},
              {"lora_alpha", o.alpha},
              {"lora_dropout", 0.0},
              {"use_rslora", o.rslora},
              {"use_dora", false},
              {"bias", "none"},
              {"fan_in_fan_out", false},
              {"modules_to_save", nullptr},
              {"target_modules", targets},
              {"target_parameters", o.layout == "fused" ? json::array({"mlp.experts.gate_up_proj",
                                                                      "mlp.experts.down_proj"})
                                                        : json(nullptr)},
              {"rank_pattern", o.patterns ? json{{"o_proj", r_o}} : json::object()},
              {"alpha_pattern", o.patterns ? json{{"o_proj", alpha_o}} : json::object()},
              {"inference_mode", true}};
  std::ofstream(out_dir + "/adapter_config.json") << cfg.dump(2) << "\n";
  return absl::OkStatus();
}

absl::Status MergeLoraIntoCheckpoint(const std::string& base_dir, const std::string& adapter_dir,
                                     const std::string& out_dir) {
  ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(base_dir));
  ASSIGN_OR_RETURN(auto ck, Checkpoint::Open(base_dir));
  ASSIGN_OR_RETURN(const MergeConfig mc, ReadMergeConfig(adapter_dir + "/adapter_config.json"));
  ASSIGN_OR_RETURN(auto ad, SafetensorsFile::Open(adapter_dir + "/adapter_model.safetensors"));
  const int64_t H = c.hidden_size, I = c.intermediate_size, E = c.num_local_experts;

  // The base tensors in f32 (double while merging), experts dense [E, in, out].
  std::map<std::string, std::vector<double>> w;
  std::map<std::string, std::vector<int64_t>> shapes;
  static const double kE2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (const auto& file : ck->files()) {
    for (const auto& [name, t] : file->tensors()) {
      if (absl::EndsWith(name, "_scales")) continue;
      if (absl::EndsWith(name, "_blocks")) {  // MXFP4 [E, rows, cols/32, 16] -> dense [E, cols, rows]
        const std::string base = name.substr(0, name.size() - 7);
        const TensorView* s = ck->Find(base + "_scales");
        if (!s) return absl::DataLossError(absl::StrCat("no scales for ", name));
        const int64_t rows = t.shape[1], cols = t.shape[2] * 32;
        std::vector<double> d(static_cast<size_t>(E * rows * cols));
        const uint8_t* blocks = static_cast<const uint8_t*>(t.data);
        const uint8_t* scales = static_cast<const uint8_t*>(s->data);
        for (int64_t e = 0; e < E; ++e)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < cols; ++i) {
              const int64_t g = (e * rows + r) * (cols / 32) + i / 32;
              const uint8_t byte = blocks[g * 16 + (i % 32) / 2];
              const int code = i % 2 == 0 ? (byte & 15) : (byte >> 4);
              d[(e * cols + i) * rows + r] = std::ldexp(kE2M1[code], scales[g] - 127);
            }
        w[base] = std::move(d);
        shapes[base] = {E, cols, rows};
        continue;
      }
      w[name] = ToDouble(t);
      shapes[name] = t.shape;
    }
  }

  // Adapter pairs by module.
  std::map<std::string, std::pair<const TensorView*, const TensorView*>> pairs;
  for (const auto& [name, t] : ad->tensors()) {
    const bool is_a = absl::EndsWith(name, ".lora_A.weight");
    if (!is_a && !absl::EndsWith(name, ".lora_B.weight")) {
      return absl::InvalidArgumentError(absl::StrCat("merge: unexpected tensor ", name));
    }
    auto& p = pairs[name.substr(0, name.size() - 14)];
    (is_a ? p.first : p.second) = &t;
  }
  const std::regex layer_re("(?:base_model\\.model\\.)?(model\\.layers\\.(\\d+)\\.)(.*)");
  for (const auto& [module, p] : pairs) {
    if (!p.first || !p.second) return absl::InvalidArgumentError(absl::StrCat("merge: unpaired ", module));
    std::smatch m;
    if (!std::regex_match(module, m, layer_re)) return absl::InvalidArgumentError(absl::StrCat("merge: ", module));
    const std::string prefix = m[1], rest = m[3];
    const std::vector<double> A = ToDouble(*p.first), B = ToDouble(*p.second);
    const int64_t ar = p.first->shape[0], in = p.first->shape[1], out = p.second->shape[0];
    const std::string module_name = prefix + rest;
    std::smatch em;
    if (rest.rfind("self_attn.", 0) == 0 || rest == "mlp.router") {
      // lora.Linear: dW = scale B A, added to weight [out, in].
      const double s = mc.Scale(module_name, module_name);
      std::vector<double>& W = w[prefix + rest + ".weight"];
      if (static_cast<int64_t>(W.size()) != out * in) return absl::InvalidArgumentError("merge: shape " + module);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double d = 0;
          for (int64_t k = 0; k < ar; ++k) d += B[o * ar + k] * A[k * in + i];
          W[o * in + i] += s * d;
        }
    } else if (std::regex_match(rest, em, std::regex("mlp\\.experts\\.(gate_up|down)_projs\\.(\\d+)"))) {
      // Unsloth's per-expert Linear(in, out): its weight is the expert's
      // [in, out] slice transposed.
      const std::string param = prefix + "mlp.experts." + em[1].str() + "_proj";
      const int64_t e = std::stoll(em[2]);
      const double s = mc.Scale(module_name, module_name);
      std::vector<double>& W = w[param];
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double d = 0;
          for (int64_t k = 0; k < ar; ++k) d += B[o * ar + k] * A[k * in + i];
          W[(e * in + i) * out + o] += s * d;
        }
    } else if (std::regex_match(rest, std::regex("mlp\\.experts(\\.base_layer)*"))) {
      // ParamWrapper on [E, in, out]: A [E r, in] -> (E, r, in); B [out, r E] -> (out, r, E);
      // delta = einsum("o r e, e r i -> e i o", B, A) * scale.
      const bool gate_up = out == 2 * I && in == H;
      const std::string param = prefix + "mlp.experts." + (gate_up ? "gate_up_proj" : "down_proj");
      const int64_t r = ar / E;
      const double s = mc.Scale(module_name, param);
      std::vector<double>& W = w[param];
      for (int64_t e = 0; e < E; ++e)
        for (int64_t i = 0; i < in; ++i)
          for (int64_t o = 0; o < out; ++o) {
            double d = 0;
            for (int64_t k = 0; k < r; ++k) d += B[o * (r * E) + k * E + e] * A[(e * r + k) * in + i];
            W[(e * in + i) * out + o] += s * d;
          }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("merge: unknown target ", module));
    }
  }

  std::vector<OutTensor> out;
  for (auto& [name, v] : w) out.push_back(OutTensor{name, shapes[name], std::vector<float>(v.begin(), v.end())});
  RETURN_IF_ERROR(PrepareCheckpointDir(out_dir));
  std::error_code ec;
  RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", out, DType::kF32));
  c.quantization_config = {};
  std::ofstream(out_dir + "/config.json") << c.ToJson();
  for (const char* extra : {"generation_config.json", "tokenizer.json"}) {
    if (fs::exists(base_dir + "/" + extra)) {
      fs::copy_file(base_dir + "/" + extra, out_dir + "/" + extra, fs::copy_options::overwrite_existing, ec);
    }
  }
  return absl::OkStatus();
}

}  // namespace moeserve
