"""Per-token log-probs and entropies of completion tokens, computed in chunks.

`logprobs_from_hidden` tiles the vocabulary (online logsumexp) and `token_logprobs` tiles the
sequence, so the full [B, T, V] logits never exist at once; gradients flow through both.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from rl_jax.models.config import ModelConfig
from rl_jax.models.llama import cast_params, constrain_rows, hidden_states, lm_head_weight

Array = jax.Array


KEEP_LOGITS_BUDGET = 2 * 2 ** 30   # bytes of float32 chunk logits the head may keep for its backward (auto)


def logprobs_from_hidden(hidden: Array, w: Array, targets: Array, *, vocab_chunk: int = 8192,
                         keep_logits: Optional[bool] = None) -> tuple[Array, Array]:
  """log softmax(h·W)[target] and the full-vocabulary entropy, one vocabulary chunk at a time.

  Args:
    hidden: [N, D]; w: [D, V] (hidden is cast to its dtype; products accumulate in float32); targets: [N] int.
    keep_logits: the backward reads the forward's chunk logits z [N, V] (float32, kept as residuals) instead of
      recomputing them: 3 vocabulary matmuls per value-and-gradient instead of 4. None: `keep_logits_default`.
  Returns:
    (logp [N], entropy [N]) in float32. Entropy H = logZ − Σ_v p_v z_v, accumulated with an online
    (rescaled) logsumexp over chunks. Both are differentiable (`_head_logprobs`' custom VJP).
  """
  if hidden.ndim != 2 or w.ndim != 2 or targets.ndim != 1:
    raise ValueError(f"expected hidden [N, D], w [D, V], targets [N]; got {hidden.shape}, {w.shape}, {targets.shape}.")
  if keep_logits not in (None, True, False):
    raise ValueError(f"keep_logits must be None, True or False, got {keep_logits!r}.")
  chunk = min(vocab_chunk, w.shape[1])
  if keep_logits is None:
    keep_logits = keep_logits_default(hidden.shape[0], -(-w.shape[1] // chunk) * chunk, lowering_platform(),
                                      KEEP_LOGITS_BUDGET)
  # The rows of wᵀ [V, D] are the chunks: for a tied head (w = embedᵀ) XLA cancels the two transposes, so the
  # embedding is read in place.
  return _head_logprobs(hidden, w.T, targets.astype(jnp.int32), chunk, keep_logits)


def lowering_platform() -> str:
  """The platform being traced for: that of the mesh's devices under `jax.set_mesh` (rl_jax.aot compiles for a
  TPU slice on a CPU host), else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def keep_logits_default(n: int, v_padded: int, platform: str, budget: int) -> bool:
  """Keep the chunk logits for the backward when they are on the host (platform "cpu") and 4·N·V ≤ budget.

  Keeping saves one [N, D] × [D, V] matmul per value-and-gradient (a quarter of the head's work) for N·V float32
  residuals. On CPU the memory is the host's (2 GiB: the GSM8K default step's N = 6144 completion tokens at
  V = 49152 keep 1.2 GB, less than SmolLM2-135M's float32 parameters and Adam moments, 1.6 GB); on
  accelerators HBM is the scarce resource, so the logits are recomputed.
  """
  return platform == "cpu" and 4 * n * v_padded <= budget


