// The CPU emulation of the CUDA execution model (see cuda_emu.h).
//
// A launch hands its blocks to a small pool of host threads. Each host thread
// owns a Runner: up to 1,024 fibers (one per CUDA thread of the block, kept
// across blocks and launches) and the scheduler that runs them. A block runs
// like this:
//
//   queue = shuffled(threads)              seeded per launch and block
//   while queue not empty:
//     resume queue.pop_front()             runs until a barrier or the end
//   a barrier's last arrival appends its waiters, shuffled, to the queue
//   queue empty but threads not done       deadlock: a kernel fault
//
// A fault (deadlock, a bad warp mask) ends the launch, unwinds the block's
// fibers and leaves a sticky cudaErrorLaunchFailure, as a device fault does.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>
#include <boost/context/stack_context.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/cuda/emu/cuda_emu.h"

struct CUstream_st {
  int unused = 0;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
};

namespace moeserve::cuda::emu {
namespace {

namespace ctx = boost::context;

constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kStackBytes = 64 * 1024;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

thread_local bool t_in_kernel = false;  // this host thread runs a block

// A fault inside a kernel (a guard page of a device allocation, or any other
// bad address) is reported as the illegal memory access it would be on a GPU,
// then the process dies of the signal as it would have.
void OnSegv(int sig, siginfo_t* info, void*) {
  if (t_in_kernel) {
    char msg[160] = "moeserve CUDA emulator: illegal memory access in a kernel at 0x";
    size_t n = std::strlen(msg);
    const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
    for (int shift = 60; shift >= 0; shift -= 4) msg[n++] = "0123456789abcdef"[(a >> shift) & 15];
    const char tail[] = " (past the end of a device allocation?)\n";
    std::memcpy(msg + n, tail, sizeof(tail) - 1);
    n += sizeof(tail) - 1;
    (void)!write(2, msg, n);
  }
  signal(sig, SIG_DFL);  // the faulting access runs again and ends the process
}

// ---- The emulated device: memory, errors, attributes -------------------------

struct Device {
  int arch = 86;
  size_t total = 0, used = 0;
  struct Allocation {
    size_t bytes;   // asked for
    void* mapping;  // guard page, data pages, guard page
    size_t mapped;
  };
  std::map<uintptr_t, Allocation> allocations;  // by the pointer handed out
  std::map<const void*, int> max_dynamic_shared;
  std::set<CUstream_st*> streams;
  std::mutex mu;
  cudaError_t sticky = cudaSuccess;
  uint64_t seed = 1;
  std::atomic<uint64_t> launches{0};

  size_t OptInSharedLimit() const { return arch >= 90 ? 232448 : 101376; }
};

Device& Dev() {
  static Device* d = [] {
    auto* dev = new Device();
    dev->arch = EnvInt("MOESERVE_CUDA_EMU_ARCH", 86) >= 90 ? 90 : 86;
    dev->total = static_cast<size_t>(EnvInt("MOESERVE_CUDA_EMU_MEMORY_MB", 4096)) << 20;
    dev->seed = static_cast<uint64_t>(EnvInt("MOESERVE_CUDA_EMU_SEED", 1));
    struct sigaction sa = {};
    sa.sa_sigaction = OnSegv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
    return dev;
  }();
  return *d;
}

thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t Fail(cudaError_t e) {
  t_last_error = e;
  return e;
}

// A device range [p, p + bytes) inside one allocation?  -1: not device memory
// at all, 0: partly device memory (out of bounds), 1: inside one allocation.
int Classify(const void* p, size_t bytes) {
  Device& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = d.allocations.upper_bound(a);
  if (it == d.allocations.begin()) {
    // Below every allocation: host memory unless the range runs into one.
    return it != d.allocations.end() && a + bytes > it->first ? 0 : -1;
  }
  --it;
  const uintptr_t end = it->first + it->second.bytes;
  if (a < end) return a + bytes <= end ? 1 : 0;
  auto next = std::next(it);
  return next != d.allocations.end() && a + bytes > next->first ? 0 : -1;
}

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// ---- Fiber stacks: pooled per host thread, with a guard page below -----------

struct StackPool {
  std::vector<void*> free;
  ~StackPool() {
    for (void* base : free) munmap(base, kStackBytes + static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  }
};

struct PooledStack {
  StackPool* pool;
  ctx::stack_context allocate() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* base;
    if (!pool->free.empty()) {
      base = pool->free.back();
      pool->free.pop_back();
    } else {
      base =
          mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      mprotect(base, page, PROT_NONE);  // a stack overflow faults instead of corrupting memory
    }
    ctx::stack_context sc;
    sc.size = kStackBytes;
    sc.sp = static_cast<char*>(base) + page + kStackBytes;
    return sc;
  }
  void deallocate(ctx::stack_context& sc) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    pool->free.push_back(static_cast<char*>(sc.sp) - kStackBytes - page);
  }
};

// ---- One host thread's block scheduler -----------------------------------------

enum class State { kIdle, kReady, kBlockBarrier, kWarpBarrier, kDone, kFaulted };

struct Thread {
  ctx::fiber fiber;
  uint3 idx;
  int linear = 0;
  State state = State::kIdle;
};

struct Warp {
  unsigned present = 0;  // lanes that exist in this block
  unsigned done = 0;     // lanes that finished
  unsigned mask = 0;     // of the exchange being gathered
  int arrived = 0;
  uint32_t gen = 0;
  std::vector<int> waiting;
  uint64_t slots[2][32] = {};
};

class Runner {
 public:
  ~Runner() {
    body_ = nullptr;
    threads_.clear();  // unwinds the idle fibers
  }

