// The key-value store through which the ranks of a group find each other.
//
// The router starts the rendezvous (DESIGN §2, Init): rank 0's worker holds the
// store (an InMemoryStore served over its gRPC port), the other ranks reach it
// through a client store at the address the router passes in Init, under a key
// prefix fresh for each group incarnation.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moeserve::parallel {

class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting at most `timeout` for some rank to set it.
  virtual absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) = 0;
};

// Thread-safe; values are kept until the store is destroyed (a group's
// rendezvous is a few hundred bytes per rank). At most kMaxKeys keys.
class InMemoryStore final : public RendezvousStore {
 public:
  static constexpr size_t kMaxKeys = 4096;
  static constexpr size_t kMaxValueBytes = 1 << 20;
  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

}  // namespace moeserve::parallel
