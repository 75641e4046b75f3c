// The CPU emulation of the CUDA execution model (engine/cuda/emu/): that it
// runs kernels as the hardware defines them, refuses what the hardware
// refuses, and turns the classic kernel bugs (a missing __syncthreads, a warp
// mask naming an exited lane, divergent barriers) into failures instead of
// luck. Kernel faults leave a sticky error, as on a GPU, so those cases run in
// death-test subprocesses.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <csignal>
#include <numeric>
#include <vector>

#include "engine/cuda/device.h"
#include "engine/cuda/launch.cuh"

namespace moeserve::cuda {
namespace {

template <typename T>
T* DeviceCopy(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}

template <typename T>
std::vector<T> HostCopy(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

// Block sum through shared memory; `sync` false drops the barrier between the
// writes and the reads, the bug the seeded thread order must expose.
__global__ void BlockSumKernel(const float* x, float* out, bool sync) {
  __shared__ float partial[256];
  partial[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (sync) __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned i = 0; i < blockDim.x; ++i) s += partial[i];
    out[blockIdx.x] = s;
  }
}

TEST(CudaEmu, BarriersOrderSharedMemoryAndAMissingOneIsCaught) {
  const int blocks = 64, threads = 256;
  std::vector<float> x(blocks * threads);
  std::iota(x.begin(), x.end(), 0.0f);
  float* dx = DeviceCopy(x);
  float* dout = DeviceCopy(std::vector<float>(blocks, 0.0f));
  for (bool sync : {true, false}) {
    Launch(BlockSumKernel, blocks, threads, 0, nullptr, dx, dout, sync);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const auto out = HostCopy(dout, blocks);
    int wrong = 0;
    for (int b = 0; b < blocks; ++b) {
      const float want = static_cast<float>(threads) * b * threads + threads * (threads - 1) / 2.0f;
      wrong += out[b] != want;
    }
    if (sync)
      EXPECT_EQ(wrong, 0);
    else
      EXPECT_GT(wrong, blocks / 2) << "without the barrier most blocks must come out wrong";
  }
  cudaFree(dx);
  cudaFree(dout);
}

// Every thread of a 3-D grid of 3-D blocks writes its own coordinates once.
__global__ void IndexKernel(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int i = b * blockDim.x * blockDim.y * blockDim.z + t;
  atomicAdd(out + i, 1 + static_cast<int>(threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z + 1000 * blockIdx.x +
                                          10000 * blockIdx.y + 100000 * blockIdx.z));
}

#ifdef MOESERVE_CUDA_EMU
// The emulator's binary16 conversions against the definition: every half
// value round-trips through float exactly, and float -> half rounds to the
// nearest half (ties to even) — checked against exact double arithmetic on
// the two neighbouring halves, for every float bit pattern in steps.
TEST(CudaEmu, HalfConversionsRoundToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const __half x{static_cast<uint16_t>(h)};
    const float f = __half2float(x);
    if (std::isnan(f)) {
      EXPECT_TRUE(((h >> 10) & 0x1f) == 31 && (h & 0x3ff) != 0) << h;
      EXPECT_TRUE(std::isnan(__half2float(__float2half(f)))) << h;
      continue;
    }
    ASSERT_EQ(__float2half(f).x, h) << "half " << h << " -> " << f;
  }
  // Positive finite halves in order, as doubles.
  std::vector<double> halves;
  for (uint32_t h = 0; h < 0x7c00; ++h) halves.push_back(__half2float(__half{static_cast<uint16_t>(h)}));
  EXPECT_EQ(halves[1], std::ldexp(1.0, -24));
  EXPECT_EQ(halves.back(), 65504.0);
  for (uint64_t u = 0; u < 0x7f800000u; u += 997) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(u));
    const uint16_t got = __float2half(f).x;
    const uint16_t neg = __float2half(-f).x;
    ASSERT_EQ(neg, got | 0x8000) << f;
    const double v = f;
    if (v >= 65520.0) {
      ASSERT_EQ(got, 0x7c00) << f;
      continue;
    }
    const size_t hi = std::lower_bound(halves.begin(), halves.end(), v) - halves.begin();
    uint16_t want;
    if (hi == halves.size()) {
      want = 0x7bff;  // in [65504, 65520): rounds down to the largest half
    } else if (halves[hi] == v || hi == 0) {
      want = static_cast<uint16_t>(hi);
    } else {
      const double d_lo = v - halves[hi - 1], d_hi = halves[hi] - v;
      want = static_cast<uint16_t>(d_lo < d_hi ? hi - 1 : d_hi < d_lo ? hi : ((hi - 1) % 2 == 0 ? hi - 1 : hi));
    }
    ASSERT_EQ(got, want) << f;
  }
}
#endif

