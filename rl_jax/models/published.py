"""Published Hugging Face config.json fields of models the experiments name, so a run's shapes are known (and can
be compiled ahead of time) without downloading anything. Weights come from a Hugging Face folder at run time."""

from __future__ import annotations

from rl_jax.models.config import ModelConfig
from rl_jax.models.loaders import config_from_hf

# Fields of Qwen/Qwen2.5-Math-1.5B and Qwen/Qwen2.5-Math-7B config.json on the Hugging Face hub.
HF_CONFIGS = {
    "qwen2.5-math-1.5b": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 1536,
                          "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                          "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                          "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "qwen2.5-math-7b": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
                        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                        "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
}


def names() -> list:
  return sorted(HF_CONFIGS)


def published_config(name: str) -> ModelConfig:
  """ModelConfig of a published model by name (a key of HF_CONFIGS)."""
  if name not in HF_CONFIGS:
    raise ValueError(f"Unknown published model {name!r}; known: {names()}.")
  return config_from_hf(HF_CONFIGS[name])
