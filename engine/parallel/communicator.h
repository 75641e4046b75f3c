// Collectives for a tensor/expert-parallel worker group (DESIGN §4, parallel).
//
// One interface, two real implementations that share everything but the
// calls: Gloo over TCP for CPU ranks (gloo_communicator.h) and NCCL for GPU
// ranks (nccl_communicator.h). The engine calls it on its own memory: host
// buffers on the CPU backend, device buffers (on the backend's stream) on the
// CUDA backend. Every rank must call the same collectives in the same order
// with the same counts; a rank that fails or disappears makes the others' calls
// fail (Gloo: within the group's timeout), never hang forever.
//
// Thread-safety: one collective at a time (the worker runs one step at a time).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace moeserve::parallel {

enum class DataType { kF32, kBF16, kI32 };
size_t DataTypeSize(DataType t);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "gloo" or "nccl".
  virtual std::string name() const = 0;

  // data[i] = sum over ranks of data[i], in place (f32 or bf16).
  virtual absl::Status AllReduceSum(void* data, int64_t count, DataType t) = 0;
  // out[r * count + i] = rank r's in[i], for every rank r.
  virtual absl::Status AllGather(const void* in, void* out, int64_t count, DataType t) = 0;
  // Every rank's data becomes root's.
  virtual absl::Status Broadcast(void* data, int64_t count, DataType t, int root) = 0;
  // Broadcast of host memory, whatever memory the collectives work on (the
  // tokens rank 0 sampled).
  virtual absl::Status BroadcastHost(void* data, int64_t count, DataType t, int root) = 0;
  virtual absl::Status Barrier() = 0;

  // Wall time spent inside collectives and how many ran, since construction.
  int64_t busy_ns() const { return busy_ns_; }
  int64_t num_calls() const { return num_calls_; }
  // Why a collective failed; empty while none has. A failed group cannot go
  // on (its ranks are out of step): the worker exits and is restarted with
  // its group.
  const std::string& failure() const { return broken_; }

 protected:
  int64_t busy_ns_ = 0;
  int64_t num_calls_ = 0;
  std::string broken_;
};

// Adds the wall time of a scope to a communicator's counters.
class CollectiveTimer {
 public:
  CollectiveTimer(int64_t* busy_ns, int64_t* calls);
  ~CollectiveTimer();

 private:
  int64_t* busy_ns_;
  int64_t start_;
};

}  // namespace moeserve::parallel