  // Runs one block; returns an empty string or the fault.
  std::string RunBlock(const std::function<void()>& body, dim3 grid, dim3 block, uint64_t linear_block,
                       size_t dynamic_shared, uint64_t seed) {
    body_ = &body;
    gridDim = grid;
    blockDim = block;
    blockIdx = {static_cast<unsigned>(linear_block % grid.x), static_cast<unsigned>(linear_block / grid.x % grid.y),
                static_cast<unsigned>(linear_block / grid.x / grid.y)};
    n_ = static_cast<int>(block.x * block.y * block.z);
    rng_ = Mix(seed);
    fault_.clear();
    done_ = 0;
    waiting_.clear();
    dynamic_.assign((dynamic_shared + 7) / 8, ~uint64_t{0});  // NaN-filled, as nothing is initialised on a GPU
    while (static_cast<int>(threads_.size()) < n_) threads_.push_back(std::make_unique<Thread>());
    warps_.assign((n_ + 31) / 32, Warp{});
    queue_.clear();
    head_ = 0;
    for (int i = 0; i < n_; ++i) {
      Thread& t = *threads_[i];
      t.linear = i;
      t.idx = {static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
               static_cast<unsigned>(i / block.x / block.y)};
      t.state = State::kReady;
      warps_[i / 32].present |= 1u << (i % 32);
      queue_.push_back(i);
    }
    Shuffle(queue_.begin(), queue_.end());
    t_in_kernel = true;
    while (head_ < queue_.size() && fault_.empty()) {
      Thread& t = *threads_[queue_[head_++]];
      current_ = &t;
      threadIdx = t.idx;
      if (!t.fiber) t.fiber = MakeFiber(&t);
      t.fiber = std::move(t.fiber).resume();
    }
    current_ = nullptr;
    t_in_kernel = false;
    if (fault_.empty() && done_ != n_) fault_ = DescribeDeadlock();
    for (int i = 0; i < n_; ++i) {
      Thread& t = *threads_[i];
      if (t.state != State::kDone) t.fiber = ctx::fiber();  // unwinds a thread stopped inside the kernel
      t.state = State::kIdle;
    }
    body_ = nullptr;
    return fault_;
  }

  // ---- Called from inside a kernel's fiber ----
  void SyncThreads() {
    Thread& t = Current();
    t.state = State::kBlockBarrier;
    waiting_.push_back(t.linear);
    MaybeReleaseBlock();
    Yield();
  }

  const uint64_t* Exchange(unsigned mask, uint64_t bits) {
    Thread& t = Current();
    const int lane = t.linear % 32;
    Warp& w = warps_[t.linear / 32];
    if (!(mask >> lane & 1u)) Fault("a warp primitive is called by a lane that is not in its mask");
    if (mask & ~w.present) Fault("a warp mask names lanes that do not exist in the block");
    if (mask & w.done) Fault("a warp mask names lanes that have exited");
    if (w.arrived == 0) {
      w.mask = mask;
    } else if (w.mask != mask) {
      Fault("the lanes of a warp call a warp primitive with different masks");
    }
    const int buf = w.gen & 1;
    w.slots[buf][lane] = bits;
    w.waiting.push_back(t.linear);
    t.state = State::kWarpBarrier;
    if (++w.arrived == __builtin_popcount(mask)) {
      Release(w.waiting);
      w.arrived = 0;
      ++w.gen;
    }
    Yield();
    return w.slots[buf];
  }

