#include "engine/parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace moeserve::parallel {
namespace {

// libnccl is opened at first use, not linked: binaries start (and serve one
// GPU) on machines whose CUDA install has no NCCL, and say so when a group needs it.
struct Nccl {
  decltype(&::ncclGetUniqueId) GetUniqueId;
  decltype(&::ncclCommInitRankConfig) CommInitRankConfig;
  decltype(&::ncclCommGetAsyncError) CommGetAsyncError;
  decltype(&::ncclCommAbort) CommAbort;
  decltype(&::ncclCommDestroy) CommDestroy;
  decltype(&::ncclAllReduce) AllReduce;
  decltype(&::ncclAllGather) AllGather;
  decltype(&::ncclBroadcast) Broadcast;
  decltype(&::ncclGetErrorString) GetErrorString;
};

absl::StatusOr<const Nccl*> LoadNccl() {
  static const absl::StatusOr<Nccl> lib = []() -> absl::StatusOr<Nccl> {
    void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      return absl::UnavailableError(absl::StrCat("NCCL (libnccl.so.2) was not found: GPU ranks of a group need it (",
                                                 dlerror(), ")"));
    }
    Nccl n;
    bool ok = true;
    auto sym = [&](auto& f, const char* name) {
      f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(h, name));
      ok &= f != nullptr;
    };
    sym(n.GetUniqueId, "ncclGetUniqueId");
    sym(n.CommInitRankConfig, "ncclCommInitRankConfig");
    sym(n.CommGetAsyncError, "ncclCommGetAsyncError");
    sym(n.CommAbort, "ncclCommAbort");
    sym(n.CommDestroy, "ncclCommDestroy");
    sym(n.AllReduce, "ncclAllReduce");
    sym(n.AllGather, "ncclAllGather");
    sym(n.Broadcast, "ncclBroadcast");
    sym(n.GetErrorString, "ncclGetErrorString");
    if (!ok) return absl::UnavailableError("libnccl.so.2 lacks a function this build uses (NCCL >= 2.14 needed)");
    return n;
  }();
  if (!lib.ok()) return lib.status();
  return &*lib;
}