TEST(CudaEmu, ThreadAndBlockIndices) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const int n = 3 * 2 * 2 * 4 * 3 * 2;
  int* d = DeviceCopy(std::vector<int>(n, 0));
  Launch(IndexKernel, grid, block, 0, nullptr, d);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = HostCopy(d, n);
  int i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++i) {
              EXPECT_EQ(out[i], 1 + static_cast<int>(tx + 10 * ty + 100 * tz + 1000 * bx + 10000 * by + 100000 * bz));
            }
  cudaFree(d);
}

// Warp primitives against their definitions.
__global__ void WarpKernel(int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane * 3 + 1;
  int xor_sum = v;
  for (int o = 16; o > 0; o >>= 1) xor_sum += __shfl_xor_sync(0xffffffffu, xor_sum, o);
  const int down = __shfl_down_sync(0xffffffffu, v, 5);
  const int up = __shfl_up_sync(0xffffffffu, v, 3);
  const int bcast = __shfl_sync(0xffffffffu, v, 7);
  const int seg = __shfl_xor_sync(0xffffffffu, v, 4, 8);  // within groups of 8 lanes
  const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
  const int any = __any_sync(0xffffffffu, lane == 31), all = __all_sync(0xffffffffu, lane < 31);
  int* o = out + threadIdx.x * 7;
  o[0] = xor_sum, o[1] = down, o[2] = up, o[3] = bcast, o[4] = seg, o[5] = static_cast<int>(ballot),
  o[6] = any * 2 + all;
}

TEST(CudaEmu, WarpPrimitives) {
  const int threads = 64;
  int* d = DeviceCopy(std::vector<int>(threads * 7, -1));
  Launch(WarpKernel, 1, threads, 0, nullptr, d);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = HostCopy(d, threads * 7);
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int t = 0; t < threads; ++t) {
    const int lane = t % 32;
    auto v = [](int l) { return l * 3 + 1; };
    int sum = 0;
    for (int l = 0; l < 32; ++l) sum += v(l);
    EXPECT_EQ(out[t * 7 + 0], sum);
    EXPECT_EQ(out[t * 7 + 1], lane + 5 < 32 ? v(lane + 5) : v(lane));
    EXPECT_EQ(out[t * 7 + 2], lane >= 3 ? v(lane - 3) : v(lane));
    EXPECT_EQ(out[t * 7 + 3], v(7));
    EXPECT_EQ(out[t * 7 + 4], v(lane ^ 4));
    EXPECT_EQ(static_cast<unsigned>(out[t * 7 + 5]), ballot);
    EXPECT_EQ(out[t * 7 + 6], 2);
  }
  cudaFree(d);
}

// Dynamic shared memory, reversed through a barrier.
__global__ void ReverseKernel(float* x, int n) {
  MOESERVE_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = buf[n - 1 - i];
}

TEST(CudaEmu, SharedMemoryLimitsAreTheHardwares) {
  // 64 KB of dynamic shared memory: refused without the opt-in, allowed with it.
  const int n = 16384;
  std::vector<float> x(n);
  std::iota(x.begin(), x.end(), 0.0f);
  float* d = DeviceCopy(x);
  Launch(ReverseKernel, 1, 256, n * sizeof(float), nullptr, d, n);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(HostCopy(d, n), x) << "a refused launch runs nothing";
  ASSERT_EQ(cudaFuncSetAttribute(ReverseKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4), cudaSuccess);
  Launch(ReverseKernel, 1, 256, n * sizeof(float), nullptr, d, n);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto out = HostCopy(d, n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], x[n - 1 - i]);
  // Beyond the opt-in maximum (sm_86: 99 KB).
  cudaDeviceProp p;
  ASSERT_EQ(cudaGetDeviceProperties(&p, 0), cudaSuccess);
  EXPECT_EQ(cudaFuncSetAttribute(ReverseKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(p.sharedMemPerBlockOptin) + 1),
            cudaErrorInvalidValue);
  cudaFree(d);
}

