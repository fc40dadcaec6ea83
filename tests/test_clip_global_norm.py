"""rl_jax.loop_run.clip_global_norm against float64 NumPy and optax.clip_by_global_norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax.loop_run import clip_global_norm, rl_optimizer


def _tree(scale, seed=0):
  rng = np.random.default_rng(seed)
  return {"a": (scale * rng.standard_normal((7, 5))).astype(np.float32),
          "b": [(scale * rng.standard_normal(11)).astype(np.float32), np.float32(scale * 0.3)]}


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
@pytest.mark.parametrize("scale", [0.01, 3.0], ids=["below", "above"])
def test_matches_float64_and_optax(wrap, scale):
  g = _tree(scale)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
  norm = np.sqrt(sum(np.sum(x ** 2) for x in leaves))
  factor = min(1.0, 1.0 / norm)                                   # max_norm 1
  ours = clip_global_norm(1.0)
  theirs = optax.clip_by_global_norm(1.0)
  got = wrap(lambda g: ours.update(g, ours.init(g))[0])(jax.tree.map(jnp.asarray, g))
  ref = wrap(lambda g: theirs.update(g, theirs.init(g))[0])(jax.tree.map(jnp.asarray, g))
  for x, want, o in zip(jax.tree.leaves(got), leaves, jax.tree.leaves(ref)):
    np.testing.assert_allclose(x, want * factor, rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(x, o, rtol=2e-6, atol=1e-9)
  if scale < 1:                                                   # below the threshold: untouched, bit for bit
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(g)):
      np.testing.assert_array_equal(x, y)


def test_optimizer_state_is_optax_shaped():
  """The state tree equals that of chain(optax.clip_by_global_norm, adam): checkpoints carry over."""
  params = jax.tree.map(jnp.asarray, _tree(1.0))
  ours = rl_optimizer(1e-3).init(params)
  theirs = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
