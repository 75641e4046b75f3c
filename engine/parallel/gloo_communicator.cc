#include "engine/parallel/gloo_communicator.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"

namespace moeserve::parallel {

namespace {

// Gloo's store interface over ours, under the group's prefix.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(RendezvousStore& store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    const absl::Status st = store_.Set(prefix_ + key, std::string(data.begin(), data.end()));
    if (!st.ok()) throw std::runtime_error(std::string(st.message()));
  }
  std::vector<char> get(const std::string& key) override {
    auto v = store_.Get(prefix_ + key, timeout_);
    if (!v.ok()) throw std::runtime_error(std::string(v.status().message()));
    return std::vector<char>(v->begin(), v->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const std::string& k : keys) {
      auto v = store_.Get(prefix_ + k, timeout);
      if (!v.ok()) {
        throw std::runtime_error(absl::StrCat("rank ", k, " did not join the group within ", timeout.count(), " ms"));
      }
    }
  }

 private:
  RendezvousStore& store_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

// Sums bf16 values through f32, rounding once per pairwise add (as NCCL does).
void SumBf16(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<uint16_t*>(c);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBf16(Bf16ToF32(x[i]) + Bf16ToF32(y[i]));
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> ctx, std::chrono::milliseconds timeout)
      : ctx_(std::move(ctx)), timeout_(timeout) {}

  int rank() const override { return ctx_->rank; }
  int world_size() const override { return ctx_->size; }
  std::string name() const override { return "gloo"; }

  absl::Status AllReduceSum(void* data, int64_t count, DataType t) override {
    return Run("all-reduce", [&] {
      gloo::AllreduceOptions o(ctx_);
      o.setTag(NextTag());
      o.setTimeout(timeout_);
      if (t == DataType::kBF16) {
        o.setOutput(static_cast<uint16_t*>(data), count);
        o.setReduceFunction(gloo::AllreduceOptions::Func(&SumBf16));
      } else if (t == DataType::kF32) {
        o.setOutput(static_cast<float*>(data), count);
        o.setReduceFunction(gloo::AllreduceOptions::Func(
            static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>)));
      } else {
        o.setOutput(static_cast<int32_t*>(data), count);
        o.setReduceFunction(gloo::AllreduceOptions::Func(
            static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<int32_t>)));
      }
      gloo::allreduce(o);
    });
  }

  absl::Status AllGather(const void* in, void* out, int64_t count, DataType t) override {
    return Run("all-gather", [&] {
      gloo::AllgatherOptions o(ctx_);
      o.setTag(NextTag());
      o.setTimeout(timeout_);
      // In place: this rank's slot of `out` holds its input.
      const size_t bytes = static_cast<size_t>(count) * DataTypeSize(t);
      std::memmove(static_cast<char*>(out) + static_cast<size_t>(rank()) * bytes, in, bytes);
      o.setOutput(static_cast<char*>(out), bytes * world_size());
      gloo::allgather(o);
    });
  }

  absl::Status Broadcast(void* data, int64_t count, DataType t, int root) override {
    return Run("broadcast", [&] {
      gloo::BroadcastOptions o(ctx_);
      o.setTag(NextTag());
      o.setTimeout(timeout_);
      o.setRoot(root);
      o.setOutput(static_cast<char*>(data), static_cast<size_t>(count) * DataTypeSize(t));
      gloo::broadcast(o);
    });
  }

  absl::Status BroadcastHost(void* data, int64_t count, DataType t, int root) override {
    return Broadcast(data, count, t, root);
  }

  absl::Status Barrier() override {
    return Run("barrier", [&] {
      gloo::BarrierOptions o(ctx_);
      o.setTag(NextTag());
      o.setTimeout(timeout_);
      gloo::barrier(o);
    });
  }

 private:
  uint32_t NextTag() { return tag_++; }

  template <typename F>
  absl::Status Run(const char* what, F&& f) {
    if (!broken_.empty()) return absl::UnavailableError(broken_);
    CollectiveTimer timer(&busy_ns_, &num_calls_);
    try {
      f();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      // A failed collective leaves the peers out of step: the group is done.
      broken_ = absl::StrCat("gloo ", what, " failed on rank ", rank(), ": ", e.what());
      return absl::UnavailableError(broken_);
    }
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::chrono::milliseconds timeout_;
  uint32_t tag_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(int rank, int world_size,
                                                                     RendezvousStore& store,
                                                                     const GlooOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside a group of ", world_size));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, world_size);
    ctx->setTimeout(options.timeout);
    StoreAdapter adapter(store, options.prefix + "/", options.timeout);
    ctx->connectFullMesh(adapter, device);
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(ctx), options.timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", rank, " of ", world_size,
                                               " could not join its group: ", e.what()));
  }
}

}  // namespace moeserve::parallel
