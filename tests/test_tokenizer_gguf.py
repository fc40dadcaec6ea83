"""The GGUF tokenizer built without torch equals transformers' AutoTokenizer on the same file."""

import pytest

from rl_jax.models import load_tokenizer, smollm2_gguf_path

torch = pytest.importorskip("torch", reason="the AutoTokenizer reference reads the GGUF through torch")

try:
  GGUF = smollm2_gguf_path()
except FileNotFoundError as e:  # pragma: no cover
  pytest.skip(str(e), allow_module_level=True)

TEXTS = ["What is 12 + 7?", "  leading spaces and\ttabs\n\nnew lines", "Ünïcödé — 数学 ∑ x² ≤ 3½ 🙂",
         "#### 1,234.50", r"\boxed{\frac{1}{2}}", "<|im_start|>user\nhi<|im_end|>", ""]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "19"}, {"role": "user", "content": "And 3 * 4?"}]


@pytest.fixture(scope="module")
def both():
  from transformers import AutoTokenizer
  return load_tokenizer(GGUF), AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)


def test_special_tokens_and_vocabulary_match(both):
  ours, ref = both
  for name in ("bos_token", "eos_token", "pad_token", "unk_token", "eos_token_id", "pad_token_id", "bos_token_id"):
    assert getattr(ours, name) == getattr(ref, name), name
  assert ours.get_vocab() == ref.get_vocab() and len(ours) == len(ref) == 49152
  assert ours.eos_token == "<|im_end|>"                       # the stop token of the chat template


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match(both, text):
  ours, ref = both
  ids = ours(text)["input_ids"]
  assert ids == ref(text)["input_ids"]
  assert ours.decode(ids) == ref.decode(ids) == text
  assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_chat_template_matches(both):
  ours, ref = both
  for messages in (CHAT[1:2], CHAT):
    text = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = ours.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == ref.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def test_falls_back_to_auto_tokenizer_without_the_gguf_converter(monkeypatch, both):
  from rl_jax.models import loaders

  def missing(path):
    raise ImportError("no transformers.integrations.gguf.gguf_tokenizer_mapping")
  monkeypatch.setattr(loaders, "load_gguf_tokenizer", missing)
  tok = loaders.load_tokenizer(GGUF)
  assert tok("What is 12 + 7?")["input_ids"] == both[1]("What is 12 + 7?")["input_ids"]
