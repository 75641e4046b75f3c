#include "tools/checkpoint_gen.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/dtype.h"
#include "engine/thread_pool.h"
#include "base/harmony_tokens.h"
#include "nlohmann/json.hpp"

namespace moeserve {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Random fill kinds.
enum class Fill { kUniform, kMxfp4Blocks, kMxfp4Scales };

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  Fill fill = Fill::kUniform;
  float center = 0.0f, half_range = 1.0f;  // uniform in [center - hr, center + hr]
  uint8_t scale_base = 120;                // MXFP4 scales: base + {0, 1}
  bool transposed_dense_expert = false;    // informational
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  int64_t nbytes() const { return numel() * static_cast<int64_t>(DTypeSize(dtype)); }
};

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<TensorSpec> Specs(const CheckpointGenOptions& o) {
  const ModelConfig& c = o.config;
  const int64_t h = c.hidden_size, qd = c.q_dim(), kv = c.kv_dim(), e = c.num_local_experts,
                inter = c.intermediate_size, v = c.vocab_size;
  const DType dd = o.dense == "f32" ? DType::kF32 : DType::kBF16;
  auto lin = [&](std::string n, int64_t rows, int64_t cols) {
    return TensorSpec{std::move(n), dd, {rows, cols}, Fill::kUniform, 0.0f,
                      static_cast<float>(std::sqrt(3.0 / static_cast<double>(cols)))};
  };
  auto vec = [&](std::string n, std::vector<int64_t> shape, float center, float hr) {
    return TensorSpec{std::move(n), dd, std::move(shape), Fill::kUniform, center, hr};
  };
  std::vector<TensorSpec> s;
  s.push_back(vec("model.embed_tokens.weight", {v, h}, 0.0f, 1.0f));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    s.push_back(vec(p + "input_layernorm.weight", {h}, 1.0f, 0.2f));
    s.push_back(lin(p + "self_attn.q_proj.weight", qd, h));
    s.push_back(vec(p + "self_attn.q_proj.bias", {qd}, 0.0f, 0.1f));
    s.push_back(lin(p + "self_attn.k_proj.weight", kv, h));
    s.push_back(vec(p + "self_attn.k_proj.bias", {kv}, 0.0f, 0.1f));
    s.push_back(lin(p + "self_attn.v_proj.weight", kv, h));
    s.push_back(vec(p + "self_attn.v_proj.bias", {kv}, 0.0f, 0.1f));
    s.push_back(lin(p + "self_attn.o_proj.weight", h, qd));
    s.push_back(vec(p + "self_attn.o_proj.bias", {h}, 0.0f, 0.1f));
    s.push_back(vec(p + "self_attn.sinks", {c.num_attention_heads}, 0.0f, 2.0f));
    s.push_back(vec(p + "post_attention_layernorm.weight", {h}, 1.0f, 0.2f));
    TensorSpec router = lin(p + "mlp.router.weight", e, h);
    router.half_range *= static_cast<float>(o.router_scale);
    s.push_back(router);
    s.push_back(vec(p + "mlp.router.bias", {e}, 0.0f, 0.1f));
    for (const auto& [name, rows, cols] :
         {std::tuple<std::string, int64_t, int64_t>{"gate_up_proj", 2 * inter, h}, {"down_proj", h, inter}}) {
      const std::string ep = p + "mlp.experts." + name;
      // Target RMS of W x for unit-RMS x: expert_scale.
      const double rms = o.expert_scale / std::sqrt(static_cast<double>(cols));
      if (o.experts == "mxfp4") {
        // Random E2M1 codes have RMS ~3.2; choose the E8M0 exponent to match.
        const int exp = static_cast<int>(std::lround(std::log2(rms / 3.2)));
        TensorSpec b{ep + "_blocks", DType::kU8, {e, rows, cols / 32, 16}, Fill::kMxfp4Blocks};
        TensorSpec sc{ep + "_scales", DType::kU8, {e, rows, cols / 32}, Fill::kMxfp4Scales};
        sc.scale_base = static_cast<uint8_t>(std::clamp(127 + exp - 1, 1, 250));
        s.push_back(b);
        s.push_back(sc);
      } else {
        const DType dt = o.experts == "f32" ? DType::kF32 : o.experts == "f16" ? DType::kF16 : DType::kBF16;
        TensorSpec d{ep, dt, {e, cols, rows}, Fill::kUniform, 0.0f,
                     static_cast<float>(rms * std::sqrt(3.0))};
        s.push_back(d);
      }
      s.push_back(vec(ep + "_bias", {e, rows}, 0.0f, 0.1f));
    }
  }
  s.push_back(vec("model.norm.weight", {h}, 1.0f, 0.2f));
  s.push_back(lin("lm_head.weight", v, h));
  return s;
}

