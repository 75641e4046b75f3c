// LoRA adapters in the PEFT format, for gpt-oss.
//
// An adapter directory holds adapter_config.json and adapter_model.safetensors
// as PEFT's save_pretrained writes them. Every layout gpt-oss fine-tunes come
// in loads into one form:
//   - attention: self_attn.{q,k,v,o}_proj (lora_A [r, in], lora_B [out, r]);
//   - the router: mlp.router (a module, or the parameter mlp.router.weight);
//   - experts per expert, as Unsloth's linearised model names them:
//     mlp.experts.gate_up_projs.{i} / down_projs.{i} (nn.Linear, [r, in] and
//     [out, r] each);
//   - experts fused, as PEFT's target_parameters trains the 3-D parameters
//     mlp.experts.gate_up_proj [E, H, 2I] and down_proj [E, I, H]: lora_A
//     [E·r, in] (expert e's rows e·r .. e·r+r-1) and lora_B [out, r·E] (expert
//     e's columns j·E + e), saved under mlp.experts (the second parameter
//     wrapped under mlp.experts.base_layer); which projection a pair belongs
//     to follows from lora_B's rows (2I or H).
// The update of a target is  y += scale · B (A x)  with scale = alpha / r, or
// alpha / sqrt(r) with use_rslora; alpha and r per module from lora_alpha / r
// or alpha_pattern / rank_pattern. Gate/up rows interleave as the base
// checkpoint's (spec §3).
//
// Anything else is refused with an error naming the file and tensor: another
// base model's shapes, modules_to_save, DoRA, LoRA biases, embeddings or
// lm_head, unknown modules, a lora_A without its lora_B, a rank that differs
// from the config's, a rank over the server's --max-lora-rank.
//
// Thread-safety: immutable after loading; shared by the backends that apply it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/dtype.h"
#include "engine/weights.h"

namespace moeserve {

// Adapter slots a backend holds at most (the server's --max-loras is lower).
inline constexpr int kMaxLoraSlots = 256;

enum class LoraTarget { kQ, kK, kV, kO, kRouter, kGateUp, kDown };
inline constexpr int kNumLoraTargets = 7;
const char* LoraTargetName(LoraTarget t);

// One target's update for each of `experts` experts (1 for a dense
// projection): dW_e = scale[e] · B_e A_e, A_e [rank, in], B_e [out, rank].
// Experts the adapter leaves alone have zero factors; experts of lower rank
// than `rank` are zero-padded.
struct LoraFactors {
  int64_t experts = 0, rank = 0, in = 0, out = 0;
  DType dtype = DType::kF32;   // kBF16 when every source tensor was BF16, else kF32
  std::vector<float> scale;    // [experts]
  std::vector<uint8_t> a, b;   // [experts, rank, in], [experts, out, rank] of dtype
  std::vector<uint8_t> active;  // [experts]: 1 where the adapter changes the expert

  bool empty() const { return rank == 0; }
  Matrix A(int64_t e) const;
  Matrix B(int64_t e) const;
  size_t bytes() const { return a.size() + b.size(); }
};

struct LoraAdapter {
  std::string dir;
  int64_t max_rank = 0;
  std::vector<std::array<LoraFactors, kNumLoraTargets>> layers;  // [layer][target]
  // What it adapts, e.g. "q_proj k_proj v_proj o_proj experts(fused)".
  std::string summary;

  const LoraFactors& factors(int64_t layer, LoraTarget t) const { return layers[layer][static_cast<int>(t)]; }
  size_t bytes() const;
};

struct LoraLoadOptions {
  int64_t max_rank = 0;  // > 0: adapters of higher rank are refused
};

// Loads and checks the adapter in `dir` against the model `config`.
absl::StatusOr<std::shared_ptr<const LoraAdapter>> LoadLoraAdapter(const std::string& dir, const ModelConfig& config,
                                                                   const LoraLoadOptions& options = {});

}  // namespace moeserve
