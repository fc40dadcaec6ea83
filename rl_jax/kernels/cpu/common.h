// What the CPU kernels of this folder share: the 16-lane float vector of GCC/Clang's vector extensions (AVX-512,
// AVX2 and NEON from one source, no intrinsics), its broadcast/load/store, and the split of a kernel's work into
// chunks over XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace rl_jax_cpu {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float vec_u __attribute__((vector_size(kLanes * sizeof(float)), aligned(sizeof(float))));   // unaligned
typedef int32_t ivec __attribute__((vector_size(kLanes * sizeof(int32_t))));

template <size_t... I>
inline vec splat_lanes(float s, std::index_sequence<I...>) {
  return vec{(static_cast<void>(I), s)...};
}

// One broadcast instruction (`vec{} + s` would add a zero first; a lane loop is vectorised with masks).
inline vec splat(float s) { return splat_lanes(s, std::make_index_sequence<kLanes>{}); }
inline vec load(const float* p) { return *reinterpret_cast<const vec_u*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_u*>(p) = v; }

// Threads a kernel with `work` independent items uses: XLA's intra-op threads (at least 1), at most `work`, and at
// most `max_threads` when that is > 0 (1 under XLA_FLAGS=--xla_cpu_multi_thread_eigen=false).
inline int64_t thread_count(const ffi::ThreadPool& pool, int64_t work, int64_t max_threads) {
  int64_t threads = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), std::max<int64_t>(work, 1));
  return max_threads > 0 ? std::min(threads, max_threads) : threads;
}

// Chunks 0 … chunks − 1 claimed from an atomic counter by the caller and chunks − 1 pool tasks, so the caller can
// finish every chunk by itself and never waits for a task that has not started (no deadlock when the pool is
// busy); it waits (futex, C++20 atomic wait) only for chunks another thread has claimed and is running. `f(c)`
// runs chunk c; it is only called before this function returns (a late task finds no chunk left).
template <typename F>
class Chunks {
 public:
  Chunks(int64_t chunks, F f) : chunks_(chunks), f_(std::move(f)) {}

  void run() {
    for (int64_t c; (c = next_.fetch_add(1, std::memory_order_relaxed)) < chunks_;) {
      f_(c);
      done_.fetch_add(1, std::memory_order_release);
      done_.notify_all();
    }
  }

  void wait() {
    for (int64_t d; (d = done_.load(std::memory_order_acquire)) < chunks_;) done_.wait(d, std::memory_order_acquire);
  }

 private:
  const int64_t chunks_;
  F f_;
  std::atomic<int64_t> next_{0}, done_{0};
};

template <typename F>
void parallel_chunks(ffi::ThreadPool& pool, int64_t chunks, F f) {
  if (chunks <= 1) {
    if (chunks == 1) f(0);
    return;
  }
  auto shared = std::make_shared<Chunks<F>>(chunks, std::move(f));
  for (int64_t t = 1; t < chunks; ++t) pool.Schedule([shared] { shared->run(); });
  shared->run();
  shared->wait();
}

}  // namespace rl_jax_cpu