// Fills `out` with bytes [byte_begin, byte_begin + n) of tensor `ti`. Values
// depend only on (seed, tensor index, element index), so chunking and threads
// do not change the file.
void FillChunk(const TensorSpec& t, uint64_t seed, size_t ti, int64_t elem_begin, int64_t count, uint8_t* out) {
  const uint64_t base = Mix(seed ^ Mix(ti + 1));
  auto rnd = [&](int64_t i) { return Mix(base + static_cast<uint64_t>(i)); };
  switch (t.fill) {
    case Fill::kMxfp4Blocks:
      for (int64_t i = 0; i < count; i += 8) {
        const uint64_t r = rnd((elem_begin + i) / 8);
        std::memcpy(out + i, &r, std::min<int64_t>(8, count - i));
      }
      break;
    case Fill::kMxfp4Scales:
      for (int64_t i = 0; i < count; ++i) out[i] = static_cast<uint8_t>(t.scale_base + (rnd(elem_begin + i) & 1));
      break;
    case Fill::kUniform:
      for (int64_t i = 0; i < count; ++i) {
        const double u = static_cast<double>(rnd(elem_begin + i) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
        const float v = t.center + t.half_range * static_cast<float>(u);
        if (t.dtype == DType::kF32) {
          std::memcpy(out + i * 4, &v, 4);
        } else if (t.dtype == DType::kF16) {
          const uint16_t h = F32ToF16(v);
          std::memcpy(out + i * 2, &h, 2);
        } else {
          const uint16_t b = F32ToBf16(v);
          std::memcpy(out + i * 2, &b, 2);
        }
      }
      break;
  }
}

absl::Status WriteShard(const std::string& path, const std::vector<TensorSpec>& specs, const std::vector<size_t>& members,
                        uint64_t seed, ThreadPool& pool) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  int64_t off = 0;
  for (size_t i : members) {
    const TensorSpec& t = specs[i];
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes()}}};
    off += t.nbytes();
  }
  std::string hs = header.dump();
  while ((hs.size() + 8) % 8 != 0) hs.push_back(' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  const uint64_t len = hs.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  constexpr int64_t kChunkBytes = 1 << 20;
  constexpr int64_t kBufferChunks = 64;
  std::vector<uint8_t> buf(kChunkBytes * kBufferChunks);
  for (size_t i : members) {
    const TensorSpec& t = specs[i];
    const int64_t esz = static_cast<int64_t>(DTypeSize(t.dtype));
    const int64_t total = t.nbytes();
    for (int64_t pos = 0; pos < total; pos += kChunkBytes * kBufferChunks) {
      const int64_t n = std::min<int64_t>(total - pos, kChunkBytes * kBufferChunks);
      const int64_t chunks = (n + kChunkBytes - 1) / kChunkBytes;
      pool.Run(static_cast<int>(chunks), [&](int c) {
        const int64_t b = c * kChunkBytes, e = std::min(n, b + kChunkBytes);
        FillChunk(t, seed, i, (pos + b) / esz, (e - b) / esz, buf.data() + b);
      });
      f.write(reinterpret_cast<const char*>(buf.data()), n);
    }
  }
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("writing ", path, " failed (disk full?)"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  if (name == "20b") return ModelConfig::GptOss20b();
  if (name == "120b") return ModelConfig::GptOss120b();
  ModelConfig c = ModelConfig::GptOss20b();
  // A window of 8 and YaRN from 64 positions: short test sequences cross both.
  auto small_context = [](ModelConfig& m) {
    m.sliding_window = 8;
    m.max_position_embeddings = 4096;
    m.rope_scaling.original_max_position_embeddings = 64;
    m.initial_context_length = 64;
    m.rope_scaling.factor = 8.0;
    m.rope_theta = 10000.0;
  };
  if (name == "tiny") {
    c.num_hidden_layers = 4;
    c.hidden_size = 64;
    c.intermediate_size = 64;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.num_local_experts = 8;
    c.num_experts_per_tok = 4;
    c.vocab_size = 512;
    small_context(c);
  } else if (name == "demo") {
    c.num_hidden_layers = 4;
    c.hidden_size = 256;
    c.intermediate_size = 256;
    c.num_attention_heads = 8;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.num_local_experts = 8;
    c.num_experts_per_tok = 4;
  } else if (name == "mid") {
    // gpt-oss's 8 KV heads (so tensor parallel up to 8 splits them), a
    // vocabulary that does not divide evenly, a short sliding window.
    c.num_hidden_layers = 4;
    c.hidden_size = 128;
    c.intermediate_size = 128;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 8;
    c.head_dim = 16;
    c.num_local_experts = 16;
    c.num_experts_per_tok = 4;
    c.vocab_size = 1001;
    small_context(c);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown preset \"", name, "\" (tiny, mid, demo, 20b, 120b)"));
  }
  c.layer_types.clear();
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_types.push_back(i % 2 == 0 ? LayerType::kSlidingAttention : LayerType::kFullAttention);
  }
  return c;
}

