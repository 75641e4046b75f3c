// The CUDA execution model emulated on the CPU, so that the CUDA backend's
// `.cu` sources compile with the host compiler and run where no GPU is.
//
// What it emulates (only what the sources use, plus the common primitives a
// kernel of this kind needs next):
//   * launches (engine/cuda/launch.cuh's Launch, `<<<...>>>` under nvcc): every
//     CUDA thread is a fiber (Boost.Context); the blocks of a grid run one
//     after another on each host thread of a small pool, the threads of a
//     block interleave only at barriers, in a seeded random order (so a
//     missing __syncthreads shows up as a wrong result, not as luck);
//   * __syncthreads as a block barrier (exited threads count as arrived, as on
//     sm_70+); warp shuffles, votes and __syncwarp as barriers of the lanes
//     named in the mask — a mask naming an exited or absent lane, or lanes
//     disagreeing on the mask, is a kernel fault;
//   * static __shared__ (one copy per host thread, i.e. per block in flight)
//     and dynamic shared memory (MOESERVE_DYNAMIC_SHARED, poisoned with NaNs
//     before every block);
//   * atomics (std::atomic_ref: blocks run in parallel), math intrinsics,
//     bf16 / half conversions;
//   * the runtime calls used: device properties of an sm_86 card (sm_90 with
//     MOESERVE_CUDA_EMU_ARCH=90), allocation inside an emulated memory size
//     (MOESERVE_CUDA_EMU_MEMORY_MB, default 4096), copies and memsets with
//     their direction and bounds checked against the allocations, streams and
//     events as synchronous host operations, sticky errors after a fault.
// What the hardware refuses, it refuses: more than 1,024 threads per block
// (or block.z > 64), grid.y/z over 65,535 and grid.x over 2^31 - 1, dynamic
// shared memory over 48 KB without cudaFuncSetAttribute and over the opt-in
// maximum (99 KB on sm_86, 227 KB on sm_90) with it. (Static __shared__ over
// 48 KB is refused by nvcc itself, which compiles the same sources in every
// build where it exists.) Device allocations sit between guard pages: a kernel
// running past the end of one dies with "illegal memory access", and copies and
// memsets must stay inside one allocation and go the direction they say. The
// kernels are compiled with UBSan's alignment check (engine/CMakeLists.txt): a
// misaligned vector load stops the process with "misaligned address", as the
// GPU's fault would.
//
// Environment: MOESERVE_CUDA_EMU_SEED (thread order, default 1),
// MOESERVE_CUDA_EMU_THREADS (host threads running blocks; default the
// hardware's, at most 16).
//
// Not emulated: device pointers are host pointers (a kernel reading host
// memory works here and faults on a GPU), timing, memory coalescing and
// floating-point differences of the device's intrinsics (expf, rsqrtf).
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define MOESERVE_CUDA_EMU_ACTIVE 1

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
// One copy per host thread: blocks run one after another on each host thread,
// so this is one copy per block in flight, shared by the block's fibers.
#define __shared__ static thread_local

// ---- Vector and index types ------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

// The executing CUDA thread's indices. Set by the emulator before it resumes a
// fiber; kernels read them as on the device.
// Constant-initialized: reads are plain TLS loads, no wrapper calls.
inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---- Runtime API -----------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major;
  int minor;
  int multiProcessorCount;
  int memoryBusWidth;
  int l2CacheSize;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaMemGetInfo(size_t* free, size_t* total);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);

