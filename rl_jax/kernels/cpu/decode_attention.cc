// Decode attention over a KV cache, one query token per row, grouped heads (GQA):
//   out[b, h, g, :] = Σ_s softmax_s(q[b, h, g, :] · keys[b, h, :, s] + bias[b, s]) · values[b, h, s, :]
// q [B, K, G, hd] (already scaled by 1/√hd), keys [B, K, hd, S], values [B, K, S, hd], bias [B, S] (0 or −1e30),
// out [B, K, G, hd], all float32 (rl_jax.decode's cache layout).
//
// The work is a stream over the cache: for each (row, kv head) its keys and then its values are read once,
// front to back (the cache is contiguous over (b, head, ·, ·), so one layer is two long sequential reads the
// hardware prefetcher follows), and the next head's keys and values are prefetched into L2 while the current
// head is computed. Scores live in a [G, S] scratch in L1; the softmax uses a vectorised exp.
// (row, kv head) pairs are split over XLA's intra-op threads (common.h).
//
// A second entry point (`RlJaxDecodeAttentionUpdate`) does the step's work on the new token too, per (row, kv
// head), just before that head's attention: it takes the q/k/v projection qkv [B, (H + 2K)·hd] as it comes
// from the matmul, rotates q and k by RoPE (half-split layout, the step's cos/sin tables [B, hd/2]), scales q,
// writes the rotated key and the value into cache slot slot[b] of the caches, which are updated in place (each
// is both an operand and, aliased to it, a result), and attends over them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using namespace rl_jax_cpu;

// exp(x) for x <= 0: x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial (relative error ≈ 2e-7), 2^n
// through the exponent bits; 0 below −87 (where float32 e^x underflows; masked slots land there).
inline vec exp_nonpositive(vec x) {
  const vec dead = x < splat(-87.0f) ? splat(0.0f) : splat(1.0f);   // lane-wise 0/1 as float through a select
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  vec n = x * splat(1.44269504088896341f);
  n = __builtin_convertvector(__builtin_convertvector(n + (n < splat(0.0f) ? splat(-0.5f) : splat(0.5f)), ivec), vec);
  const vec r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  vec p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof(vec));
  return p * scale * dead;
}

// A run of cache lines prefetched into L2 a few lines per loop step, spread over the work of the current head
// (a burst of prefetches would fill the line buffers and stall). Prefetch never faults.
struct Cursor {
  const char* next = nullptr;
  const char* end = nullptr;
  int per_step = 0;

  void step() {
    if (next < end) {
      for (int l = 0; l < 4; ++l)
        if (l < per_step) __builtin_prefetch(next + 64 * l, 0, 2);
      next += 64 * per_step;
    }
  }
};

struct Dims {
  int64_t B, K, G, hd, S;
};

