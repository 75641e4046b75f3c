#include "engine/parallel/communicator.h"

#include <chrono>

namespace moeserve::parallel {

size_t DataTypeSize(DataType t) { return t == DataType::kBF16 ? 2 : 4; }

CollectiveTimer::CollectiveTimer(int64_t* busy_ns, int64_t* calls)
    : busy_ns_(busy_ns), start_(std::chrono::steady_clock::now().time_since_epoch().count()) {
  ++*calls;
}

CollectiveTimer::~CollectiveTimer() {
  *busy_ns_ += std::chrono::steady_clock::now().time_since_epoch().count() - start_;
}

}  // namespace moeserve::parallel
