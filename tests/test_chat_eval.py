"""Prompt encoding for chat models and the sampling evaluation (pass@k, maj@k, avg@k)."""

import itertools

import jax
import numpy as np
import pytest

from rl_jax.chat import chat_text, encode_prompts, round_up
from rl_jax.evaluation import evaluate_math, sample_texts
from rl_jax.models import init_params, load_tokenizer, smollm2_gguf_path, tiny_config
from rl_jax.rewards import answers_equivalent, final_answer, normalize_answer

try:
  GGUF = smollm2_gguf_path()
except FileNotFoundError as e:  # pragma: no cover
  pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(GGUF)


@pytest.fixture(scope="module")
def model(tok):
  cfg = tiny_config(len(tok), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64, max_seq_len=512)
  return init_params(cfg, jax.random.PRNGKey(3)), cfg


def test_encode_prompts_left_pads_to_a_bucket(tok):
  texts = [chat_text(tok, "What is 2+2?"), chat_text(tok, "A much longer question about apples and pears " * 3)]
  ids, mask = encode_prompts(tok, texts, bucket=64)
  lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
  assert ids.shape == (2, round_up(max(lens), 64)) and ids.shape[1] % 64 == 0
  assert mask.sum(1).tolist() == lens
  for row, text, n in zip(ids, texts, lens):
    assert tok.decode(row[-n:].tolist()) == text                      # the prompt sits at the right end
    assert (mask[0, :ids.shape[1] - lens[0]] == 0).all()
  with pytest.raises(ValueError, match="max_len"):
    encode_prompts(tok, texts, max_len=10)
  with pytest.raises(ValueError, match="at least one"):
    encode_prompts(tok, [])


def test_sample_texts_pads_the_last_batch_and_keeps_prompt_order(tok, model):
  params, cfg = model
  prompts = [chat_text(tok, q) for q in ("one", "a longer two", "three three three", "4")]
  got = sample_texts(params, cfg, tok, prompts, jax.random.PRNGKey(0), samples=2, temperature=1.0,
                     max_new_tokens=6, batch_size=3)
  assert [len(g) for g in got] == [2, 2, 2, 2]
  greedy = sample_texts(params, cfg, tok, prompts, jax.random.PRNGKey(0), max_new_tokens=6, batch_size=3)
  alone = [sample_texts(params, cfg, tok, [p], jax.random.PRNGKey(5), max_new_tokens=6, batch_size=1)[0] for p in prompts]
  assert greedy == alone                                              # greedy text does not depend on batching
  refilled = sample_texts(params, cfg, tok, prompts, jax.random.PRNGKey(0), max_new_tokens=6, batch_size=2, refill=2)
  assert refilled == greedy                                           # nor on continuous batching
  again = sample_texts(params, cfg, tok, prompts, jax.random.PRNGKey(0), samples=2, temperature=1.0,
                       max_new_tokens=6, batch_size=2, refill=3)
  assert [len(g) for g in again] == [2, 2, 2, 2]


def _pass_at_k_enumerated(correct, k):
  subsets = list(itertools.combinations(range(len(correct)), k))
  return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def test_evaluate_math_aggregates_per_sample_correctness(tok, model):
  params, cfg = model
  recs = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
  reward = lambda text, answer: float(len(text) % 3 == int(answer) % 3)   # an arbitrary, text-dependent verdict
  res = evaluate_math(params, cfg, tok, recs, jax.random.PRNGKey(1), samples=4, ks=(1, 2, 4), max_new_tokens=5,
                      batch_size=4, reward_fn=reward, temperature=1.0, top_p=1.0)
  # recompute from the same samples (same rng stream and batching as evaluate_math)
  prompts = [chat_text(tok, r["problem"]) for r in recs]
  sampled = sample_texts(params, cfg, tok, prompts, jax.random.fold_in(jax.random.PRNGKey(1), 1), samples=4,
                         temperature=1.0, max_new_tokens=5, batch_size=4, refill=4)
  greedy = sample_texts(params, cfg, tok, prompts, jax.random.fold_in(jax.random.PRNGKey(1), 0), max_new_tokens=5,
                        batch_size=4, refill=4)
  correct = [[reward(t, r["answer"]) > 0 for t in ts] for ts, r in zip(sampled, recs)]
  assert res["greedy"] == pytest.approx(np.mean([reward(g[0], r["answer"]) for g, r in zip(greedy, recs)]))
  for k in (1, 2, 4):
    assert res[f"pass@{k}"] == pytest.approx(np.mean([_pass_at_k_enumerated(c, k) for c in correct]))
    assert res[f"avg@{k}"] == pytest.approx(np.mean([np.mean(c[:k]) for c in correct]))
  maj = []
  for ts, r in zip(sampled, recs):  # majority vote over the extracted answers, ties to the first seen
    answers = [a for a in (final_answer(t) for t in ts) if a is not None]
    answers = [normalize_answer(a) for a in answers]
    winner = max(answers, key=lambda a: (answers.count(a), -answers.index(a))) if answers else None
    maj.append(float(winner is not None and answers_equivalent(winner, r["answer"])))
  assert res["maj@4"] == pytest.approx(np.mean(maj))
  with pytest.raises(ValueError, match="at least one"):
    evaluate_math(params, cfg, tok, [], jax.random.PRNGKey(0))


def test_an_interrupted_sampling_resumes_from_its_cache_with_the_same_texts(tok, model, tmp_path, monkeypatch):
  import rl_jax.sampling
  params, cfg = model
  prompts = [chat_text(tok, q) for q in ("one", "a longer two", "three three three", "4", "five")]
  kw = dict(samples=2, temperature=1.0, max_new_tokens=5, batch_size=3)   # 10 rows: batches of 3, 3, 3, 1
  rng = jax.random.PRNGKey(7)
  plain = sample_texts(params, cfg, tok, prompts, rng, **kw)
  real, calls = rl_jax.sampling.generate, []

  def crashing(*a, **k):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError("killed")
    return real(*a, **k)

  monkeypatch.setattr(rl_jax.sampling, "generate", crashing)
  import rl_jax.evaluation
  opened = []
  monkeypatch.setattr(rl_jax.evaluation, "open", lambda *a, **k: opened.append(open(*a, **k)) or opened[-1],
                      raising=False)
  cache = tmp_path / "sampled.jsonl"
  with pytest.raises(RuntimeError, match="killed"):
    sample_texts(params, cfg, tok, prompts, rng, cache=cache, **kw)
  assert len(opened) == 1 and opened[0].closed                          # the crash closed the cache file
  monkeypatch.delattr(rl_jax.evaluation, "open")
  with open(cache, "a") as f:
    f.write('{"batch": 2, "tex')                                       # a line cut short by the crash
  calls.clear()
  monkeypatch.setattr(rl_jax.sampling, "generate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  assert sample_texts(params, cfg, tok, prompts, rng, cache=cache, **kw) == plain
  assert len(calls) == 2                                                # only batches 2 and 3 were sampled again
  calls.clear()
  assert sample_texts(params, cfg, tok, prompts, rng, cache=cache, **kw) == plain and not calls   # all cached
  # other parameters, key or settings: the cache does not apply
  for changed in (dict(params=jax.tree_util.tree_map(lambda x: x * 1.01, params)), dict(rng=jax.random.PRNGKey(8)),
                  dict(temperature=0.7)):
    calls.clear()
    args = dict(params=params, rng=rng, **kw)
    args.update(changed)
    sample_texts(args.pop("params"), cfg, tok, prompts, args.pop("rng"), cache=cache, **args)
    assert len(calls) == 4
