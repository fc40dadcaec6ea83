// y[M, N] = x[M, K] · Wᵀ for a weight W[N, K] packed once into column panels (rl_jax.kernels.cpu.pack_panels):
// panels[P, K, NR] with panels[p, k, j] = W[p·NR + j, k] (zero where p·NR + j >= N), NR = 48.
//
// A register tile of MR rows × NR columns accumulates over k from one broadcast of x and NR/16 vector loads of
// the panel, the panel being read contiguously. While one panel is multiplied, the next one is prefetched into
// L2 (spread over the current panel's row blocks): without it each panel's memory read and its arithmetic run
// one after the other. Panels are split over XLA's intra-op threads when it has several (at most `max_threads`
// of them when that is > 0).
//
// Written with GCC/Clang vector extensions (no intrinsics): the same source compiles for AVX-512, AVX2 and NEON.
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using namespace rl_jax_cpu;

constexpr int kVecs = 3;
constexpr int kPanel = kLanes * kVecs;   // NR: columns per panel (must match rl_jax.kernels.cpu.PANEL)
#if defined(__AVX512F__)
constexpr int kRows = 8;                 // 8 × 3 accumulators + 3 weights + 1 broadcast fit 32 vector registers
#else
constexpr int kRows = 4;
#endif

struct Prefetch {
  const char* next;    // first line to prefetch, or nullptr
  const char* end;     // one past the last line
  int64_t per_k;       // lines per k step (at most 4)
};

// acc[r][v] = Σ_k x[r, k] · panel[k, 16v : 16v + 16] for R rows; writes R × kPanel floats to y (row stride ldy).
// With `scale` (non-null), row r of the tile is multiplied by scale[r] before it is stored.
template <int R>
void tile(int64_t K, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy, Prefetch pf,
          const float* scale) {
  vec acc[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec w[kVecs];
    for (int v = 0; v < kVecs; ++v) w[v] = load(panel + k * kPanel + v * kLanes);
    if (pf.next < pf.end) {   // prefetch never faults: the last step may touch a few lines past `end`
      for (int l = 0; l < 4; ++l)
        if (l < pf.per_k) __builtin_prefetch(pf.next + 64 * l, 0, 2);
      pf.next += 64 * pf.per_k;
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vec xb = splat(x[r * ldx + k]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] += xb * w[v];
    }
  }
  if (scale)
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) acc[r][v] *= splat(scale[r]);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) std::memcpy(y + r * ldy + v * kLanes, &acc[r][v], sizeof(vec));
}

void tile_rows(int rows, int64_t K, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy,
               Prefetch pf, const float* scale) {
  switch (rows) {
    case 1: return tile<1>(K, x, ldx, panel, y, ldy, pf, scale);
    case 2: return tile<2>(K, x, ldx, panel, y, ldy, pf, scale);
    case 3: return tile<3>(K, x, ldx, panel, y, ldy, pf, scale);
#if defined(__AVX512F__)
    case 4: return tile<4>(K, x, ldx, panel, y, ldy, pf, scale);
    case 5: return tile<5>(K, x, ldx, panel, y, ldy, pf, scale);
    case 6: return tile<6>(K, x, ldx, panel, y, ldy, pf, scale);
    case 7: return tile<7>(K, x, ldx, panel, y, ldy, pf, scale);
#endif
    default: return tile<kRows>(K, x, ldx, panel, y, ldy, pf, scale);
  }
}

