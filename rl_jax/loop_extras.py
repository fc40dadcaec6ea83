"""Reward shaping and data curation the RL loop applies between rollouts and the update.

Four independent choices, each a config key with its keywords (`--KEY=NAME --KEY.k=v`, checked before any
compute, like --objective.k=v):

  reward_shaping   length / effort shaping of the group rewards [P, G] (`rl_jax.rewards.group_shaping`):
                   kimi, grpo_lambda, ada_grpo, effort, tlts. The shaping replaces the correctness part of
                   the task's reward, r' = r − c + shaped(c): other reward terms (a format bonus, DAPO's
                   overlong penalty) stay as the task gave them.
  prompt_sampling  vas: MMR1's variance-aware sampling over the task's question pool, from running pass rates.
  replay           arpo: ARPO's success buffer; the first row of an all-negative group is swapped for a stored
                   success of the same question.
  group_filter     rest: ReST-GRPO's variance filter; groups it rejects are masked out of the loss.

Order within a step: rollouts → task score → replay → shaping (per rollout batch, so dynamic sampling sees
shaped rewards) → filter → advantages. `Extras` holds the host-side state (pass rates, success buffer).
"""

from __future__ import annotations

import base64
from typing import Optional, Sequence

import numpy as np

from rl_jax import registry
from rl_jax.data import curation
from rl_jax.rewards import group_shaping as gs

# HAPO's metrics that carry the sampler's entropy statistics (m, s, k₊, k₋) from one step to the next.
TEMPERATURE_KEYS = ("temperature_center", "temperature_scale", "temperature_k_pos", "temperature_k_neg")

# Keywords the loop sets itself (never --reward_shaping.KEY=VALUE).
SHAPING_INPUTS = ("step", "total_steps", "max_len", "formats")


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float32)


def kimi(correct, lengths, *, step, total_steps, max_len, formats, weight: float = 1.0):
  """Kimi k1.5 (arXiv 2501.12599): c + weight·λ, λ = `kimi_length_reward`."""
  return _np(correct) + weight * _np(gs.kimi_length_reward(correct, lengths))


def grpo_lambda(correct, lengths, *, step, total_steps, max_len, formats, threshold: float = 0.5,
                length_weight: float = 1.0):
  """GRPO-λ (arXiv 2505.18086): `grpo_lambda_rewards`."""
  return _np(gs.grpo_lambda_rewards(correct, lengths, threshold=threshold, length_weight=length_weight))


def ada_grpo(correct, lengths, *, step, total_steps, max_len, formats):
  """Ada-GRPO (ARM, arXiv 2505.20258): c·α(format, step), decaying over the run's rl_steps."""
  if formats is None:
    raise ValueError("reward_shaping=ada_grpo needs the task's response formats; this task has none.")
  return _np(gs.ada_grpo_rewards(correct, formats, step=step, total_steps=max(total_steps, 1)))


def effort(correct, lengths, *, step, total_steps, max_len, formats, effort: float = 0.75, coef: float = 1.0):
  """e1 (reconstruction): `effort_rewards` with one effort for every prompt and the group's mean length as
  the reference (the prompts are not conditioned on the effort)."""
  e = np.full(np.shape(correct)[0], effort, np.float32)
  return _np(gs.effort_rewards(correct, lengths, e, coef=coef))


