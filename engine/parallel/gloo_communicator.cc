#include "engine/parallel/gloo_communicator.h"

#include <gloo/allgather_ring.h>
#include <gloo/allreduce_ring.h>
#include <gloo/barrier_all_to_all.h>
#include <gloo/broadcast_one_to_all.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <vector>

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

// bf16 as Gloo's algorithms see it: a 2-byte value, summed through f32 and
// rounded once per pairwise add (as NCCL does).
struct Bf16 {
  uint16_t bits;
};
void SumBf16(Bf16* x, const Bf16* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i].bits = F32ToBf16(Bf16ToF32(x[i].bits) + Bf16ToF32(y[i].bits));
}
const gloo::ReductionFunction<Bf16> kSumBf16(gloo::SUM, &SumBf16);

// Gloo's algorithm classes (ring all-reduce, ring all-gather, one-to-all
// broadcast, all-to-all barrier), made per call on the caller's buffers: on
// loopback they take ~80 us for a 2880-float all-reduce where the
// options-style gloo::allreduce takes ~1.5 ms (measured on the CI machine
// kind); constructing one costs a few microseconds. Every rank makes the
// same calls in the same order, so the context's slots stay in step.
class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> ctx) : ctx_(std::move(ctx)) {}

  int rank() const override { return ctx_->rank; }
  int world_size() const override { return ctx_->size; }
  std::string name() const override { return "gloo"; }

  absl::Status AllReduceSum(void* data, int64_t count, DataType t) override {
    return Run("all-reduce", [&] {
      const int n = static_cast<int>(count);
      if (t == DataType::kBF16) {
        gloo::AllreduceRing<Bf16>(ctx_, {static_cast<Bf16*>(data)}, n, &kSumBf16).run();
      } else if (t == DataType::kF32) {
        gloo::AllreduceRing<float>(ctx_, {static_cast<float*>(data)}, n).run();
      } else {
        gloo::AllreduceRing<int32_t>(ctx_, {static_cast<int32_t*>(data)}, n).run();
      }
    });
  }

  absl::Status AllGather(const void* in, void* out, int64_t count, DataType t) override {
    return Run("all-gather", [&] {
      const size_t bytes = static_cast<size_t>(count) * DataTypeSize(t);
      char* slot = static_cast<char*>(out) + static_cast<size_t>(rank()) * bytes;
      const char* src = static_cast<const char*>(in);
      if (src < slot + bytes && slot < src + bytes) {  // in place (or overlapping): read from a copy
        scratch_.assign(src, src + bytes);
        src = scratch_.data();
      }
      gloo::AllgatherRing<char>(ctx_, {src}, static_cast<char*>(out), static_cast<int>(bytes)).run();
    });
  }

  absl::Status Broadcast(void* data, int64_t count, DataType t, int root) override {
    return Run("broadcast", [&] {
      gloo::BroadcastOneToAll<char>(ctx_, {static_cast<char*>(data)}, static_cast<size_t>(count) * DataTypeSize(t),
                                    root)
          .run();
    });
  }

  absl::Status BroadcastHost(void* data, int64_t count, DataType t, int root) override {
    return Broadcast(data, count, t, root);
  }

  absl::Status Barrier() override {
    return Run("barrier", [&] { gloo::BarrierAllToAll(ctx_).run(); });
  }

 private:
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
  std::vector<char> scratch_;
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
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(ctx)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", rank, " of ", world_size,
                                               " could not join its group: ", e.what()));
  }
}

}  // namespace moeserve::parallel