def _vocab_blocks(w_vd: Array, chunk: int) -> Array:
  """[V, D] → [⌈V / chunk⌉, chunk, D], zero rows past V."""
  v, d = w_vd.shape
  n = -(-v // chunk)
  return jnp.pad(w_vd, ((0, n * chunk - v), (0, 0))).reshape(n, chunk, d)


def _chunk_logits(h: Array, w_c: Array, c: Array, v: int) -> tuple[Array, Array]:
  """z = h·w_cᵀ [N, chunk] (float32 accumulation; −inf past the vocabulary) and the chunk's token ids."""
  z = jax.lax.dot_general(h, w_c, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  ids = c * w_c.shape[0] + jnp.arange(w_c.shape[0])
  return jnp.where(ids[None, :] < v, z, -jnp.inf), ids


def _head_forward(hidden, w_vd, targets, chunk, keep=False):
  """One pass over vocabulary chunks: online logsumexp log Z, Σ p z (rescaled) and the target logit; with `keep`,
  also every chunk's logits [⌈V / chunk⌉, N, chunk] (else None)."""
  v, n = w_vd.shape[0], hidden.shape[0]
  h = hidden.astype(w_vd.dtype)

  def body(carry, xs):
    m, s, sz, tgt = carry
    w_c, c = xs
    z, ids = _chunk_logits(h, w_c, c, v)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[:, None])
    s = s * scale + jnp.sum(e, axis=-1)
    sz = sz * scale + jnp.sum(e * jnp.where(jnp.isfinite(z), z, 0.0), axis=-1)
    tgt = tgt + jnp.sum(jnp.where(ids[None, :] == targets[:, None], z, 0.0), axis=-1)
    return (m_new, s, sz, tgt), (z if keep else None)

  blocks = _vocab_blocks(w_vd, chunk)
  init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
  (m, s, sz, tgt), zs = jax.lax.scan(body, init, (blocks, jnp.arange(blocks.shape[0])))
  log_z, mean_z = m + jnp.log(s), sz / s
  return (tgt - log_z, log_z - mean_z), (log_z, mean_z), zs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _head_logprobs(hidden: Array, w_vd: Array, targets: Array, chunk: int, keep: bool) -> tuple[Array, Array]:
  """(log p(target), entropy) [N] of softmax(hidden · w_vdᵀ), w_vd [V, D], `chunk` vocabulary rows at a time.

  Custom VJP: the backward applies ∂ log p_t / ∂z_v = 1[v = t] − p_v and ∂H / ∂z_v = −p_v (z_v − E_p[z])
  directly (no gradient through the online-logsumexp carry), p_v = exp(z_v − log Z), then dh = dz · W and
  dW = dzᵀ · h per chunk, reading the weight rows in place. The forward keeps log Z and E_p[z] per row and, with
  `keep`, the chunk logits z [N, V] float32; without, the backward recomputes them (one more [N, D] × [D, V]
  matmul: 4 in all instead of 3).
  """
  return _head_forward(hidden, w_vd, targets, chunk)[0]


def _head_fwd(hidden, w_vd, targets, chunk, keep):
  out, stats, zs = _head_forward(hidden, w_vd, targets, chunk, keep)
  return out, (hidden, w_vd, targets, stats, zs)


def _head_bwd(chunk, keep, res, cts):
  hidden, w_vd, targets, (log_z, mean_z), zs = res
  g_lp, g_ent = (jnp.asarray(g, jnp.float32) for g in cts)
  v, dt = w_vd.shape[0], w_vd.dtype
  h = hidden.astype(dt)

  def body(dh, xs):
    w_c, c, z_kept = xs
    if z_kept is None:
      z, ids = _chunk_logits(h, w_c, c, v)
    else:
      z, ids = z_kept, c * w_c.shape[0] + jnp.arange(w_c.shape[0])
    p = jnp.exp(z - log_z[:, None])                                       # 0 past the vocabulary
    centred = jnp.where(jnp.isfinite(z), z - mean_z[:, None], 0.0)
    dz = g_lp[:, None] * (jnp.where(ids[None, :] == targets[:, None], 1.0, 0.0) - p) - g_ent[:, None] * p * centred
    dz = dz.astype(dt)
    dh = dh + jnp.dot(dz, w_c, preferred_element_type=jnp.float32)                              # [N, D]
    dw_c = jax.lax.dot_general(dz, h, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)  # [chunk, D]
    return dh, dw_c.astype(dt)

  blocks = _vocab_blocks(w_vd, chunk)
  dh, dw = jax.lax.scan(body, jnp.zeros(hidden.shape, jnp.float32), (blocks, jnp.arange(blocks.shape[0]), zs))
  return dh.astype(hidden.dtype), dw.reshape(-1, w_vd.shape[1])[:v], None


_head_logprobs.defvjp(_head_fwd, _head_bwd)


def token_logprobs(params: dict, tokens: Array, cfg: ModelConfig, *, prompt_len: int, attn_mask: Optional[Array] = None,
                   vocab_chunk: int = 8192, use_kernel: bool = False,
                   keep_logits: Optional[bool] = None) -> tuple[Array, Array]:
  """Log-probs and entropies [B, T] of the completion tokens tokens[:, prompt_len:].

  tokens: [B, P + T] (prompt then completion); the logit at position j predicts token j + 1.
  `attn_mask` [B, P + T] marks real tokens (left-padded prompts, padded completions).
  `use_kernel=True` uses the fused Pallas log-prob kernel (rl_jax.kernels.fused_logprobs) if present;
  `keep_logits`: see `logprobs_from_hidden` (the jnp head only).
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
                                     vocab_chunk=vocab_chunk, keep_logits=keep_logits)
  return logp.reshape(b, t), jax.lax.stop_gradient(ent.reshape(b, t))
