"""Llama-family policies as pure functions over parameter pytrees."""

from rl_jax.models.config import ModelConfig, tiny_config
from rl_jax.models.loaders import (config_from_hf, load_gguf, load_hf_folder, load_tokenizer, params_from_tensors,
                                   smollm2_gguf_path)
from rl_jax.models.llama import (KVCache, causal_mask, default_positions, forward, forward_with_cache, hidden_states,
                                 init_cache, init_params, lm_head_weight, rms_norm)
