"""Fused log-prob kernel == naive full-logits path == chunked jnp path (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.kernels.fused_logprobs.kernel import BlockSizes
from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
from rl_jax.kernels.fused_logprobs.reference import logprobs_naive
from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config

# (rtol, atol) per input dtype, after upcasting to float32.
TOLERANCES = {jnp.float32: (2e-5, 2e-5), jnp.bfloat16: (2e-2, 2e-2)}
# Compiled on GPU, Triton multiplies float32 tiles in TF32 (10-bit mantissa): measured errors up to ~1.4e-3.
GPU_TOLERANCES = {jnp.float32: (5e-3, 5e-3), jnp.bfloat16: (3e-2, 3e-2)}
SHAPES = [(1, 16, 128), (37, 40, 300), (64, 72, 1000)]  # N, D, V not multiples of the tiles


class FusedLogprobsTest:
  IMPL = "interpret"
  BLOCKS = BlockSizes(block_n=16, block_v=128, block_d=16)
  TOL = TOLERANCES

  @pytest.mark.parametrize("shape", SHAPES)
  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_values_and_vjp_match_naive(self, shape, dtype):
    # Full float32 matmuls in the reference too (XLA on GPU would otherwise use TF32).
    with jax.default_matmul_precision("float32"):
      self._check(shape, dtype)

  def _check(self, shape, dtype):
    n, d, v = shape
    rng = np.random.default_rng(n)
    h = jnp.asarray(rng.normal(size=(n, d)), dtype)
    w = jnp.asarray(rng.normal(size=(d, v)) * 0.3, dtype)
    t = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    rtol, atol = self.TOL[dtype]
    got, vjp_got = jax.vjp(lambda h, w: fused_logprobs(h, w, t, impl=self.IMPL, blocks=self.BLOCKS)[0], h, w)
    want, vjp_want = jax.vjp(lambda h, w: logprobs_naive(h, w, t)[0], h, w)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=rtol, atol=atol)
    ent = fused_logprobs(h, w, t, impl=self.IMPL, blocks=self.BLOCKS)[1]
    np.testing.assert_allclose(np.asarray(ent), np.asarray(logprobs_naive(h, w, t)[1]), rtol=rtol, atol=atol)
    cot = jnp.asarray(rng.normal(size=n), jnp.float32)
    for a, b in zip(vjp_got(cot.astype(got.dtype)), vjp_want(cot.astype(want.dtype))):
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol * 5)

  def test_policy_log_probs_by_flag(self):
    cfg = tiny_config(300, max_seq_len=16)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 300, (3, 9)), jnp.int32)

    def f(params, use_kernel):
      return token_logprobs(params, tokens, cfg, prompt_len=4, use_kernel=use_kernel)[0].sum()

    a, ga = jax.value_and_grad(f)(params, False)
    b, gb = jax.value_and_grad(f)(params, self.IMPL)
    np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)

  def test_bad_shapes(self):
    with pytest.raises(ValueError, match="shape mismatch"):
      fused_logprobs(jnp.zeros((4, 8)), jnp.zeros((9, 10)), jnp.zeros((4,), jnp.int32), impl=self.IMPL)


class TestFusedLogprobsInterpret(FusedLogprobsTest):
  IMPL = "interpret"


@pytest.mark.gpu
class TestFusedLogprobsCompiled(FusedLogprobsTest):
  IMPL = "pallas"
  BLOCKS = BlockSizes(block_n=16, block_v=128, block_d=16)
  TOL = GPU_TOLERANCES


def _compiled_bytes(fn, *args):
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  return m.temp_size_in_bytes, m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes


def test_kernel_buffers_hold_no_padded_copy_of_w_and_are_4x_below_naive():
  """Compiled (not run) interpret-mode buffers at D = 3 × 64: W and dW are used in place (temporaries stay
  below one W) and value-and-grad needs at least 4x less than the full-logits path."""
  n, d, v = 1024, 192, 8192
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)
  tgt = jnp.zeros((n,), jnp.int32)
  kernel = jax.value_and_grad(lambda h, w: fused_logprobs(h, w, tgt, impl="interpret")[0].sum(), argnums=(0, 1))
  naive = jax.value_and_grad(lambda h, w: logprobs_naive(h, w, tgt)[0].sum(), argnums=(0, 1))
  k_temp, k_total = _compiled_bytes(kernel, h, w)
  _, n_total = _compiled_bytes(naive, h, w)
  assert k_temp < d * v * 4, f"temporaries {k_temp} B hold a copy of W ({d * v * 4} B)"
  assert n_total >= 4 * k_total, (n_total, k_total)