ncclDataType_t NcclType(DataType t) {
  switch (t) {
    case DataType::kF32:
      return ncclFloat32;
    case DataType::kBF16:
      return ncclBfloat16;
    case DataType::kI32:
      return ncclInt32;
  }
  return ncclFloat32;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const Nccl* nccl, ncclComm_t comm, int rank, int world, cudaStream_t stream,
                   std::chrono::milliseconds timeout)
      : nccl_(nccl), comm_(comm), rank_(rank), world_(world), stream_(stream), timeout_(timeout) {}
  ~NcclCommunicator() override {
    if (scratch_) cudaFree(scratch_);
    if (comm_) broken_.empty() ? nccl_->CommDestroy(comm_) : nccl_->CommAbort(comm_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string name() const override { return "nccl"; }

  absl::Status AllReduceSum(void* data, int64_t count, DataType t) override {
    CollectiveTimer timer(&busy_ns_, &num_calls_);
    return Check("all-reduce", nccl_->AllReduce(data, data, count, NcclType(t), ncclSum, comm_, stream_));
  }
  absl::Status AllGather(const void* in, void* out, int64_t count, DataType t) override {
    CollectiveTimer timer(&busy_ns_, &num_calls_);
    return Check("all-gather", nccl_->AllGather(in, out, count, NcclType(t), comm_, stream_));
  }
  absl::Status Broadcast(void* data, int64_t count, DataType t, int root) override {
    CollectiveTimer timer(&busy_ns_, &num_calls_);
    return Check("broadcast", nccl_->Broadcast(data, data, count, NcclType(t), root, comm_, stream_));
  }
  absl::Status BroadcastHost(void* data, int64_t count, DataType t, int root) override {
    const size_t bytes = static_cast<size_t>(count) * DataTypeSize(t);
    if (absl::Status st = Scratch(bytes); !st.ok()) return st;
    cudaMemcpyAsync(scratch_, data, bytes, cudaMemcpyHostToDevice, stream_);
    if (absl::Status st = Broadcast(scratch_, count, t, root); !st.ok()) return st;
    cudaMemcpyAsync(data, scratch_, bytes, cudaMemcpyDeviceToHost, stream_);
    if (cudaStreamSynchronize(stream_) != cudaSuccess) return absl::InternalError("CUDA stream failed");
    return absl::OkStatus();
  }
  absl::Status Barrier() override {
    if (absl::Status st = Scratch(4); !st.ok()) return st;
    if (absl::Status st = AllReduceSum(scratch_, 1, DataType::kI32); !st.ok()) return st;
    if (cudaStreamSynchronize(stream_) != cudaSuccess) return absl::InternalError("CUDA stream failed");
    return absl::OkStatus();
  }

 private:
  absl::Status Scratch(size_t bytes) {
    if (bytes <= scratch_bytes_) return absl::OkStatus();
    if (scratch_) cudaFree(scratch_);
    scratch_ = nullptr;
    if (cudaMalloc(&scratch_, bytes) != cudaSuccess) return absl::ResourceExhaustedError("NCCL scratch allocation");
    scratch_bytes_ = bytes;
    return absl::OkStatus();
  }

  // A non-blocking communicator returns ncclInProgress: wait for the enqueue
  // to finish, failing after the timeout (a peer that is gone).
  absl::Status Check(const char* what, ncclResult_t r) {
    if (!broken_.empty()) return absl::UnavailableError(broken_);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (r == ncclInProgress) {
      if (std::chrono::steady_clock::now() > deadline) {
        broken_ = absl::StrCat("NCCL ", what, " on rank ", rank_, " timed out");
        return absl::UnavailableError(broken_);
      }
      std::this_thread::yield();
      nccl_->CommGetAsyncError(comm_, &r);
    }
    if (r != ncclSuccess) {
      broken_ = absl::StrCat("NCCL ", what, " failed on rank ", rank_, ": ", nccl_->GetErrorString(r));
      return absl::UnavailableError(broken_);
    }
    return absl::OkStatus();
  }

  const Nccl* nccl_;
  ncclComm_t comm_;
  int rank_, world_;
  cudaStream_t stream_;
  std::chrono::milliseconds timeout_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::string> NcclUniqueId() {
  ASSIGN_OR_RETURN(const Nccl* nccl, LoadNccl());
  ncclUniqueId id;
  if (ncclResult_t r = nccl->GetUniqueId(&id); r != ncclSuccess) {
    return absl::UnavailableError(absl::StrCat("ncclGetUniqueId: ", nccl->GetErrorString(r)));
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(int rank, int world_size,
                                                                     const std::string& unique_id, void* stream,
                                                                     std::chrono::milliseconds timeout) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id has ", sizeof(id.internal), " bytes, not ",
                                                   unique_id.size()));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  ASSIGN_OR_RETURN(const Nccl* nccl, LoadNccl());
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = nccl->CommInitRankConfig(&comm, world_size, id, rank, &config);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (r == ncclInProgress) {
    if (std::chrono::steady_clock::now() > deadline) {
      nccl->CommAbort(comm);
      return absl::DeadlineExceededError(absl::StrCat("rank ", rank, " of ", world_size,
                                                      ": the other ranks did not join within ", timeout.count(),
                                                      " ms"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    nccl->CommGetAsyncError(comm, &r);
  }
  if (r != ncclSuccess) {
    if (comm) nccl->CommAbort(comm);
    return absl::UnavailableError(absl::StrCat("ncclCommInitRank (rank ", rank, " of ", world_size,
                                               "): ", nccl->GetErrorString(r)));
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(nccl, comm, rank, world_size, static_cast<cudaStream_t>(stream), timeout));
}

}  // namespace moeserve::parallel
