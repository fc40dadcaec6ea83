"""Loading Llama-family checkpoints into rl_jax parameter trees.

(1) A Hugging Face folder: config.json + model.safetensors (or a sharded
    model.safetensors.index.json). Architectures: LlamaForCausalLM (Llama 2/3, SmolLM2),
    Qwen2ForCausalLM (QKV bias), Qwen3ForCausalLM (QK-norm).
(2) A GGUF file (llama.cpp), dequantized with the `gguf` package: see `load_gguf`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Mapping

import numpy as np

from rl_jax.models.config import ModelConfig

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                           "MistralForCausalLM": "llama"}


def config_from_hf(hf: Mapping) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict."""
  archs = hf.get("architectures") or []
  arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
  if arch is None:
    raise ValueError(f"Unsupported architecture {archs or hf.get('model_type')!r}; rl_jax loads "
                     f"{sorted(SUPPORTED_ARCHITECTURES)}.")
  n_heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
  rope = dict(hf.get("rope_parameters") or {})        # transformers >= 5 keeps theta and scaling here
  theta = hf.get("rope_theta", rope.pop("rope_theta", 10000.0))
  scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim, ffn_dim=hf["intermediate_size"],
      rope_theta=float(theta),
      rms_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)), qk_norm=arch == "qwen3",
      rope_scaling=scaling, max_seq_len=int(hf.get("max_position_embeddings", 2048)))


def params_from_tensors(get: Callable[[str], np.ndarray], cfg: ModelConfig, *, prefix: str = "model.") -> dict:
  """Builds the parameter tree from HF-named tensors; `get(name)` raises KeyError for a missing one."""

  def tensor(name):
    try:
      return np.asarray(get(name), np.float32)
    except KeyError:
      raise ValueError(f"checkpoint is missing tensor {name!r}") from None

  def stack(fmt, transpose=False):
    arrays = [tensor(fmt.format(i=i)) for i in range(cfg.n_layers)]
    return np.stack([a.T if transpose else a for a in arrays])

  lp = f"{prefix}layers.{{i}}."
  layers = {
      "attn_norm": stack(lp + "input_layernorm.weight"),
      "wq": stack(lp + "self_attn.q_proj.weight", True), "wk": stack(lp + "self_attn.k_proj.weight", True),
      "wv": stack(lp + "self_attn.v_proj.weight", True), "wo": stack(lp + "self_attn.o_proj.weight", True),
      "mlp_norm": stack(lp + "post_attention_layernorm.weight"),
      "w_gate": stack(lp + "mlp.gate_proj.weight", True), "w_up": stack(lp + "mlp.up_proj.weight", True),
      "w_down": stack(lp + "mlp.down_proj.weight", True),
  }
  if cfg.qkv_bias:
    layers.update(bq=stack(lp + "self_attn.q_proj.bias"), bk=stack(lp + "self_attn.k_proj.bias"),
                  bv=stack(lp + "self_attn.v_proj.bias"))
  if cfg.qk_norm:
    layers.update(q_norm=stack(lp + "self_attn.q_norm.weight"), k_norm=stack(lp + "self_attn.k_norm.weight"))
  params = {"embed": tensor(prefix + "embed_tokens.weight"), "final_norm": tensor(prefix + "norm.weight"),
            "layers": layers}
  if not cfg.tie_embeddings:
    params["lm_head"] = tensor("lm_head.weight").T
  return params


def load_hf_folder(folder) -> tuple[dict, ModelConfig]:
  """(params, cfg) from a Hugging Face checkpoint folder with safetensors weights."""
  from safetensors import safe_open

  folder = pathlib.Path(folder)
  config_path = folder / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: not a Hugging Face checkpoint folder.")
  cfg = config_from_hf(json.loads(config_path.read_text()))
  index = folder / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = {name: folder / f for name, f in weight_map.items()}
  else:
    single = folder / "model.safetensors"
    if not single.exists():
      raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}.")
    with safe_open(str(single), "np") as f:
      files = {name: single for name in f.keys()}
  handles = {}

  def get(name):
    path = files[name]  # KeyError for a missing tensor
    if path not in handles:
      handles[path] = safe_open(str(path), "np")
    return handles[path].get_tensor(name)

  return params_from_tensors(get, cfg), cfg
