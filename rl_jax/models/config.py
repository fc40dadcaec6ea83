"""Model configuration for Llama-family decoders (Llama 3, SmolLM2, Qwen2/2.5, Qwen3)."""

from __future__ import annotations

import dataclasses
from typing import Optional


REMAT_POLICIES = ("full", "dots")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("full", "chunked")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  ffn_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  tie_embeddings: bool = True
  qkv_bias: bool = False        # Qwen2 / Qwen2.5
  qk_norm: bool = False         # Qwen3
  rope_scaling: Optional[tuple] = None  # sorted (key, value) pairs of HF rope scaling, e.g. rope_type llama3
  max_seq_len: int = 2048
  remat: bool = False           # recompute each decoder layer in the backward pass (activation memory ∝ 1 layer)
  remat_policy: str = "full"    # with remat: "full" (save only layer inputs) or "dots" (also projection + attention outputs)
  dtype: str = "float32"        # compute dtype of the forward ("bfloat16": parameters cast at use, float32 master)
  attention: str = "full"       # "full" (scores [B, H, S, S_k] at once) or "chunked" (query blocks of attn_chunk)
  attn_chunk: int = 512         # query block of chunked attention
  unroll_layers: bool = False   # trace the layer stack unrolled instead of a scan loop (see llama.hidden_states)

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):  # stored as a tuple so the config stays hashable (jit static arg)
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}.")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) for GQA.")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}.")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
    if self.attention not in ATTENTION:
      raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}.")
    if self.attn_chunk <= 0:
      raise ValueError(f"attn_chunk must be positive, got {self.attn_chunk}.")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}.")


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
  """A small decoder for synthetic tasks and tests (2 layers, d = 64)."""
  base = dict(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
              rope_theta=10000.0, max_seq_len=64)
  base.update(overrides)
  return ModelConfig(**base)