def tlts(correct, lengths, *, step, total_steps, max_len, formats, start: int = 0, end: int = 0,
         schedule: str = "exponential", w_correct: float = 1.0, w_length: float = 0.5):
  """Train Long, Think Short (arXiv 2508.08940, reconstruction): w_c·c − w_l·max(0, L − B(t))/B(t), the budget
  B(t) = `curriculum_budget` from `start` (0: the task's max_new_tokens) to `end` (0: start // 4) over the
  run's rl_steps. The format term is the task's own (it stays in r)."""
  b0 = start or max_len
  budget = gs.curriculum_budget(step, start=b0, end=end or max(1, b0 // 4), total_steps=max(total_steps, 1),
                                schedule=schedule)
  return np.array([[gs.curriculum_reward(c, n, 0.0, budget=budget, w_correct=w_correct, w_length=w_length,
                                         w_format=0.0) for c, n in zip(rc, rn)]
                   for rc, rn in zip(np.asarray(correct), np.asarray(lengths))], np.float32)


def vas(*, alpha: float = 1.0, mix: float = 0.5, prior: float = 0.5):
  """MMR1 VAS (arXiv 2509.21268): P(q) from `curation.variance_promotion_weights` on each question's latest
  observed pass rate (`prior` for one not yet seen; the official code estimates every pass rate up front
  with 8 rollouts and refreshes them every 4 steps, here each question's rate is its latest group's)."""
  if not 0.0 <= prior <= 1.0:
    raise ValueError(f"prompt_sampling=vas: prior must be a pass rate in [0, 1], got {prior}.")
  curation.variance_promotion_weights([prior], alpha=alpha, mix=mix)   # checks alpha and mix


def arpo(*, max_std: float = 0.05, max_mean: float = 0.2, min_reward: float = 0.1, size: int = 8):
  """ARPO (arXiv 2505.16282): `curation.replay_slots` and `replay_buffer_update` with the official constants."""
  if size < 1 or max_std < 0:
    raise ValueError(f"replay=arpo: need size >= 1 and max_std >= 0, got size={size}, max_std={max_std}.")


def rest(*, min_std: float = 0.0, max_mean: float = 1.0):
  """ReST-GRPO's filter (arXiv 2508.19576): `curation.variance_filter`."""
  if min_std < 0 or not np.isfinite(max_mean):
    raise ValueError(f"group_filter=rest: need min_std >= 0 and a finite max_mean, got {min_std}, {max_mean}.")


CHOICES = {"reward_shaping": {f.__name__: f for f in (kimi, grpo_lambda, ada_grpo, effort, tlts)},
           "prompt_sampling": {"vas": vas}, "replay": {"arpo": arpo}, "group_filter": {"rest": rest}}


def _keywords(cfg, key: str) -> dict:
  """cfg.KEY's keywords parsed from cfg.KEY_args ({} when the choice is off); unknown names are errors."""
  from rl_jax.loop import parse_keywords
  name, args = getattr(cfg, key), getattr(cfg, f"{key}_args")
  if not name:
    if args:
      raise ValueError(f"--{key}_args given without --{key}.")
    return {}
  if name not in CHOICES[key]:
    raise ValueError(f"Unknown {key} {name!r}; choose from {sorted(CHOICES[key])} (or leave it empty).")
  return parse_keywords(CHOICES[key][name], args, f"{key} {name}", reserved=SHAPING_INPUTS)


def check_config(cfg) -> dict:
  """Every choice's keywords (key -> dict), checked with the combinations the loop refuses; before compute."""
  kw = {key: _keywords(cfg, key) for key in CHOICES}
  for key in ("prompt_sampling", "replay", "group_filter"):
    if getattr(cfg, key):
      CHOICES[key][getattr(cfg, key)](**kw[key])
  if not 0.0 <= cfg.temperature_tau < 1.0:
    raise ValueError(f"--temperature_tau must lie in [0, 1), got {cfg.temperature_tau}.")
  if cfg.temperature_tau and getattr(cfg, "aot", ""):
    raise ValueError("--temperature_tau: the ahead-of-time compile does not build the adaptive-temperature sampler.")
  if cfg.temperature_tau and cfg.objective != "hapo":
    raise ValueError("--temperature_tau (HAPO's adaptive sampling temperature) reads the entropy statistics HAPO's "
                     f"objective reports; use it with --objective=hapo, not {cfg.objective}.")
  for key in ("prompt_sampling", "replay"):
    if getattr(cfg, key) and cfg.dynamic_sampling:
      raise ValueError(f"{key}={getattr(cfg, key)} follows each question's groups (question ids, all-negative groups),"
                       " which dynamic_sampling drops and refills; use one or the other.")
  return kw


class Extras:
  """The chosen shaping / curation for one run and its host-side state. Built before any compute: checks the
  task supplies what the choices read (question pool, response formats) and dry-runs the shaping."""

  def __init__(self, cfg, task):
    self.cfg, self.task, self.kw = cfg, task, check_config(cfg)
    self.pass_rates: dict = {}
    self.buffer: dict = {}
    self.temperature_stats = np.array([0.0, 1.0, 0.0, 0.0], np.float32)   # ĥ = 0: the fixed temperature
    if cfg.prompt_sampling and not hasattr(task, "prompts_for"):
      raise ValueError(f"prompt_sampling={cfg.prompt_sampling} needs a task that builds prompts for chosen "
                       "question ids (prompts_for); this one does not.")
    if cfg.reward_shaping == "ada_grpo" and not getattr(task, "response_formats", False):
      raise ValueError("reward_shaping=ada_grpo needs the task's response formats (ARM's format tags); this task "
                       "has one answer format.")
    if cfg.reward_shaping:
      self.shape(np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), 0,
                 np.zeros((1, 2), int) if cfg.reward_shaping == "ada_grpo" else None)

  def shape(self, correct, lengths, step: int, formats) -> np.ndarray:
    fn = CHOICES["reward_shaping"][self.cfg.reward_shaping]
    return fn(correct, lengths, step=step, total_steps=self.cfg.rl_steps, max_len=self.task.max_new_tokens,
              formats=formats, **self.kw["reward_shaping"])

  # --------------------------------------------------------------------------------- prompts (VAS)

  def prompts(self, step: int, attempt: int):
    """The task's prompts of (step, attempt), or VAS's draw of prompts_per_step questions (seeded by step)."""
    if not self.cfg.prompt_sampling:
      return self.task.prompts(step, attempt)
    return self.task.prompts_for(vas_draw(self.pass_rates, self.task.num_questions, self.cfg.prompts_per_step,
                                          np.random.default_rng([self.cfg.seed, 11, step]),
                                          **self.kw["prompt_sampling"]))

  def restore_from(self, run_dir, position: int, replay=None) -> None:
    """`restore` from the run's rewards.jsonl (when prompt sampling keeps state), ARPO's buffer from `replay` (the
    checkpoint's record of it, `replay_record`) and the adaptive temperature's statistics from the metrics row of
    step `position` (HAPO)."""
    from rl_jax.metrics_log import read_metrics
    self.restore(read_metrics(run_dir / "rewards.jsonl") if self.cfg.prompt_sampling else [], position)
    self.buffer = {}
    if self.cfg.replay and position:
      if replay is None:
        raise RuntimeError(f"no replay buffer restored for RL step {position}: start the run afresh (--resume=false).")
      size = dict(registry.hyperparameters(arpo), **self.kw["replay"])["size"]
      self.buffer = buffer_from_record(replay, num_questions=self.task.num_questions, size=size,
                                       width=self.task.max_new_tokens)
    if self.cfg.temperature_tau and position:
      rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] == position and TEMPERATURE_KEYS[0] in r]
      if not rows:
        raise RuntimeError(f"metrics.jsonl has no temperature statistics for RL step {position}: start the run "
                           "afresh (--resume=false).")
      self.after_update(rows[-1])

  def sampler_inputs(self) -> tuple:
    """The sampler's extra arguments: HAPO's entropy statistics when the temperature adapts, else none."""
    return (np.asarray(self.temperature_stats, np.float32),) if self.cfg.temperature_tau else ()

  def after_update(self, metrics: dict) -> None:
    """The next rollouts' temperature statistics: those of this step's training batches (HAPO's objective
    reports them, `objectives.entropy_temperature_stats`)."""
    if self.cfg.temperature_tau:
      self.temperature_stats = np.array([metrics[k] for k in TEMPERATURE_KEYS], np.float32)

  def restore(self, log_rows: Sequence[dict], position: int) -> None:
    """Pass rates after `position` logged steps, rebuilt from rewards.jsonl rows ({"question_ids", "correct"})."""
    self.pass_rates = {}
    if not self.cfg.prompt_sampling:
      return
    rows = sorted((r for r in log_rows if r["step"] <= position), key=lambda r: r["step"])
    if len({r["step"] for r in rows}) != position or any("correct" not in r for r in rows):
      raise RuntimeError(f"rewards.jsonl does not hold the pass rates of {position} steps: cannot rebuild "
                         "prompt_sampling's state; start the run afresh (--resume=false).")
    for r in rows:
      self.observe(r["question_ids"], r["correct"])

  def observe(self, question_ids, correct) -> None:
    for q, c in zip(question_ids, np.asarray(correct, np.float64)):
      self.pass_rates[int(q)] = float(np.mean(c > 0))

  def replay_state(self) -> Optional[dict]:
    """ARPO's buffer as it stands (None without replay): `replay_buffer_update` makes a new dict at every batch and
    never changes a stored item, so the dict is a snapshot a later checkpoint can write."""
    return self.buffer if self.cfg.replay else None

  def record(self, scored) -> dict:
    """What rewards.jsonl keeps for a resumed run: the per-sample correctness when VAS is on."""
    return {"correct": np.asarray(_correct(scored)).tolist()} if self.cfg.prompt_sampling else {}

  # --------------------------------------------------------------------------- score: replay + shaping

  def score(self, ro, prompts, scored, step: int):
    """(rollouts, Scored) after ARPO replay and reward shaping of one rollout batch."""
    correct, formats = _correct(scored), scored.formats
    if self.cfg.prompt_sampling:
      self.observe(prompts.question_ids, correct)
    row = dict(scored.row)
    if self.cfg.replay:
      ro, scored, n = self.replay(ro, prompts, scored)
      correct, formats, row["replayed"] = _correct(scored), scored.formats, n
    if self.cfg.reward_shaping:
      g = scored.rewards.shape[1]
      lengths = np.asarray(ro.completion_mask, np.float32).sum(1).reshape(-1, g)
      shaped = self.shape(correct, lengths, step, formats)
      row["correct_reward"] = float(np.mean(correct))
      scored = scored._replace(rewards=(scored.rewards - correct + shaped).astype(np.float32))
    return ro, scored._replace(row=row)

  def replay(self, ro, prompts, scored):
    """ARPO: the buffer gains this batch's successes, then the first row of each all-negative group whose
    question has one is swapped for the newest stored success (tokens, masks, sampler log-probs, reward)."""
    kw, g = dict(registry.hyperparameters(arpo), **self.kw["replay"]), scored.rewards.shape[1]
    qids = np.repeat(np.asarray(prompts.question_ids), g)
    correct, formats = _correct(scored), scored.formats
    items = [_Item.of_row(ro, i, float(scored.rewards.reshape(-1)[i]), float(correct.reshape(-1)[i]),
                   None if formats is None else int(np.asarray(formats).reshape(-1)[i])) for i in range(len(qids))]
    slots = curation.replay_slots(scored.rewards, [int(q) in self.buffer for q in prompts.question_ids],
                                  max_std=kw["max_std"], max_mean=kw["max_mean"])
    self.buffer = curation.replay_buffer_update(self.buffer, [int(q) for q in qids], items, scored.rewards.reshape(-1),
                                                min_reward=kw["min_reward"], size=kw["size"])
    rows = np.flatnonzero(slots.reshape(-1))
    if not len(rows):
      return ro, scored, 0
    ro = type(ro)(*(np.array(x) for x in ro))
    rewards, correct = scored.rewards.copy().reshape(-1), correct.copy().reshape(-1)
    formats = None if formats is None else np.array(formats).reshape(-1)
    for i in rows:
      item = self.buffer[int(qids[i])][-1]
      item.put(ro, i)
      rewards[i], correct[i] = item.reward, item.correct
      if formats is not None:
        formats[i] = item.format
    shape = scored.rewards.shape
    return ro, scored._replace(rewards=rewards.reshape(shape), correct=correct.reshape(shape),
                               formats=None if formats is None else formats.reshape(shape)), len(rows)

  # ------------------------------------------------------------------------------------ filter (ReST)

  def valid_rows(self, rewards: np.ndarray) -> Optional[np.ndarray]:
    """[P·G] bool rows that stay in the loss (ReST filter), or None when no filter is chosen."""
    if not self.cfg.group_filter:
      return None
    return np.repeat(curation.variance_filter(rewards, **self.kw["group_filter"]), rewards.shape[1])


