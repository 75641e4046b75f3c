// The Communicator of GPU ranks: NCCL (the CUDA toolkit's libnccl), on the
// CUDA backend's stream. Built whenever nvcc exists.
//
// Rendezvous: rank 0 makes the group's unique id (NcclUniqueId) and the
// router hands it to every rank in Init. The communicator is created
// non-blocking, so that a rank that never comes makes the others fail after
// `timeout` instead of hanging; each collective is then waited for the same
// way. Calls are stream-ordered; device memory only, except BroadcastHost.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/parallel/communicator.h"

namespace moeserve::parallel {

// A fresh NCCL unique id (the bytes of ncclUniqueId), made on rank 0.
absl::StatusOr<std::string> NcclUniqueId();

// Joins the group on the current CUDA device; `stream` is a cudaStream_t.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(int rank, int world_size,
                                                                     const std::string& unique_id, void* stream,
                                                                     std::chrono::milliseconds timeout);

}  // namespace moeserve::parallel
