#include "engine/cuda/device.h"

#include "engine/cuda/runtime.h"

#include "absl/strings/str_cat.h"

namespace moeserve::cuda {

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

absl::StatusOr<DeviceInfo> Describe(int device) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", device, ": ", cudaGetErrorString(cudaGetLastError())));
  }
  DeviceInfo d;
  d.index = device;
  d.name = p.name;
  d.compute_major = p.major;
  d.compute_minor = p.minor;
  if (cudaSetDevice(device) != cudaSuccess || cudaMemGetInfo(&d.free_bytes, &d.total_bytes) != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", device, ": ", cudaGetErrorString(cudaGetLastError())));
  }
  return d;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  if (cudaMalloc(&b.ptr_, bytes) != cudaSuccess) {
    b.ptr_ = nullptr;
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes on the GPU: ", cudaGetErrorString(cudaGetLastError())));
  }
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

}  // namespace moeserve::cuda
