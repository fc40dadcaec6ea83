"""rl_jax.models.llama.project: the layer projections' custom VJP against float64 NumPy and plain autodiff."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.models import init_params, llama, tiny_config
from rl_jax.models.llama import project, weight_grads


def _case(seed=0, b=2, s=5, d=12, fs=(7, 12, 3)):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, s, d)).astype(np.float32)
  ws = [rng.standard_normal((d, f)).astype(np.float32) / np.sqrt(d) for f in fs]
  cts = [rng.standard_normal((b, s, f)).astype(np.float32) for f in fs]
  return x, ws, cts


def _reference(x, ws, cts):
  """float64: y_i = x·W_i; for L = Σ_i <c_i, y_i>: ∂x = Σ_i c_i·W_iᵀ, ∂W_i = Σ_rows xᵀ c_i."""
  x64, w64, c64 = x.astype(np.float64), [w.astype(np.float64) for w in ws], [c.astype(np.float64) for c in cts]
  ys = [x64 @ w for w in w64]
  dx = sum(c @ w.T for c, w in zip(c64, w64))
  dws = [np.einsum("bsd,bsf->df", x64, c) for c in c64]
  return ys, dx, dws


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_values_and_gradients_match_float64(wrap):
  x, ws, cts = _case()
  ys_want, dx_want, dws_want = _reference(x, ws, cts)

  def loss(x, *ws):
    return sum(jnp.sum(y * c) for y, c in zip(project(x, *ws), cts))

  ys = wrap(project)(jnp.asarray(x), *map(jnp.asarray, ws))
  grads = wrap(jax.grad(loss, argnums=tuple(range(len(ws) + 1))))(jnp.asarray(x), *map(jnp.asarray, ws))
  for y, want in zip(ys, ys_want):
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grads[0], dx_want, rtol=1e-5, atol=1e-5)
  for g, want in zip(grads[1:], dws_want):
    assert g.shape == want.shape
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


def test_weight_grads_both_branches_match_float64():
  """The CPU branch (shared xᵀ) and the other platforms' branch (contraction over rows) give xᵀ·dy_i."""
  x, ws, cts = _case(1, fs=(9, 4))
  x2, dys = jnp.asarray(x.reshape(-1, x.shape[-1])), tuple(jnp.asarray(c.reshape(-1, c.shape[-1])) for c in cts)
  want = _reference(x, ws, cts)[2]
  cpu = jax.jit(weight_grads)(x2, dys)
  default = jax.jit(lambda x, d: tuple(jax.lax.dot_general(x, g, (((0,), (0,)), ((), ()))) for g in d))(x2, dys)
  for got in (cpu, default):
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_cpu_lowering_transposes_once_and_tpu_lowering_does_not():
  x, ws, cts = _case(2)
  loss = lambda x, *ws: sum(jnp.sum(y * c) for y, c in zip(project(x, *ws), cts))
  traced = jax.jit(jax.grad(loss, argnums=(1, 2, 3))).trace(jnp.asarray(x), *map(jnp.asarray, ws))
  cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
  assert cpu.count("stablehlo.optimization_barrier") == 1
  assert "optimization_barrier" not in traced.lower(lowering_platforms=("tpu",)).as_text()


def test_model_gradients_equal_plain_autodiff(monkeypatch):
  """The decoder's loss and gradients with `project` equal those of the plain x @ W formulation (autodiff),
  bfloat16 compute included."""
  cfg = tiny_config(48, n_layers=2, max_seq_len=16)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 1, 48)

  def loss(p, c):
    h = llama.hidden_states(p, tokens, c)
    return jnp.sum(h.astype(jnp.float32) * jnp.linspace(-1.0, 1.0, h.shape[-1])[None, None, :])

  for dtype, tol in (("float32", 1e-5), ("bfloat16", 1e-2)):
    c = dataclasses.replace(cfg, dtype=dtype)
    ours = jax.jit(jax.value_and_grad(lambda p: loss(p, c)))(params)
    with monkeypatch.context() as m:
      m.setattr(llama, "project", lambda x, *ws: tuple(x @ w for w in ws))
      plain = jax.jit(jax.value_and_grad(lambda p: loss(p, c)))(params)
    np.testing.assert_allclose(ours[0], plain[0], rtol=tol)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(plain[1])):   # bfloat16: rounding of sums, normwise
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b) + 1e-12, (dtype, np.linalg.norm(a - b), np.linalg.norm(b))