// scores[g, s0 : s0 + 16V] = bias + Σ_t q[g, t] · keys[t, s0 : s0 + 16V] for R query rows (register tile).
template <int R, int V>
void score_tile(const float* q, int64_t hd, const float* keys, int64_t S, const float* bias, float* scores,
                Cursor& pf) {
  vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = load(bias + v * kLanes);
  for (int64_t t = 0; t < hd; ++t) {
    vec k[V];
    for (int v = 0; v < V; ++v) k[v] = load(keys + t * S + v * kLanes);
    pf.step();
    for (int r = 0; r < R; ++r) {
      const vec qv = splat(q[r * hd + t]);
      for (int v = 0; v < V; ++v) acc[r][v] += qv * k[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) store(scores + r * S + v * kLanes, acc[r][v]);
}

// out[g, j0 : j0 + 16V] = Σ_s p[g, s] · values[s, j0 : j0 + 16V] for R rows.
template <int R, int V>
void value_tile(const float* p, int64_t S, const float* values, int64_t hd, float* out, Cursor& pf) {
  vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = splat(0.0f);
  for (int64_t s = 0; s < S; ++s) {
    vec x[V];
    for (int v = 0; v < V; ++v) x[v] = load(values + s * hd + v * kLanes);
    pf.step();
    for (int r = 0; r < R; ++r) {
      const vec pv = splat(p[r * S + s]);
      for (int v = 0; v < V; ++v) acc[r][v] += pv * x[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) store(out + r * hd + v * kLanes, acc[r][v]);
}

// scores[r, :] for R rows over all S slots: whole 16-slot groups from the cache, the last S % 16 slots from a
// zero-padded copy [hd, 16] (`tail`, 16·hd floats) so they too take the vector tile.
template <int R>
void scores_rows(const float* q, int64_t hd, const float* keys, int64_t S, const float* bias, float* scores,
                 float* tail, Cursor& pf) {
  int64_t s = 0;
  for (; s + 4 * kLanes <= S; s += 4 * kLanes) score_tile<R, 4>(q, hd, keys + s, S, bias + s, scores + s, pf);
  for (; s + kLanes <= S; s += kLanes) score_tile<R, 1>(q, hd, keys + s, S, bias + s, scores + s, pf);
  if (s == S) return;
  float* tail_bias = tail + hd * kLanes;
  float tail_scores[R * kLanes];
  std::memset(tail, 0, (hd + 1) * kLanes * sizeof(float));
  for (int64_t t = 0; t < hd; ++t) std::memcpy(tail + t * kLanes, keys + t * S + s, (S - s) * sizeof(float));
  std::memcpy(tail_bias, bias + s, (S - s) * sizeof(float));
  score_tile<R, 1>(q, hd, tail, kLanes, tail_bias, tail_scores, pf);
  for (int r = 0; r < R; ++r) std::memcpy(scores + r * S + s, tail_scores + r * kLanes, (S - s) * sizeof(float));
}

template <int R>
void values_rows(const float* p, int64_t S, const float* values, int64_t hd, float* out, Cursor& pf) {
  int64_t j = 0;
  for (; j + 4 * kLanes <= hd; j += 4 * kLanes) value_tile<R, 4>(p, S, values + j, hd, out + j, pf);
  for (; j + kLanes <= hd; j += kLanes) value_tile<R, 1>(p, S, values + j, hd, out + j, pf);
  for (; j < hd; ++j)
    for (int r = 0; r < R; ++r) {
      float acc = 0.0f;
      for (int64_t s = 0; s < S; ++s) acc += p[r * S + s] * values[s * hd + j];
      out[r * hd + j] = acc;
    }
}

// In-place softmax of one scores row.
void softmax_row(float* row, int64_t S) {
  const int64_t sv = S / kLanes * kLanes;
  vec mv = splat(-INFINITY);
  for (int64_t s = 0; s < sv; s += kLanes) {
    const vec x = load(row + s);
    mv = x > mv ? x : mv;
  }
  float m = -INFINITY;
  for (int i = 0; i < kLanes; ++i) m = std::max(m, mv[i]);
  for (int64_t s = sv; s < S; ++s) m = std::max(m, row[s]);
  vec sum = splat(0.0f);
  for (int64_t s = 0; s < sv; s += kLanes) {
    const vec e = exp_nonpositive(load(row + s) - splat(m));
    store(row + s, e);
    sum += e;
  }
  float total = 0.0f;
  for (int i = 0; i < kLanes; ++i) total += sum[i];
  for (int64_t s = sv; s < S; ++s) {
    const float e = exp_nonpositive(splat(row[s] - m))[0];
    row[s] = e;
    total += e;
  }
  const vec inv = splat(1.0f / total);
  for (int64_t s = 0; s < sv; s += kLanes) store(row + s, load(row + s) * inv);
  for (int64_t s = sv; s < S; ++s) row[s] *= inv[0];
}

template <typename F>
void by_row_blocks(int64_t G, F&& f) {   // f(g0, rows) over blocks of at most 3 query rows
  for (int64_t g = 0; g < G; g += 3) f(g, int(std::min<int64_t>(3, G - g)));
}

// Loop steps of the score and value tiles for one head (what the prefetch of the next head is spread over).
void tile_steps(const Dims& d, int64_t& score_steps, int64_t& value_steps) {
  const int64_t blocks = (d.G + 2) / 3, s_tiles = d.S / (4 * kLanes) + (d.S % (4 * kLanes) + kLanes - 1) / kLanes;
  const int64_t h_tiles = d.hd / (4 * kLanes) + d.hd % (4 * kLanes) / kLanes;
  score_steps = std::max<int64_t>(1, blocks * s_tiles * d.hd);
  value_steps = std::max<int64_t>(1, blocks * h_tiles * d.S);
}

// One (row, kv head): scores [G, S] = q · keys + bias, softmax over S, out [G, hd] = p · values. `next_k` /
// `next_v` (or nullptr): the next head's keys and values, prefetched into L2 while this head's keys and values
// are multiplied.
void head(const Dims& d, const float* q, const float* keys, const float* values, const float* bias, float* out,
          float* scores, float* tail, const char* next_k, const char* next_v) {
  const int64_t lines = (d.hd * d.S * int64_t(sizeof(float)) + 63) / 64;
  int64_t score_steps, value_steps;
  tile_steps(d, score_steps, value_steps);
  auto per_step = [&](int64_t steps) { return int(std::min<int64_t>(4, (lines + steps - 1) / steps)); };
  Cursor pk, pv;
  if (next_k) pk = Cursor{next_k, next_k + 64 * lines, per_step(score_steps)};
  if (next_v) pv = Cursor{next_v, next_v + 64 * lines, per_step(value_steps)};
  by_row_blocks(d.G, [&](int64_t g, int rows) {
    const float* qg = q + g * d.hd;
    float* sg = scores + g * d.S;
    if (rows == 3) scores_rows<3>(qg, d.hd, keys, d.S, bias, sg, tail, pk);
    else if (rows == 2) scores_rows<2>(qg, d.hd, keys, d.S, bias, sg, tail, pk);
    else scores_rows<1>(qg, d.hd, keys, d.S, bias, sg, tail, pk);
  });
  for (int64_t g = 0; g < d.G; ++g) softmax_row(scores + g * d.S, d.S);
  by_row_blocks(d.G, [&](int64_t g, int rows) {
    const float* pg = scores + g * d.S;
    float* og = out + g * d.hd;
    if (rows == 3) values_rows<3>(pg, d.S, values, d.hd, og, pv);
    else if (rows == 2) values_rows<2>(pg, d.S, values, d.hd, og, pv);
    else values_rows<1>(pg, d.S, values, d.hd, og, pv);
  });
}

// Pairs [i0, i1) of (row, kv head), the next pair's keys and values prefetched while one is computed.
void head_range(const Dims& d, const float* q, const float* keys, const float* values, const float* bias, float* out,
                int64_t i0, int64_t i1) {
  std::vector<float> scores(d.G * d.S), tail((d.hd + 1) * kLanes);
  const int64_t block = d.hd * d.S;
  for (int64_t i = i0; i < i1; ++i) {
    const bool more = i + 1 < i1;
    head(d, q + i * d.G * d.hd, keys + i * block, values + i * block, bias + i / d.K * d.S, out + i * d.G * d.hd,
         scores.data(), tail.data(), more ? reinterpret_cast<const char*>(keys + (i + 1) * block) : nullptr,
         more ? reinterpret_cast<const char*>(values + (i + 1) * block) : nullptr);
  }
}

ffi::Error decode_attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> keys,
                            ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::F32> bias,
                            ffi::ResultBuffer<ffi::F32> out, int64_t max_threads) {
  auto qd = q.dimensions(), kd = keys.dimensions(), vd = values.dimensions(), bd = bias.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || bd.size() != 2 || kd[0] != qd[0] || kd[1] != qd[1] ||
      kd[2] != qd[3] || vd[0] != qd[0] || vd[1] != qd[1] || vd[2] != kd[3] || vd[3] != qd[3] || bd[0] != qd[0] ||
      bd[1] != kd[3])
    return ffi::Error::InvalidArgument("decode_attention: expected q [B, K, G, hd], keys [B, K, hd, S], "
                                       "values [B, K, S, hd], bias [B, S]");
  Dims d{qd[0], qd[1], qd[2], qd[3], kd[3]};
  if (d.B * d.K * d.G * d.hd == 0) return ffi::Error::Success();
  if (d.S == 0) return ffi::Error::InvalidArgument("decode_attention: an empty cache has no softmax");
  const int64_t pairs = d.B * d.K, chunks = thread_count(pool, pairs, max_threads);
  const float *qp = q.typed_data(), *kp = keys.typed_data(), *vp = values.typed_data(), *bp = bias.typed_data();
  float* op = out->typed_data();
  parallel_chunks(pool, chunks, [=](int64_t c) {
    head_range(d, qp, kp, vp, bp, op, c * pairs / chunks, (c + 1) * pairs / chunks);
  });
  return ffi::Error::Success();
}

// The RoPE rotation of one head (half-split layout, arXiv:2104.09864): y[i] = x[i]·c[i] − x[i + n]·s[i],
// y[i + n] = x[i + n]·c[i] + x[i]·s[i] for i < n = hd/2, each times `scale`.
void rope(const float* x, const float* c, const float* s, int64_t hd, float scale, float* y) {
  const int64_t n = hd / 2;
  for (int64_t i = 0; i < n; ++i) {
    const float a = x[i], b = x[i + n];
    y[i] = (a * c[i] - b * s[i]) * scale;
    y[i + n] = (b * c[i] + a * s[i]) * scale;
  }
}

struct Update {        // the new token's operands of `decode_attention_update`
  const float *qkv, *cos, *sin;
  const int32_t* slot;
  float scale;
};

// Pairs [i0, i1) of (row, kv head): the new key (rotated) and value written into the cache at the row's slot
// (none when the slot is outside [0, S)), the head's G query rows rotated and scaled into a scratch, then the
// head's attention, the next pair's keys and values prefetched while one is computed.
void update_range(const Dims& d, const Update& u, float* keys, float* values, const float* bias, float* out,
                  int64_t i0, int64_t i1) {
  std::vector<float> scores(d.G * d.S), tail((d.hd + 1) * kLanes), q(d.G * d.hd), k(d.hd);
  const int64_t block = d.hd * d.S, width = (d.K * (d.G + 2)) * d.hd, half = d.hd / 2;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / d.K, h = i % d.K, slot = u.slot[b];
    const float *row = u.qkv + b * width, *c = u.cos + b * half, *s = u.sin + b * half;
    const float* v_new = row + (d.K * d.G + d.K + h) * d.hd;
    float *kc = keys + i * block, *vc = values + i * block;
    if (slot >= 0 && slot < d.S) {
      rope(row + (d.K * d.G + h) * d.hd, c, s, d.hd, 1.0f, k.data());
      for (int64_t t = 0; t < d.hd; ++t) kc[t * d.S + slot] = k[t];
      std::memcpy(vc + slot * d.hd, v_new, d.hd * sizeof(float));
    }
    for (int64_t g = 0; g < d.G; ++g) rope(row + (h * d.G + g) * d.hd, c, s, d.hd, u.scale, q.data() + g * d.hd);
    const bool more = i + 1 < i1;
    head(d, q.data(), kc, vc, bias + b * d.S, out + i * d.G * d.hd, scores.data(), tail.data(),
         more ? reinterpret_cast<const char*>(kc + block) : nullptr,
         more ? reinterpret_cast<const char*>(vc + block) : nullptr);
  }
}

// The cache as the result buffer: XLA aliases it to the operand (input_output_aliases); were it a separate
// buffer, the operand is copied into it first.
float* in_place(const ffi::Buffer<ffi::F32>& in, ffi::ResultBuffer<ffi::F32>& res) {
  float* p = res->typed_data();
  if (p != in.typed_data()) std::memcpy(p, in.typed_data(), in.element_count() * sizeof(float));
  return p;
}

ffi::Error decode_attention_update(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> cos,
                                   ffi::Buffer<ffi::F32> sin, ffi::Buffer<ffi::S32> slot,
                                   ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> keys,
                                   ffi::Buffer<ffi::F32> values, ffi::ResultBuffer<ffi::F32> out,
                                   ffi::ResultBuffer<ffi::F32> keys_out, ffi::ResultBuffer<ffi::F32> values_out,
                                   int64_t max_threads, float scale) {
  auto xd = qkv.dimensions(), cd = cos.dimensions(), sd = sin.dimensions(), td = slot.dimensions();
  auto kd = keys.dimensions(), vd = values.dimensions(), bd = bias.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || kd.size() != 4 || vd.size() != 4 || od.size() != 2 || cd.size() != 2 || sd.size() != 2 ||
      td.size() != 1 || bd.size() != 2)
    return ffi::Error::InvalidArgument("decode_attention_update: wrong ranks");
  const int64_t B = kd[0], K = kd[1], hd = kd[2], S = kd[3], G = K > 0 && hd > 0 ? od[1] / (K * hd) : 0;
  if (hd % 2 || xd[0] != B || od[0] != B || od[1] != K * G * hd || xd[1] != (K * G + 2 * K) * hd ||
      vd[0] != B || vd[1] != K || vd[2] != S || vd[3] != hd || cd[0] != B || cd[1] != hd / 2 || sd[0] != B ||
      sd[1] != hd / 2 || td[0] != B || bd[0] != B || bd[1] != S)
    return ffi::Error::InvalidArgument("decode_attention_update: expected qkv [B, (H + 2K)·hd], cos/sin [B, hd/2], "
                                       "slot [B], bias [B, S], keys [B, K, hd, S], values [B, K, S, hd], even hd");
  float *kp = in_place(keys, keys_out), *vp = in_place(values, values_out);
  Dims d{B, K, G, hd, S};
  if (B * K * G * hd == 0) return ffi::Error::Success();
  if (S == 0) return ffi::Error::InvalidArgument("decode_attention_update: an empty cache has no softmax");
  const Update u{qkv.typed_data(), cos.typed_data(), sin.typed_data(), slot.typed_data(), scale};
  const int64_t pairs = B * K, chunks = thread_count(pool, pairs, max_threads);
  const float* bp = bias.typed_data();
  float* op = out->typed_data();
  parallel_chunks(pool, chunks, [=](int64_t c) {
    update_range(d, u, kp, vp, bp, op, c * pairs / chunks, (c + 1) * pairs / chunks);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxDecodeAttention, decode_attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlJaxDecodeAttentionUpdate, decode_attention_update,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()   // sin
                                  .Arg<ffi::Buffer<ffi::S32>>()   // slot
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // keys (aliased to the second result)
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values (aliased to the third result)
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("max_threads")
                                  .Attr<float>("scale"));
