// A small SIMT emulator: runs the CUDA kernels of atss_core/csrc/cuda on the CPU,
// so their index arithmetic, launch configurations and block-level synchronisation
// are tested on machines without a GPU (tests/test_cuda_kernels_emulated.py).
//
// Force-included (-include simt.h) before a .cu file that tests/cuda_emulator/build.py
// has rewritten for a C++ compiler: `kernel<<<grid, block, shmem, stream>>>(args)`
// becomes `::atss_emu::Launch(grid, block, shmem, stream).kernel(kernel)(args)` and
// `extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared memory.
//
// Execution model: the blocks of a grid run one after another; the threads of a
// block are fibers (ucontext) on the calling thread. A fiber runs until it calls
// __syncthreads() or returns; once every live fiber of the block is waiting at the
// barrier, all of them resume. So __syncthreads has its CUDA meaning, shared
// memory (function-local statics) is shared by the block, and atomics are trivially
// atomic. A barrier reached at different source lines by different threads of a
// block (divergent __syncthreads, undefined on a GPU) is an error.
//
// What it cannot see: warp-level behaviour (no warp intrinsics are used), memory
// coalescing and speed, device rounding (fused multiply-add, fast-math intrinsics),
// data races between blocks (blocks never overlap here).
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() ::atss_emu::syncthreads(__LINE__)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables of the thread that is running.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

typedef struct CUstream_st* cudaStream_t;

namespace atss_emu {

// Limits of the current NVIDIA GPUs (compute capability 7.0 and later); a launch
// outside them fails on the device with "invalid configuration argument".
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDimZ = 64;
constexpr unsigned long long kMaxGridDimX = 2147483647ULL;
constexpr unsigned int kMaxGridDimYZ = 65535;
constexpr size_t kMaxDynamicSharedBytes = 48 * 1024;  // without an opt-in attribute
constexpr size_t kFiberStackBytes = 128 * 1024;

// What the emulated device reports (cudaDeviceProp::multiProcessorCount).
inline int multiprocessor_count = 132;  // H100 SXM

struct LaunchRecord {
  unsigned int grid[3], block[3];
  size_t shared_bytes;
  long long barriers;  // __syncthreads rounds over the whole grid
};
inline std::vector<LaunchRecord> launch_log;

// AddressSanitizer must be told about every stack switch (build.py, sanitize=...).
#if defined(__SANITIZE_ADDRESS__)
inline void asan_start_switch(void** fake_stack, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
}
inline void asan_finish_switch(void* fake_stack, const void** old_bottom, size_t* old_size) {
  __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
}
#else
inline void asan_start_switch(void**, const void*, size_t) {}
inline void asan_finish_switch(void*, const void**, size_t*) {}
#endif

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false;
  int barrier_line = -1;
  void* fake_stack = nullptr;
};

struct Scheduler {
  ucontext_t host;
  const void* host_stack = nullptr;
  size_t host_stack_size = 0;
  void* host_fake_stack = nullptr;
  std::vector<Fiber> fibers;
  size_t current = 0;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  std::vector<unsigned char> dynamic_shared;
};

inline Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

inline void fiber_main() {
  Scheduler& s = scheduler();
  asan_finish_switch(nullptr, &s.host_stack, &s.host_stack_size);
  try {
    (*s.body)();
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
  }
  s.fibers[s.current].done = true;
  asan_start_switch(nullptr, s.host_stack, s.host_stack_size);
  // Returning resumes uc_link, the scheduler.
}

inline void syncthreads(int line) {
  Scheduler& s = scheduler();
  Fiber& f = s.fibers[s.current];
  f.barrier_line = line;
  asan_start_switch(&f.fake_stack, s.host_stack, s.host_stack_size);
  swapcontext(&f.context, &s.host);
  asan_finish_switch(f.fake_stack, &s.host_stack, &s.host_stack_size);
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(scheduler().dynamic_shared.data());
}

inline void set_thread(size_t t, const dim3& block) {
  threadIdx.x = static_cast<unsigned int>(t % block.x);
  threadIdx.y = static_cast<unsigned int>((t / block.x) % block.y);
  threadIdx.z = static_cast<unsigned int>(t / (size_t(block.x) * block.y));
}

