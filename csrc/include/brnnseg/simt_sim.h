// A small SIMT simulator: runs CUDA kernel source on the CPU, compiled by g++, so CI can execute
// the CUDA kernels without a GPU (in the spirit of Numba's CUDA simulator).
//   * every CUDA thread of a block is an OS thread; blocks run one after another
//   * __syncthreads() is a std::barrier shared by the block's threads
//   * threadIdx / blockIdx / blockDim / gridDim are thread-local
//   * a launch is checked against a GPU's rules first (DeviceSpec, device_spec.h: A100 or H100):
//     block size and the kernel's __launch_bounds__, grid limits (y and z <= 65535), dynamic shared
//     memory above 48 KiB only after the emulated cudaFuncSetAttribute, never above the device's
//     opt-in limit. A refused launch throws std::invalid_argument naming the rule.
//   * dynamic shared memory is exactly the requested size, between guard zones checked after every
//     block, and is reached through SharedPtr: every access is bounds-checked, and a read of a byte
//     no thread of the block has written is reported (a shadow map, like compute-sanitizer's
//     initcheck). The arena is poisoned (0x7f) so such reads also give garbage, not zeros. Faults
//     are collected while the block runs (the faulting access is skipped) and thrown as
//     std::runtime_error after it, so a faulty kernel never hangs or corrupts the host.
//   * global memory an op allocates for the kernels starts poisoned, and kernels read global memory
//     through GlobalPtr: a read of an element never written since the allocation is a fault naming
//     the buffer, the element and the thread (initcheck for global memory; see poison_global).
// Build the simulator with -fsanitize=thread and a missing __syncthreads() shows up as a data race;
// with -fsanitize=address,undefined, out-of-bounds global accesses and UB in the kernel source.
//   * cp.async copies complete at the thread's wait (async_copy_wait_all), not before;
//   * warp-collective operations (nvcuda::wmma fragments, __syncwarp) are emulated exactly, as a
//     per-warp barrier after which each lane takes its part: simt_sim_wmma.h. A collective that not
//     every lane of the warp reaches, or that lanes reach with different arguments, is a fault.
// Not modelled: warp-synchronous execution outside those collectives (kernels must not rely on it),
// atomics ordering beyond std::atomic_ref, registers per SM (ptxas reports those; see
// tests/test_cuda_build.py).
#pragma once
#if defined(__CUDACC__)
#error "simt_sim.h is for host builds of the kernels; nvcc builds use the real CUDA runtime"
#endif
#define BRNNSEG_SIMT_SIM 1  // brnnseg/params.h: kernel parameters hold checked global pointers

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "brnnseg/device_spec.h"

namespace brnnseg::sim {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline std::string str(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// One block's dynamic shared memory: exactly `bytes`, 128-byte aligned, between two guard zones, with
// a shadow byte per byte (1 = written by some thread of this block).
class SharedArena {
 public:
  static constexpr size_t kGuard = 64;
  static constexpr unsigned char kGuardByte = 0xA5;
  static constexpr size_t kAlign = 128;  // as the kernels declare their dynamic shared memory

  explicit SharedArena(size_t bytes)
      : bytes_(bytes), raw_(new unsigned char[bytes + 2 * kGuard + kAlign]), shadow_(new unsigned char[bytes + 1]) {
    base_ = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(raw_.get()) + kGuard + kAlign - 1) &
                                             ~uintptr_t(kAlign - 1));
  }
  unsigned char* data() const { return base_; }
  size_t size() const { return bytes_; }

  void reset() {
    std::memset(base_ - kGuard, kGuardByte, kGuard);
    std::memset(base_ + bytes_, kGuardByte, kGuard);
    std::memset(base_, 0x7f, bytes_);
    std::memset(shadow_.get(), 0, bytes_);
    error_.clear();
  }