def _correct(scored) -> np.ndarray:
  return np.asarray(scored.rewards if scored.correct is None else scored.correct, np.float32)


class _Item:
  """One stored success: the completion part of a rollout row (prompt rows of one question are identical)."""

  def __init__(self, completion, cmask, logp, tail_attn, reward: float, correct: float, format_: Optional[int]):
    self.completion, self.cmask, self.logp, self.tail_attn = completion, cmask, logp, tail_attn
    self.reward, self.correct, self.format = reward, correct, format_

  @classmethod
  def of_row(cls, ro, i: int, reward: float, correct: float, format_: Optional[int]) -> "_Item":
    t = ro.completion.shape[1]
    return cls(ro.completion[i].copy(), ro.completion_mask[i].copy(), ro.rollout_logp[i].copy(),
               ro.attn_mask[i, -t:].copy(), reward, correct, format_)

  def put(self, ro, i: int) -> None:
    t = ro.completion.shape[1]
    if self.completion.shape != ro.completion[i].shape:
      raise ValueError(f"replay: a stored completion of {self.completion.shape[0]} tokens does not fit rows of {t}.")
    ro.completion[i], ro.completion_mask[i], ro.rollout_logp[i] = self.completion, self.cmask, self.logp
    ro.tokens[i, -t:], ro.attn_mask[i, -t:] = self.completion, self.tail_attn


