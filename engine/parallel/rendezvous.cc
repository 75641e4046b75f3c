#include "engine/parallel/rendezvous.h"

#include "absl/strings/str_cat.h"

namespace moeserve::parallel {

absl::Status InMemoryStore::Set(const std::string& key, const std::string& value) {
  if (value.size() > kMaxValueBytes) return absl::InvalidArgumentError("rendezvous value too large");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!values_.count(key) && values_.size() >= kMaxKeys) {
      return absl::ResourceExhaustedError("rendezvous store is full");
    }
    values_[key] = value;
  }
  cv_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryStore::Get(const std::string& key, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return values_.count(key) > 0; })) {
    return absl::DeadlineExceededError(absl::StrCat("rendezvous key \"", key, "\" was not set within ",
                                                    timeout.count(), " ms"));
  }
  return values_[key];
}

}  // namespace moeserve::parallel
