// Writes a valid Hugging Face gpt-oss checkpoint with random weights.
//
// The directory holds config.json, generation_config.json, sharded
// safetensors with model.safetensors.index.json, and tokenizer.json when one
// is supplied. Experts are MXFP4 (blocks + scales, gate/up rows interleaved)
// or dense BF16/F32 in HF's dense layout; everything else is BF16 or F32.
// The same seed gives byte-identical files. Tensors are generated in parallel
// chunks and streamed to disk, so a full gpt-oss-20b shape (13 GB) needs
// little memory and a few minutes.
#pragma once

#include <string>

#include "engine/config.h"

namespace moeserve {

struct CheckpointGenOptions {
  ModelConfig config;
  uint64_t seed = 0;
  std::string experts = "mxfp4";  // mxfp4 | bf16 | f32
  std::string dense = "bf16";     // bf16 | f32 (everything that is not an expert)
  double expert_scale = 1.0;      // RMS of expert pre-activations, roughly; > 3 exercises the SwiGLU clamps
  double router_scale = 4.0;      // keeps top-k picks away from ties
  int64_t max_shard_bytes = int64_t{4} << 30;
  std::string tokenizer_json;     // copied in when non-empty and present
  int num_threads = 0;
};

absl::Status GenerateCheckpoint(const std::string& out_dir, const CheckpointGenOptions& options);

// Creates `out_dir` and removes the model*.safetensors shards of an earlier
// run, so the files written next are the whole truth.
absl::Status PrepareCheckpointDir(const std::string& out_dir);

// Named presets: "tiny" (tests), "mid" (8 KV heads: tensor-parallel tests), "demo" (the demo model), "20b", "120b".
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

}  // namespace moeserve
