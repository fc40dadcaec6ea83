"""ModelConfig.remat recomputes layers in the backward pass without changing values or gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config


def test_remat_changes_nothing_but_memory():
  cfg = tiny_config(32, n_layers=3, max_seq_len=32)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 1, 32)
  mask = jnp.ones_like(tokens).at[0, :3].set(0)

  def loss(p, c):
    lp, _ = token_logprobs(p, tokens, c, prompt_len=5, attn_mask=mask)
    return jnp.sum(lp * jnp.arange(7.0)[None, :])

  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg)))(params)
  for wrap in (jax.jit, lambda f: f):   # remat jitted and eager, against the plain model's jitted reference
    remat = wrap(jax.value_and_grad(lambda p: loss(p, dataclasses.replace(cfg, remat=True))))(params)
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain[1], remat[1])
  barriers = lambda c: jax.jit(jax.grad(lambda p: loss(p, c))).lower(params).as_text().count("optimization_barrier")
  # the layer projections' CPU backward has barriers of its own (llama.weight_grads): remat adds its own on top
  assert barriers(dataclasses.replace(cfg, remat=True)) > barriers(cfg)
