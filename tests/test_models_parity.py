"""Our Llama-family decoder == transformers' PyTorch models on tiny random checkpoints."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch==2.13.0 (CPU)")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

from rl_jax.models import forward, load_hf_folder  # noqa: E402

COMMON = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0, tie_word_embeddings=False)),
    "llama_tied_scaled": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=True, head_dim=16)),
}


def save_tiny(kind, path):
  config_cls, model_cls, extra = CASES[kind]
  torch.manual_seed(0)
  config = getattr(transformers, config_cls)(**COMMON, **extra)
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():  # random biases / norms, so those code paths are really exercised
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
  model.save_pretrained(path, safe_serialization=True)
  return model


@pytest.mark.parametrize("kind", sorted(CASES))
def test_logits_match_transformers(kind, tmp_path):
  model = save_tiny(kind, tmp_path)
  params, cfg = load_hf_folder(tmp_path)
  tokens = np.random.default_rng(1).integers(0, COMMON["vocab_size"], (2, 24))
  with torch.no_grad():
    expected = model(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(jax.jit(lambda p, t: forward(p, t, cfg))(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens)))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_left_padding_matches_unpadded_rows(tmp_path):
  save_tiny("qwen2", tmp_path)
  params, cfg = load_hf_folder(tmp_path)
  tokens = np.random.default_rng(2).integers(0, COMMON["vocab_size"], (1, 10))
  padded = np.concatenate([np.zeros((1, 3), np.int64), tokens], axis=1)
  mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 10))], axis=1)
  full = forward(params, jnp.asarray(tokens), cfg)
  pad = forward(params, jnp.asarray(padded), cfg, attn_mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(pad)[:, 3:], np.asarray(full), rtol=1e-4, atol=1e-5)


def test_unknown_architecture_and_missing_tensor_are_named(tmp_path):
  save_tiny("llama", tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["architectures"] = ["GPTNeoXForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="Unsupported architecture.*GPTNeoX"):
    load_hf_folder(tmp_path)
  config["architectures"] = ["Qwen2ForCausalLM"]  # expects q_proj.bias, which a Llama checkpoint lacks
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="missing tensor 'model.layers.0.self_attn.q_proj.bias'"):
    load_hf_folder(tmp_path)


def test_sharded_checkpoint_folder(tmp_path):
  model = save_tiny("llama", tmp_path)
  model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  a, _ = load_hf_folder(tmp_path)
  b, _ = load_hf_folder(tmp_path / "sharded")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_save_hf_folder_round_trips_and_transformers_reads_it(kind, tmp_path):
  """save_hf_folder(load_hf_folder(x)) is read back bit-equal by us, and transformers' model from it gives our logits."""
  from rl_jax.models import save_hf_folder
  save_tiny(kind, tmp_path / "orig")
  params, cfg = load_hf_folder(tmp_path / "orig")
  save_hf_folder(params, cfg, tmp_path / "saved")
  again, cfg2 = load_hf_folder(tmp_path / "saved")
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, again, params)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
  assert type(model).__name__ == CASES[kind][1]
  tokens = np.random.default_rng(2).integers(0, COMMON["vocab_size"], (2, 16))
  with torch.no_grad():
    expected = model(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(forward(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), cfg))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
