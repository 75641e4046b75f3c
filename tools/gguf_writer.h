// Converts a Hugging Face gpt-oss checkpoint directory to a llama.cpp GGUF
// file (architecture "gpt-oss"), so llama.cpp can run the same weights as an
// independent reference and speed peer.
//
//  kF32:    every tensor F32; MXFP4 experts are written as their exact
//           dequantized values (llama.cpp's own MXFP4 path rounds activations).
//  kNative: matrices keep their dtype (BF16/F32), experts stay MXFP4 (repacked
//           to ggml's block layout), 1-D tensors and the router are F32.
//
// The vocabulary is synthetic (byte tokens, one merge, reserved fillers and the
// harmony specials at the end) with the model's vocab_size: tests and
// benchmarks drive llama.cpp with token ids, never text.
#pragma once

#include <string>

#include "base/status.h"

namespace moeserve {

enum class GgufMode { kF32, kNative };

absl::Status WriteGguf(const std::string& model_dir, const std::string& out_path, GgufMode mode);

// A PEFT LoRA adapter of the model as a llama.cpp GGUF LoRA (general.type
// "adapter", adapter.type "lora"), for llama.cpp's --lora: F32 lora_a / lora_b
// per adapted tensor of WriteGguf's names ([in, r] and [r, out] in ggml order,
// a third dimension for the experts), gate_up split into ffn_gate_exps (even
// rows) and ffn_up_exps (odd rows) as WriteGguf splits the weights. Each
// module's scale is folded into its lora_b and adapter.lora.alpha is 0, so
// llama.cpp applies scale 1 (rank and alpha patterns and rsLoRA survive).
absl::Status WriteGgufLora(const std::string& model_dir, const std::string& adapter_dir, const std::string& out_path);

}  // namespace moeserve
