"""Broken model files and configs that disagree with the weights are clear errors naming the file and field."""

import json
import time

import jax
import numpy as np
import pytest

from rl_jax.models import init_params, load_gguf, load_hf_folder, load_tokenizer, save_hf_folder, tiny_config

gguf = pytest.importorskip("gguf")

D, H, KV, HD, F, V = 16, 2, 1, 8, 32, 11


def write_gguf(path, *, head_count=H, embedding_length=D):
  """A one-layer llama GGUF with random float32 weights; metadata can be made to disagree with the tensors."""
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(1)
  w.add_embedding_length(embedding_length)
  w.add_head_count(head_count)
  w.add_head_count_kv(KV)
  w.add_feed_forward_length(F)
  w.add_context_length(64)
  w.add_token_list([f"t{i}" for i in range(V)])
  rng = np.random.default_rng(0)
  t = lambda *shape: rng.normal(size=shape).astype(np.float32)
  w.add_tensor("token_embd.weight", t(V, D))
  w.add_tensor("output_norm.weight", t(D))
  for name, shape in [("attn_norm", (D,)), ("ffn_norm", (D,)), ("attn_q", (H * HD, D)), ("attn_k", (KV * HD, D)),
                      ("attn_v", (KV * HD, D)), ("attn_output", (D, H * HD)), ("ffn_gate", (F, D)),
                      ("ffn_up", (F, D)), ("ffn_down", (D, F))]:
    w.add_tensor(f"blk.0.{name}.weight", t(*shape))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_a_whole_gguf_loads(tmp_path):
  params, cfg = load_gguf(write_gguf(tmp_path / "tiny.gguf"))
  assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size) == (D, H, KV, HD, V)
  assert params["layers"]["wq"].shape == (1, D, H * HD)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.05, 0.002])
def test_a_truncated_gguf_is_an_error_naming_the_file(keep, tmp_path):
  data = write_gguf(tmp_path / "tiny.gguf").read_bytes()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(ValueError, match=r"cut\.gguf.*(truncated|corrupt)"):
    load_gguf(cut)


def test_a_missing_gguf_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.gguf"):
    load_gguf(tmp_path / "nothing.gguf")


@pytest.mark.parametrize("meta, match", [
    (dict(head_count=4), r"k_proj.weight' has shape .*n_kv_heads=1 x head_dim=4"),   # no key_length: head_dim = d_model / head_count
    (dict(embedding_length=32), r"has shape .*d_model=32"),
])
def test_gguf_metadata_that_disagrees_with_the_tensors_is_an_error(meta, match, tmp_path):
  path = write_gguf(tmp_path / "bad.gguf", **meta)
  with pytest.raises(ValueError, match=r"bad\.gguf: tensor .*" + match):
    load_gguf(path)


@pytest.fixture
def hf_folder(tmp_path):
  cfg = tiny_config(V, d_model=D, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=4, ffn_dim=F)
  return save_hf_folder(init_params(cfg, jax.random.PRNGKey(0)), cfg, tmp_path / "hf")


@pytest.mark.parametrize("change, match", [
    (dict(hidden_size=32), "has shape .*d_model=32"),
    (dict(num_attention_heads=2), r"k_proj.weight.*n_kv_heads=2 x head_dim=8"),   # head_dim from hidden / heads
    (dict(num_key_value_heads=1), r"k_proj.weight.*n_kv_heads=1"),
    (dict(intermediate_size=48), "gate_proj.weight.*ffn_dim=48"),
    (dict(vocab_size=12), "embed_tokens.weight.*vocab_size=12"),
])
def test_an_hf_config_that_disagrees_with_the_tensors_is_an_error(hf_folder, change, match):
  params, cfg = load_hf_folder(hf_folder)   # the untouched folder loads
  config = json.loads((hf_folder / "config.json").read_text())
  config.pop("head_dim")
  config.update(change)
  (hf_folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json: tensor .*" + match):
    load_hf_folder(hf_folder)


@pytest.mark.parametrize("name", ["no_such_folder", "no_such_file.gguf"])
def test_load_tokenizer_on_a_missing_local_path_fails_at_once(name, tmp_path):
  t0 = time.perf_counter()
  with pytest.raises(FileNotFoundError, match=name):
    load_tokenizer(tmp_path / name)
  assert time.perf_counter() - t0 < 1.0   # no attempt to reach a model hub
