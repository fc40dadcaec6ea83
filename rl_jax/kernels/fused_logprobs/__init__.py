from rl_jax.kernels.fused_logprobs.ops import fused_logprobs