  // Checks one access of n bytes at p; false when it must be skipped (out of bounds).
  bool access(const void* p, size_t n, bool write) {
    const intptr_t off = reinterpret_cast<intptr_t>(p) - reinterpret_cast<intptr_t>(base_);
    if (off < 0 || size_t(off) + n > bytes_) {
      fault(std::string("out-of-bounds shared-memory ") + (write ? "write" : "read") + " of " + std::to_string(n) +
            " bytes at offset " + std::to_string(off) + " (the launch asked for " + std::to_string(bytes_) + " bytes)");
      return false;
    }
    for (size_t i = 0; i < n; ++i) {
      std::atomic_ref<unsigned char> s(shadow_[size_t(off) + i]);
      if (write) {
        s.store(1, std::memory_order_relaxed);
      } else if (!s.load(std::memory_order_relaxed)) {
        fault("read of shared memory at offset " + std::to_string(off) + " that no thread of the block has written");
        break;
      }
    }
    return true;
  }

  void fault(const std::string& what);  // defined below (needs the thread state)

  // The first fault of the block, or a damaged guard zone; empty when the block ran clean.
  std::string check() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_.empty()) return error_;
    for (size_t i = 0; i < kGuard; ++i) {
      if (base_[-1 - intptr_t(i)] != kGuardByte)
        return "shared-memory guard zone before the arena overwritten (" + std::to_string(i + 1) + " bytes before it)";
      if (base_[bytes_ + i] != kGuardByte)
        return "shared-memory guard zone after the arena overwritten (" + std::to_string(i) + " bytes past its " +
               std::to_string(bytes_) + " bytes)";
    }
    return {};
  }

 private:
  size_t bytes_;
  std::unique_ptr<unsigned char[]> raw_, shadow_;
  unsigned char* base_;
  std::mutex mu_;
  std::string error_;
};

// One warp of a simulated block: its barrier (the lanes the warp has: 32, fewer in a partial last
// warp) and a scratch area the lanes of a collective exchange their parts through.
struct WarpState {
  explicit WarpState(int lanes) : lanes(lanes), barrier(lanes) {}
  int lanes;
  std::barrier<> barrier;
  alignas(64) double scratch[3 * 16 * 16 + 64];  // three 16x16 matrices + each lane's arguments
};

struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  std::barrier<>* barrier = nullptr;
  SharedArena* arena = nullptr;
  WarpState* warp = nullptr;
  int lane = 0;
};

inline ThreadState& state() {
  thread_local ThreadState s;
  return s;
}

inline void SharedArena::fault(const std::string& what) {
  const ThreadState& s = state();
  std::lock_guard<std::mutex> lock(mu_);
  if (error_.empty()) error_ = what + ", thread " + str(s.thread_idx) + " of block " + str(s.block_idx);
}

// A global-memory fault: collected with the block's other faults (thrown after the block), or thrown at
// once when no block is running (host code reading through a GlobalPtr).
inline void global_fault(const std::string& what) {
  SharedArena* a = state().arena;
  if (a) {
    a->fault(what);
  } else {
    throw std::runtime_error("simt_sim: " + what);
  }
}

// A reference to one element of shared memory: reads and writes go through the arena's checks.
template <typename T>
class SharedRef {
  using V = std::remove_const_t<T>;

 public:
  SharedRef(T* p, SharedArena* a) : p_(p), a_(a) {}
  operator V() const { return a_->access(p_, sizeof(T), false) ? *p_ : V{}; }
  SharedRef& operator=(const V& v) {
    if (a_->access(p_, sizeof(T), true)) *p_ = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& o) { return *this = V(o); }
  SharedRef& operator+=(const V& v) { return *this = V(V(*this) + v); }

 private:
  T* p_;
  SharedArena* a_;
};

// A pointer into shared memory (what `extern __shared__` arrays and pointers derived from them are
// on a GPU): arithmetic as a pointer, element access through SharedRef.
template <typename T>
class SharedPtr {
 public:
  SharedPtr(T* p, SharedArena* a) : p_(p), a_(a) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  SharedPtr(const SharedPtr<U>& o) : p_(o.raw()), a_(o.arena()) {}
  // Address arithmetic in integers: an out-of-range pointer is reported at its first access.
  SharedPtr operator+(int64_t i) const {
    return {reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p_) + uintptr_t(i * int64_t(sizeof(T)))), a_};
  }
  SharedRef<T> operator[](int64_t i) const { return SharedRef<T>((*this + i).p_, a_); }
  T* raw() const { return p_; }
  SharedArena* arena() const { return a_; }

 private:
  T* p_;
  SharedArena* a_;
};