  int Lane() { return Current().linear % 32; }
  void* DynamicShared() { return dynamic_.data(); }

  [[noreturn]] void Fault(const std::string& what) {
    Thread& t = Current();
    fault_ = what + " (thread " + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) + "," +
             std::to_string(t.idx.z) + ")";
    t.state = State::kFaulted;
    Yield();
    std::abort();  // never resumed: the scheduler unwinds this fiber
  }

  bool InKernel() const { return current_ != nullptr; }

 private:
  Thread& Current() {
    if (!current_) {
      std::fprintf(stderr, "moeserve CUDA emulator: a device function was called outside a kernel\n");
      std::abort();
    }
    return *current_;
  }

  ctx::fiber MakeFiber(Thread* t) {
    return ctx::fiber(std::allocator_arg, PooledStack{&stacks_}, [this, t](ctx::fiber&& sink) {
      sink_ = std::move(sink);
      for (;;) {
        (*body_)();
        ThreadDone(*t);
        Yield();  // idle until the next block that uses this thread slot
      }
      return std::move(sink_);
    });
  }

  void ThreadDone(Thread& t) {
    t.state = State::kDone;
    ++done_;
    Warp& w = warps_[t.linear / 32];
    w.done |= 1u << (t.linear % 32);
    if (w.arrived > 0 && (w.mask >> (t.linear % 32) & 1u)) {
      fault_ = "a lane exited while its warp waits for it in a warp primitive";
      return;
    }
    MaybeReleaseBlock();
  }

  void MaybeReleaseBlock() {
    // Exited threads count as arrived (sm_70 and later).
    if (!waiting_.empty() && static_cast<int>(waiting_.size()) + done_ == n_) {
      std::vector<int> released;
      released.swap(waiting_);
      Release(released);
    }
  }

  void Release(std::vector<int>& ids) {
    for (int id : ids) threads_[id]->state = State::kReady;
    Shuffle(ids.begin(), ids.end());
    queue_.insert(queue_.end(), ids.begin(), ids.end());
    ids.clear();
  }

  void Yield() { sink_ = std::move(sink_).resume(); }

  template <typename It>
  void Shuffle(It begin, It end) {
    for (auto n = end - begin; n > 1; --n) {
      rng_ = Mix(rng_);
      std::swap(begin[n - 1], begin[static_cast<long>(rng_ % static_cast<uint64_t>(n))]);
    }
  }

  std::string DescribeDeadlock() const {
    int at_block = 0, at_warp = 0;
    for (int i = 0; i < n_; ++i) {
      at_block += threads_[i]->state == State::kBlockBarrier;
      at_warp += threads_[i]->state == State::kWarpBarrier;
    }
    return "deadlock: " + std::to_string(at_block) + " threads wait in __syncthreads, " + std::to_string(at_warp) +
           " in warp primitives, " + std::to_string(done_) + " of " + std::to_string(n_) + " have exited";
  }

  StackPool stacks_;  // first: outlives the fibers on its stacks
  const std::function<void()>* body_ = nullptr;
  std::vector<std::unique_ptr<Thread>> threads_;
  std::vector<Warp> warps_;
  std::vector<int> queue_, waiting_;
  size_t head_ = 0;
  int n_ = 0, done_ = 0;
  uint64_t rng_ = 0;
  std::string fault_;
  std::vector<uint64_t> dynamic_;
  Thread* current_ = nullptr;
  ctx::fiber sink_;  // back to RunBlock, for the fiber that runs now
};

Runner& ThisRunner() {
  thread_local Runner runner;
  return runner;
}

// ---- Host threads that run the blocks of a launch ---------------------------------

