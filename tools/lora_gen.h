// Random PEFT LoRA adapters for gpt-oss checkpoints, and merging an adapter
// into a dense checkpoint: the test fixtures and the reference of LoRA serving.
//
// GenerateLoraAdapter writes adapter_config.json and adapter_model.safetensors
// as PEFT's save_pretrained does, in one of the layouts gpt-oss fine-tunes come
// in (engine/lora.h): attention only (Unsloth's default), attention and
// per-expert modules (experts.gate_up_projs.{i} / down_projs.{i}), or
// attention and the fused expert parameters (target_parameters). The same
// options give byte-identical files.
//
// MergeLoraIntoCheckpoint writes base + adapter as one checkpoint with every
// tensor F32 and the experts dense (MXFP4 decoded): W' = W + scale · B A. It
// reads the adapter tensors with its own code, written from PEFT's
// definitions (lora.Linear.get_delta_weight and ParamWrapper's einsum
// "o r e, e r i -> e i o"), not with the engine's loader, in double precision.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/config.h"

namespace moeserve {

struct LoraGenOptions {
  std::string layout = "attention";  // attention | per-expert | fused
  int64_t rank = 8;
  double alpha = 16;
  bool rslora = false;
  bool router = false;       // also adapt mlp.router
  bool patterns = false;     // o_proj gets rank / 2 and alpha * 3 through rank_pattern / alpha_pattern
  int64_t skip_expert = -1;  // per-expert layout: leave this expert without factors
  std::string dtype = "bf16";  // bf16 | f16 | f32
  uint64_t seed = 1;
};

absl::Status GenerateLoraAdapter(const std::string& out_dir, const ModelConfig& config, const LoraGenOptions& options);

absl::Status MergeLoraIntoCheckpoint(const std::string& base_dir, const std::string& adapter_dir,
                                     const std::string& out_dir);

}  // namespace moeserve
