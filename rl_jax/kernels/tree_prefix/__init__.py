from rl_jax.kernels.tree_prefix.ops import tree_prefix_values