// A typed view `byte_offset` bytes into the block's shared memory.
template <typename T>
SharedPtr<T> smem_at(const SharedPtr<unsigned char>& base, size_t byte_offset) {
  return {reinterpret_cast<T*>(base.raw() + byte_offset), base.arena()};
}

// ---- global memory: poisoned buffers and checked reads (the simulator's initcheck) -----------------
// Every buffer an op allocates for the kernels (projections, workspace, outputs, gradients) is filled
// with a poison pattern and registered by name (poison_global, called by the host code in
// csrc/cuda/sweep_host.h). Kernels reach global memory through GlobalPtr (gmem_ptr<T> in
// brnnseg/params.h): every read of an element compares its bits with the poison pattern of its size
// and, when they match inside a registered buffer, reports a fault naming the buffer, the element, and
// the thread and block -- as compute-sanitizer's initcheck does for a read of memory never written.
// The patterns are NaNs with payloads no arithmetic produces from ordinary NaNs, so an element that is
// never written also fails every comparison with a reference.
constexpr uint32_t kPoisonF32 = 0x7FC0BAD5u;  // float
constexpr uint16_t kPoisonF16 = 0x7E5Bu;      // half (a float NaN converts to 0x7E00)
constexpr uint16_t kPoisonBF16 = 0x7FDBu;     // bfloat16 (a float NaN converts to 0x7FC0)

struct PoisonedBuffer {
  std::string name, desc;  // desc: shape and dtype, for the message
  uintptr_t base;
  size_t bytes, elem;
  uint32_t pattern;
};
inline std::mutex& poison_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<PoisonedBuffer>& poison_registry() {
  static std::vector<PoisonedBuffer> r;
  return r;
}

// Fills [base, base + bytes) with `pattern` (elements of `elem` = 2 or 4 bytes) and registers it as
// `name`. A registration replaces any older one it overlaps (the allocator reuses addresses).
inline void poison_global(const std::string& name, const std::string& desc, void* base, size_t bytes, size_t elem,
                          uint32_t pattern) {
  if (!bytes) return;
  if (elem == 4) {
    for (size_t i = 0; i + 4 <= bytes; i += 4) std::memcpy(static_cast<unsigned char*>(base) + i, &pattern, 4);
  } else if (elem == 2) {
    const uint16_t p16 = uint16_t(pattern);
    for (size_t i = 0; i + 2 <= bytes; i += 2) std::memcpy(static_cast<unsigned char*>(base) + i, &p16, 2);
  } else {
    throw std::invalid_argument("simt_sim: poison_global supports 2- and 4-byte elements, got " + std::to_string(elem));
  }
  const uintptr_t b = reinterpret_cast<uintptr_t>(base);
  std::lock_guard<std::mutex> lock(poison_mutex());
  auto& r = poison_registry();
  r.erase(std::remove_if(r.begin(), r.end(), [&](const PoisonedBuffer& o) { return o.base < b + bytes && b < o.base + o.bytes; }),
          r.end());
  if (r.size() > 4096) r.erase(r.begin(), r.begin() + 2048);  // old entries of long-freed tensors
  r.push_back({name, desc, b, bytes, elem, pattern});
}

inline void global_fault(const std::string& what);  // defined below (needs the block's arena)

// The slow path of a read whose bits equal a poison pattern: a fault if it lies in a registered buffer
// of that element size and pattern.
inline void global_poisoned_read(const void* p, size_t n, uint32_t bits) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::string msg;
  {
    std::lock_guard<std::mutex> lock(poison_mutex());
    for (const PoisonedBuffer& b : poison_registry()) {
      if (a < b.base || a + n > b.base + b.bytes || b.elem != n || b.pattern != bits) continue;
      const size_t off = a - b.base;
      msg = "read of uninitialized global memory: buffer '" + b.name + "' " + b.desc + ", element " +
            std::to_string(off / b.elem) + " (byte offset " + std::to_string(off) + "), never written since the op allocated it";
      break;
    }
  }
  if (!msg.empty()) global_fault(msg);
}

template <typename T>
inline void check_global_read(const T* p) {
  if constexpr (sizeof(T) == 4) {
    uint32_t bits;
    std::memcpy(&bits, p, 4);
    if (bits == kPoisonF32) global_poisoned_read(p, 4, bits);
  } else if constexpr (sizeof(T) == 2) {
    uint16_t bits;
    std::memcpy(&bits, p, 2);
    if (bits == kPoisonF16 || bits == kPoisonBF16) global_poisoned_read(p, 2, bits);
  }
}