class BlockPool {
 public:
  BlockPool() {
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int n = std::clamp(EnvInt("MOESERVE_CUDA_EMU_THREADS", std::min(hw, 16)), 1, 64);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { Work(); });
  }
  ~BlockPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }

  // Runs every block; returns the first fault, or an empty string.
  std::string Run(const std::function<void()>& body, dim3 grid, dim3 block, size_t shared, uint64_t seed) {
    job_ = Job{&body, grid, block, shared, seed, static_cast<uint64_t>(grid.x) * grid.y * grid.z};
    next_ = 0;
    fault_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generation_;
      active_ = static_cast<int>(workers_.size());
    }
    cv_.notify_all();
    RunBlocks();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return active_ == 0; });
    return fault_;
  }

 private:
  struct Job {
    const std::function<void()>* body;
    dim3 grid, block;
    size_t shared;
    uint64_t seed, blocks;
  };

  void RunBlocks() {
    for (;;) {
      const uint64_t b = next_.fetch_add(1);
      if (b >= job_.blocks) return;
      std::string f = ThisRunner().RunBlock(*job_.body, job_.grid, job_.block, b, job_.shared,
                                            job_.seed ^ (b * 0x9e3779b97f4a7c15ull));
      if (!f.empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        if (fault_.empty()) {
          fault_ = f + " in block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
                   std::to_string(blockIdx.z);
        }
        next_ = job_.blocks;  // abandon the rest of the grid
        return;
      }
    }
  }

  void Work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      RunBlocks();
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0) done_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  int active_ = 0;
  Job job_{};
  std::atomic<uint64_t> next_{0};
  std::string fault_;
};

std::mutex g_launch_mu;  // one launch at a time, as one stream runs one kernel after another

}  // namespace

void LaunchKernel(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream,
                  const std::function<void()>& thread_body) {
  Device& d = Dev();
  if (ThisRunner().InKernel()) {
    std::fprintf(stderr, "moeserve CUDA emulator: a kernel launched another kernel (not supported)\n");
    std::abort();
  }
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x > 1024 ||
      block.y > 1024 || block.z > 64 || threads > kMaxThreadsPerBlock || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535) {
    Fail(cudaErrorInvalidConfiguration);
    return;
  }
  size_t shared_limit = kStaticSharedLimit;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    if (d.sticky != cudaSuccess) {
      Fail(d.sticky);
      return;
    }
    auto it = d.max_dynamic_shared.find(kernel);
    if (it != d.max_dynamic_shared.end()) shared_limit = static_cast<size_t>(it->second);
    if (stream != nullptr && !d.streams.count(stream)) {
      Fail(cudaErrorInvalidResourceHandle);
      return;
    }
  }
  if (dynamic_shared > shared_limit) {
    Fail(cudaErrorInvalidValue);
    return;
  }
  std::lock_guard<std::mutex> launch_lock(g_launch_mu);
  static BlockPool* pool = new BlockPool();
  const uint64_t seed = Mix(d.seed * 0x100000001b3ull + d.launches.fetch_add(1));
  const std::string fault = pool->Run(thread_body, grid, block, dynamic_shared, seed);
  if (!fault.empty()) {
    std::fprintf(stderr, "moeserve CUDA emulator: kernel fault: %s (grid %u,%u,%u block %u,%u,%u)\n", fault.c_str(),
                 grid.x, grid.y, grid.z, block.x, block.y, block.z);
    std::lock_guard<std::mutex> lock(d.mu);
    d.sticky = cudaErrorLaunchFailure;
    t_last_error = cudaErrorLaunchFailure;
  }
}

void* DynamicShared() { return ThisRunner().DynamicShared(); }
const uint64_t* WarpExchange(unsigned mask, uint64_t bits) { return ThisRunner().Exchange(mask, bits); }
int LaneId() { return ThisRunner().Lane(); }
void KernelFault(const char* what) { ThisRunner().Fault(what); }

}  // namespace moeserve::cuda::emu

using moeserve::cuda::emu::Classify;
using moeserve::cuda::emu::Dev;
using moeserve::cuda::emu::Device;
using moeserve::cuda::emu::Fail;
using moeserve::cuda::emu::t_last_error;

void __syncthreads() { moeserve::cuda::emu::ThisRunner().SyncThreads(); }
void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace {

bool NoDevice() {
  // CUDA_VISIBLE_DEVICES="" or "-1" hides the device, as with the real runtime.
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  return v && (std::string(v).empty() || std::string(v) == "-1");
}

cudaError_t Sticky() {
  Device& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  return d.sticky;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  if (NoDevice()) {
    *count = 0;
    return Fail(cudaErrorNoDevice);
  }
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0 || NoDevice()) return Fail(cudaErrorInvalidDevice);
  Device& d = Dev();
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "moeserve CUDA emulator (sm_%d)", d.arch);
  p->totalGlobalMem = d.total;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = d.OptInSharedLimit();
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->major = d.arch / 10;
  p->minor = d.arch % 10;
  p->multiProcessorCount = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  p->memoryBusWidth = 384;
  p->l2CacheSize = 6 << 20;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 && !NoDevice() ? cudaSuccess : Fail(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  Device& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  *total = d.total;
  *free = d.total - d.used;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t sticky = Sticky();
  const cudaError_t e = t_last_error != cudaSuccess ? t_last_error : sticky;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last_error != cudaSuccess ? t_last_error : Sticky(); }

