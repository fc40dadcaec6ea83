"""Sampling-based evaluation metrics: pass@k (unbiased), maj@k, avg@k."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections import Counter
from math import comb
from typing import Callable, Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k) (Chen et al., arXiv 2107.03374)."""
  if not 0 <= c <= n or k < 1 or k > n:
    raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
  if n - c < k:
    return 1.0
  return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_k(correct: Sequence[bool], k: int) -> float:
  """Mean accuracy of the first k samples."""
  if k < 1 or k > len(correct):
    raise ValueError(f"k must be in [1, {len(correct)}], got {k}.")
  return sum(map(float, correct[:k])) / k


def maj_at_k(answers: Sequence[str], is_correct: Callable[[str], bool], k: int) -> float:
  """1.0 if the most frequent of the first k extracted answers is correct (ties: first seen wins)."""
  if k < 1 or k > len(answers):
    raise ValueError(f"k must be in [1, {len(answers)}], got {k}.")
  votes = Counter(a for a in answers[:k] if a is not None)
  if not votes:
    return 0.0
  best = max(votes.values())
  winner = next(a for a in answers[:k] if a is not None and votes[a] == best)
  return float(is_correct(winner))


def params_fingerprint(params) -> str:
  """A short digest of a parameter tree (shapes and float64 sums of |x| and x per leaf): equal trees agree."""
  import jax
  import numpy as np
  parts = [f"{np.shape(x)}:{float(np.abs(np.asarray(x, np.float64)).sum()):.10e}:{float(np.asarray(x, np.float64).sum()):.10e}"
           for x in jax.tree_util.tree_leaves(params)]
  return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def params_digest(params) -> str:
  """sha256 over each leaf's dtype, shape and bytes: equal digests mean bit-identical parameter trees."""
  import jax
  import numpy as np
  h = hashlib.sha256()
  for x in jax.tree_util.tree_leaves(params):
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{x.dtype}{x.shape}".encode())
    h.update(x.tobytes())
  return h.hexdigest()


def _read_batches(path: pathlib.Path, header: dict) -> dict:
  """Finished batches {index: texts} of a sampling cache written with the same `header`; {} otherwise."""
  if not path.exists():
    return {}
  lines = path.read_text().splitlines()
  try:
    if not lines or json.loads(lines[0]) != header:
      return {}
  except json.JSONDecodeError:
    return {}
  done = {}
  for line in lines[1:]:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:   # a line cut short by a crash: that batch is sampled again
      break
    done[row["batch"]] = row["texts"]
  return done