// One element of global memory: reads are checked, writes go through.
template <typename T>
class GlobalRef {
  using V = std::remove_const_t<T>;

 public:
  explicit GlobalRef(T* p) : p_(p) {}
  V get() const {
    check_global_read(p_);
    return *p_;
  }
  operator V() const { return get(); }
  GlobalRef& operator=(const V& v) {
    *p_ = v;
    return *this;
  }
  GlobalRef& operator=(const GlobalRef& o) { return *this = o.get(); }
  GlobalRef& operator+=(const V& v) { return *this = V(get() + v); }

 private:
  T* p_;
};

// A pointer into global memory (gmem_ptr<T> in kernel parameters): arithmetic as a pointer, element
// access through GlobalRef. No implicit conversion back to T*: a raw access must say so (gmem_raw).
template <typename T>
class GlobalPtr {
 public:
  GlobalPtr() = default;
  GlobalPtr(T* p) : p_(p) {}  // NOLINT: host code assigns data_ptr<T>() and nullptr
  GlobalPtr(std::nullptr_t) : p_(nullptr) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  GlobalPtr(const GlobalPtr<U>& o) : p_(o.raw()) {}
  GlobalPtr operator+(int64_t i) const { return GlobalPtr(p_ + i); }
  GlobalPtr operator-(int64_t i) const { return GlobalPtr(p_ - i); }
  GlobalRef<T> operator[](int64_t i) const { return GlobalRef<T>(p_ + i); }
  GlobalRef<T> operator*() const { return GlobalRef<T>(p_); }
  explicit operator bool() const { return p_ != nullptr; }
  T* raw() const { return p_; }

 private:
  T* p_ = nullptr;
};

template <typename T>
T* gmem_raw(const GlobalPtr<T>& p) {
  return p.raw();
}
template <typename T>
T* gmem_raw(T* p) {
  return p;
}

// ---- asynchronous copies (cp.async) ------------------------------------------------------------------
// cp.async.cg.shared.global of 16 bytes, emulated as a copy completed at a wait: recorded per thread in
// the group it was issued into and performed (through the arena's checks) by the wait that covers its
// group. async_copy_commit() closes the open group (cp.async.commit_group); async_copy_wait_group<n>()
// completes every committed group but the newest n (cp.async.wait_group n); async_copy_wait_all()
// completes everything, the open group too (cp.async.commit_group + wait_all). A kernel that reads a
// destination before the wait covering it reads what was there before (or an unwritten-read fault):
// a prefetch pipeline that waits too little computes with stale data, which the parity tests see.
struct PendingCopy {
  unsigned char* dst;
  const unsigned char* src;
  SharedArena* arena;
  int64_t group;  // the group it was issued into: the number of groups committed before it
};
inline std::vector<PendingCopy>& pending_copies() {
  thread_local std::vector<PendingCopy> p;
  return p;
}
inline int64_t& committed_copy_groups() {
  thread_local int64_t n = 0;
  return n;
}
template <typename T>
void async_copy16(const SharedPtr<T>& dst, const T* src) {
  if (reinterpret_cast<uintptr_t>(dst.raw()) % 16 || reinterpret_cast<uintptr_t>(src) % 16) {
    dst.arena()->fault("cp.async of 16 bytes from/to an address that is not 16-byte aligned");
    return;
  }
  pending_copies().push_back({reinterpret_cast<unsigned char*>(dst.raw()), reinterpret_cast<const unsigned char*>(src),
                              dst.arena(), committed_copy_groups()});
}
template <typename T>
void async_copy16(const SharedPtr<T>& dst, const GlobalPtr<const T>& src) {
  // The source is read when the copy is issued (a GPU reads it some time before the wait): checked
  // element by element as a kernel's own reads are.
  for (size_t i = 0; i < 16 / sizeof(T); ++i) check_global_read(src.raw() + i);
  async_copy16(dst, src.raw());
}
inline void async_copy_commit() { ++committed_copy_groups(); }
// Completes the copies of groups older than `newest_pending` committed groups (all when `all`).
inline void complete_copies(int64_t newest_pending, bool all) {
  std::vector<PendingCopy>& p = pending_copies();
  const int64_t limit = committed_copy_groups() - newest_pending;  // groups < limit complete
  std::vector<PendingCopy> keep;
  for (const PendingCopy& c : p) {
    if (all || c.group < limit) {
      if (c.arena->access(c.dst, 16, true)) std::memcpy(c.dst, c.src, 16);
    } else {
      keep.push_back(c);
    }
  }
  p.swap(keep);
}
template <int N>
void async_copy_wait_group() {
  complete_copies(N, false);
}
inline void async_copy_wait_all() {
  async_copy_commit();
  complete_copies(0, true);
}

