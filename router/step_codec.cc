#include "router/step_codec.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"

namespace moeserve::router {

namespace v1 = moeserve::worker::v1;

v1::StepRequest EncodeStep(uint64_t step_id, const SchedulerOutput& out) {
  v1::StepRequest req;
  req.set_step_id(step_id);
  for (int64_t id : out.finished) req.add_finished_ids(id);
  for (int64_t id : out.preempted) req.add_finished_ids(id);
  for (const NewSequenceData& d : out.new_sequences) {
    v1::NewSequence* n = req.add_new_sequences();
    n->set_id(d.request_id);
    n->mutable_tokens()->Add(d.tokens.begin(), d.tokens.end());
    n->set_num_computed(d.num_computed);
    n->set_num_scheduled(d.num_scheduled);
    n->mutable_full_blocks()->Add(d.tables[kFullGroup].begin(), d.tables[kFullGroup].end());
    n->mutable_sliding_blocks()->Add(d.tables[kSlidingGroup].begin(), d.tables[kSlidingGroup].end());
    *n->mutable_sampling() = d.sampling;
    n->set_num_prompt_tokens(d.num_prompt_tokens);
    n->set_adapter(d.adapter);
  }
  for (const CachedSequenceData& d : out.cached) {
    v1::RunningSequence* n = req.add_running();
    n->set_id(d.request_id);
    n->set_num_scheduled(d.num_scheduled);
    n->mutable_new_full_blocks()->Add(d.new_blocks[kFullGroup].begin(), d.new_blocks[kFullGroup].end());
    n->mutable_new_sliding_blocks()->Add(d.new_blocks[kSlidingGroup].begin(), d.new_blocks[kSlidingGroup].end());
    n->set_sliding_released_below(d.sliding_released_below);
  }
  return req;
}

void EncodeTokenMask(const grammar::TokenMask& mask, int32_t vocab_size, v1::TokenMask* out) {
  out->Clear();
  const int32_t n = std::min<int32_t>(vocab_size, static_cast<int32_t>(mask.size() * 64));
  int64_t allowed = 0;
  for (int32_t w = 0; w * 64 < n; ++w) {
    uint64_t bits = mask[w];
    if ((w + 1) * 64 > n) bits &= (uint64_t{1} << (n - w * 64)) - 1;
    allowed += __builtin_popcountll(bits);
  }
  const int64_t denied = vocab_size - allowed;
  const int64_t bytes = (vocab_size + 7) / 8;
  // About 3 bytes per id as varints: the smallest form wins.
  // Set bits of word w (or of its complement), lowest first.
  auto each_bit = [&](bool set, auto&& f) {
    for (int32_t w = 0; w * 64 < vocab_size; ++w) {
      uint64_t bits = w * 64 < n ? mask[w] : 0;
      if (!set) bits = ~bits;
      const int32_t valid = std::min<int32_t>(64, vocab_size - w * 64);
      if (valid < 64) bits &= (uint64_t{1} << valid) - 1;
      if (set && (w + 1) * 64 > n && w * 64 < n) bits &= (uint64_t{1} << (n - w * 64)) - 1;
      while (bits) {
        f(w * 64 + __builtin_ctzll(bits));
        bits &= bits - 1;
      }
    }
  };
  if (allowed * 3 <= bytes && allowed <= denied) {
    out->mutable_allowed()->Reserve(static_cast<int>(allowed));
    each_bit(true, [&](int32_t t) { out->add_allowed(t); });
  } else if (denied * 3 <= bytes) {
    out->mutable_denied()->Reserve(static_cast<int>(denied));
    each_bit(false, [&](int32_t t) { out->add_denied(t); });
  } else {
    std::string* b = out->mutable_bits();
    b->assign(bytes, '\0');
    for (int32_t w = 0; w * 64 < n; ++w) {
      for (int k = 0; k < 8 && w * 8 + k < bytes; ++k) (*b)[w * 8 + k] = static_cast<char>((mask[w] >> (8 * k)) & 0xff);
    }
    if (n % 8 != 0) (*b)[n / 8] &= static_cast<char>((1 << (n % 8)) - 1);
  }
}

absl::StatusOr<StepSamples> DecodeResult(const v1::StepResult& result, uint64_t step_id, const SchedulerOutput& out,
                                         int32_t vocab_size) {
  if (result.step_id() != step_id) {
    return absl::DataLossError(absl::StrCat("the worker answered step ", result.step_id(), " to step ", step_id));
  }
  StepSamples s;
  if (!result.error().empty()) {
    s.error = result.error();
    return s;
  }
  std::unordered_set<int64_t> due;
  for (const ScheduledSequence& q : out.scheduled) {
    if (q.samples) due.insert(q.request_id);
  }
  for (const v1::SampleOutput& o : result.samples()) {
    if (!due.count(o.id())) {
      return absl::DataLossError(absl::StrCat("the worker sampled sequence ", o.id(), ", which was not due to sample",
                                              s.tokens.count(o.id()) ? " again" : ""));
    }
    if (o.token() < 0 || o.token() >= vocab_size) {
      return absl::DataLossError(absl::StrCat("the worker sampled token ", o.token(), " for sequence ", o.id(),
                                              ", outside the vocabulary of ", vocab_size));
    }
    due.erase(o.id());
    s.tokens[o.id()] = o.token();
    s.samples.push_back(&o);
  }
  if (!due.empty()) {
    return absl::DataLossError(absl::StrCat("the worker returned no sample for sequence ", *due.begin()));
  }
  return s;
}

}  // namespace moeserve::router
