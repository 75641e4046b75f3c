// The gpt-oss forward pass, written once over the op interface
// (engine/forward_ops.h) that each backend implements.
#pragma once

#include <span>

#include "absl/status/status.h"
#include "engine/batch.h"
#include "engine/config.h"
#include "engine/forward_ops.h"
#include "engine/parallel/shard.h"

namespace moeserve {

// One step: validates the batch, lays it out in rows, runs every layer over
// each chunk of rows and fills `out` (see engine/batch.h for the contract).
// `config` is the model as this rank holds it, `shard` the rank's part.
absl::Status GptOssForward(const ModelConfig& config, const ShardPlan& shard, const KvCacheOptions& kv, ForwardOps& ops,
                           std::span<const SequenceInput> batch, ForwardOutput* out);

}  // namespace moeserve