def sample_texts(params, cfg, tokenizer, prompts: Sequence[str], rng, *, samples: int = 1, temperature: float = 0.0,
                 max_new_tokens: int = 256, batch_size: int = 32, bucket: int = 64, stop_tokens: Sequence[int] = (),
                 top_p: float = 1.0, progress_bar: bool = False, desc: str = "sampling",
                 cache: Optional[str | pathlib.Path] = None, refill: int = 0) -> list[list[str]]:
  """`samples` completions (text) for each chat-templated prompt string, batched with fixed shapes.

  Prompts are sorted by length and cut into batches of `batch_size` rows (each prompt repeated
  `samples` times); the last batch is padded with copies, so every batch has the same shape and
  jitted sampling compiles once per length bucket. Batch b samples with `fold_in(rng, b)`.
  `refill` > 0: a batch holds `refill · batch_size` rows decoded through `batch_size` continuous-batching
  slots (`rl_jax.continuous_sampling`): a row that stops early hands its slot to the next row.

  `cache`: a JSONL file that receives each finished batch's texts. A call that finds the file written
  with the same prompts, settings, key and parameters (its first line) samples only the missing
  batches, so an interrupted evaluation resumes where it stopped with the same result; a file
  written otherwise is started afresh.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rl_jax.chat import decode_completions, encode_prompts
  from rl_jax.progress import progress
  from rl_jax.continuous_sampling import generate_continuous
  from rl_jax.sampling import generate

  if samples < 1 or refill < 0:
    raise ValueError(f"samples must be >= 1 and refill >= 0, got {samples}, {refill}.")
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  rows = [(i, s) for i in order for s in range(samples)]
  slots = batch_size
  if refill:
    batch_size = min(batch_size * refill, -(-len(rows) // slots) * slots)
  out: list[list[str]] = [[] for _ in prompts]
  stops = tuple(stop_tokens) or (tokenizer.eos_token_id,)
  batches = range(0, len(rows), batch_size)
  done, cache_file = {}, None
  if cache is not None:
    cache = pathlib.Path(cache)
    header = {"prompts": hashlib.sha256("\x00".join(prompts).encode()).hexdigest(), "samples": samples,
              "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "bucket": bucket, "stops": [int(t) for t in stops], "refill": refill,
              "rng": np.asarray(jax.random.key_data(rng)).ravel().tolist(), "params": params_fingerprint(params)}
    done = _read_batches(cache, header)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(header) + "\n" + "".join(json.dumps({"batch": b, "texts": t}) + "\n"
                                                        for b, t in sorted(done.items())))
    cache_file = open(cache, "a")
  try:
    for b, start in enumerate(progress(batches, desc=desc, enabled=progress_bar)):
      chunk = rows[start:start + batch_size]
      if b in done:
        for (i, _), text in zip(chunk, done[b]):
          out[i].append(text)
        continue
      chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
      ids, mask = encode_prompts(tokenizer, [prompts[i] for i, _ in chunk], bucket=bucket)
      if ids.shape[1] + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) > max_seq_len {cfg.max_seq_len}.")
      kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop_tokens=stops)
      if refill:
        res = generate_continuous(params, cfg, jnp.asarray(ids), jnp.asarray(mask), jax.random.fold_in(rng, b),
                                  slots=slots, **kw)
      else:
        res = generate(params, cfg, jnp.asarray(ids), jnp.asarray(mask), jax.random.fold_in(rng, b), **kw)
      texts = decode_completions(tokenizer, np.asarray(res.tokens), np.asarray(res.mask))
      real = texts[:len(rows[start:start + batch_size])]
      for (i, _), text in zip(chunk, real):
        out[i].append(text)
      if cache_file is not None:
        cache_file.write(json.dumps({"batch": b, "texts": list(real)}) + "\n")
        cache_file.flush()
  finally:
    if cache_file is not None:
      cache_file.close()
  return out


def evaluate_math(params, cfg, tokenizer, records: Sequence[dict], rng, *, samples: int = 0,
                  ks: Sequence[int] = (1, 8), temperature: float = 0.6, top_p: float = 0.95,
                  max_new_tokens: int = 256, batch_size: int = 32, bucket: int = 64, instruction=None,
                  reward_fn: Optional[Callable[[str, str], float]] = None, progress_bar: bool = False,
                  cache_dir: Optional[str | pathlib.Path] = None, grade_timeout: float = 5.0, refill: int = 4) -> dict:
  """Greedy accuracy, and with `samples` > 0 also pass@k, maj@k and avg@k, on math records.

  Records are {problem, answer} dicts (rl_jax.data). A completion is correct when
  `reward_fn(text, answer)` (default `rl_jax.rewards.math_reward`) is 1; maj@k votes over the
  normalised extracted answers. Returns {"n", "greedy", "pass@k", "maj@k", "avg@k", "greedy_texts"}.
  `cache_dir`: greedy.jsonl and sampled.jsonl there let an interrupted evaluation resume (`sample_texts`).
  `refill`: rows per batch as a multiple of `batch_size` decode slots (continuous batching; 0: static batches).
  Every grading call runs under `RewardRunner` (`grade_timeout` seconds, a failure scores 0);
  "grading_failures" counts them.
  """
  import jax

  from rl_jax.chat import MATH_INSTRUCTION, chat_text
  from rl_jax.rewards.math import answers_equivalent, final_answer, is_plain_number, math_reward, normalize_answer

  def _normalised(a):
    return None if a is None else normalize_answer(a)

  if not records:
    raise ValueError("evaluate_math needs at least one record.")
  from rl_jax.rewards.runner import RewardRunner
  grade = RewardRunner(reward_fn or math_reward, timeout=grade_timeout)
  instruction = MATH_INSTRUCTION if instruction is None else instruction
  prompts = [chat_text(tokenizer, r["problem"], instruction=instruction) for r in records]
  common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, bucket=bucket, progress_bar=progress_bar,
                refill=refill)
  cached = lambda f: None if cache_dir is None else pathlib.Path(cache_dir) / f
  greedy = sample_texts(params, cfg, tokenizer, prompts, jax.random.fold_in(rng, 0), temperature=0.0,
                        desc="eval greedy", cache=cached("greedy.jsonl"), **common)
  result = {"n": len(records), "greedy_texts": [g[0] for g in greedy]}
  result["greedy"] = sum(grade([g[0] for g in greedy], [r["answer"] for r in records])) / len(records)
  if samples:
    sampled = sample_texts(params, cfg, tokenizer, prompts, jax.random.fold_in(rng, 1), samples=samples,
                           temperature=temperature, top_p=top_p, desc=f"eval x{samples}", cache=cached("sampled.jsonl"),
                           **common)
    correct = [[c > 0 for c in grade(texts, [r["answer"]] * len(texts))] for texts, r in zip(sampled, records)]
    for k in ks:
      if k > samples:
        continue
      result[f"pass@{k}"] = sum(pass_at_k(samples, sum(c), k) for c in correct) / len(records)
      result[f"avg@{k}"] = sum(avg_at_k(c, k) for c in correct) / len(records)
      result[f"maj@{k}"] = sum(
          maj_at_k([_normalised(final_answer(t, last_number=is_plain_number(r["answer"]))) for t in texts],
                   lambda a, r=r: answers_equivalent(a, r["answer"]), k)
          for texts, r in zip(sampled, records)) / len(records)
  result["grading_failures"] = len(grade.failures)
  return result


# ------------------------------------------------------------------------------- before / after a run

def evaluate_sets(params, cfg, tokenizer, names: Sequence[str], rng, *, size: int = 0, tag: str = "eval",
                  cache_root: Optional[str | pathlib.Path] = None, log: Callable = print, **kw) -> dict:
  """`evaluate_math` on the test split of each named `rl_jax.data` set (its first `size` problems; 0 = all):
  {name: metrics, with "seconds" and one greedy "example"}. Finished sampling batches land in
  cache_root/<tag>_<name> while a set is evaluated (so an interrupted evaluation resumes) and are removed after."""
  import shutil
  import time

  from rl_jax import data as data_lib
  out = {}
  for name in names:
    recs = data_lib.load(name, "test", limit=size or None)
    t0 = time.perf_counter()
    cache = None if cache_root is None else pathlib.Path(cache_root) / f"{tag}_{name}"
    res = evaluate_math(params, cfg, tokenizer, recs, rng, cache_dir=cache, **kw)
    if cache is not None:
      shutil.rmtree(cache, ignore_errors=True)
      if cache.parent.exists() and not any(cache.parent.iterdir()):
        cache.parent.rmdir()
    res["seconds"] = time.perf_counter() - t0
    metrics = {k: v for k, v in res.items() if k != "greedy_texts"}
    log(f"[{tag}] {name} (n={res['n']}): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "n"))
    out[name] = dict(metrics, example=res["greedy_texts"][0][:400])
  return out


def train_seconds(rows: Sequence[dict]) -> float:
  """Sum of `step_seconds` over the RL-step rows of metrics.jsonl (generation, updates, first-step compiles).

  A resumed run keeps the rows up to its checkpoint and logs the rest again, so each step is counted once;
  model loading, evaluations and the checkpoints' writes are not in it."""
  return float(sum(r["step_seconds"] for r in rows if r.get("phase") == "rl" and "step_seconds" in r))


