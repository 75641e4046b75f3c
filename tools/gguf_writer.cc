#include "tools/gguf_writer.h"

#include <cstring>
#include <fstream>
#include <functional>
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/cpu/kernels.h"
#include "engine/lora.h"
#include "engine/weights.h"

namespace moeserve {
namespace {

enum GgufType : uint32_t { kU8 = 0, kI32 = 5, kF32v = 6, kBool = 7, kString = 8, kArray = 9, kU32 = 4, kU64 = 10 };
enum GgmlType : uint32_t { kGgmlF32 = 0, kGgmlBF16 = 30, kGgmlMxfp4 = 39 };
constexpr uint64_t kAlign = 32;

class Buf {
 public:
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void I32(int32_t v) { Raw(&v, 4); }
  void F32(float v) { Raw(&v, 4); }
  void Str(const std::string& s) {
    U64(s.size());
    Raw(s.data(), s.size());
  }
  void Raw(const void* p, size_t n) { data.append(static_cast<const char*>(p), n); }
  std::string data;
};

// GPT-2 byte-level alphabet: the printable bytes map to themselves, the others
// to U+0100 and up, in byte order.
std::vector<std::string> ByteTokens() {
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) s.push_back(static_cast<char>(cp));
    else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = s;
  }
  return out;
}

struct OutTensor {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order, ne0 innermost
  uint32_t type;
  uint64_t nbytes;
  std::function<void(std::string*)> produce;  // appends exactly nbytes
};

void AppendF32(std::string* out, const std::vector<float>& v) {
  out->append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}


