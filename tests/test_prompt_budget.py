"""A prompt budget (--max_prompt_len) too small for the run's questions fails before the model is loaded."""

import pytest

from rl_jax.experiments import gsm8k_smollm2 as gsm
from rl_jax.chat import MATH_INSTRUCTION, check_prompt_lengths
from rl_jax.tasks import math_questions as mq


class WordTokenizer:
  """One token per whitespace-separated word; the chat template wraps the user turn in two marker words."""

  def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
    return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"

  def __call__(self, texts, add_special_tokens=False):
    return {"input_ids": [t.split() for t in texts]}


def test_check_prompt_lengths_counts_chat_templated_tokens():
  tok = WordTokenizer()
  qs = ["one two three", "a b c d e f g h"]
  longest = 1 + 8 + len(MATH_INSTRUCTION.split()) + 1   # "<user>", 8 words, the instruction, "<assistant>"
  assert check_prompt_lengths(tok, qs, longest) == longest
  assert check_prompt_lengths(tok, qs, 100, instruction=None) == 10
  with pytest.raises(ValueError, match=rf"question 1 of 2 \('a b c.*{longest}-token prompt, more than "
                                       rf"max_prompt_len={longest - 1}"):
    check_prompt_lengths(tok, qs, longest - 1)
  assert check_prompt_lengths(tok, [], 1) == 0


def test_questions_used_cover_every_question_the_run_draws():
  order = mq.train_order(gsm.Config(), 100)
  cfg = gsm.Config(rl_steps=3, prompts_per_step=4)
  assert mq.questions_used(cfg, order) == sorted({int(order[i]) for i in range(12)})
  ds = gsm.Config(rl_steps=2, prompts_per_step=4, dynamic_sampling=True, max_gen_batches=3)
  drawn = {i for s in range(2) for a in range(3) for i in mq.question_ids(ds, order, s, a)}
  assert set(mq.questions_used(ds, order)) == drawn and len(drawn) == 24
  unbounded = gsm.Config(rl_steps=1, dynamic_sampling=True, max_gen_batches=0)
  assert mq.questions_used(unbounded, order) == list(range(100))


def test_a_too_small_max_prompt_len_fails_before_loading_the_model(tmp_path, monkeypatch):
  monkeypatch.setattr(gsm, "load_tokenizer", lambda path: WordTokenizer())
  monkeypatch.setattr(gsm.named, "tokenizer_path", lambda name, hf_folder="": "unused")

  def no_model(*a, **k):
    raise AssertionError("the model was loaded before the prompt budget was checked")
  monkeypatch.setattr(gsm.named, "load_model", no_model)
  monkeypatch.setattr(gsm, "evaluate_all", no_model)
  cfg = gsm.Config(model="tiny-random", run_dir=str(tmp_path / "run"), max_prompt_len=20, progress_bar=False)
  with pytest.raises(ValueError, match="more than max_prompt_len=20"):
    gsm.main(cfg)