// Panels [p0, p1) of y = x · Wᵀ (rows scaled by `scale` when non-null); the last panel's columns beyond N go
// through a scratch tile.
void panel_range(int64_t M, int64_t N, int64_t K, const float* x, const float* panels, float* y, int64_t p0,
                 int64_t p1, const float* scale) {
  const int64_t panel_floats = K * kPanel, lines = panel_floats * int64_t(sizeof(float)) / 64;
  const int64_t blocks = (M + kRows - 1) / kRows, per_block = (lines + blocks - 1) / blocks;
  float scratch[kRows * kPanel];
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = panels + p * panel_floats;
    const char* next = p + 1 < p1 ? reinterpret_cast<const char*>(panel + panel_floats) : nullptr;
    const int64_t cols = std::min<int64_t>(kPanel, N - p * kPanel);
    for (int64_t b = 0; b < blocks; ++b) {
      Prefetch pf{nullptr, nullptr, std::min<int64_t>(4, (per_block + K - 1) / std::max<int64_t>(K, 1))};
      if (next) {
        pf.next = next + std::min(b * per_block, lines) * 64;
        pf.end = next + std::min((b + 1) * per_block, lines) * 64;
      }
      const int rows = int(std::min<int64_t>(kRows, M - b * kRows));
      const float* xb = x + b * kRows * K;
      const float* sb = scale ? scale + b * kRows : nullptr;
      float* yb = y + b * kRows * N + p * kPanel;
      if (cols == kPanel) {
        tile_rows(rows, K, xb, K, panel, yb, N, pf, sb);
      } else {
        tile_rows(rows, K, xb, K, panel, scratch, kPanel, pf, sb);
        for (int r = 0; r < rows; ++r) std::memcpy(yb + r * N, scratch + r * kPanel, cols * sizeof(float));
      }
    }
  }
}

// y = x · Wᵀ, row m scaled by scale[m] when `scale` is non-null, the panels split into chunks over the threads.
ffi::Error dense(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& panels,
                 ffi::ResultBuffer<ffi::F32>& y, int64_t max_threads, const float* scale) {
  auto xd = x.dimensions(), pd = panels.dimensions(), yd = y->dimensions();
  const int64_t M = xd[0], K = xd[1], N = yd[1], P = pd[0];
  const int64_t chunks = thread_count(pool, P, max_threads);
  const float *xp = x.typed_data(), *pp = panels.typed_data();
  float* yp = y->typed_data();
  parallel_chunks(pool, chunks, [=](int64_t c) {
    panel_range(M, N, K, xp, pp, yp, c * P / chunks, (c + 1) * P / chunks, scale);
  });
  return ffi::Error::Success();
}

bool bad_shapes(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& panels, ffi::ResultBuffer<ffi::F32>& y) {
  auto xd = x.dimensions(), pd = panels.dimensions(), yd = y->dimensions();
  return xd.size() != 2 || pd.size() != 3 || yd.size() != 2 || pd[2] != kPanel || pd[1] != xd[1] ||
         yd[0] != xd[0] || yd[1] > pd[0] * kPanel || yd[1] <= (pd[0] - 1) * kPanel;
}

ffi::Error packed_dense(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> panels,
                        ffi::ResultBuffer<ffi::F32> y, int64_t max_threads) {
  if (bad_shapes(x, panels, y))
    return ffi::Error::InvalidArgument("packed_dense: expected x [M, K], panels [ceil(N / 48), K, 48], y [M, N]");
  if (x.dimensions()[0] == 0 || y->dimensions()[1] == 0) return ffi::Error::Success();
  return dense(pool, x, panels, y, max_threads, nullptr);
}

// RMSNorm fused into the input: y[m, :] = (x[m, :] · Wᵀ) / √(mean_k x[m, k]² + eps), for a weight W whose columns
// were multiplied by the norm's gain when packed (rl_jax.kernels.cpu.pack_panels(W · diag(g), rms_eps=eps)).
ffi::Error packed_dense_rms(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> panels,
                            ffi::ResultBuffer<ffi::F32> y, int64_t max_threads, float eps) {
  if (bad_shapes(x, panels, y))
    return ffi::Error::InvalidArgument("packed_dense: expected x [M, K], panels [ceil(N / 48), K, 48], y [M, N]");
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1];
  if (M == 0 || y->dimensions()[1] == 0) return ffi::Error::Success();
  std::vector<float> scale(M);
  const float* xp = x.typed_data();
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xp + m * K;
    vec acc = splat(0.0f);
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) acc += load(row + k) * load(row + k);
    float ss = 0.0f;
    for (int i = 0; i < kLanes; ++i) ss += acc[i];
    for (; k < K; ++k) ss += row[k] * row[k];
    scale[m] = 1.0f / std::sqrt(ss / float(K) + eps);
  }
  return dense(pool, x, panels, y, max_threads, scale.data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxPackedDense, packed_dense,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxPackedDenseRms, packed_dense_rms,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads")
                                  .Attr<float>("eps"));
