"""Every Pallas kernel lowers to Triton IR for a CUDA GPU (lowering only, no device needed).

This JAX lowers `pl.pallas_call` on GPU to Mosaic GPU unless the call carries Triton compiler
parameters; the kernels ask for Triton through `rl_jax.kernels.common.gpu_compiler_params`, which
returns them only when the default backend is a GPU. Here the CPU host stands in for a GPU host by
patching that function, then lowers for the "cuda" platform. Triton's own compilation passes (and the
kernels' speed) need a real GPU and are covered by the `gpu`-marked compiled tests.
"""

import jax
import jax.numpy as jnp
import pytest

pltriton = pytest.importorskip("jax.experimental.pallas.triton")


def _lower_cuda(fn, *args):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def test_fused_logprobs_lowers_for_triton_without_padding_d(monkeypatch):
  from rl_jax.kernels.fused_logprobs import kernel
  monkeypatch.setattr(kernel, "gpu_compiler_params", pltriton.CompilerParams)
  b = kernel.BlockSizes()
  h, w, t = jnp.zeros((64, 576)), jnp.zeros((576, 1024)), jnp.zeros((64,), jnp.int32)   # D = 9 × 64, not 2^k
  lse, g = jnp.zeros((64,)), jnp.ones((64,))
  text = _lower_cuda(lambda h, w, t: kernel.fused_forward(h, w, t, blocks=b, interpret=False), h, w, t).as_text()
  assert "triton" in text.lower()
  _lower_cuda(lambda *a: kernel.fused_backward(*a, blocks=b, interpret=False), h, w, t, lse, g)


def test_ratio_clip_lowers_for_triton(monkeypatch):
  from rl_jax.kernels.ratio_clip import kernel
  monkeypatch.setattr(kernel, "gpu_compiler_params", pltriton.CompilerParams)
  b = kernel.BlockSizes()
  x = jnp.zeros((16, 1024))
  hp = dict(mode="clip", eps_low=0.2, eps_high=0.28, dual_clip_c=None, tau_pos=1.0, tau_neg=1.05)
  text = _lower_cuda(lambda *a: kernel.ratio_clip_forward(*a, blocks=b, interpret=False, **hp), x, x, x, x).as_text()
  assert "triton" in text.lower()
  _lower_cuda(lambda *a: kernel.ratio_clip_backward(*a, blocks=b, interpret=False, **hp), x, x, x, x, x)


def test_without_a_gpu_backend_the_platform_default_is_kept():
  from rl_jax.kernels.common import gpu_compiler_params
  if jax.default_backend() == "gpu":
    assert isinstance(gpu_compiler_params(), pltriton.CompilerParams)
  else:
    assert gpu_compiler_params() is None
