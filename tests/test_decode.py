"""Decode path: inverse-CDF draws == float64 reference, candidate sampling == filter_logits' distribution,
shared-prompt prefill == repeated prompts, bucketed cache == one bucket, bfloat16 within tolerance, the fused
output-major decode step == the full forward (QKV bias, QK-norm, untied head) and == the unfused step it replaced,
the CPU packed-panel kernel's step == XLA's (and the samplers' tokens equal with and without it)."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.decode import PROJECTIONS, decode_step, decode_weights, resolve_cpu_kernels
from rl_jax.kernels.cpu import PackedWeight
from rl_jax.experiments.benchmarks.decode_previous import previous_decode_step, previous_weights
from rl_jax.models import forward, init_params, tiny_config
from rl_jax.sampling import filter_logits, generate, inverse_cdf, prefill, row_uniforms, sample_tokens
from rl_jax.decode import grow_cache

CFG = tiny_config(23, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))
IDS = jnp.asarray([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 9, 1, 2]], jnp.int32)
MASK = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], jnp.int32)


def _reference_index(logits, u):
  """float64: first index whose cumulative probability exceeds u."""
  p = np.exp(logits - logits.max())
  c = np.cumsum(p / p.sum())
  return int(np.searchsorted(c, u, side="right"))


def test_inverse_cdf_matches_a_float64_searchsorted_and_skips_masked_entries():
  rng = np.random.default_rng(0)
  v = 1000                                                   # 4 blocks of 256, the last one partial
  logits = rng.normal(size=(6, v)) * 3
  logits[:, rng.integers(0, v, 300)] = -np.inf               # masked entries never drawn
  logits[5, :900] = -np.inf                                  # all mass in the last (partial) block
  u = np.array([0.0, 0.13, 0.5, 0.77, 0.999999, 0.31])
  x = jnp.asarray(logits, jnp.float32)
  got = np.asarray(inverse_cdf(x, jax.nn.logsumexp(x, axis=-1), jnp.asarray(u, jnp.float32)))
  for r in range(6):
    want = _reference_index(logits[r], u[r])
    assert np.isfinite(logits[r, got[r]])
    if want != got[r]:                                       # only at a float32 rounding boundary
      p = np.exp(logits[r] - logits[r].max()); c = np.cumsum(p / p.sum())
      assert abs(c[min(got[r], want)] - u[r]) < 1e-5


@pytest.mark.parametrize("kw", [dict(top_k=0, top_p=1.0), dict(top_k=3, top_p=1.0), dict(top_k=0, top_p=0.8),
                                dict(top_k=5, top_p=0.7), dict(top_k=0, top_p=0.999)])
def test_sample_tokens_frequencies_on_a_grid_of_uniforms_equal_the_filtered_distribution(kw):
  """u on an evenly spaced grid of M points: each token is drawn p·M ± 1 times, p = softmax(filter_logits)."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 300)) * 2.0, jnp.float32)
  m = 4000
  u = (jnp.arange(m) + 0.5) / m
  tok, logp = jax.jit(lambda l, u: sample_tokens(jnp.repeat(l, m, 0), u, temperature=0.7, **kw))(logits, u)
  want = np.asarray(jax.nn.log_softmax(filter_logits(logits, temperature=0.7, **kw)[0]))
  counts = np.bincount(np.asarray(tok), minlength=300)
  np.testing.assert_array_less(np.abs(counts - np.exp(want) * m), 1.01 + 1e-3 * m)
  assert np.all(np.isfinite(want[np.asarray(tok)]))
  np.testing.assert_allclose(np.asarray(logp), want[np.asarray(tok)], atol=1e-5)


def test_flat_rows_take_the_full_vocabulary_fallback():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 2000)) * 0.01, jnp.float32)  # nucleus > 256
  u = jnp.asarray([0.25, 0.9])
  tok, logp = sample_tokens(logits, u, temperature=1.0, top_p=0.9)
  want = jax.nn.log_softmax(filter_logits(logits, temperature=1.0, top_k=0, top_p=0.9), -1)
  got_want = np.asarray(jnp.take_along_axis(want, tok[:, None], -1)[:, 0])
  assert np.all(np.isfinite(got_want))
  np.testing.assert_allclose(np.asarray(logp), got_want, atol=1e-5)


