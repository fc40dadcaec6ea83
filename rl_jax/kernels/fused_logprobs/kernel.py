"""Pallas kernels for log-probs of target tokens from hidden states, tiled over the vocabulary.

forward  (grid over row blocks): loop over vocabulary chunks, z = h·W_c accumulated over D chunks,
          online logsumexp (m, s), Σ p z for the entropy, and the target logit → logp, entropy, logZ.
backward: dz = g·(onehot(target) − softmax(z)) recomputed chunk by chunk from the saved logZ;
          dh (grid over row blocks, loop over vocab chunks) and dW (grid over vocab chunks, loop over
          row blocks), so [N, V] never exists. The entropy output carries no gradient.
All tile sizes are powers of two (GPU Triton lowering) and every load is one tile, so D need only be a
multiple of block_d (576 = 9 × 64 is not padded): W and dW are never copied to a padded shape when D
and V are multiples of their tiles; other inputs are zero-padded to whole tiles.
On GPU the float32 tile products run on tensor cores in TF32 (Triton's default): expect ~1e-3 relative
error there; interpret mode is exact float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rl_jax.kernels.common import lowering_for_tpu, gpu_compiler_params, pad_to

NEG = -1e30


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  block_n: int = 32    # larger tiles exceed the H100's 227 KiB of shared memory with a whole-D row block
  block_v: int = 128
  block_d: int = 64

  @classmethod
  def get_default(cls) -> "BlockSizes":
    """32-row tiles for GPUs; on a TPU 128 rows and 128 of D (Mosaic wants a 1-D row block of at least 128 and
    2-D blocks whose last two dimensions are multiples of (8, 128))."""
    return cls(128, 128, 128) if lowering_for_tpu() else cls()


def _logits_chunk(h_ref, w_ref, c, nd, blocks):
  def dbody(k, acc):
    hk = h_ref[:, pl.ds(k * blocks.block_d, blocks.block_d)]
    wk = w_ref[pl.ds(k * blocks.block_d, blocks.block_d), pl.ds(c * blocks.block_v, blocks.block_v)]
    return acc + jnp.dot(hk, wk, preferred_element_type=jnp.float32)
  return jax.lax.fori_loop(0, nd, dbody, jnp.zeros((h_ref.shape[0], blocks.block_v), jnp.float32))


def _fwd_kernel(h_ref, w_ref, t_ref, logp_ref, ent_ref, lse_ref, *, vocab, nv, nd, blocks):
  t = t_ref[...]
  bn = h_ref.shape[0]

  def vbody(c, carry):
    m, s, sz, tgt = carry
    z = _logits_chunk(h_ref, w_ref, c, nd, blocks)
    ids = c * blocks.block_v + jax.lax.broadcasted_iota(jnp.int32, (bn, blocks.block_v), 1)
    z = jnp.where(ids < vocab, z, NEG)
    m_new = jnp.maximum(m, jnp.max(z, axis=1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[:, None])
    s = s * scale + jnp.sum(e, axis=1)
    sz = sz * scale + jnp.sum(e * jnp.where(ids < vocab, z, 0.0), axis=1)
    tgt = tgt + jnp.sum(jnp.where(ids == t[:, None], z, 0.0), axis=1)
    return m_new, s, sz, tgt

  init = (jnp.full((bn,), NEG, jnp.float32), jnp.zeros((bn,), jnp.float32), jnp.zeros((bn,), jnp.float32),
          jnp.zeros((bn,), jnp.float32))
  m, s, sz, tgt = jax.lax.fori_loop(0, nv, vbody, init)
  lse = m + jnp.log(s)
  logp_ref[...] = tgt - lse
  ent_ref[...] = lse - sz / s
  lse_ref[...] = lse


def _dz(h_ref, w_ref, t, lse, g, c, nd, vocab, blocks):
  bn = lse.shape[0]
  z = _logits_chunk(h_ref, w_ref, c, nd, blocks)
  ids = c * blocks.block_v + jax.lax.broadcasted_iota(jnp.int32, (bn, blocks.block_v), 1)
  p = jnp.where(ids < vocab, jnp.exp(z - lse[:, None]), 0.0)
  return g[:, None] * (jnp.where(ids == t[:, None], 1.0, 0.0) - p)


def _dh_kernel(h_ref, w_ref, t_ref, lse_ref, g_ref, dh_ref, *, vocab, nv, nd, blocks):
  t, lse, g = t_ref[...], lse_ref[...], g_ref[...]
  bd, bv = blocks.block_d, blocks.block_v

  def zero(k, _):
    dh_ref[:, pl.ds(k * bd, bd)] = jnp.zeros((dh_ref.shape[0], bd), jnp.float32)

  jax.lax.fori_loop(0, nd, zero, None)

  def vbody(c, _):
    dz = _dz(h_ref, w_ref, t, lse, g, c, nd, vocab, blocks)                 # [bn, bv]

    def kbody(k, _):                                                        # dh[:, D tile k] += dz · W[k, c]ᵀ
      cols = pl.ds(k * bd, bd)
      w_kc = w_ref[cols, pl.ds(c * bv, bv)]                                 # [bd, bv]
      dh_ref[:, cols] += jax.lax.dot_general(dz, w_kc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

    jax.lax.fori_loop(0, nd, kbody, None)

  jax.lax.fori_loop(0, nv, vbody, None)


def _dw_kernel(h_ref, w_ref, t_ref, lse_ref, g_ref, dw_ref, *, vocab, nn, nd, blocks):
  c = pl.program_id(0)
  bn, bd, bv = blocks.block_n, blocks.block_d, blocks.block_v

  def zero(k, _):
    dw_ref[pl.ds(k * bd, bd), :] = jnp.zeros((bd, bv), jnp.float32)

  jax.lax.fori_loop(0, nd, zero, None)

  def nbody(i, _):
    rows = pl.ds(i * bn, bn)
    t, lse, g = t_ref[rows], lse_ref[rows], g_ref[rows]

    def dbody(k, z):
      hk = h_ref[rows, pl.ds(k * bd, bd)]
      wk = w_ref[pl.ds(k * bd, bd), pl.ds(c * bv, bv)]
      return z + jnp.dot(hk, wk, preferred_element_type=jnp.float32)

    z = jax.lax.fori_loop(0, nd, dbody, jnp.zeros((bn, bv), jnp.float32))
    ids = c * bv + jax.lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
    p = jnp.where(ids < vocab, jnp.exp(z - lse[:, None]), 0.0)
    dz = g[:, None] * (jnp.where(ids == t[:, None], 1.0, 0.0) - p)

    def kbody(k, _):                                                        # dW[D tile k] += h[rows, k]ᵀ · dz
      cols = pl.ds(k * bd, bd)
      dw_ref[cols, :] += jax.lax.dot_general(h_ref[rows, cols], dz, (((0,), (0,)), ((), ())),
                                             preferred_element_type=jnp.float32)

    jax.lax.fori_loop(0, nd, kbody, None)

  jax.lax.fori_loop(0, nn, nbody, None)


def _prepare(hidden, w, targets, blocks):
  """Pads rows to block_n, D to a multiple of block_d and V to block_v; W is copied only when D or V is
  not already a multiple of its tile (every load in the kernels is one power-of-two tile)."""
  h = pad_to(hidden.astype(jnp.float32), (blocks.block_n, blocks.block_d))
  wp = pad_to(w.astype(jnp.float32), (blocks.block_d, blocks.block_v))
  t = pad_to(targets.astype(jnp.int32), (blocks.block_n,))
  return h, wp, t


def fused_forward(hidden, w, targets, *, blocks: BlockSizes, interpret: bool):
  n, v = hidden.shape[0], w.shape[1]
  h, wp, t = _prepare(hidden, w, targets, blocks)
  np_, dp = h.shape
  vp = wp.shape[1]
  kernel = functools.partial(_fwd_kernel, vocab=v, nv=vp // blocks.block_v, nd=dp // blocks.block_d, blocks=blocks)
  row = pl.BlockSpec((blocks.block_n,), lambda i: (i,))
  logp, ent, lse = pl.pallas_call(
      kernel, grid=(np_ // blocks.block_n,),
      in_specs=[pl.BlockSpec((blocks.block_n, dp), lambda i: (i, 0)), pl.BlockSpec((dp, vp), lambda i: (0, 0)), row],
      out_specs=[row, row, row],
      out_shape=[jax.ShapeDtypeStruct((np_,), jnp.float32)] * 3, interpret=interpret,
      compiler_params=None if interpret else gpu_compiler_params())(h, wp, t)
  return logp[:n], ent[:n], lse


def fused_backward(hidden, w, targets, lse, g, *, blocks: BlockSizes, interpret: bool):
  n, d, v = hidden.shape[0], hidden.shape[1], w.shape[1]
  h, wp, t = _prepare(hidden, w, targets, blocks)
  np_, dp = h.shape
  vp = wp.shape[1]
  g = pad_to(g.astype(jnp.float32), (blocks.block_n,))
  nv, nd, nn = vp // blocks.block_v, dp // blocks.block_d, np_ // blocks.block_n
  row = pl.BlockSpec((blocks.block_n,), lambda i: (i,))
  full_w = pl.BlockSpec((dp, vp), lambda i: (0, 0))
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, vocab=v, nv=nv, nd=nd, blocks=blocks), grid=(nn,),
      in_specs=[pl.BlockSpec((blocks.block_n, dp), lambda i: (i, 0)), full_w, row, row, row],
      out_specs=pl.BlockSpec((blocks.block_n, dp), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((np_, dp), jnp.float32), interpret=interpret,
      compiler_params=None if interpret else gpu_compiler_params())(h, wp, t, lse, g)
  full_rows = pl.BlockSpec((np_,), lambda j: (0,))
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, vocab=v, nn=nn, nd=nd, blocks=blocks), grid=(nv,),
      in_specs=[pl.BlockSpec((np_, dp), lambda j: (0, 0)), full_w, full_rows, full_rows, full_rows],
      out_specs=pl.BlockSpec((dp, blocks.block_v), lambda j: (0, j)),
      out_shape=jax.ShapeDtypeStruct((dp, vp), jnp.float32), interpret=interpret,
      compiler_params=None if interpret else gpu_compiler_params())(h, wp, t, lse, g)
  return dh[:n, :d], dw[:d, :v]
