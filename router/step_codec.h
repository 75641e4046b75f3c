// The step protocol's codec on the router side (DESIGN §2): a SchedulerOutput
// becomes the StepRequest every rank of a group receives, and a StepResult
// becomes the sampled tokens UpdateFromOutput applies. Pure functions, no
// worker and no gRPC calls, so they are tested on their own.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moeserve/worker/v1/worker.pb.h"
#include "router/scheduler.h"

namespace moeserve::router {

// The request for one step: new sequences whole, running ones as diffs,
// finished and preempted ones to drop.
worker::v1::StepRequest EncodeStep(uint64_t step_id, const SchedulerOutput& out);

// A token mask (bits over the vocabulary, router/grammar/matcher.h) in the
// smallest of the protocol's forms: allowed ids, denied ids, or bits. Tokens
// at or above `vocab_size` are left out.
void EncodeTokenMask(const grammar::TokenMask& mask, int32_t vocab_size, worker::v1::TokenMask* out);

// A step's result, checked against the step it answers.
struct StepSamples {
  std::string error;  // the worker failed this step's sequences (they alone fail)
  std::map<int64_t, int32_t> tokens;                        // request id -> sampled token
  std::vector<const worker::v1::SampleOutput*> samples;  // into the result, in its order
};

// Error (the worker broke the protocol: the group must be treated as failed)
// when the result answers another step, samples a sequence that was not due to
// sample or samples one twice, leaves a due sequence without a sample, or
// returns a token outside the vocabulary.
absl::StatusOr<StepSamples> DecodeResult(const worker::v1::StepResult& result, uint64_t step_id,
                                         const SchedulerOutput& out, int32_t vocab_size);

}  // namespace moeserve::router