def test_greedy_with_a_shared_prompt_cache_and_small_buckets_matches_the_full_forward():
  out = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), max_new_tokens=7, temperature=0.0, group_size=2,
                 decode_block=3)
  assert out.tokens.shape == (6, 7)
  for row in range(6):   # causal: one forward over prompt + sampled tokens gives every step's next-token logits
    prompt = [int(t) for t, m in zip(IDS[row // 2], MASK[row // 2]) if m]
    tokens = np.asarray(out.tokens[row])
    logits = forward(PARAMS, jnp.asarray([prompt + tokens.tolist()]), CFG)[0, len(prompt) - 1:-1]
    np.testing.assert_array_equal(tokens, np.asarray(jnp.argmax(logits, -1)))    # each step the greedy token
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[:, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logp[row]), want, atol=1e-5)


def test_shared_prompt_and_buckets_do_not_change_sampled_rows():
  kw = dict(max_new_tokens=9, temperature=1.3, top_p=0.9, stop_tokens=(3,))
  a = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(5), group_size=3, decode_block=4, **kw)
  b = generate(PARAMS, CFG, jnp.repeat(IDS, 3, 0), jnp.repeat(MASK, 3, 0), jax.random.PRNGKey(5), **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
  np.testing.assert_allclose(np.asarray(a.logp), np.asarray(b.logp), atol=1e-5)
  assert len({tuple(r) for r in np.asarray(a.tokens)}) > 3   # rows of a group differ (their own keys)


def test_bfloat16_sampler_stays_close_to_float32():
  """Stated tolerance: bfloat16 weights/KV move greedy log-probs by < 0.05 nats on this model; tokens mostly agree."""
  kw = dict(max_new_tokens=8, temperature=0.0)
  a = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), **kw)
  b = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), dtype=jnp.bfloat16, **kw)
  same = np.asarray(a.tokens) == np.asarray(b.tokens)
  first = np.asarray(a.tokens[:, 0]) == np.asarray(b.tokens[:, 0])
  assert first.all() and same.mean() > 0.8
  agree = np.cumprod(same, axis=1).astype(bool)            # up to the first divergence the inputs are equal
  np.testing.assert_allclose(np.asarray(b.logp)[agree], np.asarray(a.logp)[agree], atol=0.05)


# the samplers call sample_tokens under jit; so do the token comparisons below (eagerly it is ~0.5 s a call)
_sample_tokens = jax.jit(sample_tokens, static_argnames=("temperature", "top_k", "top_p"))


def _decode_logits(step_fn, w, cfg, params, steps):
  """Logits of `steps` decode steps after prefilling IDS, feeding fixed tokens (rows see their own prompts)."""
  logits, cache = prefill(params, cfg, IDS, MASK)
  p = IDS.shape[1]
  cache = grow_cache(cache, p + steps)
  allowed = jnp.pad(MASK.astype(bool), ((0, 0), (0, steps)))
  out = [logits]
  for i in range(steps):
    allowed = allowed.at[:, p + i].set(True)
    token = jnp.asarray([4 + i, 7, (3 * i) % 23], jnp.int32)
    logits, cache = step_fn(w, cfg, cache, token, jnp.sum(MASK, 1) + i, p + i, allowed)
    out.append(logits)
  return jnp.stack(out, 1)