// ---- the device a launch is checked against, and per-kernel attributes ----------------------------

// The simulated GPU of this host thread (H100 unless a DeviceScope says otherwise).
inline const DeviceSpec*& current_device_slot() {
  thread_local const DeviceSpec* d = &kH100;
  return d;
}
inline const DeviceSpec& current_device() { return *current_device_slot(); }

struct DeviceScope {
  const DeviceSpec* saved;
  explicit DeviceScope(const DeviceSpec& d) : saved(current_device_slot()) { current_device_slot() = &d; }
  ~DeviceScope() { current_device_slot() = saved; }
};

struct FuncAttributes {
  size_t max_dynamic_smem = 48 * 1024;  // cudaFuncAttributeMaxDynamicSharedMemorySize, 48 KiB until raised
};

inline std::mutex& attr_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<const void*, FuncAttributes>& attr_table() {
  static std::map<const void*, FuncAttributes> t;
  return t;
}

template <typename Kernel>
const void* kernel_key(Kernel kernel) {
  return reinterpret_cast<const void*>(kernel);
}

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): refused above the
// device's opt-in limit, as the runtime does (cudaErrorInvalidValue).
template <typename Kernel>
void func_set_max_dynamic_smem(Kernel kernel, size_t bytes) {
  const DeviceSpec& dev = current_device();
  if (bytes > dev.smem_per_block_optin)
    throw std::invalid_argument("simt_sim: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(bytes) +
                                ") exceeds the " + dev.name + "'s opt-in limit of " +
                                std::to_string(dev.smem_per_block_optin) + " bytes per block");
  std::lock_guard<std::mutex> lock(attr_mutex());
  attr_table()[kernel_key(kernel)].max_dynamic_smem = bytes;
}

template <typename Kernel>
FuncAttributes func_attributes(Kernel kernel) {
  std::lock_guard<std::mutex> lock(attr_mutex());
  auto it = attr_table().find(kernel_key(kernel));
  return it == attr_table().end() ? FuncAttributes{} : it->second;
}

// Forgets every attribute set so far (tests that plant a missing opt-in).
inline void reset_func_attributes() {
  std::lock_guard<std::mutex> lock(attr_mutex());
  attr_table().clear();
}

// What the launch log records of each launch (tests read it to see which variants ran).
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t smem;
  std::string device;
};
inline std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<LaunchRecord>& launch_log() {
  static std::vector<LaunchRecord> log;
  return log;
}

// The checks a GPU makes before it runs a launch; throws std::invalid_argument naming the rule.
// launch_bounds: the kernel's __launch_bounds__ maximum (0: none declared).
inline void check_launch(const char* name, const DeviceSpec& dev, dim3 grid, dim3 block, size_t smem,
                         unsigned launch_bounds, const FuncAttributes& attr) {
  const std::string k = std::string("simt_sim: launch of ") + name + " on " + dev.name + ": ";
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      nthreads > unsigned(dev.max_threads_per_block))
    throw std::invalid_argument(k + "block " + str(block) + " is not a valid block (at most 1024 threads, " +
                                "x, y <= 1024, z <= 64)");
  if (launch_bounds && nthreads > launch_bounds)
    throw std::invalid_argument(k + "block of " + std::to_string(nthreads) + " threads exceeds the kernel's " +
                                "__launch_bounds__(" + std::to_string(launch_bounds) + ")");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > dev.max_grid_x || grid.y > dev.max_grid_yz ||
      grid.z > dev.max_grid_yz)
    throw std::invalid_argument(k + "grid " + str(grid) + " is outside the limits (x in 1.." +
                                std::to_string(dev.max_grid_x) + ", y and z in 1.." + std::to_string(dev.max_grid_yz) +
                                ")");
  if (smem > dev.smem_per_block_optin)
    throw std::invalid_argument(k + std::to_string(smem) + " bytes of dynamic shared memory exceed the device's " +
                                "opt-in limit of " + std::to_string(dev.smem_per_block_optin) + " bytes per block");
  if (smem > dev.smem_per_block_default && smem > attr.max_dynamic_smem)
    throw std::invalid_argument(k + std::to_string(smem) + " bytes of dynamic shared memory need " +
                                "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, >= " +
                                std::to_string(smem) + ") before the launch (set: " +
                                std::to_string(attr.max_dynamic_smem) + ")");
}

