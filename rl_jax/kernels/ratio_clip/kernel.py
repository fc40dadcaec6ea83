"""Pallas kernels: forward (loss, clipped) and backward (d loss / d logp · g) in one pass over [B, T].

Each grid step loads a (block_b, block_t) tile of logp, old_logp, adv, mask (and the cotangent in the
backward), computes the per-token terms of `reference.token_terms` and writes its tile. Inputs are
padded to whole blocks by the wrapper (padding has mask 0).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rl_jax.kernels.common import gpu_compiler_params, pad_to
from rl_jax.kernels.ratio_clip.reference import token_terms


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  block_b: int = 8
  block_t: int = 512

  @classmethod
  def get_default(cls, b: int, t: int) -> "BlockSizes":
    """Powers of two (the GPU Triton lowering needs them); inputs are padded up to whole blocks."""
    pow2 = lambda n: 1 << (max(n, 1) - 1).bit_length()
    return cls(block_b=min(8, pow2(b)), block_t=min(512, max(128, pow2(t))))


def _fwd_kernel(lp_ref, old_ref, a_ref, m_ref, loss_ref, clip_ref, **hp):
  loss, clipped, _ = token_terms(lp_ref[...], old_ref[...], a_ref[...], m_ref[...], **hp)
  loss_ref[...] = loss
  clip_ref[...] = clipped


def _bwd_kernel(lp_ref, old_ref, a_ref, m_ref, g_ref, dlp_ref, **hp):
  _, _, grad = token_terms(lp_ref[...], old_ref[...], a_ref[...], m_ref[...], **hp)
  dlp_ref[...] = grad * g_ref[...]


def _call(kernel, inputs, n_out, blocks: BlockSizes, interpret: bool, hp: dict):
  b, t = inputs[0].shape
  padded = [pad_to(x.astype(jnp.float32), (blocks.block_b, blocks.block_t)) for x in inputs]
  bp, tp = padded[0].shape
  spec = pl.BlockSpec((blocks.block_b, blocks.block_t), lambda i, j: (i, j))
  out = pl.pallas_call(
      functools.partial(kernel, **hp),
      grid=(bp // blocks.block_b, tp // blocks.block_t),
      in_specs=[spec] * len(padded),
      out_specs=[spec] * n_out,
      out_shape=[jax.ShapeDtypeStruct((bp, tp), jnp.float32)] * n_out,
      interpret=interpret,
      compiler_params=None if interpret else gpu_compiler_params(),
  )(*padded)
  return [o[:b, :t] for o in out]


def ratio_clip_forward(logp, old_logp, adv, mask, *, blocks: BlockSizes, interpret: bool, **hp):
  loss, clipped = _call(_fwd_kernel, [logp, old_logp, adv, mask], 2, blocks, interpret, hp)
  return loss, clipped


def ratio_clip_backward(logp, old_logp, adv, mask, g, *, blocks: BlockSizes, interpret: bool, **hp):
  (dlp,) = _call(_bwd_kernel, [logp, old_logp, adv, mask, g], 1, blocks, interpret, hp)
  return dlp