@pytest.mark.parametrize("extra", [dict(), dict(qkv_bias=True), dict(qk_norm=True), dict(tie_embeddings=False)])
def test_fused_output_major_step_equals_the_full_forward(extra):
  cfg = tiny_config(23, max_seq_len=32, **extra)
  params = init_params(cfg, jax.random.PRNGKey(1))
  if cfg.qkv_bias:                                      # non-zero biases, so their order in the fused layout counts
    params["layers"] = dict(params["layers"], **{k: 0.1 * jax.random.normal(jax.random.PRNGKey(i), params["layers"][k].shape)
                                                 for i, k in enumerate(("bq", "bk", "bv"))})
  got = _decode_logits(decode_step, decode_weights(params, cfg), cfg, params, 4)
  for row in range(3):
    seq = [int(t) for t, m in zip(IDS[row], MASK[row]) if m] + [[4 + i, 7, (3 * i) % 23][row] for i in range(4)]
    want = forward(params, jnp.asarray([seq]), cfg)[0, -5:]
    np.testing.assert_allclose(np.asarray(got[row]), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_fused_step_samples_the_same_tokens_as_the_unfused_step():
  """Stated tolerance for the reordered matmuls: logits within 1e-5 of the previous step; the tokens drawn with the
  same keys are equal and their log-probs within 1e-5."""
  a = _decode_logits(decode_step, decode_weights(PARAMS, CFG), CFG, PARAMS, 5)
  b = _decode_logits(previous_decode_step, previous_weights(PARAMS, CFG), CFG, PARAMS, 5)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  for i in range(6):
    for kw in (dict(temperature=1.0), dict(temperature=0.6, top_p=0.9), dict(temperature=0.0)):
      ta, la = _sample_tokens(a[:, i], row_uniforms(keys, i), **kw)
      tb, lb = _sample_tokens(b[:, i], row_uniforms(keys, i), **kw)
      np.testing.assert_array_equal(np.asarray(ta), np.asarray(tb))
      np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="group_size and decode_block"):
    generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), max_new_tokens=2, group_size=0)


@pytest.fixture(scope="module")
def cpu_kernel():
  from rl_jax.kernels.cpu import build, load
  if build.compiler() is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip("no C++ compiler")
  assert load(), "the CPU kernel library did not build or load (see the log)"


@pytest.mark.parametrize("extra", [dict(), dict(qkv_bias=True), dict(tie_embeddings=False, qk_norm=True)])
def test_cpu_kernel_step_equals_the_xla_step(cpu_kernel, extra):
  """Stated tolerance: the packed-panel projections change only the float32 summation order: logits within 1e-5
  (relative to their scale), the tokens drawn with the same keys equal."""
  cfg = tiny_config(53, max_seq_len=32, **extra)              # vocabulary 53: a head of two panels, the last partial
  params = init_params(cfg, jax.random.PRNGKey(2))
  if cfg.qkv_bias:
    params["layers"] = dict(params["layers"], **{k: 0.1 * jax.random.normal(jax.random.PRNGKey(i), params["layers"][k].shape)
                                                 for i, k in enumerate(("bq", "bk", "bv"))})
  w = decode_weights(params, cfg, cpu_kernels=True)
  assert isinstance(w.head, PackedWeight) and all(isinstance(w.layers[0][n], PackedWeight) for n in PROJECTIONS)
  a = _decode_logits(decode_step, w, cfg, params, 4)
  b = _decode_logits(decode_step, decode_weights(params, cfg), cfg, params, 4)
  c = _decode_logits(functools.partial(decode_step, cpu_attention=False), w, cfg, params, 4)   # matmul kernel only
  scale = float(jnp.abs(b).max())
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(c), np.asarray(b), atol=1e-5 * scale, rtol=1e-5)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  for i in range(5):
    for kw in (dict(temperature=1.0), dict(temperature=0.0)):
      np.testing.assert_array_equal(np.asarray(_sample_tokens(a[:, i], row_uniforms(keys, i), **kw)[0]),
                                    np.asarray(_sample_tokens(b[:, i], row_uniforms(keys, i), **kw)[0]))