# ------------------------------------------------------------------------- the replay buffer in checkpoints

ITEM_ARRAYS = ("completion", "cmask", "logp", "tail_attn")
RECORD_DTYPES = ("bool", "int8", "uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64")
RECORD_FORMAT = 1


def replay_record(buffer: dict) -> dict:
  """ARPO's buffer as JSON data (the checkpoint's `replay` item): {"format": 1, "questions": [[question id,
  [item, ...]], ...]} in the buffer's order (items oldest first), each item's arrays as dtype + base64 bytes."""
  def item(it):
    arrays = {k: {"dtype": str(getattr(it, k).dtype), "data": base64.b64encode(np.ascontiguousarray(getattr(it, k))
                                                                               .tobytes()).decode("ascii")}
              for k in ITEM_ARRAYS}
    return {"reward": float(it.reward), "correct": float(it.correct),
            "format": None if it.format is None else int(it.format), "arrays": arrays}
  return {"format": RECORD_FORMAT, "questions": [[int(q), [item(it) for it in items]] for q, items in buffer.items()]}


def buffer_from_record(record, *, num_questions: int, size: int, width: int) -> dict:
  """The buffer `replay_record` wrote, from a checkpoint (untrusted data): every field is checked — question ids
  in [0, num_questions) and distinct, at most `size` items each, arrays of `width` elements of a numeric dtype
  (decoded from raw bytes, never unpickled), finite rewards — else a ValueError naming what is wrong."""
  if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(record.get("questions"),
                                                                                                   list):
    raise ValueError(f"replay record: expected {{'format': {RECORD_FORMAT}, 'questions': [...]}}.")
  buffer = {}
  for entry in record["questions"]:
    if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and isinstance(entry[1], list)):
      raise ValueError(f"replay record: a question entry is not [id, items]: {str(entry)[:80]}")
    q, items = entry
    if not 0 <= q < num_questions or q in buffer:
      raise ValueError(f"replay record: question id {q} is outside [0, {num_questions}) or repeated.")
    if not 0 < len(items) <= size:
      raise ValueError(f"replay record: question {q} holds {len(items)} items (1..{size} expected).")
    buffer[q] = [_item_from_record(it, width) for it in items]
  return buffer