// Header, tensor infos, data.
absl::Status WriteFile(const std::string& out_path, const Buf& kv, uint64_t n_kv, const std::vector<OutTensor>& tensors) {
  Buf head;
  head.Raw("GGUF", 4);
  head.U32(3);
  head.U64(tensors.size());
  head.U64(n_kv);
  head.Raw(kv.data.data(), kv.data.size());
  uint64_t off = 0;
  for (const OutTensor& t : tensors) {
    head.Str(t.name);
    head.U32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) head.U64(d);
    head.U32(t.type);
    head.U64(off);
    off += (t.nbytes + kAlign - 1) / kAlign * kAlign;
  }
  while (head.data.size() % kAlign) head.data.push_back('\0');
  std::ofstream f(out_path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot write ", out_path));
  f.write(head.data.data(), static_cast<std::streamsize>(head.data.size()));
  std::string data;
  for (const OutTensor& t : tensors) {
    data.clear();
    t.produce(&data);
    if (data.size() != t.nbytes) return absl::InternalError(absl::StrCat("GGUF tensor ", t.name, " size mismatch"));
    data.resize((data.size() + kAlign - 1) / kAlign * kAlign, '\0');
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("writing ", out_path, " failed (disk full?)"));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteGguf(const std::string& model_dir, const std::string& out_path, GgufMode mode) {
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> w, LoadModelWeights(model_dir));
  const ModelConfig& c = w->config;
  const uint64_t h = c.hidden_size, inter = c.intermediate_size, ne = c.num_local_experts, v = c.vocab_size;
  if (v < 256 + 1 + 9) return absl::InvalidArgumentError("GGUF export needs vocab_size >= 266");

  std::vector<OutTensor> tensors;
  auto vec = [&](std::string name, const std::vector<float>& data, std::vector<uint64_t> shape) {
    tensors.push_back({std::move(name), std::move(shape), kGgmlF32, data.size() * 4,
                       [&data](std::string* o) { AppendF32(o, data); }});
  };
  auto mat = [&](std::string name, const Matrix& m) {
    const bool keep = mode == GgufMode::kNative && m.dtype == DType::kBF16;
    const uint64_t n = static_cast<uint64_t>(m.rows) * m.cols;
    tensors.push_back({std::move(name), {static_cast<uint64_t>(m.cols), static_cast<uint64_t>(m.rows)},
                       keep ? kGgmlBF16 : kGgmlF32, keep ? n * 2 : n * 4, [&m, keep, n](std::string* o) {
                         if (keep || m.dtype == DType::kF32) {
                           o->append(static_cast<const char*>(m.data), n * DTypeSize(m.dtype));
                         } else {
                           std::vector<float> f(n);
                           ConvertToF32(m.dtype, m.data, f.data(), n);
                           AppendF32(o, f);
                         }
                       }});
  };
  // One projection of the experts, rows selected by `row_of(j)` for j < out_rows.
  auto experts = [&](std::string name, const ExpertMatrix& m, uint64_t out_rows, std::function<int64_t(int64_t)> row_of) {
    const uint64_t cols = m.cols, groups = cols / 32;
    const bool native_mx = mode == GgufMode::kNative && m.mxfp4;
    const uint64_t nbytes = native_mx ? ne * out_rows * groups * 17 : ne * out_rows * cols * 4;
    tensors.push_back({std::move(name), {cols, out_rows, ne}, native_mx ? kGgmlMxfp4 : kGgmlF32, nbytes,
                       [&m, out_rows, cols, groups, native_mx, row_of, ne](std::string* o) {
                         std::vector<float> row(cols);
                         for (uint64_t e = 0; e < ne; ++e) {
                           for (uint64_t j = 0; j < out_rows; ++j) {
                             const int64_t r = row_of(j);
                             if (m.mxfp4) {
                               const uint8_t* b = m.blocks + ((e * m.rows + r) * groups) * 16;
                               const uint8_t* s = m.scales + (e * m.rows + r) * groups;
                               for (uint64_t g = 0; g < groups; ++g) {
                                 uint8_t codes[32];
                                 for (int k = 0; k < 16; ++k) {
                                   codes[2 * k] = b[g * 16 + k] & 15;
                                   codes[2 * k + 1] = b[g * 16 + k] >> 4;
                                 }
                                 if (native_mx) {
                                   uint8_t blk[17];
                                   blk[0] = s[g];
                                   for (int k = 0; k < 16; ++k) blk[1 + k] = codes[k] | (codes[k + 16] << 4);
                                   o->append(reinterpret_cast<const char*>(blk), 17);
                                 } else {
                                   const float sc = cpu::E8m0ToFloat(s[g]);
                                   for (int k = 0; k < 32; ++k) row[g * 32 + k] = cpu::kFp4Values[codes[k]] * sc;
                                 }
                               }
                             } else {
                               // HF dense layout [E, in, out]: column r of expert e.
                               for (uint64_t i = 0; i < cols; ++i) {
                                 const size_t idx = (e * cols + i) * m.rows + r;
                                 row[i] = m.dtype == DType::kF32 ? static_cast<const float*>(m.dense)[idx]
                                                                 : Bf16ToF32(static_cast<const uint16_t*>(m.dense)[idx]);
                               }
                             }
                             if (!native_mx) AppendF32(o, row);
                           }
                         }
                       }});
  };
  auto expert_bias = [&](std::string name, const ExpertMatrix& m, uint64_t out_rows, std::function<int64_t(int64_t)> row_of) {
    std::vector<float> b(ne * out_rows);
    for (uint64_t e = 0; e < ne; ++e)
      for (uint64_t j = 0; j < out_rows; ++j) b[e * out_rows + j] = m.bias[e * m.rows + row_of(j)];
    auto shared = std::make_shared<std::vector<float>>(std::move(b));
    tensors.push_back({std::move(name), {out_rows, ne}, kGgmlF32, shared->size() * 4,
                       [shared](std::string* o) { AppendF32(o, *shared); }});
  };

  mat("token_embd.weight", w->embed);
  vec("output_norm.weight", w->final_norm, {h});
  mat("output.weight", w->lm_head);
  auto even = [](int64_t j) { return 2 * j; };
  auto odd = [](int64_t j) { return 2 * j + 1; };
  auto same = [](int64_t j) { return j; };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = w->layers[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    vec(p + "attn_norm.weight", L.attn_norm, {h});
    mat(p + "attn_q.weight", L.q);
    vec(p + "attn_q.bias", L.q_bias, {L.q_bias.size()});
    mat(p + "attn_k.weight", L.k);
    vec(p + "attn_k.bias", L.k_bias, {L.k_bias.size()});
    mat(p + "attn_v.weight", L.v);
    vec(p + "attn_v.bias", L.v_bias, {L.v_bias.size()});
    mat(p + "attn_output.weight", L.o);
    vec(p + "attn_output.bias", L.o_bias, {h});
    vec(p + "attn_sinks.weight", L.sinks, {L.sinks.size()});
    vec(p + "post_attention_norm.weight", L.mlp_norm, {h});
    mat(p + "ffn_gate_inp.weight", L.router);
    vec(p + "ffn_gate_inp.bias", L.router_bias, {ne});
    experts(p + "ffn_gate_exps.weight", L.gate_up, inter, even);
    expert_bias(p + "ffn_gate_exps.bias", L.gate_up, inter, even);
    experts(p + "ffn_up_exps.weight", L.gate_up, inter, odd);
    expert_bias(p + "ffn_up_exps.bias", L.gate_up, inter, odd);
    experts(p + "ffn_down_exps.weight", L.down, h, same);
    expert_bias(p + "ffn_down_exps.bias", L.down, h, same);
  }

  // Metadata.
  Buf kv;
  uint64_t n_kv = 0;
  auto key = [&](const std::string& k, uint32_t type) {
    kv.Str(k);
    kv.U32(type);
    ++n_kv;
  };
  auto kstr = [&](const std::string& k, const std::string& s) { key(k, kString); kv.Str(s); };
  auto ku32 = [&](const std::string& k, uint32_t x) { key(k, kU32); kv.U32(x); };
  auto kf32 = [&](const std::string& k, float x) { key(k, kF32v); kv.F32(x); };
  const std::string a = "gpt-oss.";
  kstr("general.architecture", "gpt-oss");
  kstr("general.name", "moeserve generated gpt-oss");
  ku32("general.alignment", kAlign);
  ku32(a + "context_length", static_cast<uint32_t>(c.max_position_embeddings));
  ku32(a + "embedding_length", static_cast<uint32_t>(h));
  ku32(a + "feed_forward_length", static_cast<uint32_t>(inter));
  ku32(a + "expert_feed_forward_length", static_cast<uint32_t>(inter));
  ku32(a + "block_count", static_cast<uint32_t>(c.num_hidden_layers));
  ku32(a + "attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  ku32(a + "attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  ku32(a + "attention.key_length", static_cast<uint32_t>(c.head_dim));
  ku32(a + "attention.value_length", static_cast<uint32_t>(c.head_dim));
  ku32(a + "attention.sliding_window", static_cast<uint32_t>(c.sliding_window));
  kf32(a + "attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  ku32(a + "expert_count", static_cast<uint32_t>(ne));
  ku32(a + "expert_used_count", static_cast<uint32_t>(c.num_experts_per_tok));
  kf32(a + "rope.freq_base", static_cast<float>(c.rope_theta));
  if (c.has_rope_scaling && c.rope_scaling.factor > 1.0) {
    kstr(a + "rope.scaling.type", "yarn");
    kf32(a + "rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
    ku32(a + "rope.scaling.original_context_length", static_cast<uint32_t>(c.rope_scaling.original_max_position_embeddings));
    kf32(a + "rope.scaling.yarn_beta_fast", static_cast<float>(c.rope_scaling.beta_fast));
    kf32(a + "rope.scaling.yarn_beta_slow", static_cast<float>(c.rope_scaling.beta_slow));
  }
  // Vocabulary: bytes, one merge, reserved fillers, harmony specials last.
  const std::vector<std::string> specials = {"<|startoftext|>", "<|endoftext|>", "<|return|>",  "<|constrain|>",
                                             "<|channel|>",     "<|start|>",     "<|end|>",     "<|message|>",
                                             "<|call|>"};
  std::vector<std::string> toks = ByteTokens();
  toks.push_back(toks[' '] + toks[' ']);
  while (toks.size() < v - specials.size()) toks.push_back(absl::StrCat("<|reserved_", toks.size(), "|>"));
  for (const auto& s : specials) toks.push_back(s);
  kstr("tokenizer.ggml.model", "gpt2");
  kstr("tokenizer.ggml.pre", "gpt-4o");
  key("tokenizer.ggml.tokens", kArray);
  kv.U32(kString);
  kv.U64(toks.size());
  for (const auto& t : toks) kv.Str(t);
  key("tokenizer.ggml.token_type", kArray);
  kv.U32(kI32);
  kv.U64(toks.size());
  for (size_t i = 0; i < toks.size(); ++i) kv.I32(i <= 256 ? 1 : 3);  // normal, control
  key("tokenizer.ggml.merges", kArray);
  kv.U32(kString);
  kv.U64(1);
  kv.Str(toks[' '] + " " + toks[' ']);
  ku32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(v - 9));
  ku32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(v - 8));
  ku32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(v - 7));
  key("tokenizer.ggml.add_bos_token", kBool);
  kv.Raw("\0", 1);

  return WriteFile(out_path, kv, n_kv, tensors);
}

}  // namespace moeserve

