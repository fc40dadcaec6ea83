"""Shared-prefix forward == standard per-sample forward: log-probs and parameter gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config
from rl_jax.prefix_grouper import grouped_logprobs

CFG = tiny_config(31, max_seq_len=32, qkv_bias=True, qk_norm=True)


@pytest.fixture(scope="module")
def case():
  """A group of 4 ragged suffixes after one prefix, weights, and the standard per-sample forward's weighted
  log-prob sum with its parameter gradients (computed once, jitted: the reference for both tests below)."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  lp, g, ls = 9, 4, 7
  prefix = jnp.asarray(rng.integers(1, 31, lp), jnp.int32)
  suffixes = jnp.asarray(rng.integers(1, 31, (g, ls)), jnp.int32)
  smask = jnp.asarray((np.arange(ls)[None] < np.array([7, 3, 5, 1])[:, None]).astype(np.int32))
  weights = jnp.asarray(rng.normal(size=(g, ls)), jnp.float32) * smask

  def standard(params):
    tokens = jnp.concatenate([jnp.broadcast_to(prefix, (g, lp)), suffixes], axis=1)
    attn = jnp.concatenate([jnp.ones((g, lp), jnp.int32), smask], axis=1)
    logp, _ = token_logprobs(params, tokens, CFG, prompt_len=lp, attn_mask=attn)
    return jnp.sum(logp * smask * weights)

  return params, prefix, suffixes, smask, weights, jax.jit(jax.value_and_grad(standard))(params)


@pytest.mark.parametrize("jit", [False, True])
def test_grouped_equals_standard_forward_and_gradients(case, jit):
  params, prefix, suffixes, smask, weights, (b, gb) = case

  def grouped(params):
    return jnp.sum(grouped_logprobs(params, CFG, prefix, suffixes, smask) * weights)

  vg = jax.value_and_grad
  a, ga = (jax.jit(vg(grouped)) if jit else vg(grouped))(params)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5, atol=1e-5)  # a weighted sum with cancellation
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_too_long_is_an_error():
  params = init_params(CFG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="exceed max_seq_len=32"):
    grouped_logprobs(params, CFG, jnp.zeros((30,), jnp.int32), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 5)))
