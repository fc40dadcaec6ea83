"""C++ kernels for the CPU backend, called through XLA FFI and compiled on first use (see README.md)."""

from rl_jax.kernels.cpu import build, ops
from rl_jax.kernels.cpu.ops import (PANEL, PackedWeight, decode_attention, decode_attention_reference,
                                   decode_attention_update, decode_attention_update_reference, load,
                                   pack_input_major_op, pack_output_major_op, pack_panels, pack_panels_input_major,
                                   packed_dense, packed_dense_reference)

__all__ = ["build", "ops", "PANEL", "PackedWeight", "decode_attention", "decode_attention_reference",
           "decode_attention_update", "decode_attention_update_reference", "load", "pack_input_major_op",
           "pack_output_major_op", "pack_panels", "pack_panels_input_major", "packed_dense", "packed_dense_reference"]