// Runs one block to completion; returns the number of barrier rounds.
inline long long run_block(Scheduler& s, size_t threads) {
  for (size_t t = 0; t < threads; ++t) {
    Fiber& f = s.fibers[t];
    f.done = false;
    f.barrier_line = -1;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &s.host;
    makecontext(&f.context, fiber_main, 0);
  }
  // Uninitialised shared memory reads as a recognisable pattern, not as zeros.
  if (!s.dynamic_shared.empty()) std::memset(s.dynamic_shared.data(), 0xA5, s.dynamic_shared.size());
  long long rounds = 0;
  for (bool waiting = true; waiting; ++rounds) {
    waiting = false;
    int line = -1;
    for (size_t t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[t];
      if (f.done) continue;
      set_thread(t, blockDim);
      s.current = t;
      asan_start_switch(&s.host_fake_stack, f.stack.data(), f.stack.size());
      swapcontext(&s.host, &f.context);
      asan_finish_switch(s.host_fake_stack, nullptr, nullptr);
      if (s.error) std::rethrow_exception(std::exchange(s.error, nullptr));
      if (f.done) continue;
      if (line != -1 && f.barrier_line != line) {
        throw std::runtime_error("divergent __syncthreads: threads of block (" +
                                 std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) +
                                 ") wait at lines " + std::to_string(line) + " and " +
                                 std::to_string(f.barrier_line));
      }
      line = f.barrier_line;
      waiting = true;
    }
  }
  return rounds - 1;
}

class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t = nullptr)
      : grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... Params>
  auto kernel(void (*fn)(Params...)) const {
    return [launch = *this, fn](auto&&... args) {
      const std::function<void()> body = [&] { fn(args...); };
      launch.run(body);
    };
  }

 private:
  void check() const {
    const unsigned long long threads =
        static_cast<unsigned long long>(block_.x) * block_.y * block_.z;
    auto fail = [&](const std::string& why) {
      throw std::runtime_error(
          "invalid configuration argument: grid (" + std::to_string(grid_.x) + ", " +
          std::to_string(grid_.y) + ", " + std::to_string(grid_.z) + "), block (" +
          std::to_string(block_.x) + ", " + std::to_string(block_.y) + ", " +
          std::to_string(block_.z) + "), " + std::to_string(shared_bytes_) +
          " bytes of dynamic shared memory: " + why);
    };
    if (threads == 0 || threads > kMaxThreadsPerBlock) fail("threads per block not in 1..1024");
    if (block_.z > kMaxBlockDimZ) fail("blockDim.z > 64");
    if (grid_.x == 0 || grid_.y == 0 || grid_.z == 0) fail("empty grid");
    if (grid_.x > kMaxGridDimX || grid_.y > kMaxGridDimYZ || grid_.z > kMaxGridDimYZ) {
      fail("grid too large");
    }
    if (shared_bytes_ > kMaxDynamicSharedBytes) fail("more than 48 KiB of dynamic shared memory");
  }

  void run(const std::function<void()>& body) const {
    check();
    Scheduler& s = scheduler();
    const size_t threads = size_t(block_.x) * block_.y * block_.z;
    if (s.fibers.size() < threads) {
      s.fibers.resize(threads);
      for (Fiber& f : s.fibers) f.stack.resize(kFiberStackBytes);
    }
    s.body = &body;
    s.dynamic_shared.assign(shared_bytes_, 0);
    gridDim = grid_;
    blockDim = block_;
    LaunchRecord record{{grid_.x, grid_.y, grid_.z}, {block_.x, block_.y, block_.z},
                        shared_bytes_, 0};
    for (unsigned int z = 0; z < grid_.z; ++z) {
      for (unsigned int y = 0; y < grid_.y; ++y) {
        for (unsigned int x = 0; x < grid_.x; ++x) {
          blockIdx = {x, y, z};
          record.barriers += run_block(s, threads);
        }
      }
    }
    s.body = nullptr;
    launch_log.push_back(record);
  }

  dim3 grid_, block_;
  size_t shared_bytes_;
};

}  // namespace atss_emu
