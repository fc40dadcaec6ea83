// Packs float32 weights into the column panels packed_dense.cc reads, panels[P, K, 48] with P = ⌈N/48⌉, in one
// pass over each weight (the same values as rl_jax.kernels.cpu.pack_panels / pack_panels_input_major, bit for bit):
//
// - input-major: the concatenation along N of weights w_s [K, N_s] (each optionally one layer of a stacked
//   [L, K, N_s] parameter), panels[p, k, j] = w[k, 48p + j] · g[k]: each panel row is a run of at most 48 columns
//   of one source row; 16 rows at a time go to every panel, so the source is read as 16 contiguous streams (panel
//   by panel over all K rows, each row's run would be a page or more from the last: 1.3x slower at SmolLM2's
//   shapes);
// - output-major: W [N, K], panels[p, k, j] = W[48p + j, k] · g[k]: each panel is the transpose of 48 rows of W,
//   done through a 48 × 16 tile in registers/L1.
//
// The gain g [K] (an RMSNorm's, folded into the weight) is optional; without it the values are copied. Columns past
// N are zero. Panels are split over XLA's intra-op threads (at most `max_threads` when that is > 0).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

using namespace rl_jax_cpu;

constexpr int64_t kPanel = 48;
constexpr int64_t kRowBlock = 16;   // source rows copied to every panel at a time (input-major)
constexpr int64_t kTile = kLanes;   // columns of W transposed at a time (output-major)

// One input-major source: rows of `n` floats (row stride n), the columns [col0, col0 + n) of the concatenation.
struct Source {
  const float* data;
  int64_t n, col0;
};

// out[k·48 + j] = in[k·ld + j] (· gain[k]) for j < len, k < rows.
void copy_columns(const float* in, int64_t ld, int64_t rows, int64_t len, const float* gain, float* out) {
  for (int64_t k = 0; k < rows; ++k) {
    const float* row = in + k * ld;
    float* o = out + k * kPanel;
    if (len == kPanel && gain) {
      const vec g = splat(gain[k]);
      for (int v = 0; v < kPanel / kLanes; ++v) store(o + v * kLanes, load(row + v * kLanes) * g);
    } else if (gain) {
      for (int64_t j = 0; j < len; ++j) o[j] = row[j] * gain[k];
    } else {
      std::memcpy(o, row, len * sizeof(float));
    }
  }
}

// Panels [p0, p1) of the concatenation of `sources` (N columns in all) into panels [P, K, 48], kRowBlock source
// rows at a time: the rows are read as a few contiguous streams, each panel gets a contiguous block of rows.
void input_major_panels(const Source* sources, int64_t count, int64_t K, int64_t N, const float* gain, int64_t p0,
                        int64_t p1, float* panels) {
  for (int64_t k0 = 0; k0 < K; k0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, K - k0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c0 = p * kPanel, c1 = std::min(N, c0 + kPanel);
      float* out = panels + (p * K + k0) * kPanel;
      for (int64_t s = 0; s < count; ++s) {
        const Source& src = sources[s];
        const int64_t lo = std::max(c0, src.col0), hi = std::min(c1, src.col0 + src.n);
        if (lo < hi)
          copy_columns(src.data + k0 * src.n + (lo - src.col0), src.n, rows, hi - lo, gain ? gain + k0 : nullptr,
                       out + (lo - c0));
      }
      for (int64_t k = 0; k < rows && c1 - c0 < kPanel; ++k)   // the last panel's columns past N
        std::memset(out + k * kPanel + (c1 - c0), 0, (kPanel - (c1 - c0)) * sizeof(float));
    }
  }
}

// Panel p of W [N, K] into out [K, 48]: 48 rows (zero past N) read 16 columns at a time, transposed through a tile.
void output_major_panel(const float* w, int64_t N, int64_t K, const float* gain, int64_t p, float* out) {
  const int64_t r0 = p * kPanel, rows = std::min(kPanel, N - r0);
  alignas(64) float tile[kPanel][kTile];
  std::memset(tile, 0, sizeof(tile));
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t cols = std::min(kTile, K - k0);
    if (cols == kTile) {
      const vec g = gain ? load(gain + k0) : splat(1.0f);
      for (int64_t j = 0; j < rows; ++j) {
        const vec x = load(w + (r0 + j) * K + k0);
        store(tile[j], gain ? x * g : x);
      }
    } else {
      for (int64_t j = 0; j < rows; ++j)
        for (int64_t c = 0; c < cols; ++c) {
          const float x = w[(r0 + j) * K + k0 + c];
          tile[j][c] = gain ? x * gain[k0 + c] : x;
        }
    }
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t j = 0; j < kPanel; ++j) out[(k0 + c) * kPanel + j] = tile[j][c];
  }
}

