"""Per-token log-probs and entropies of completion tokens, computed in chunks.

`logprobs_from_hidden` tiles the vocabulary (online logsumexp) and `token_logprobs` tiles the
sequence, so the full [B, T, V] logits never exist at once; gradients flow through both.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import cast_params, constrain_rows, hidden_states, lm_head_weight

Array = jax.Array


def logprobs_from_hidden(hidden: Array, w: Array, targets: Array, *, vocab_chunk: int = 8192) -> tuple[Array, Array]:
  """log softmax(h·W)[target] and the full-vocabulary entropy, one vocabulary chunk at a time.

  Args:
    hidden: [N, D]; w: [D, V] (hidden is cast to its dtype; products accumulate in float32); targets: [N] int.
  Returns:
    (logp [N], entropy [N]) in float32. Entropy H = logZ − Σ_v p_v z_v, accumulated with an online
    (rescaled) logsumexp over chunks.
  """
  n, _ = hidden.shape
  v = w.shape[1]
  chunk = min(vocab_chunk, v)
  n_chunks = -(-v // chunk)
  pad = n_chunks * chunk - v
  w_pad = jnp.pad(w, ((0, 0), (0, pad)))
  h_c = hidden.astype(w.dtype)      # products in the weight's dtype, accumulated in float32

  @jax.checkpoint  # recompute each chunk's logits in the backward pass instead of storing [N, V]
  def body(carry, c):
    m, s, sz, tgt = carry
    w_c = jax.lax.dynamic_slice_in_dim(w_pad, c * chunk, chunk, axis=1)
    z = jnp.dot(h_c, w_c, preferred_element_type=jnp.float32)          # [N, chunk]
    ids = c * chunk + jnp.arange(chunk)
    z = jnp.where(ids[None, :] < v, z, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[:, None])
    s = s * scale + jnp.sum(e, axis=-1)
    sz = sz * scale + jnp.sum(e * jnp.where(jnp.isfinite(z), z, 0.0), axis=-1)
    tgt = tgt + jnp.sum(jnp.where(ids[None, :] == targets[:, None], z, 0.0), axis=-1)
    return (m_new, s, sz, tgt), None

  init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
  (m, s, sz, tgt), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  log_z = m + jnp.log(s)
  return tgt - log_z, log_z - sz / s


def token_logprobs(params: dict, tokens: Array, cfg: ModelConfig, *, prompt_len: int, attn_mask: Optional[Array] = None,
                   vocab_chunk: int = 8192, use_kernel: bool = False) -> tuple[Array, Array]:
  """Log-probs and entropies [B, T] of the completion tokens tokens[:, prompt_len:].

  tokens: [B, P + T] (prompt then completion); the logit at position j predicts token j + 1.
  `attn_mask` [B, P + T] marks real tokens (left-padded prompts, padded completions).
  `use_kernel=True` uses the fused Pallas log-prob kernel (rl_jax.kernels.fused_logprobs) if present.
  """
  h = hidden_states(params, tokens, cfg, attn_mask=attn_mask)[:, prompt_len - 1:-1]          # [B, T, D]
  targets = tokens[:, prompt_len:]
  b, t, d = h.shape
  w = lm_head_weight(cast_params(params, cfg), cfg)
  if use_kernel:
    from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
    impl = "auto" if use_kernel is True else str(use_kernel)
    logp, ent = fused_logprobs(h.reshape(b * t, d), w, targets.reshape(-1).astype(jnp.int32), impl=impl)
  else:
    logp, ent = logprobs_from_hidden(constrain_rows(h.reshape(b * t, d)), w, constrain_rows(targets.reshape(-1)),
                                     vocab_chunk=vocab_chunk)
  return logp.reshape(b, t), jax.lax.stop_gradient(ent.reshape(b, t))
