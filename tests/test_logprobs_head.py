"""The chunked log-prob head (rl_jax.logprobs.logprobs_from_hidden, custom VJP) against dense float64 autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.logprobs import logprobs_from_hidden


def dense_head(hidden, w, targets):
  """log softmax(h·W)[t] and entropy from the full [N, V] logits (plain autodiff)."""
  z = hidden @ w
  logp_all = jax.nn.log_softmax(z, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets[:, None], axis=1)[:, 0]
  return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def case(n=12, d=16, v=50, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)), rng.normal(size=(d, v)) * 0.5, rng.integers(0, v, n),
          rng.normal(size=n), rng.normal(size=n))


def objective(fn, hidden, w, targets, g_lp, g_ent):
  logp, ent = fn(hidden, w, targets)
  return jnp.sum(g_lp * logp) + jnp.sum(g_ent * ent)


@pytest.mark.parametrize("chunk", [8, 16, 50, 64])   # V = 50: padded last chunk, exact fit, one chunk, chunk > V
@pytest.mark.parametrize("jit", [False, True])
def test_values_and_gradients_match_dense_float64(chunk, jit):
  h, w, t, g_lp, g_ent = case()
  with jax.enable_x64():
    ref = dense_head(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    ref_grads = jax.grad(objective, argnums=(1, 2))(dense_head, jnp.asarray(h), jnp.asarray(w), jnp.asarray(t),
                                                   g_lp, g_ent)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  chunked = lambda hh, ww, tt: logprobs_from_hidden(hh, ww, tt, vocab_chunk=chunk)
  values = (jax.jit(chunked) if jit else chunked)(f32(h), f32(w), jnp.asarray(t, jnp.int32))
  grad_fn = jax.grad(objective, argnums=(1, 2))
  if jit:
    grad_fn = jax.jit(grad_fn, static_argnums=0)
  grads = grad_fn(chunked, f32(h), f32(w), jnp.asarray(t, jnp.int32), f32(g_lp), f32(g_ent))
  for got, want in zip(values + grads, ref + ref_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_tied_head_gradient_reaches_the_embedding_rows():
  """w = embedᵀ (a tied head): the gradient w.r.t. the embedding equals the dense one."""
  h, w, t, g_lp, g_ent = case(v=40, seed=1)
  embed = jnp.asarray(w.T, jnp.float32)
  loss = lambda fn, e: objective(fn, jnp.asarray(h, jnp.float32), e.T, jnp.asarray(t, jnp.int32), g_lp, g_ent)
  got = jax.jit(jax.grad(lambda e: loss(lambda a, b, c: logprobs_from_hidden(a, b, c, vocab_chunk=16), e)))(embed)
  want = jax.grad(lambda e: loss(dense_head, e))(embed)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_bad_shapes_raise_before_compute():
  with pytest.raises(ValueError, match="expected hidden"):
    logprobs_from_hidden(jnp.zeros((3, 4, 5)), jnp.zeros((5, 7)), jnp.zeros((3,), jnp.int32))