@pytest.mark.parametrize("extra", [dict(qkv_bias=True), dict(tie_embeddings=False, qk_norm=True)])
def test_packed_weights_are_the_xla_weights_packed(cpu_kernel, extra):
  """decode_weights(cpu_kernels=True) packs straight from the input-major parameters (the CPU packing kernel, eager
  and jitted): each PackedWeight equals pack_panels of the XLA path's output-major weight (its norm gain folded in),
  bit for bit; other entries equal."""
  cfg = tiny_config(53, max_seq_len=32, **extra)
  params = init_params(cfg, jax.random.PRNGKey(4))
  params["layers"] = dict(params["layers"], attn_norm=params["layers"]["attn_norm"] * 1.5 + 0.25,
                          mlp_norm=params["layers"]["mlp_norm"] * 0.5 + 0.125)   # gains other than one
  plain = decode_weights(params, cfg)
  pairs = []
  for packed in (decode_weights(params, cfg, cpu_kernels=True),
                 jax.jit(lambda p: decode_weights(p, cfg, cpu_kernels=True))(params)):
    pairs += _packed_pairs(packed, plain, cfg)
  for got, want in pairs:
    assert (got.n, got.rms_eps) == (want.n, want.rms_eps)
    np.testing.assert_array_equal(np.asarray(got.panels), np.asarray(want.panels))


def _packed_pairs(packed, plain, cfg) -> list:
  """(packed weight, pack_panels of the plain weight) for the head and every projection; the other entries of the
  layers checked equal."""
  from rl_jax.kernels.cpu import pack_panels
  norms = {"w_qkv": "attn_norm", "w_gu": "mlp_norm"}
  pairs = [(packed.head, pack_panels(plain.head, plain.final_norm, cfg.rms_eps))]
  for lp, lx in zip(packed.layers, plain.layers):
    assert lp.keys() == lx.keys()
    pairs += [(lp[n], pack_panels(lx[n], *((lx[norms[n]], cfg.rms_eps) if n in norms else ()))) for n in PROJECTIONS]
    for n in set(lx) - set(PROJECTIONS):
      np.testing.assert_array_equal(np.asarray(lp[n]), np.asarray(lx[n]))
  return pairs


def test_samplers_with_and_without_the_cpu_kernel_draw_the_same_tokens(cpu_kernel):
  """generate / generate_continuous: auto (params on one CPU device) and forced kernels vs XLA's matmuls."""
  from rl_jax.continuous_sampling import generate_continuous
  kw = dict(max_new_tokens=6, temperature=1.0, decode_block=4)
  off = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(5), cpu_kernels=False, **kw)
  for flag in (None, True):
    on = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(5), cpu_kernels=flag, **kw)
    np.testing.assert_array_equal(np.asarray(on.tokens), np.asarray(off.tokens))
    np.testing.assert_allclose(np.asarray(on.logp), np.asarray(off.logp), atol=1e-5)
  kw.pop("decode_block")
  c_on, c_off = (generate_continuous(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(5), slots=2, cpu_kernels=f, **kw)
                 for f in (True, False))
  np.testing.assert_array_equal(np.asarray(c_on.tokens), np.asarray(c_off.tokens))
  np.testing.assert_array_equal(np.asarray(c_on.tokens), np.asarray(off.tokens))


def test_cpu_kernel_choice(cpu_kernel, monkeypatch):
  """Auto: one CPU device only (never a multi-device mesh); bfloat16 weights keep XLA's matmuls; forcing the
  kernel when it cannot load is an error, auto falls back."""
  from rl_jax.kernels.cpu import ops
  cpus = jax.devices("cpu")
  assert resolve_cpu_kernels(None, cpus[:1]) and not resolve_cpu_kernels(None, cpus[:2])
  assert not resolve_cpu_kernels(False, cpus[:1])
  w = decode_weights(jax.tree.map(lambda a: a.astype(jnp.bfloat16), PARAMS), CFG, cpu_kernels=True)
  assert not isinstance(w.head, PackedWeight) and not isinstance(w.layers[0]["w_qkv"], PackedWeight)
  monkeypatch.setattr(ops, "_state", {"ok": False})
  assert not resolve_cpu_kernels(None, cpus[:1])
  with pytest.raises(RuntimeError, match="cpu_kernels=True"):
    resolve_cpu_kernels(True)
  out = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(5), max_new_tokens=3)   # fallback path still samples
  assert out.tokens.shape == (3, 3)