absl::Status PrepareCheckpointDir(const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string n = entry.path().filename().string();
    if (n.rfind("model", 0) == 0 && n.find(".safetensors") != std::string::npos) fs::remove(entry.path());
  }
  return absl::OkStatus();
}

absl::Status GenerateCheckpoint(const std::string& out_dir, const CheckpointGenOptions& o) {
  RETURN_IF_ERROR(o.config.Validate());
  if (o.experts != "mxfp4" && o.experts != "bf16" && o.experts != "f16" && o.experts != "f32") {
    return absl::InvalidArgumentError("experts must be mxfp4, bf16, f16 or f32");
  }
  if (o.dense != "bf16" && o.dense != "f32") return absl::InvalidArgumentError("dense must be bf16 or f32");
  ModelConfig config = o.config;
  if (o.experts == "mxfp4") {
    config.quantization_config.quant_method = "mxfp4";
    config.quantization_config.modules_to_not_convert = {"model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                         "model.embed_tokens", "lm_head"};
  } else {
    config.quantization_config = {};
  }
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(PrepareCheckpointDir(out_dir));
  std::error_code ec;
  CheckpointGenOptions opts = o;
  opts.config = config;
  const std::vector<TensorSpec> specs = Specs(opts);

  std::vector<std::vector<size_t>> shards(1);
  int64_t cur = 0, total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t b = specs[i].nbytes();
    if (cur > 0 && cur + b > o.max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += b;
    total += b;
  }
  ThreadPool pool(o.num_threads);
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards.size());
    RETURN_IF_ERROR(WriteShard(out_dir + "/" + name, specs, shards[s], o.seed, pool));
    for (size_t i : shards[s]) weight_map[specs[i].name] = name;
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::ofstream(out_dir + "/model.safetensors.index.json") << index.dump(2) << "\n";
  std::ofstream(out_dir + "/config.json") << config.ToJson();
  // As openai/gpt-oss-20b ships it; the eos ids are where generation stops.
  json gen = {{"bos_token_id", harmony::kStartOfText},
              {"do_sample", true},
              {"eos_token_id", {harmony::kReturn, harmony::kEndOfText, harmony::kCall}},
              {"pad_token_id", harmony::kEndOfText},
              {"transformers_version", "4.55.0.dev0"}};
  std::ofstream(out_dir + "/generation_config.json") << gen.dump(2) << "\n";
  if (!o.tokenizer_json.empty() && fs::exists(o.tokenizer_json)) {
    fs::copy_file(o.tokenizer_json, out_dir + "/tokenizer.json", fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot copy tokenizer.json: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace moeserve
