"""The chunked log-prob head (rl_jax.logprobs.logprobs_from_hidden, custom VJP) against dense float64 autodiff."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import logprobs as L
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
@pytest.mark.parametrize("keep", [False, True])       # recompute the chunk logits in the backward / keep them
def test_values_and_gradients_match_dense_float64(chunk, jit, keep):
  h, w, t, g_lp, g_ent = case()
  with jax.enable_x64():
    ref = dense_head(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    ref_grads = jax.grad(objective, argnums=(1, 2))(dense_head, jnp.asarray(h), jnp.asarray(w), jnp.asarray(t),
                                                   g_lp, g_ent)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  chunked = lambda hh, ww, tt: logprobs_from_hidden(hh, ww, tt, vocab_chunk=chunk, keep_logits=keep)
  values = (jax.jit(chunked) if jit else chunked)(f32(h), f32(w), jnp.asarray(t, jnp.int32))
  grad_fn = jax.grad(objective, argnums=(1, 2))
  if jit:
    grad_fn = jax.jit(grad_fn, static_argnums=0)
  grads = grad_fn(chunked, f32(h), f32(w), jnp.asarray(t, jnp.int32), f32(g_lp), f32(g_ent))
  for got, want in zip(values + grads, ref + ref_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("keep", [False, True])
def test_tied_head_gradient_reaches_the_embedding_rows(keep):
  """w = embedᵀ (a tied head): the gradient w.r.t. the embedding equals the dense one."""
  h, w, t, g_lp, g_ent = case(v=40, seed=1)
  embed = jnp.asarray(w.T, jnp.float32)
  loss = lambda fn, e: objective(fn, jnp.asarray(h, jnp.float32), e.T, jnp.asarray(t, jnp.int32), g_lp, g_ent)
  head = lambda a, b, c: logprobs_from_hidden(a, b, c, vocab_chunk=16, keep_logits=keep)
  got = jax.jit(jax.grad(lambda e: loss(head, e)))(embed)
  want = jax.grad(lambda e: loss(dense_head, e))(embed)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_bad_shapes_raise_before_compute():
  with pytest.raises(ValueError, match="expected hidden"):
    logprobs_from_hidden(jnp.zeros((3, 4, 5)), jnp.zeros((5, 7)), jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_keeping_the_logits_gives_the_recomputed_values_and_gradients(tied, jit, dtype):
  """Values and gradients (hidden and the weight, or the embedding of a tied head) of both outputs under random
  cotangents: the same whether the backward reads the kept chunk logits or recomputes them (V = 50, chunk 16)."""
  h, w, t, g_lp, g_ent = case(seed=2)
  h, g_lp, g_ent = (jnp.asarray(x, jnp.float32) for x in (h, g_lp, g_ent))
  weight = jnp.asarray(w.T if tied else w, dtype)
  head = (lambda x: x.T) if tied else (lambda x: x)

  def value_and_grads(keep):
    fn = lambda hh, ww, tt: logprobs_from_hidden(hh, head(ww), tt, vocab_chunk=16, keep_logits=keep)
    values = fn(h, weight, jnp.asarray(t))
    grads = jax.grad(objective, argnums=(1, 2))(fn, h, weight, jnp.asarray(t), g_lp, g_ent)
    return values + grads

  run = (lambda k: jax.jit(value_and_grads, static_argnums=0)(k)) if jit else value_and_grads
  for got, want in zip(run(True), run(False)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-6, atol=1e-6)


def vocab_matmuls(jaxpr, chunk: int) -> int:
  """dot_general equations (sub-jaxprs included: scan bodies) with an operand or result of `chunk` rows."""
  n = 0
  for eqn in jaxpr.eqns:
    shapes = [getattr(v.aval, "shape", ()) for v in (*eqn.invars, *eqn.outvars)]
    n += eqn.primitive.name == "dot_general" and any(chunk in s for s in shapes)
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          n += vocab_matmuls(sub.jaxpr, chunk)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          n += vocab_matmuls(sub, chunk)
  return n


def head_grad_matmuls(keep, n=12, d=16, v=50, chunk=8) -> int:
  """Vocabulary matmuls in the jaxpr of the head's gradient (w.r.t. hidden and the weight, both outputs)."""
  h, w, t, g_lp, g_ent = (x.astype(np.int32 if x.dtype.kind == "i" else np.float32) for x in case(n=n, d=d, v=v))
  head = lambda a, b, c: logprobs_from_hidden(a, b, c, vocab_chunk=chunk, keep_logits=keep)
  grad = jax.grad(lambda *args: objective(head, *args), argnums=(0, 1))
  return vocab_matmuls(jax.make_jaxpr(grad)(h, w, t, g_lp, g_ent).jaxpr, chunk)


def test_keeping_the_logits_drops_the_backward_recompute_matmul():
  """h·Wᵀ in the forward, then dz·W and dzᵀ·h in the backward: 3 vocabulary matmuls kept, 4 recomputed."""
  assert head_grad_matmuls(True) == 3
  assert head_grad_matmuls(False) == 4


def test_auto_keeps_the_logits_on_cpu_within_the_budget(monkeypatch):
  assert jax.default_backend() != "cpu" or head_grad_matmuls(None) == 3
  monkeypatch.setattr(L, "KEEP_LOGITS_BUDGET", 4 * 12 * 56 - 1)    # N · ⌈V / chunk⌉·chunk float32, 1 byte short
  assert head_grad_matmuls(None) == 4
  assert L.keep_logits_default(12, 56, "cpu", 4 * 12 * 56) and not L.keep_logits_default(12, 56, "cpu", 4 * 12 * 56 - 1)
  assert not L.keep_logits_default(12, 56, "tpu", 2 ** 40) and not L.keep_logits_default(12, 56, "gpu", 2 ** 40)


def test_auto_recomputes_when_traced_for_a_tpu_slice():
  """Under a mesh of TPU devices (rl_jax.aot compiles on a CPU host) the HBM is not spent on kept logits."""
  pytest.importorskip("libtpu")
  from rl_jax import aot
  mesh = jax.sharding.Mesh(np.asarray(aot.topology_devices("v5p:2x2x1")), ("fsdp",))
  with jax.set_mesh(mesh):
    assert L.lowering_platform() == "tpu"
    assert head_grad_matmuls(None) == 4


def test_bad_keep_logits_raises_before_compute():
  with pytest.raises(ValueError, match="keep_logits"):
    logprobs_from_hidden(jnp.zeros((3, 5)), jnp.zeros((5, 7)), jnp.zeros((3,), jnp.int32), keep_logits="yes")
