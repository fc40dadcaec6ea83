"""rl_jax: group-relative policy optimization for language models, in JAX."""

from rl_jax import advantages, models, objectives

__all__ = ["advantages", "models", "objectives"]
__version__ = "0.1.0"
