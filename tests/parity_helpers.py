"""Shared pieces of the parity tests against peer libraries (TRL, verl, tunix).

Each peer test computes a loss and its gradient with respect to the policy log-probs in the peer's
framework; `ours` computes the same with an rl_jax objective, and `check` compares the two.
"""

import jax
import jax.numpy as jnp
import numpy as np

import rl_jax

TOL = 1e-5


def ours(name, logp, old, mask, adv, *, jit, ref=None, **hp):
  """(loss, d loss / d logp) of rl_jax objective `name`, eager or jitted."""
  fn = rl_jax.objectives.get(name)
  extra = {} if ref is None else {"ref_logp": jnp.asarray(ref)}

  def loss(lp):
    return fn(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), **extra, **hp)[0]

  vg = jax.value_and_grad(loss)
  if jit:
    vg = jax.jit(vg)
  value, grad = vg(jnp.asarray(logp))
  return float(value), np.asarray(grad)


def check(peer, mine, tol=TOL):
  """Loss values and log-prob gradients agree within `tol`, and the gradient is not all zero."""
  (pv, pg), (ov, og) = peer, mine
  np.testing.assert_allclose(ov, pv, rtol=tol, atol=tol)
  np.testing.assert_allclose(og, pg, rtol=tol, atol=tol)
  assert np.abs(pg).max() > 0  # the comparison is not vacuous