// Panels [0, P) split into chunks over the threads; range(p0, p1) writes panels [p0, p1).
template <typename F>
void all_panels(ffi::ThreadPool& pool, int64_t P, int64_t max_threads, F range) {
  const int64_t chunks = thread_count(pool, P, max_threads);
  parallel_chunks(pool, chunks, [=](int64_t c) { range(c * P / chunks, (c + 1) * P / chunks); });
}

// The gain's data for `layer` (null without a gain): g [K] with layer < 0, else g [L, K].
ffi::ErrorOr<const float*> gain_data(ffi::Buffer<ffi::F32>& gain, int64_t layer, int64_t K) {
  auto d = gain.dimensions();
  if (gain.element_count() == 0) return static_cast<const float*>(nullptr);
  if (layer < 0 ? (d.size() != 1 || d[0] != K) : (d.size() != 2 || d[1] != K || layer >= d[0]))
    return ffi::Unexpected(ffi::Error::InvalidArgument("pack_panels: the gain must be [K] (or [L, K] with a layer)"));
  return gain.typed_data() + (layer < 0 ? 0 : layer * K);
}

ffi::Error pack_input_major(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gain, ffi::RemainingArgs weights,
                            ffi::ResultBuffer<ffi::F32> panels, int64_t layer, int64_t max_threads) {
  auto pd = panels->dimensions();
  if (pd.size() != 3 || pd[2] != kPanel || weights.size() == 0 || weights.size() > 16)
    return ffi::Error::InvalidArgument("pack_panels: expected 1 to 16 weights and panels [P, K, 48]");
  const int64_t P = pd[0], K = pd[1];
  Source sources[16];
  int64_t N = 0;
  for (size_t s = 0; s < weights.size(); ++s) {
    auto w = weights.get<ffi::Buffer<ffi::F32>>(s);
    if (!w.has_value()) return w.error();
    auto d = w->dimensions();
    const size_t rank = layer < 0 ? 2 : 3;
    if (d.size() != rank || d[rank - 2] != K || (layer >= 0 && layer >= d[0]))
      return ffi::Error::InvalidArgument("pack_panels: each weight must be [K, N_s] (or [L, K, N_s] with a layer)");
    const int64_t n = d[rank - 1];
    sources[s] = Source{w->typed_data() + (layer < 0 ? 0 : layer * K * n), n, N};
    N += n;
  }
  if (P != (N + kPanel - 1) / kPanel)
    return ffi::Error::InvalidArgument("pack_panels: panels must be [ceil(N / 48), K, 48]");
  auto g = gain_data(gain, layer, K);
  if (!g.has_value()) return g.error();
  const float* gp = *g;
  const int64_t count = int64_t(weights.size());
  float* out = panels->typed_data();
  all_panels(pool, P, max_threads, [&sources, count, K, N, gp, out](int64_t p0, int64_t p1) {
    input_major_panels(sources, count, K, N, gp, p0, p1, out);
  });
  return ffi::Error::Success();
}

ffi::Error pack_output_major(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gain, ffi::Buffer<ffi::F32> w,
                             ffi::ResultBuffer<ffi::F32> panels, int64_t max_threads) {
  auto pd = panels->dimensions(), wd = w.dimensions();
  if (pd.size() != 3 || pd[2] != kPanel || wd.size() != 2 || wd[1] != pd[1] || pd[0] != (wd[0] + kPanel - 1) / kPanel)
    return ffi::Error::InvalidArgument("pack_panels: expected W [N, K] and panels [ceil(N / 48), K, 48]");
  const int64_t N = wd[0], K = wd[1];
  auto g = gain_data(gain, -1, K);
  if (!g.has_value()) return g.error();
  const float *gp = *g, *wp = w.typed_data();
  float* out = panels->typed_data();
  all_panels(pool, pd[0], max_threads, [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) output_major_panel(wp, N, K, gp, p, out + p * K * kPanel);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxPackInputMajor, pack_input_major,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxPackOutputMajor, pack_output_major,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads"));
