"""Public op: fused per-token importance ratio + trust region + loss, with a custom VJP.

  loss, clipped = ratio_clip_loss(logp, old_logp, adv, mask, mode="clip", eps_low=0.2, eps_high=0.28)

All inputs [B, T] (broadcast sequence advantages first). Gradient w.r.t. `logp` only (old_logp, adv
and mask are constants of the PPO step). For GSPO's sequence ratio use mode "seq": the row-level
log ratio is formed in jnp and the token kernel clips it (its gradient flows back through jnp).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rl_jax.kernels.common import resolve_impl
from rl_jax.kernels.ratio_clip.kernel import BlockSizes, ratio_clip_backward, ratio_clip_forward
from rl_jax.kernels.ratio_clip.reference import MODES, token_terms


def _check(logp, old_logp, adv, mask, mode):
  if mode not in MODES + ("seq",):
    raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES + ('seq',)}.")
  shape = jnp.shape(logp)
  if len(shape) != 2:
    raise ValueError(f"logp must be [B, T], got {shape}.")
  for name, x in (("old_logp", old_logp), ("adv", adv), ("mask", mask)):
    if jnp.shape(x) != shape:
      raise ValueError(f"{name} must have shape {shape}, got {jnp.shape(x)}.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(logp, old_logp, adv, mask, static):
  impl, blocks, hp = static
  if impl == "reference":
    loss, clipped, _ = token_terms(logp, old_logp, adv, mask, **dict(hp))
    return loss, clipped
  return ratio_clip_forward(logp, old_logp, adv, mask, blocks=blocks, interpret=impl == "interpret", **dict(hp))


def _fused_fwd(logp, old_logp, adv, mask, static):
  return _fused(logp, old_logp, adv, mask, static), (logp, old_logp, adv, mask)


def _fused_bwd(static, res, cts):
  impl, blocks, hp = static
  logp, old_logp, adv, mask = res
  g = cts[0]
  if impl == "reference":
    _, _, grad = token_terms(logp, old_logp, adv, mask, **dict(hp))
    dlp = grad * g
  else:
    dlp = ratio_clip_backward(logp, old_logp, adv, mask, g, blocks=blocks, interpret=impl == "interpret", **dict(hp))
  return dlp, jnp.zeros_like(old_logp), jnp.zeros_like(adv), jnp.zeros_like(mask)


_fused.defvjp(_fused_fwd, _fused_bwd)


def ratio_clip_loss(logp, old_logp, adv, mask, *, mode="clip", eps_low=0.2, eps_high=0.2, dual_clip_c=None,
                    tau_pos=1.0, tau_neg=1.05, impl="auto", blocks: BlockSizes | None = None):
  """Per-token loss [B, T] and clipped indicator [B, T] (see reference.py for the formulas)."""
  _check(logp, old_logp, adv, mask, mode)
  impl = resolve_impl(impl)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  logp, old_logp, adv, mask = f32(logp), f32(old_logp), f32(adv), f32(mask)
  if mode == "seq":
    valid = mask > 0
    delta = jnp.where(valid, jnp.clip(jnp.where(valid, logp, 0.0) - jnp.where(valid, old_logp, 0.0), -20.0, 20.0), 0.0)
    log_s = jnp.minimum(jnp.sum(delta, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0), 10.0)
    logp, old_logp, mode = jnp.broadcast_to(log_s[:, None], mask.shape), jnp.zeros_like(logp), "clip"
  hp = (("mode", mode), ("eps_low", eps_low), ("eps_high", eps_high), ("dual_clip_c", dual_clip_c),
        ("tau_pos", tau_pos), ("tau_neg", tau_neg))
  blocks = blocks or BlockSizes.get_default(*mask.shape)
  return _fused(logp, old_logp, adv, mask, (impl, blocks, hp))