cudaError_t cudaMalloc(void** ptr, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---- The emulator's own interface --------------------------------------------

namespace moeserve::cuda::emu {

// Runs `thread_body` once per CUDA thread of the grid (see the file comment).
// Errors (configuration, faults) set the runtime's last error, as a launch does.
void LaunchKernel(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
                  const std::function<void()>& thread_body);

// The block's dynamic shared memory (MOESERVE_DYNAMIC_SHARED).
void* DynamicShared();

// Warp exchange: every lane named in `mask` (the caller's included) deposits
// `bits` and waits for the others; returns the 32 deposited values of the
// caller's warp (only the masked lanes' are meaningful).
const uint64_t* WarpExchange(unsigned mask, uint64_t bits);
// The caller's lane in its warp.
int LaneId();
// A fault of the running kernel (e.g. a shuffle reading an absent lane).
[[noreturn]] void KernelFault(const char* what);

}  // namespace moeserve::cuda::emu

#define MOESERVE_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::moeserve::cuda::emu::DynamicShared())

// ---- Synchronization and warp primitives -------------------------------------

void __syncthreads();
void __threadfence();
void __threadfence_block();

inline void __syncwarp(unsigned mask = 0xffffffffu) { moeserve::cuda::emu::WarpExchange(mask, 0); }

namespace moeserve::cuda::emu {
template <typename T>
T Shuffle(unsigned mask, T v, int src_lane) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const uint64_t* all = WarpExchange(mask, bits);
  if (!(mask >> src_lane & 1u)) KernelFault("a shuffle reads a lane that is not in its mask");
  T out;
  std::memcpy(&out, &all[src_lane], sizeof(T));
  return out;
}
}  // namespace moeserve::cuda::emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = moeserve::cuda::emu::LaneId();
  return moeserve::cuda::emu::Shuffle(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = moeserve::cuda::emu::LaneId();
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;  // outside the segment: own value
  return moeserve::cuda::emu::Shuffle(mask, v, src);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = moeserve::cuda::emu::LaneId();
  const int src = lane + static_cast<int>(delta);
  return moeserve::cuda::emu::Shuffle(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = moeserve::cuda::emu::LaneId();
  const int src = lane - static_cast<int>(delta);
  return moeserve::cuda::emu::Shuffle(mask, v, src >= (lane & ~(width - 1)) ? src : lane);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* all = moeserve::cuda::emu::WarpExchange(mask, predicate != 0);
  unsigned out = 0;
  for (int i = 0; i < 32; ++i) out |= ((mask >> i & 1u) && all[i]) ? 1u << i : 0u;
  return out;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

// ---- Atomics (blocks run on several host threads) ------------------------------

namespace moeserve::cuda::emu {
template <typename T>
T AtomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
}  // namespace moeserve::cuda::emu
inline int atomicAdd(int* p, int v) { return moeserve::cuda::emu::AtomicAdd(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return moeserve::cuda::emu::AtomicAdd(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return moeserve::cuda::emu::AtomicAdd(p, v);
}
inline float atomicAdd(float* p, float v) { return moeserve::cuda::emu::AtomicAdd(p, v); }
inline double atomicAdd(double* p, double v) { return moeserve::cuda::emu::AtomicAdd(p, v); }
template <typename T>
T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}
template <typename T>
T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T cur = a.load();
  while (cur > v && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}
template <typename T>
T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);
  return compare;
}

// ---- Math and bit intrinsics --------------------------------------------------

inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __int_as_float(int u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(unsigned v) { return v ? __builtin_clz(v) : 32; }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
// CUDA's integer min/max overloads (the float ones come from <cmath>).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }

// ---- bf16 and half ---------------------------------------------------------------

struct __nv_bfloat16 {
  uint16_t x;
};
struct __half {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 b) { return std::bit_cast<float>(static_cast<uint32_t>(b.x) << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
// IEEE binary16 <-> float in integer arithmetic (round to nearest even, as
// the device's conversions), so that no compiler's _Float16 support is needed.
inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu, man = h.x & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // inf, NaN
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}
inline __half __float2half(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u | ((u >> 13) & 0x3ffu))};  // NaN stays NaN
  if (u >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (u < 0x38800000u) {  // below 2^-14: a subnormal half (exact scaling, then round to nearest even)
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(std::bit_cast<float>(u) * 16777216.0f)))};
  }
  u += 0xfffu + ((u >> 13) & 1u);
  return {static_cast<uint16_t>(sign | ((u >> 13) - (112u << 10)))};
}
