"""Sampler and log-prob paths: greedy == step-by-step argmax, cache == full forward, chunked == naive."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.logprobs import logprobs_from_hidden, token_logprobs
from rl_jax.models import forward, init_params, tiny_config
from rl_jax.sampling import filter_logits, generate

CFG = tiny_config(23, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))


def prompts():
  ids = np.array([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 9, 1, 2]], np.int32)
  mask = (ids > 0).astype(np.int32)
  mask[1] = 1
  return jnp.asarray(ids), jnp.asarray(mask)


def test_greedy_matches_stepwise_argmax_of_the_full_forward():
  ids, mask = prompts()
  out = generate(PARAMS, CFG, ids, mask, jax.random.PRNGKey(1), max_new_tokens=6, temperature=0.0)
  for row in range(ids.shape[0]):   # causal: one forward over prompt + sampled tokens gives every step's logits
    prompt = [int(t) for t, m in zip(ids[row], mask[row]) if m]
    tokens = np.asarray(out.tokens[row])
    logits = forward(PARAMS, jnp.asarray([prompt + tokens.tolist()]), CFG)[0, len(prompt) - 1:-1]
    np.testing.assert_array_equal(tokens, np.asarray(jnp.argmax(logits, -1)))    # each step the argmax
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[:, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logp[row]), want, atol=1e-5)


def test_sampler_logprobs_equal_recomputed_logprobs_at_temperature_one():
  ids, mask = prompts()
  out = generate(PARAMS, CFG, ids, mask, jax.random.PRNGKey(2), max_new_tokens=7, temperature=1.0)
  tokens = jnp.concatenate([ids, out.tokens], 1)
  attn = jnp.concatenate([mask, out.mask.astype(jnp.int32)], 1)
  logp, _ = token_logprobs(PARAMS, tokens, CFG, prompt_len=ids.shape[1], attn_mask=attn, vocab_chunk=5)
  np.testing.assert_allclose(np.asarray(logp * out.mask), np.asarray(out.logp), atol=1e-5)


def test_nothing_after_a_stop_token_is_unmasked():
  ids, mask = prompts()
  for seed in range(3):
    out = generate(PARAMS, CFG, ids, mask, jax.random.PRNGKey(seed), max_new_tokens=12, temperature=2.0,
                   stop_tokens=(3, 4, 5), pad_id=0)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for row in range(toks.shape[0]):
      stops = [i for i, t in enumerate(toks[row]) if t in (3, 4, 5) and m[row, i]]
      if stops:
        first = stops[0]
        assert np.all(m[row, :first + 1] == 1) and np.all(m[row, first + 1:] == 0)
        assert np.all(toks[row, first + 1:] == 0)
      else:
        assert np.all(m[row] == 1)


def test_prompt_longer_than_the_cache_is_an_error():
  ids = jnp.zeros((1, 30), jnp.int32)
  with pytest.raises(ValueError, match="exceeds the model's cache/context max_seq_len=32"):
    generate(PARAMS, CFG, ids, jnp.ones_like(ids), jax.random.PRNGKey(0), max_new_tokens=8)


def test_top_k_and_top_p_filtering():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  k2 = filter_logits(logits, temperature=1.0, top_k=2, top_p=1.0)
  assert np.isfinite(np.asarray(k2)).tolist() == [[True, True, False, False]]
  p = filter_logits(logits, temperature=1.0, top_k=0, top_p=0.7)  # 0.5 < 0.7 → keep the token crossing 0.7
  assert np.isfinite(np.asarray(p)).tolist() == [[True, True, False, False]]
  p = filter_logits(logits, temperature=1.0, top_k=0, top_p=0.5)
  assert np.isfinite(np.asarray(p)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("jit", [False, True])
def test_chunked_logprobs_and_entropy_equal_the_naive_path_with_gradients(jit):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(9, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(16, 37)), jnp.float32)
  tgt = jnp.asarray(rng.integers(0, 37, 9), jnp.int32)

  def chunked(h, w):
    return logprobs_from_hidden(h, w, tgt, vocab_chunk=8)  # 37 is not a multiple of 8

  def naive(h, w):
    logz = jax.nn.log_softmax(h @ w, axis=-1)
    return jnp.take_along_axis(logz, tgt[:, None], 1)[:, 0], -jnp.sum(jnp.exp(logz) * logz, -1)

  f = jax.jit(chunked) if jit else chunked
  for a, b in zip(f(h, w), naive(h, w)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  ga = jax.grad(lambda h, w: jnp.sum(f(h, w)[0] * jnp.arange(9.0)), argnums=(0, 1))(h, w)
  gb = jax.grad(lambda h, w: jnp.sum(naive(h, w)[0] * jnp.arange(9.0)), argnums=(0, 1))(h, w)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _nucleus_reference(logits, top_p):
  """float64 NumPy: full descending sort; keep while the mass before a token is below top_p; ties kept."""
  x = np.asarray(logits, np.float64)
  out = np.full_like(x, -np.inf)
  for i, row in enumerate(x.reshape(-1, x.shape[-1])):
    desc = np.sort(row)[::-1]
    p = np.exp(desc - desc.max())
    p /= p.sum()
    before = np.cumsum(p) - p
    n = max(int(np.sum(before < top_p)), 1)
    keep = row >= desc[n - 1]
    out.reshape(-1, x.shape[-1])[i][keep] = row[keep]
  return out


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", ["peaked", "flat", "mixed", "3d"])
def test_nucleus_filter_matches_a_full_sort_reference(case, jit):
  """The top-k candidate path (peaked rows) and the full-sort fallback (a flat row anywhere in the batch)."""
  rng = np.random.default_rng(3)
  v = 2000
  scale = {"peaked": 6.0, "flat": 0.05, "mixed": 6.0, "3d": 6.0}[case]
  logits = rng.normal(size=(5, v)) * scale
  if case == "mixed":
    logits[2] *= 0.01                    # one near-uniform row: its nucleus spans far more than 256 tokens
  if case == "3d":
    logits = logits.reshape(5, 1, v)
  logits = logits.astype(np.float32)
  fn = lambda x: filter_logits(x, temperature=1.0, top_k=0, top_p=0.9)
  got = np.asarray((jax.jit(fn) if jit else fn)(jnp.asarray(logits)))
  want = _nucleus_reference(logits, 0.9)
  kept = np.isfinite(want)
  np.testing.assert_array_equal(np.isfinite(got), kept)
  np.testing.assert_allclose(got[kept], want[kept], rtol=1e-6)
  sizes = kept.reshape(-1, v).sum(-1)
  if case == "peaked":
    assert sizes.max() < 256             # decided among the top-k candidates
  if case in ("flat", "mixed"):
    assert sizes.max() > 256             # needs the full-sort fallback
