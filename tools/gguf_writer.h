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

}  // namespace moeserve