namespace {

struct ErrorText {
  cudaError_t code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure",
     "unspecified launch failure (a kernel fault in the CUDA emulator)"},
};

const ErrorText* FindError(cudaError_t e) {
  for (const ErrorText& t : kErrors) {
    if (t.code == e) return &t;
  }
  return nullptr;
}

}  // namespace

const char* cudaGetErrorName(cudaError_t e) {
  const ErrorText* t = FindError(e);
  return t ? t->name : "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  const ErrorText* t = FindError(e);
  return t ? t->text : "unknown error";
}

// Device memory: anonymous pages (untouched KV pools cost no host memory)
// between two inaccessible guard pages. The data ends at most 255 bytes before
// the upper guard (pointers stay 256-byte aligned, as cudaMalloc's), so a
// kernel that runs past the end of an allocation faults instead of reading its
// neighbour.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (const cudaError_t s = Sticky(); s != cudaSuccess) return Fail(s);
  if (bytes == 0) return cudaSuccess;
  Device& d = Dev();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (bytes + page - 1) / page * page;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    if (rounded > d.total - d.used) return Fail(cudaErrorMemoryAllocation);
    d.used += rounded;
  }
  const size_t mapped = rounded + 2 * page;
  void* m = mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED || mprotect(static_cast<char*>(m) + page, rounded, PROT_READ | PROT_WRITE) != 0) {
    if (m != MAP_FAILED) munmap(m, mapped);
    std::lock_guard<std::mutex> lock(d.mu);
    d.used -= rounded;
    return Fail(cudaErrorMemoryAllocation);
  }
  char* p = static_cast<char*>(m) + page + (rounded - (bytes + 255) / 256 * 256);
  std::lock_guard<std::mutex> lock(d.mu);
  d.allocations[reinterpret_cast<uintptr_t>(p)] = {bytes, m, mapped};
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Device& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == d.allocations.end()) return Fail(cudaErrorInvalidDevicePointer);
  munmap(it->second.mapping, it->second.mapped);
  d.used -= it->second.mapped - 2 * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  d.allocations.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t s = Sticky(); s != cudaSuccess) return Fail(s);
  if (bytes == 0) return cudaSuccess;
  const int dst_dev = Classify(dst, bytes), src_dev = Classify(src, bytes);
  // A range that starts in an allocation and runs past its end is an illegal address.
  if (dst_dev == 0 || src_dev == 0) return Fail(cudaErrorInvalidValue);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToHost:
      ok = dst_dev < 0 && src_dev < 0;
      break;
    case cudaMemcpyHostToDevice:
      ok = dst_dev > 0 && src_dev < 0;
      break;
    case cudaMemcpyDeviceToHost:
      ok = dst_dev < 0 && src_dev > 0;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = dst_dev > 0 && src_dev > 0;
      break;
    case cudaMemcpyDefault:
      break;
    default:
      return Fail(cudaErrorInvalidMemcpyDirection);
  }
  if (!ok) return Fail(cudaErrorInvalidValue);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (const cudaError_t s = Sticky(); s != cudaSuccess) return Fail(s);
  if (bytes == 0) return cudaSuccess;
  if (Classify(ptr, bytes) != 1) return Fail(cudaErrorInvalidValue);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) { return cudaMemset(ptr, value, bytes); }

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  Device& d = Dev();
  *stream = new CUstream_st();
  std::lock_guard<std::mutex> lock(d.mu);
  d.streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Device& d = Dev();
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.streams.erase(stream)) return Fail(cudaErrorInvalidResourceHandle);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return Sticky() == cudaSuccess ? cudaSuccess : Fail(Sticky()); }
cudaError_t cudaDeviceSynchronize() { return Sticky() == cudaSuccess ? cudaSuccess : Fail(Sticky()); }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  event->time = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start->recorded || !end->recorded) return Fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  Device& d = Dev();
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return Fail(cudaErrorInvalidValue);
  if (value < 0 || static_cast<size_t>(value) > d.OptInSharedLimit()) return Fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(d.mu);
  d.max_dynamic_shared[func] = value;
  return cudaSuccess;
}
