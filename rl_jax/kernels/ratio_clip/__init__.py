from rl_jax.kernels.ratio_clip.ops import ratio_clip_loss
