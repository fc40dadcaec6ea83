"""Public op: per-token log-prob of the target and full-vocabulary entropy from hidden states,
without materialising [N, V] logits; custom VJP for gradients w.r.t. hidden and the output matrix.

  logp, entropy = fused_logprobs(hidden [N, D], w [D, V], targets [N], impl="auto")

The entropy is returned without gradient (rl_jax uses it as a stop-gradient signal: HAPO, GTPO,
80/20 token selection). impl "reference" is the chunked jnp path of rl_jax.logprobs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rl_jax.kernels.common import resolve_impl
from rl_jax.kernels.fused_logprobs.kernel import BlockSizes, fused_backward, fused_forward


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(hidden, w, targets, static):
  impl, blocks = static
  logp, ent, _ = fused_forward(hidden, w, targets, blocks=blocks, interpret=impl == "interpret")
  return logp, ent


def _fwd(hidden, w, targets, static):
  impl, blocks = static
  logp, ent, lse = fused_forward(hidden, w, targets, blocks=blocks, interpret=impl == "interpret")
  return (logp, ent), (hidden, w, targets, lse)


def _bwd(static, res, cts):
  impl, blocks = static
  hidden, w, targets, lse = res
  dh, dw = fused_backward(hidden, w, targets, lse, cts[0], blocks=blocks, interpret=impl == "interpret")
  return dh.astype(hidden.dtype), dw.astype(w.dtype), None


_fused.defvjp(_fwd, _bwd)


def fused_logprobs(hidden, w, targets, *, impl: str = "auto", blocks: BlockSizes | None = None,
                   vocab_chunk: int = 8192):
  if jnp.ndim(hidden) != 2 or jnp.ndim(w) != 2 or jnp.ndim(targets) != 1:
    raise ValueError(f"expected hidden [N, D], w [D, V], targets [N]; got {jnp.shape(hidden)}, {jnp.shape(w)}, "
                     f"{jnp.shape(targets)}.")
  if jnp.shape(hidden)[1] != jnp.shape(w)[0] or jnp.shape(hidden)[0] != jnp.shape(targets)[0]:
    raise ValueError(f"shape mismatch: hidden {jnp.shape(hidden)}, w {jnp.shape(w)}, targets {jnp.shape(targets)}.")
  impl = resolve_impl(impl)
  if impl == "reference":
    from rl_jax.logprobs import logprobs_from_hidden
    logp, ent = logprobs_from_hidden(hidden, w, targets, vocab_chunk=vocab_chunk)
    return logp, jax.lax.stop_gradient(ent)
  return _fused(hidden, w, targets.astype(jnp.int32), (impl, blocks or BlockSizes.get_default()))
