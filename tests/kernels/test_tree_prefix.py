"""Prefix-tree value kernel (TEMPO) == its dense jnp reference == rl_jax's prefix_values; tempo by flag."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.kernels.tree_prefix.ops import tree_prefix_values
from rl_jax.kernels.tree_prefix.reference import next_values_dense, next_values_scan
from rl_jax import advantages as A

JIT = [False, True]
RTOL, ATOL = 1e-6, 1e-6   # float32 sums of the same rewards in another order


def tree(rng, p, g, t, vocab=3):
  """Tokens [P, G, T] where row i copies an earlier row up to a random split: deep shared prefixes."""
  tok = rng.integers(0, vocab, (p, g, t))
  for i in range(1, g):
    parent = rng.integers(0, i, p)
    split = rng.integers(0, t + 1, p)
    keep = np.arange(t)[None, :] < split[:, None]
    tok[:, i] = np.where(keep, tok[np.arange(p), parent], tok[:, i])
  return tok.astype(np.int32)


def ragged(rng, p, g, t):
  lengths = rng.integers(0, t + 1, (p, g))
  lengths[0, 0] = 0          # an empty (all-masked) row
  lengths[-1, -1] = t        # a full row
  return (np.arange(t)[None, None, :] < lengths[..., None]).astype(np.float32)


def case(name):
  """(tokens, mask, rewards float32, block_t); each names the structure it exercises."""
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  if name == "random_g5_t37":          # G not a power of two, T not a multiple of the block, ragged masks
    p, g, t, bt = 3, 5, 37, 8
    tok, mask = tree(rng, p, g, t), ragged(rng, p, g, t)
  elif name == "identical_rows":        # every row of a group equal; one group also of equal lengths
    p, g, t, bt = 2, 4, 19, 8
    tok = np.repeat(rng.integers(0, 5, (p, 1, t)), g, 1).astype(np.int32)
    mask = ragged(rng, p, g, t)
    mask[1] = 1.0
  elif name == "group_of_one":
    p, g, t, bt = 3, 1, 11, 4
    tok, mask = tree(rng, p, g, t), ragged(rng, p, g, t)
  elif name == "all_masked_group":      # a whole group empty, the other with holes (not a prefix)
    p, g, t, bt = 2, 3, 16, 8
    tok, mask = tree(rng, p, g, t, vocab=2), ragged(rng, p, g, t)
    mask[0] = 0.0
    mask[1, :, 5] = 0.0
  elif name == "short_t_default_block":  # T below the block; default block size
    p, g, t, bt = 2, 6, 3, None
    tok, mask = tree(rng, p, g, t, vocab=2), ragged(rng, p, g, t)
  else:                                  # "long_t_default_block": several default-sized blocks
    p, g, t, bt = 2, 7, 300, None
    tok, mask = tree(rng, p, g, t, vocab=2), ragged(rng, p, g, t)
  r = rng.normal(size=(p, g)).astype(np.float32)
  return jnp.asarray(tok), jnp.asarray(mask), jnp.asarray(r), bt


CASES = ["random_g5_t37", "identical_rows", "group_of_one", "all_masked_group", "short_t_default_block",
         "long_t_default_block"]


def run(fn, *args, jit=False):
  return jax.jit(fn)(*args) if jit else fn(*args)


class TreePrefixTest:
  IMPL = "interpret"

  @pytest.mark.parametrize("jit", JIT)
  @pytest.mark.parametrize("name", CASES)
  def test_kernel_matches_reference(self, name, jit):
    tok, mask, r, bt = case(name)
    got = run(lambda *a: tree_prefix_values(*a, impl=self.IMPL, block_t=bt), tok, mask, r, jit=jit)
    want = tree_prefix_values(tok, mask, r, impl="reference")
    plain = A.prefix_values(tok, mask, r)        # rl_jax's [P, G, G, T] path
    for g, w, q in zip(got, want, plain):
      g = np.asarray(g)
      assert g.dtype == np.float32 and g.shape == tok.shape and np.all(np.isfinite(g))
      np.testing.assert_allclose(g, np.asarray(w), rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(np.asarray(w), np.asarray(q), rtol=RTOL, atol=ATOL)

  @pytest.mark.parametrize("jit", JIT)
  def test_tempo_uses_the_kernel_by_flag(self, jit):
    tok, mask, r, _ = case("random_g5_t37")
    for norm in (True, False):
      want = A.tempo(tok, mask, r, norm_adv_by_std=norm)
      got = run(lambda *a: A.tempo(*a, norm_adv_by_std=norm, use_kernel=self.IMPL), tok, mask, r, jit=jit)
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)

  def test_no_gradient(self):
    tok, mask, r, bt = case("random_g5_t37")
    g = jax.grad(lambda r: sum(v.sum() for v in tree_prefix_values(tok, mask, r, impl=self.IMPL, block_t=bt)))(r)
    np.testing.assert_array_equal(np.asarray(g), 0.0)

  def test_bad_input(self):
    tok, mask, r, _ = case("group_of_one")
    with pytest.raises(ValueError, match="tokens must be"):
      tree_prefix_values(tok[0], mask[0], r, impl=self.IMPL)
    with pytest.raises(ValueError, match="mask must have"):
      tree_prefix_values(tok, mask[..., :-1], r, impl=self.IMPL)
    with pytest.raises(ValueError, match="rewards must be"):
      tree_prefix_values(tok, mask, r[:, None], impl=self.IMPL)
    with pytest.raises(ValueError, match="integer ids"):
      tree_prefix_values(tok.astype(jnp.float32), mask, r, impl=self.IMPL)
    with pytest.raises(ValueError, match="NaN"):
      tree_prefix_values(tok, mask, r.at[0, 0].set(jnp.nan), impl=self.IMPL)
    with pytest.raises(ValueError, match="power of two"):
      tree_prefix_values(tok, mask, r, impl=self.IMPL, block_t=3)
    with pytest.raises(ValueError, match="Unknown impl"):
      tree_prefix_values(tok, mask, r, impl="cuda")


class TestTreePrefixInterpret(TreePrefixTest):
  IMPL = "interpret"

  @pytest.mark.parametrize("name", ["random_g5_t37", "all_masked_group"])
  def test_scan_reference_matches_dense(self, name):
    tok, mask, r, _ = case(name)
    np.testing.assert_allclose(np.asarray(next_values_scan(tok, mask, r)), np.asarray(next_values_dense(tok, mask, r)),
                               rtol=RTOL, atol=ATOL)

  @pytest.mark.parametrize("platform", ["cuda", "tpu"])
  def test_lowers_for_triton_and_mosaic(self, platform, monkeypatch):
    """Lowering only (Triton IR / Mosaic MLIR), no device: the backend compilers' own passes are not run."""
    from jax.experimental.pallas import triton as pltriton
    from rl_jax.kernels.tree_prefix import kernel
    if platform == "cuda":   # what kernel.compiler_params() returns when the default backend is a GPU
      monkeypatch.setattr(kernel, "compiler_params", pltriton.CompilerParams)
    tok, mask, r, _ = case("random_g5_t37")
    for bt in (8, kernel.default_block_t(5, 37)):
      f = jax.jit(lambda *a: kernel.next_values_kernel(*a, block_t=bt, interpret=False))
      f.trace(tok, mask, r).lower(lowering_platforms=(platform,))


@pytest.mark.gpu
class TestTreePrefixCompiled(TreePrefixTest):
  IMPL = "pallas"
