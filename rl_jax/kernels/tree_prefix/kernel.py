"""Pallas kernel: V_next [P, G, T] of the responses' prefix tree without the [P, G, G, T] tensor E.

One program per prompt (grid (P,)); inside it a loop over T blocks of `block_t` tokens carries
alive[i, k] = "rows i and k were both valid and equal at every position so far" ([G, G], int32).
Per block, with pos = 0..block_t−1 inside the block:
  first[i, k] = min{pos : rows i, k differ or either is masked at pos}   (block_t if none)
  E[i, k, pos] = alive[i, k] · [pos < first[i, k]]
  V_next[i, pos] = Σ_k E r_k / Σ_k E   (0 where Σ_k E = 0);   alive ← alive · [first = block_t]
So the live state is [G, G] plus one [G, G, block_t] block tile. The loop (not a grid axis) carries
the state because GPU grid programs run in parallel; it lowers the same way to Triton and Mosaic.
G is padded to a power of two and T to whole blocks, padding has mask 0 (matches nothing, and a
padded row's own values are 0). Only min/sum reductions and selects: no cumulative ops in-kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rl_jax.kernels.common import gpu_compiler_params, pad_to

TILE_ELEMENTS = 1 << 14   # cap on G_pad² · block_t for the in-kernel [G, G, block_t] tile


def pow2(n: int) -> int:
  return 1 << (max(n, 1) - 1).bit_length()


def default_block_t(g: int, t: int) -> int:
  """Power of two (the GPU Triton lowering needs it): ≤ 128, ≤ T rounded up, G_pad² · block_t ≤ 16384 (≥ 8)."""
  return min(128, pow2(t), max(8, TILE_ELEMENTS // pow2(g) ** 2))


def compiler_params():
  """Triton on GPU (see rl_jax.kernels.common.gpu_compiler_params); the platform default elsewhere."""
  return gpu_compiler_params()


def _kernel(tok_ref, m_ref, r_ref, out_ref, *, n_blocks, block_t):
  g = tok_ref.shape[1]
  r = r_ref[0]                                                                    # [1, G]
  pos = jax.lax.broadcasted_iota(jnp.int32, (1, 1, block_t), 2)

  def body(b, alive):
    cols = pl.ds(pl.multiple_of(b * block_t, block_t), block_t)
    tok = tok_ref[0, :, cols]                                                     # [G, bt]
    ok = m_ref[0, :, cols] > 0
    same = (tok[:, None, :] == tok[None, :, :]) & ok[:, None, :] & ok[None, :, :]  # [G, G, bt]
    first = jnp.min(jnp.where(same, block_t, pos), axis=2)                        # [G, G]
    e = (alive[:, :, None] > 0) & (pos < first[:, :, None])
    num = jnp.sum(jnp.where(e, r[:, :, None], 0.0), axis=1)                       # [G, bt]
    den = jnp.sum(e.astype(jnp.float32), axis=1)
    out_ref[0, :, cols] = jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)
    return alive * (first == block_t).astype(jnp.int32)

  jax.lax.fori_loop(0, n_blocks, body, jnp.ones((g, g), jnp.int32))


def next_values_kernel(tokens, mask, rewards, *, block_t: int, interpret: bool):
  """V_next [P, G, T] float32 (tokens int32, mask float32 0/1, rewards float32); see the module docstring."""
  p, g, t = tokens.shape
  gp = pow2(g)
  tok = pad_to(tokens.astype(jnp.int32), (1, gp, block_t))
  m = pad_to(mask.astype(jnp.float32), (1, gp, block_t))
  r = pad_to(rewards.astype(jnp.float32), (1, gp))[:, None, :]                   # [P, 1, G_pad]
  tp = tok.shape[-1]
  row = pl.BlockSpec((1, gp, tp), lambda i: (i, 0, 0))
  out = pl.pallas_call(
      functools.partial(_kernel, n_blocks=tp // block_t, block_t=block_t),
      grid=(p,),
      in_specs=[row, row, pl.BlockSpec((1, 1, gp), lambda i: (i, 0, 0))],
      out_specs=row,
      out_shape=jax.ShapeDtypeStruct((p, gp, tp), jnp.float32),
      interpret=interpret,
      compiler_params=None if interpret else compiler_params(),
  )(tok, m, r)
  return out[:, :g, :t]
