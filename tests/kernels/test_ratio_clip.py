"""Fused ratio/clip kernel == its jnp reference == the objectives' own jnp path (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.kernels.ratio_clip.kernel import BlockSizes
from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
from rl_jax import objectives

# Tolerances per input dtype (values upcast to float32 before comparing).
TOLERANCES = {jnp.float32: (1e-6, 1e-6), jnp.bfloat16: (1e-6, 1e-6)}  # same bf16 inputs → same f32 math
MODES = [("clip", {"eps_high": 0.28}), ("clip", {"dual_clip_c": 3.0}), ("sapo", {}), ("cispo", {"eps_low": 10.0}),
         ("seq", {"eps_low": 0.05, "eps_high": 0.08})]
SHAPES = [(1, 1), (3, 7), (5, 130), (9, 33)]  # T not a multiple of the block, single tokens


def make(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  b, t = shape
  lp = rng.normal(-1.0, 0.4, shape)
  old = lp + rng.normal(0.0, 0.4, shape)
  adv = np.repeat(rng.normal(size=(b, 1)), t, 1)
  lengths = rng.integers(0, t + 1, b)
  lengths[0] = 0  # an empty row
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  lp = np.where(mask > 0, lp, np.nan)  # garbage in masked slots
  return [jnp.asarray(x, dtype) for x in (lp, old, adv)] + [jnp.asarray(mask)]


class RatioClipTest:
  IMPL = "interpret"

  @pytest.mark.parametrize("shape", SHAPES)
  @pytest.mark.parametrize("mode, hp", MODES)
  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_kernel_matches_reference(self, shape, mode, hp, dtype):
    lp, old, adv, mask = make(shape, dtype)
    rtol, atol = TOLERANCES[dtype]
    blocks = BlockSizes(block_b=2, block_t=16)

    def run(impl):
      f = lambda x: ratio_clip_loss(x, old, adv, mask, mode=mode, impl=impl, blocks=blocks, **hp)
      (loss, clipped), vjp = jax.vjp(f, lp)
      cot = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
      (g,) = vjp((cot, jnp.zeros_like(cot)))
      return loss, clipped, g

    for got, want in zip(run(self.IMPL), run("reference")):
      got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
      assert np.all(np.isfinite(got))
      np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)

  @pytest.mark.parametrize("name, kw", [("dapo", {}), ("grpo", {"beta": 0.0, "dual_clip_c": 2.0}), ("sapo", {}),
                                        ("cispo", {}), ("gspo", {"eps_low": 0.05, "eps_high": 0.08})])
  def test_objectives_use_the_kernel_by_flag(self, name, kw):
    lp, old, adv, mask = make((6, 21), jnp.float32, seed=3)
    lp = jnp.where(mask > 0, lp, 0.0)
    seq_adv = adv[:, 0]
    fn = objectives.get(name)
    plain = jax.value_and_grad(lambda x: fn(x, old, seq_adv, mask, **kw)[0])(lp)
    fused = jax.jit(jax.value_and_grad(lambda x: fn(x, old, seq_adv, mask, use_kernel=self.IMPL, **kw)[0]))(lp)
    np.testing.assert_allclose(float(fused[0]), float(plain[0]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(fused[1]), np.asarray(plain[1]), rtol=1e-5, atol=1e-7)

  def test_bad_input(self):
    lp, old, adv, mask = make((2, 3), jnp.float32)
    with pytest.raises(ValueError, match="Unknown mode"):
      ratio_clip_loss(lp, old, adv, mask, mode="ppo", impl=self.IMPL)
    with pytest.raises(ValueError, match="adv must have shape"):
      ratio_clip_loss(lp, old, adv[:, :1], mask, impl=self.IMPL)
    with pytest.raises(ValueError, match="Unknown impl"):
      ratio_clip_loss(lp, old, adv, mask, impl="cuda")


class TestRatioClipInterpret(RatioClipTest):
  IMPL = "interpret"


@pytest.mark.gpu
class TestRatioClipCompiled(RatioClipTest):
  IMPL = "pallas"
