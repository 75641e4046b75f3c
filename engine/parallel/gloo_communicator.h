// The Communicator of CPU ranks: Gloo (Debian's libgloo) over TCP.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/parallel/communicator.h"
#include "engine/parallel/rendezvous.h"

namespace moeserve::parallel {

struct GlooOptions {
  // The address this rank listens on for its peers (an interface of this host).
  std::string hostname = "127.0.0.1";
  // Keys of this group's rendezvous start with it (one per group incarnation).
  std::string prefix = "moeserve";
  // Joining, and each collective, fail after this long without progress.
  std::chrono::milliseconds timeout{30000};
};

// Joins the group: blocks until every rank has joined through `store`, or
// fails after options.timeout naming the ranks that did not come.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(int rank, int world_size,
                                                                     RendezvousStore& store,
                                                                     const GlooOptions& options);

}  // namespace moeserve::parallel
