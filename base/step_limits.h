// Limits of the step protocol (proto/moeserve/worker/v1/worker.proto) that
// the router and the worker both hold to.
#pragma once

#include <cstdint>

namespace moeserve {

// A sequence with sampling.prompt_logprobs returns logits for every row of its
// prompt chunks ([rows, vocab] floats: 128 rows of o200k are 103 MB), so the
// router puts at most this many such rows in a step, over all its sequences,
// and the worker refuses a step with more.
constexpr int64_t kMaxPromptLogprobRows = 128;

}  // namespace moeserve
