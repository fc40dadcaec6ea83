"""rl_jax: group-relative policy optimization for language models, in JAX."""

from rl_jax import objectives

__all__ = ["objectives"]
__version__ = "0.1.0"
