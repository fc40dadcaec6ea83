"""Pure-jnp references for the fused log-prob kernel.

`logprobs_naive` materialises the [N, V] logits (the path the kernel replaces);
`rl_jax.logprobs.logprobs_from_hidden` is the chunked, rematerialised jnp version.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def logprobs_naive(hidden, w, targets):
  """(log softmax(h·W)[target], entropy) with full [N, V] logits, float32."""
  logz = jax.nn.log_softmax(hidden.astype(jnp.float32) @ w.astype(jnp.float32), axis=-1)
  logp = jnp.take_along_axis(logz, targets[:, None].astype(jnp.int32), axis=1)[:, 0]
  return logp, -jnp.sum(jnp.exp(logz) * logz, axis=-1)
