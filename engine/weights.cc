#include "engine/weights.h"

#include "absl/strings/str_cat.h"

namespace moeserve {
namespace {

class Loader {
 public:
  Loader(const Checkpoint& ck) : ck_(ck) {}

  // A small float tensor of any float dtype, copied to f32.
  absl::StatusOr<std::vector<float>> Vector(const std::string& name, const std::vector<int64_t>& shape) {
    const TensorView* v = ck_.Find(name);
    if (!v) return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor ", name));
    if (v->dtype == DType::kU8) {
      return absl::DataLossError(absl::StrCat(v->file, ": tensor ", name, " has dtype U8, expected a float type"));
    }
    ASSIGN_OR_RETURN(const TensorView* t, ck_.Get(name, v->dtype, shape));
    std::vector<float> out(t->numel());
    ConvertToF32(t->dtype, t->data, out.data(), out.size());
    return out;
  }

  // A matrix used in place (BF16, F32) or converted once (F16).
  absl::StatusOr<Matrix> Mat(const std::string& name, int64_t rows, int64_t cols, bool force_f32 = false) {
    const TensorView* v = ck_.Find(name);
    if (!v) return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor ", name));
    if (v->dtype == DType::kU8) {
      return absl::DataLossError(absl::StrCat(v->file, ": tensor ", name, " has dtype U8, expected BF16, F16 or F32"));
    }
    ASSIGN_OR_RETURN(const TensorView* t, ck_.Get(name, v->dtype, {rows, cols}));
    Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.data = InPlaceOrF32(*t, force_f32, &m.dtype, &m.owned);
    return m;
  }

  // The tensor's bytes when BF16 or F32 (used in place), else (F16, or
  // `force_f32`) an F32 copy in `owned`.
  static const void* InPlaceOrF32(const TensorView& t, bool force_f32, DType* dtype, std::vector<float>* owned) {
    if (t.dtype != DType::kF16 && !force_f32) {
      *dtype = t.dtype;
      return t.data;
    }
    owned->resize(t.numel());
    ConvertToF32(t.dtype, t.data, owned->data(), owned->size());
    *dtype = DType::kF32;
    return owned->data();
  }

  absl::StatusOr<ExpertMatrix> Experts(const std::string& prefix, bool mxfp4, int64_t e, int64_t rows, int64_t cols) {
    ExpertMatrix x;
    x.mxfp4 = mxfp4;
    x.num_experts = e;
    x.rows = rows;
    x.cols = cols;
    if (mxfp4) {
      ASSIGN_OR_RETURN(auto b, ck_.Get(prefix + "_blocks", DType::kU8, {e, rows, cols / 32, 16}));
      ASSIGN_OR_RETURN(auto s, ck_.Get(prefix + "_scales", DType::kU8, {e, rows, cols / 32}));
      x.blocks = static_cast<const uint8_t*>(b->data);
      x.scales = static_cast<const uint8_t*>(s->data);
    } else {
      const TensorView* v = ck_.Find(prefix);
      if (!v) return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor ", prefix));
      if (v->dtype == DType::kU8) {
        return absl::DataLossError(absl::StrCat(v->file, ": tensor ", prefix, " has dtype ", DTypeName(v->dtype),
                                                ", expected BF16, F16 or F32 dense experts"));
      }
      ASSIGN_OR_RETURN(auto t, ck_.Get(prefix, v->dtype, {e, cols, rows}));
      x.dense = InPlaceOrF32(*t, /*force_f32=*/false, &x.dtype, &x.owned);  // F16: converted once, as other weights
    }
    ASSIGN_OR_RETURN(x.bias, Vector(prefix + "_bias", {e, rows}));
    return x;
  }

 private:
  const Checkpoint& ck_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const std::string& model_dir) {
  auto w = std::make_unique<ModelWeights>();
  ASSIGN_OR_RETURN(w->config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(w->checkpoint, Checkpoint::Open(model_dir));
  const ModelConfig& c = w->config;
  Loader ld(*w->checkpoint);
  const int64_t h = c.hidden_size, qd = c.q_dim(), kv = c.kv_dim(), e = c.num_local_experts,
                inter = c.intermediate_size;
  ASSIGN_OR_RETURN(w->embed, ld.Mat("model.embed_tokens.weight", c.vocab_size, h));
  ASSIGN_OR_RETURN(w->lm_head, ld.Mat("lm_head.weight", c.vocab_size, h));
  ASSIGN_OR_RETURN(w->final_norm, ld.Vector("model.norm.weight", {h}));
  // Dense experts are detected from the checkpoint when the config names no quantization.
  bool mxfp4 = c.experts_mxfp4();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights L;
    ASSIGN_OR_RETURN(L.attn_norm, ld.Vector(p + "input_layernorm.weight", {h}));
    ASSIGN_OR_RETURN(L.mlp_norm, ld.Vector(p + "post_attention_layernorm.weight", {h}));
    ASSIGN_OR_RETURN(L.q, ld.Mat(p + "self_attn.q_proj.weight", qd, h));
    ASSIGN_OR_RETURN(L.k, ld.Mat(p + "self_attn.k_proj.weight", kv, h));
    ASSIGN_OR_RETURN(L.v, ld.Mat(p + "self_attn.v_proj.weight", kv, h));
    ASSIGN_OR_RETURN(L.o, ld.Mat(p + "self_attn.o_proj.weight", h, qd));
    if (c.attention_bias) {
      ASSIGN_OR_RETURN(L.q_bias, ld.Vector(p + "self_attn.q_proj.bias", {qd}));
      ASSIGN_OR_RETURN(L.k_bias, ld.Vector(p + "self_attn.k_proj.bias", {kv}));
      ASSIGN_OR_RETURN(L.v_bias, ld.Vector(p + "self_attn.v_proj.bias", {kv}));
      ASSIGN_OR_RETURN(L.o_bias, ld.Vector(p + "self_attn.o_proj.bias", {h}));
    } else {
      L.q_bias.assign(qd, 0.f);
      L.k_bias.assign(kv, 0.f);
      L.v_bias.assign(kv, 0.f);
      L.o_bias.assign(h, 0.f);
    }
    ASSIGN_OR_RETURN(L.sinks, ld.Vector(p + "self_attn.sinks", {c.num_attention_heads}));
    ASSIGN_OR_RETURN(L.router, ld.Mat(p + "mlp.router.weight", e, h, /*force_f32=*/true));
    ASSIGN_OR_RETURN(L.router_bias, ld.Vector(p + "mlp.router.bias", {e}));
    ASSIGN_OR_RETURN(L.gate_up, ld.Experts(p + "mlp.experts.gate_up_proj", mxfp4, e, 2 * inter, h));
    ASSIGN_OR_RETURN(L.down, ld.Experts(p + "mlp.experts.down_proj", mxfp4, e, h, inter));
    w->layers.push_back(std::move(L));
  }
  ASSIGN_OR_RETURN(w->shard, PlanShard(c, 0, 1, false));
  return w;
}

}  // namespace moeserve
