"""Pallas kernels for rl_jax's hot paths, each beside its pure-jnp reference.

Every op takes `impl`: "auto" (compiled kernel on GPU/TPU, reference elsewhere), "pallas",
"interpret" (the kernel run by the Pallas interpreter, for CPU tests) or "reference".
`rl_jax.kernels.cpu` holds C++ kernels for the CPU backend (XLA FFI), compiled on first use.
"""