def summary_table(summary: dict) -> str:
  """Markdown table of a summary's "before" and "after" metrics per evaluation set."""
  lines = ["| eval set | metric | before | after |", "|---|---|---|---|"]
  for name, before in summary.get("before", {}).items():
    after = summary.get("after", {}).get(name, {})
    for k, v in before.items():
      if k in ("n", "seconds", "example"):
        continue
      lines.append(f"| {name} (n={before['n']}) | {k} | {v:.3f} | {after.get(k, float('nan')):.3f} |")
  return "\n".join(lines)


def same_settings(previous: Optional[dict], current: dict, ignore: Sequence[str] = ()) -> bool:
  """Whether a run dir's stored settings equal `current` outside `ignore` (None: there were none)."""
  return previous is not None and all(previous.get(k) == v for k, v in current.items() if k not in set(ignore))


class BeforeAfter:
  """summary.json of a run evaluated before and after RL, kept true across resumes (written atomically).

  `evaluate(params, tag)` -> {set: metrics with "greedy"}; `eval_fields`: the settings that decide the "before"
  evaluation (two runs that agree on them have the same one); `bookkeeping`: settings whose change leaves a
  finished run's summary standing. `rd` is the run's `rl_jax.loop.RunDir` (path, logger, previous, trim).
  """

  def __init__(self, rd, settings: dict, evaluate: Callable, *, eval_fields: Sequence[str],
               bookkeeping: Sequence[str] = (), before_from: str = ""):
    self.rd, self.settings, self.evaluate = rd, settings, evaluate
    self.eval_fields, self.bookkeeping, self.before_from = tuple(eval_fields), set(bookkeeping), before_from
    self.path = pathlib.Path(rd.path) / "summary.json"

  def write(self, summary: dict) -> None:
    from rl_jax.metrics_log import atomic_write_text
    if self.rd.primary:
      atomic_write_text(self.path, json.dumps(summary, indent=2))

  def same_evaluation(self, other: Optional[dict]) -> bool:
    return other is not None and all(other.get(k) == self.settings[k] for k in self.eval_fields)

  def finished_as_now(self) -> bool:
    """Whether the run dir's previous settings trained and evaluated exactly as now (then its summary stands)."""
    return same_settings(self.rd.previous, self.settings, self.bookkeeping)

  def reused_before(self) -> dict:
    """The "before" evaluation of the run in `before_from`, after checking it was made with the same settings."""
    src = pathlib.Path(self.before_from)
    if not (src / "summary.json").exists() or not (src / "config.json").exists():
      raise FileNotFoundError(f"before_from={src}: no summary.json / config.json there (run that evaluation first).")
    other = json.loads((src / "config.json").read_text())
    diff = {k: (other.get(k), self.settings[k]) for k in self.eval_fields if other.get(k) != self.settings[k]}
    if diff:
      raise ValueError(f"before_from={src} was evaluated with different settings (theirs, ours): {diff}.")
    before = json.loads((src / "summary.json").read_text()).get("before")
    if not before:
      raise ValueError(f"before_from={src}: its summary.json holds no 'before' evaluation.")
    print(f"[before] reused from {src}")
    return before

  def log_before(self, params) -> dict:
    """A new summary holding the "before" evaluation (made now, or reused from `before_from`), logged at step 0."""
    summary = ({"before": self.reused_before(), "before_from": self.before_from} if self.before_from
               else {"before": self.evaluate(params, "before")})
    self.write(summary)
    for name, m in summary["before"].items():
      self.rd.logger.log(0, {f"{name}_greedy": m["greedy"]}, phase="eval")
    return summary

  def open(self, position: Optional[int], rl_steps: int, params) -> tuple[dict, bool]:
    """(summary, finished) at the start of an invocation (`position`: the restored RL step, None for a fresh run):
    a fresh run evaluates "before"; a resumed one keeps what still holds under the current evaluation settings;
    a finished run with the same settings returns its summary (finished True)."""
    if position is None:
      return self.log_before(params), False
    summary = json.loads(self.path.read_text()) if self.path.exists() else {}
    if position == rl_steps and "after" in summary and self.finished_as_now():
      print(f"run already finished ({rl_steps} RL steps, evaluated): returning its summary")
      print(summary_table(summary))
      return summary, True
    redo_before = "before" not in summary or not self.same_evaluation(self.rd.previous)
    # config.json already holds the new settings: drop what the summary holds under the old ones now, so a run
    # killed during the evaluations below cannot later pass the old scores off as new ones
    summary.pop("after", None)
    if redo_before:
      summary.pop("before", None)
    self.write(summary)
    self.rd.trim(position, drop_initial_eval=redo_before)   # the "after" evaluation is always made again
    return (self.log_before(params) if redo_before else summary), False

  def finish(self, summary: dict, params, initial_digest: str, rl_steps: int, **extra) -> dict:
    """The "after" evaluation (the "before" one stands for it when no weight moved), logged at `rl_steps`, and
    summary.json with `extra` and the run's train_seconds (every RL step once, whichever invocation made it)."""
    from rl_jax.metrics_log import read_metrics
    if params_digest(params) == initial_digest and summary.get("before"):
      # no step moved a weight (e.g. every group all-wrong: zero advantages, zero gradient, zero Adam update);
      # the evaluation is a function of the weights, the eval settings and the seed's key, all equal to "before"'s
      print("[after] parameters bit-identical to the initial model: the 'before' evaluation stands for 'after'")
      after, summary["after_is_before"] = json.loads(json.dumps(summary["before"])), True
    else:
      after = self.evaluate(params, "after")
      summary.pop("after_is_before", None)
    for name, m in after.items():
      self.rd.logger.log(rl_steps, {f"{name}_greedy": m["greedy"]}, phase="eval")
    rows = read_metrics(pathlib.Path(self.rd.path) / "metrics.jsonl")
    summary.update(after=after, rl_steps=rl_steps, train_seconds=train_seconds(rows), **extra)
    self.write(summary)
    print(summary_table(summary))
    return summary