// Runs kernel(args...) over the grid after check_launch. Blocks run sequentially; the threads of a
// block concurrently. A fault in a block's shared memory throws std::runtime_error after the block.
template <typename Kernel, typename... Args>
void launch(const char* name, unsigned launch_bounds, dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel,
            Args... args) {
  const DeviceSpec& dev = current_device();
  check_launch(name, dev, grid, block, shared_bytes, launch_bounds, func_attributes(kernel));
  {
    std::lock_guard<std::mutex> lock(log_mutex());
    launch_log().push_back({name, grid, block, shared_bytes, dev.name});
  }
  const unsigned nthreads = block.x * block.y * block.z;
  SharedArena arena(shared_bytes);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        arena.reset();
        std::barrier<> bar(nthreads);
        std::vector<std::unique_ptr<WarpState>> warps;
        for (unsigned w = 0; w * 32 < nthreads; ++w)
          warps.push_back(std::make_unique<WarpState>(int(std::min(32u, nthreads - w * 32))));
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
              threads.emplace_back([&, tx, ty, tz] {
                ThreadState& s = state();
                s.thread_idx = dim3(tx, ty, tz);
                s.block_idx = dim3(bx, by, bz);
                s.block_dim = block;
                s.grid_dim = grid;
                s.barrier = &bar;
                s.arena = &arena;
                const unsigned linear = tx + block.x * (ty + block.y * tz);
                s.warp = warps[linear / 32].get();
                s.lane = int(linear % 32);
                kernel(args...);
                if (!pending_copies().empty()) {
                  arena.fault("a thread exited with cp.async copies it never waited for");
                  pending_copies().clear();
                }
              });
        for (auto& t : threads) t.join();
        const std::string err = arena.check();
        if (!err.empty())
          throw std::runtime_error(std::string("simt_sim: ") + name + " grid " + str(grid) + " block " + str(block) +
                                   ": " + err);
      }
}

}  // namespace brnnseg::sim

// CUDA spellings, mapped onto the simulator.
using dim3 = ::brnnseg::sim::dim3;
template <typename T>
using smem_ptr = ::brnnseg::sim::SharedPtr<T>;
using ::brnnseg::sim::smem_at;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define threadIdx (::brnnseg::sim::state().thread_idx)
#define blockIdx (::brnnseg::sim::state().block_idx)
#define blockDim (::brnnseg::sim::state().block_dim)
#define gridDim (::brnnseg::sim::state().grid_dim)
#define __syncthreads() (::brnnseg::sim::state().barrier->arrive_and_wait())
#define __ldg(p) (*(p))
// __syncwarp(): the warp's barrier (every lane of the warp must reach it, as with a full mask).
#define __syncwarp(...) (::brnnseg::sim::state().warp->barrier.arrive_and_wait())
#define BRNNSEG_DYNAMIC_SMEM(type, name)                                                                    \
  ::brnnseg::sim::SharedPtr<type> name(reinterpret_cast<type*>(::brnnseg::sim::state().arena->data()), \
                                       ::brnnseg::sim::state().arena)
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), emulated.
#define BRNNSEG_SET_MAX_DYNAMIC_SMEM(kernel, bytes) ::brnnseg::sim::func_set_max_dynamic_smem(kernel, bytes)
// name: for messages and the launch log; bounds: the kernel's __launch_bounds__ maximum, which the
// launch is checked against.
#define BRNNSEG_LAUNCH(kernel, name, bounds, grid, block, smem, stream, ...) \
  ::brnnseg::sim::launch(name, bounds, grid, block, smem, kernel, __VA_ARGS__)

#include "brnnseg/simt_sim_wmma.h"