def _item_from_record(rec, width: int) -> _Item:
  if not (isinstance(rec, dict) and set(rec) == {"reward", "correct", "format", "arrays"}
          and isinstance(rec["arrays"], dict) and set(rec["arrays"]) == set(ITEM_ARRAYS)):
    raise ValueError("replay record: an item is not {reward, correct, format, arrays}.")
  values = [rec["reward"], rec["correct"]]
  if not all(type(v) in (int, float) and np.isfinite(v) for v in values) or not (
      rec["format"] is None or type(rec["format"]) is int):
    raise ValueError(f"replay record: an item's reward, correct or format is not a finite number: {values}.")
  arrays = [_array_from_record(rec["arrays"][k], width) for k in ITEM_ARRAYS]
  return _Item(*arrays, float(rec["reward"]), float(rec["correct"]), rec["format"])


def _array_from_record(rec, width: int) -> np.ndarray:
  if not (isinstance(rec, dict) and rec.get("dtype") in RECORD_DTYPES and isinstance(rec.get("data"), str)):
    raise ValueError(f"replay record: an array is not {{dtype in {RECORD_DTYPES}, data}}.")
  import jax.numpy as jnp   # bfloat16's numpy dtype
  dtype = np.dtype(jnp.bfloat16) if rec["dtype"] == "bfloat16" else np.dtype(rec["dtype"])
  try:
    raw = base64.b64decode(rec["data"].encode("ascii"), validate=True)
  except (ValueError, UnicodeEncodeError) as e:
    raise ValueError(f"replay record: an array's data is not base64 ({e}).") from None
  if len(raw) != width * dtype.itemsize:
    raise ValueError(f"replay record: an array holds {len(raw)} bytes, not {width} {dtype} values.")
  return np.frombuffer(raw, dtype).copy()


def vas_draw(pass_rates: dict, num_questions: int, n: int, rng: np.random.Generator, *, alpha: float = 1.0,
             mix: float = 0.5, prior: float = 0.5) -> np.ndarray:
  """`n` distinct question ids drawn with MMR1's VAS probabilities (unseen questions at pass rate `prior`)."""
  if n > num_questions:
    raise ValueError(f"prompt_sampling: {n} prompts per step from a pool of {num_questions} questions.")
  p = np.full(num_questions, prior)
  for q, rate in pass_rates.items():
    p[q] = rate
  w = curation.variance_promotion_weights(p, alpha=alpha, mix=mix)
  replace = np.count_nonzero(w) < n
  return rng.choice(num_questions, size=n, replace=replace, p=w)
