// The CUDA device as the engine sees it: discovery and device memory.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace moeserve::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  size_t total_bytes = 0, free_bytes = 0;
};

// The number of usable devices (0 without a driver or a GPU; never an error).
int DeviceCount();
absl::StatusOr<DeviceInfo> Describe(int device);

// Device memory owned by one object.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  ~DeviceBuffer();
  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace moeserve::cuda
