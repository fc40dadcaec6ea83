"""Public op: TEMPO's prefix-tree values (V(s_j), V(s_{j+1})) without the [P, G, G, T] tensor.

  v_cur, v_next = tree_prefix_values(tokens [P, G, T] int, mask [P, G, T], rewards [P, G], impl="auto")

Same values as rl_jax.advantages.tree.prefix_values (formulas in reference.py). The outputs are
advantage inputs and carry no gradient (the rewards are stop-gradiented on entry, so
differentiating through the op gives zeros; no VJP is defined for the kernel). The mask is read as
mask > 0; token ids must fit in int32.
impl: "auto" (compiled kernel on GPU/TPU, reference on CPU), "pallas" (alias "kernel"), "interpret"
(the kernel run by the Pallas interpreter, for CPU tests) or "reference" (dense jnp, E materialised).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_jax.kernels.common import resolve_impl
from rl_jax.kernels.tree_prefix.kernel import default_block_t, next_values_kernel
from rl_jax.kernels.tree_prefix.reference import next_values_dense, values_from_next


def _check(tokens, mask, rewards):
  shape = jnp.shape(tokens)
  if len(shape) != 3:
    raise ValueError(f"tokens must be [P, G, T], got shape {shape}.")
  if jnp.shape(mask) != shape:
    raise ValueError(f"mask must have the tokens' shape {shape}, got {jnp.shape(mask)}.")
  if jnp.shape(rewards) != shape[:2]:
    raise ValueError(f"rewards must be [P, G] = {shape[:2]}, got {jnp.shape(rewards)}.")
  if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
    raise ValueError(f"tokens must be integer ids, got dtype {jnp.result_type(tokens)}.")
  if not isinstance(rewards, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(jnp.asarray(rewards, jnp.float32)))):
    raise ValueError("rewards contain NaN or inf.")


def _check_block_t(block_t):
  if not isinstance(block_t, int) or block_t < 1 or block_t & (block_t - 1):
    raise ValueError(f"block_t must be a positive power of two, got {block_t!r}.")


def tree_prefix_values(tokens, mask, rewards, *, impl: str = "auto", block_t: int | None = None):
  """(V_cur, V_next) [P, G, T] float32, both 0 on masked positions and without gradient."""
  _check(tokens, mask, rewards)
  if block_t is not None:
    _check_block_t(block_t)
  impl = resolve_impl("pallas" if impl == "kernel" else impl)
  tokens, r = jnp.asarray(tokens), jax.lax.stop_gradient(jnp.asarray(rewards, jnp.float32))  # no VJP: cut here
  m = (jnp.asarray(mask) > 0).astype(jnp.float32)
  p, g, t = tokens.shape
  if p * g * t == 0:
    return jnp.zeros(tokens.shape, jnp.float32), jnp.zeros(tokens.shape, jnp.float32)
  if impl == "reference":
    v_next = next_values_dense(tokens, m, r)
  else:
    block_t = default_block_t(g, t) if block_t is None else block_t
    v_next = next_values_kernel(tokens, m, r, block_t=block_t, interpret=impl == "interpret")
  return values_from_next(v_next, m, r)
