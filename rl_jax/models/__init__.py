"""Llama-family policies as pure functions over parameter pytrees."""

from rl_jax.models.config import ModelConfig, tiny_config
from rl_jax.models.loaders import (config_from_hf, hf_config, load_gguf, load_hf_folder, load_tokenizer,
                                   params_from_tensors, save_hf_folder, smollm2_gguf_path, tensors_from_params)
from rl_jax.models.llama import (KVCache, causal_mask, default_positions, forward, forward_with_cache, hidden_states,
                                 init_cache, init_params, lm_head_weight, rms_norm)