namespace moeserve {

absl::Status WriteGgufLora(const std::string& model_dir, const std::string& adapter_dir, const std::string& out_path) {
  ASSIGN_OR_RETURN(const ModelConfig c, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::shared_ptr<const LoraAdapter> a, LoadLoraAdapter(adapter_dir, c));
  std::vector<OutTensor> tensors;
  // lora_a [E][rank][in] and lora_b [E][out rows picked by row_of][rank], scaled.
  auto pair = [&](const std::string& name, const LoraFactors& f, uint64_t out_rows,
                  std::function<int64_t(int64_t)> row_of) {
    const uint64_t n = f.experts, r = f.rank, in = f.in;
    std::vector<uint64_t> ne_a = {in, r}, ne_b = {r, out_rows};
    if (n > 1) ne_a.push_back(n), ne_b.push_back(n);
    tensors.push_back({name + ".lora_a", ne_a, kGgmlF32, n * r * in * 4, [&f, n, r, in](std::string* o) {
                         std::vector<float> v(r * in);
                         for (uint64_t e = 0; e < n; ++e) {
                           ConvertToF32(f.dtype, f.A(e).data, v.data(), v.size());
                           AppendF32(o, v);
                         }
                       }});
    tensors.push_back({name + ".lora_b", ne_b, kGgmlF32, n * out_rows * r * 4, [&f, n, r, out_rows, row_of](std::string* o) {
                         std::vector<float> b(f.out * r), v(out_rows * r);
                         for (uint64_t e = 0; e < n; ++e) {
                           ConvertToF32(f.dtype, f.B(e).data, b.data(), b.size());
                           for (uint64_t j = 0; j < out_rows; ++j)
                             for (uint64_t k = 0; k < r; ++k) v[j * r + k] = f.scale[e] * b[row_of(j) * r + k];
                           AppendF32(o, v);
                         }
                       }});
  };
  auto same = [](int64_t j) { return j; };
  auto even = [](int64_t j) { return 2 * j; };
  auto odd = [](int64_t j) { return 2 * j + 1; };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    const auto& L = a->layers[l];
    const std::pair<LoraTarget, const char*> dense[] = {{LoraTarget::kQ, "attn_q"}, {LoraTarget::kK, "attn_k"},
                                                        {LoraTarget::kV, "attn_v"}, {LoraTarget::kO, "attn_output"},
                                                        {LoraTarget::kRouter, "ffn_gate_inp"}};
    for (const auto& [t, name] : dense) {
      const LoraFactors& f = L[static_cast<int>(t)];
      if (!f.empty()) pair(p + name + ".weight", f, f.out, same);
    }
    if (const LoraFactors& f = L[static_cast<int>(LoraTarget::kGateUp)]; !f.empty()) {
      pair(p + "ffn_gate_exps.weight", f, f.out / 2, even);
      pair(p + "ffn_up_exps.weight", f, f.out / 2, odd);
    }
    if (const LoraFactors& f = L[static_cast<int>(LoraTarget::kDown)]; !f.empty()) {
      pair(p + "ffn_down_exps.weight", f, f.out, same);
    }
  }
  Buf kv;
  uint64_t n_kv = 0;
  auto key = [&](const std::string& k, uint32_t type) {
    kv.Str(k);
    kv.U32(type);
    ++n_kv;
  };
  key("general.architecture", kString);
  kv.Str("gpt-oss");
  key("general.type", kString);
  kv.Str("adapter");
  key("general.alignment", kU32);
  kv.U32(kAlign);
  key("adapter.type", kString);
  kv.Str("lora");
  key("adapter.lora.alpha", kF32v);
  kv.F32(0.0f);  // scale 1: each module's scale is in its lora_b
  return WriteFile(out_path, kv, n_kv, tensors);
}

}  // namespace moeserve
