"""ModelConfig.remat recomputes layers in the backward pass without changing values or gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config


def _tiny_loss():
  """A 3-layer tiny model's config, parameters, and loss(params, cfg): a weighted sum of the completion log-probs
  of 3 rows (one left-padded)."""
  cfg = tiny_config(32, n_layers=3, max_seq_len=32)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 1, 32)
  mask = jnp.ones_like(tokens).at[0, :3].set(0)

  def loss(p, c):
    lp, _ = token_logprobs(p, tokens, c, prompt_len=5, attn_mask=mask)
    return jnp.sum(lp * jnp.arange(7.0)[None, :])

  return cfg, params, loss


def test_remat_changes_nothing_but_memory():
  cfg, params, loss = _tiny_loss()

  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg)))(params)
  for wrap in (jax.jit, lambda f: f):   # remat jitted and eager, against the plain model's jitted reference
    remat = wrap(jax.value_and_grad(lambda p: loss(p, dataclasses.replace(cfg, remat=True))))(params)
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain[1], remat[1])
  barriers = lambda c: jax.jit(jax.grad(lambda p: loss(p, c))).lower(params).as_text().count("optimization_barrier")
  # the layer projections' CPU backward has barriers of its own (llama.weight_grads): remat adds its own on top
  assert barriers(dataclasses.replace(cfg, remat=True)) > barriers(cfg)


def _dots(jaxpr) -> np.ndarray:
  """(dot_generals without, with batch dimensions) in a jaxpr and its sub-jaxprs: the layer projections and the
  LM head, the attention's two einsums."""
  n = np.zeros(2, int)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      n[int(bool(eqn.params["dimension_numbers"][1][0]))] += 1
    n += sum((_dots(sub) for sub in jaxprs_in_params(eqn.params)), np.zeros(2, int))
  return n


def test_dots_policy_keeps_the_projections_and_the_attention_output():
  """remat_policy "dots" saves the outputs of the custom VJP `llama.project` (q, k, v, o, gate, up: 6 per layer)
  and the attention output: its backward recomputes none of the projections (as many plain matmuls as without
  remat) and of the attention only the scores q·kᵀ; "full" recomputes six projections and both attention
  einsums. Gradients equal the plain model's, jitted and eager."""
  cfg = tiny_config(32, n_layers=2, max_seq_len=32)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 1, 32)

  def grad(c):
    return jax.grad(lambda p: jnp.sum(token_logprobs(p, tokens, c, prompt_len=4)[0] * jnp.arange(6.0)[None, :]))

  dots = dataclasses.replace(cfg, remat=True, remat_policy="dots")
  count = lambda c: _dots(jax.make_jaxpr(grad(c))(params).jaxpr)
  np.testing.assert_array_equal(count(dots), count(cfg) + [0, 1])
  np.testing.assert_array_equal(count(dataclasses.replace(cfg, remat=True)), count(cfg) + [6, 2])
  ref = jax.jit(grad(cfg))(params)
  for wrap in (jax.jit, lambda f: f):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ref, wrap(grad(dots))(params))


def test_unrolled_layers_give_the_scanned_values_and_gradients_without_a_loop():
  cfg, params, loss = _tiny_loss()

  for remat in (False, True):
    scanned = dataclasses.replace(cfg, remat=remat)
    unrolled = dataclasses.replace(scanned, unroll_layers=True)
    ref = jax.jit(jax.value_and_grad(lambda p: loss(p, scanned)))(params)
    for wrap in (jax.jit, lambda f: f):
      got = wrap(jax.value_and_grad(lambda p: loss(p, unrolled)))(params)
      np.testing.assert_allclose(ref[0], got[0], rtol=1e-6)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ref[1], got[1])
    # the layer stack is a loop in the scanned program and none in the unrolled one (the LM head's vocabulary
    # chunks stay a scan: one loop forward, one backward)
    loops = lambda c: jax.jit(jax.grad(lambda p: loss(p, c))).lower(params).as_text().count("stablehlo.while")
    assert loops(scanned) == loops(unrolled) + 2, (loops(scanned), loops(unrolled))