__global__ void NothingKernel() {}

TEST(CudaEmu, LaunchConfigurationsTheHardwareRefuses) {
  for (dim3 block : {dim3(1025), dim3(32, 33), dim3(1, 1, 65), dim3(0)}) {
    Launch(NothingKernel, 1, block, 0, nullptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << block.x << "x" << block.y << "x" << block.z;
  }
  for (dim3 grid : {dim3(1, 65536), dim3(1, 1, 65536), dim3(0)}) {
    Launch(NothingKernel, grid, 32, 0, nullptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << grid.x << "x" << grid.y << "x" << grid.z;
  }
  Launch(NothingKernel, dim3(70000, 2), 32, 0, nullptr);  // grid.x may exceed 65,535
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaEmu, CopiesCheckWhereThePointersLive) {
  std::vector<float> host(16, 1.0f), back(16);
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 16 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(host.data(), d, 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue) << "direction swapped";
  EXPECT_EQ(cudaMemcpy(back.data(), d, 64, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue) << "host destination";
  EXPECT_EQ(cudaMemcpy(d + 8, host.data(), 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue) << "out of bounds";
  EXPECT_EQ(cudaMemset(host.data(), 0, 64), cudaErrorInvalidValue) << "memset of host memory";
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "not sticky";
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidDevicePointer);
  size_t free = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  void* huge = nullptr;
  EXPECT_EQ(cudaMalloc(&huge, total + 1), cudaErrorMemoryAllocation);
  cudaGetLastError();
  cudaFree(d);
}

// Kernel faults: each leaves the process's device unusable (sticky), so each runs in a subprocess.
__global__ void ExitedLaneShuffleKernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}
__global__ void DivergentBarrierKernel(int* out) {
  if (threadIdx.x < 48) {
    __syncthreads();
  } else {  // lanes 48..63 wait in the shuffle for lanes 32..47, which wait in __syncthreads
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  }
}

__global__ void PastTheEndKernel(const float* x, int n, float* out) { out[0] = x[n + threadIdx.x]; }

int ReadPastTheEnd() {
  float* x = nullptr;
  float* out = nullptr;
  cudaMalloc(&x, 64 * sizeof(float));
  cudaMalloc(&out, sizeof(float));
  Launch(PastTheEndKernel, 1, 32, 0, nullptr, x, 64, out);
  std::_Exit(0);
}

__global__ void MisalignedKernel(const float* x, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(x + 1);  // 4 bytes past a 16-byte boundary
  out[0] = v.x;
}

int LoadMisaligned() {
  float* x = nullptr;
  cudaMalloc(&x, 64 * sizeof(float));
  Launch(MisalignedKernel, 1, 1, 0, nullptr, x, x + 32);
  std::_Exit(0);
}

int RunFault(void (*kernel)(int*)) {
  int* d = nullptr;
  cudaMalloc(&d, 64 * sizeof(int));
  Launch(kernel, 1, 64, 0, nullptr, d);
  const cudaError_t e = cudaGetLastError();
  // Sticky: the next call fails too.
  int* again = nullptr;
  const bool sticky = cudaMalloc(&again, 4) == cudaErrorLaunchFailure;
  std::_Exit(e == cudaErrorLaunchFailure && sticky ? 3 : 4);
}

TEST(CudaEmuDeathTest, KernelFaultsAreStickyErrors) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(RunFault(ExitedLaneShuffleKernel), ::testing::ExitedWithCode(3), "lanes that have exited|exited while");
  EXPECT_EXIT(RunFault(DivergentBarrierKernel), ::testing::ExitedWithCode(3), "deadlock");
  // Device allocations end at a guard page: reading past one is an illegal address, not a neighbour's data.
  EXPECT_EXIT(ReadPastTheEnd(), ::testing::KilledBySignal(SIGSEGV), "illegal memory access in a kernel");
  // A vector load from an address its type's alignment does not divide: "misaligned address" on a GPU.
  EXPECT_DEATH(LoadMisaligned(), "misaligned address");
}

}  // namespace
}  // namespace moeserve::cuda
