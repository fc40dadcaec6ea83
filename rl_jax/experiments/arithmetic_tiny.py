"""A small transformer learns addition: supervised warm-up, then RL.

Hypothesis: after a short supervised warm-up leaves the model partly right, group-relative RL with
an exact verifier raises greedy accuracy within a few CPU minutes, for any objective in
`rl_jax.objectives` (choose with --objective=..., --advantage=...).

Run:  python -m rl_jax.experiments.arithmetic_tiny [--objective=dapo] [--rl_steps=40] [--mesh=2,2,2] [--key=value ...]
Writes results/arithmetic_tiny/{metrics.jsonl, rewards.jsonl, curves.png, config.json, checkpoints/}.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import loop
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE
from rl_jax.metrics_log import plot_curves, read_metrics
from rl_jax.models import init_params, tiny_config
from rl_jax.progress import progress
from rl_jax.sampling import generate
from rl_jax.sft_losses import make_otr_sft_step
from rl_jax.tasks import ArithmeticTask
from rl_jax.train import SFTBatch, init_state, make_sft_step


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(loop.RLConfig):
  digits: int = 1                  # operand digits (2+ learns too, but needs a longer warm-up)
  ops: str = "+"                   # operators drawn from "+-*"
  d_model: int = 64                # model width (2 layers, 4 heads, 2 KV heads)
  n_layers: int = 2
  sft_steps: int = 50              # supervised warm-up steps (leaves the model partly right, ~40%)
  sft_batch: int = 64
  sft_lr: float = 3e-3
  sft_loss: str = "ce"             # warm-up loss: "ce" (cross-entropy) or "otr" (One-Token Rollout, rl_jax.sft_losses)
  rl_steps: int = 60
  prompts_per_step: int = 32
  group_size: int = 8
  lr: float = 5e-4
  epochs: int = 2
  minibatches: int = 4
  max_gen_batches: int = 8
  eval_every: int = 10             # RL steps between greedy evaluations
  eval_size: int = 256             # held-out problems for greedy accuracy
  checkpoint_every: int = 10
  run_dir: str = "results/arithmetic_tiny"
  packed: bool = False             # plain rows: a row here is ≤ 8 tokens, so packing saves little compute, and the
                                   # packed rows' shape changes with every mini-batch (one train-step compile each):
                                   # 12 RL steps took 7 min 50 s packed (40 train-step compiles) vs 44 s plain (2)

  BOUNDS: ClassVar[dict] = dict(loop.RLConfig.BOUNDS, digits=AT_LEAST_ONE, d_model=AT_LEAST_ONE, n_layers=AT_LEAST_ONE,
                                sft_steps=NON_NEGATIVE, sft_batch=AT_LEAST_ONE, sft_lr=POSITIVE, eval_every=AT_LEAST_ONE,
                                eval_size=AT_LEAST_ONE)

  def __post_init__(self):
    super().__post_init__()
    if self.sft_loss not in ("ce", "otr"):
      raise ValueError(f"--sft_loss must be 'ce' or 'otr', got {self.sft_loss!r}.")
    if not self.ops or set(self.ops) - set("+-*"):
      raise ValueError(f"--ops must be drawn from '+-*', got {self.ops!r}.")


RESUMABLE = loop.RESUMABLE | {"eval_every"}


class Problems:
  """The loop's task: fresh addition problems per data position, rewarded by the exact verifier."""

  def __init__(self, cfg: Config, task: ArithmeticTask):
    self.cfg, self.task = cfg, task
    self.max_new_tokens, self.stop_tokens = task.answer_len, (task.vocab.EOS,)
    self.num_questions = 10 ** (2 * task.digits) * len(task.ops)

  def question_id(self, prompt: str) -> int:
    """a op b -> a stable index in [0, num_questions)."""
    hi = 10 ** self.task.digits
    op = next(c for c in self.task.ops if c in prompt[self.task.digits:])
    a, b = prompt.rstrip("=").split(op)
    return (self.task.ops.index(op) * hi + int(a)) * hi + int(b)

  def prompts(self, step: int, attempt: int) -> loop.Prompts:
    """Stream 2 at the step's position; dynamic-sampling refills from stream 3, never another step's prompts."""
    n = self.cfg.prompts_per_step
    problems = (self.task.problems(n, stream=2, index=step) if attempt == 0
                else self.task.problems(n, stream=3, index=step * 1000 + attempt))
    ids, mask = self.task.encode_prompts([p for p, _ in problems])
    return loop.Prompts(ids, mask, [a for _, a in problems], np.array([self.question_id(p) for p, _ in problems]))

  def prompts_for(self, question_ids) -> loop.Prompts:
    """The prompts of chosen question ids (prompt sampling over the whole pool)."""
    hi = 10 ** self.task.digits
    problems = [self.task.problem(int(q) // hi % hi, self.task.ops[int(q) // hi // hi], int(q) % hi)
                for q in question_ids]
    ids, mask = self.task.encode_prompts([p for p, _ in problems])
    return loop.Prompts(ids, mask, [a for _, a in problems], np.asarray(question_ids))

  def score(self, ro, prompts: loop.Prompts) -> loop.Scored:
    answers = np.repeat(prompts.answers, self.cfg.group_size)
    rewards = np.array([self.task.reward(c, a) for c, a in zip(ro.completion, answers)], np.float32)
    return loop.Scored(rewards.reshape(-1, self.cfg.group_size), {})

  def reward(self, completion_ids, answer) -> float:
    """The verifier on one completion (SPO-chain's Monte-Carlo continuations)."""
    return self.task.reward(completion_ids, answer)


def evaluate(params, model_cfg, task: ArithmeticTask, n: int) -> float:
  """Greedy accuracy on a fixed held-out stream (stream 1)."""
  problems = task.problems(n, stream=1, index=0)
  ids, mask = task.encode_prompts([p for p, _ in problems])
  out = generate(params, model_cfg, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0),
                 max_new_tokens=task.answer_len, temperature=0.0, stop_tokens=(task.vocab.EOS,))
  comps = np.asarray(out.tokens)
  return float(np.mean([task.reward(c, a) for c, (_, a) in zip(comps, problems)]))


def build(cfg: Config):
  task = ArithmeticTask(digits=cfg.digits, ops=cfg.ops, seed=cfg.seed)
  model_cfg = tiny_config(task.vocab.size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                          head_dim=cfg.d_model // 4, ffn_dim=2 * cfg.d_model,
                          max_seq_len=task.prompt_len + task.answer_len + 1)
  return task, model_cfg


def warm_up(cfg: Config, task: ArithmeticTask, model_cfg):
  """Fresh model (seeded by cfg.seed) after `cfg.sft_steps` supervised steps; returns its TrainState."""
  rng = jax.random.PRNGKey(cfg.seed)
  params = init_params(model_cfg, jax.random.fold_in(rng, 1))
  sft_opt = optax.adam(cfg.sft_lr)
  state = init_state(params, sft_opt, jax.random.fold_in(rng, 2))
  sft_step = make_otr_sft_step(model_cfg, sft_opt) if cfg.sft_loss == "otr" else make_sft_step(model_cfg, sft_opt)
  for i in progress(range(cfg.sft_steps), desc="warm-up (SFT)", enabled=cfg.progress_bar):
    problems = task.problems(cfg.sft_batch, stream=0, index=i)
    p_ids, p_mask = task.encode_prompts([p for p, _ in problems])
    a_ids, a_mask = task.encode_answers([a for _, a in problems])
    state, _ = sft_step(state, SFTBatch(*(jnp.asarray(x) for x in (p_ids, p_mask, a_ids, a_mask))))
  return state


def warm_start(cfg: Config, task: ArithmeticTask, model_cfg):
  """(the warmed-up TrainState, its greedy accuracy): the RL run's starting point."""
  warm = warm_up(cfg, task, model_cfg)
  return warm, evaluate(warm.params, model_cfg, task, cfg.eval_size)


def main(cfg: Config, objective_fn=None, objective_kw=None, *, begin=warm_start, plot: bool = True) -> dict:
  """Runs the experiment. `objective_fn` replaces the named objective with your own function (same
  signature as rl_jax.objectives.*; `objective_kw` are its keyword arguments). `begin(cfg, task, model_cfg)`
  -> (TrainState, accuracy) makes the warm start of a fresh run (a grid of runs shares one per seed).
  Returns the accuracy curve, the evaluations [(step, accuracy)], the RL rows, and the final parameters."""
  if cfg.aot:
    task, model_cfg = build(cfg)
    return loop.ahead_of_time(cfg, model_cfg, prompt_len=task.prompt_len, max_new_tokens=task.answer_len,
                              stop_tokens=(task.vocab.EOS,), objective=objective_fn, objective_kw=objective_kw)
  custom = {} if objective_fn is None else {   # a custom objective is part of what the checkpoints were trained with
      "objective_fn": ".".join(getattr(objective_fn, a, type(objective_fn).__name__) for a in ("__module__", "__qualname__"))}
  with loop.RunDir(cfg, resumable=RESUMABLE, extra_settings=custom) as rd:
    task, model_cfg = build(cfg)
    params = init_params(model_cfg, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1))
    run = loop.make_run(cfg, model_cfg, params, Problems(cfg, task), prompt_len=task.prompt_len, objective=objective_fn,
                        objective_kw=objective_kw)
    restored = rd.restore(run, params, jax.random.PRNGKey(cfg.seed))
    if restored is None:
      warm, acc = begin(cfg, task, model_cfg)
      print(f"after warm-up: greedy accuracy {acc:.3f}")
      rd.logger.log(0, {"accuracy": acc}, phase="eval")
      state, start = run.init_state(warm.params, warm.rng), 0
      ref_params = run.place_params(warm.params) if cfg.beta > 0 else None
    else:
      state, ref_params, start = restored
      rd.trim(start)
    state, history = loop.train(run, rd, state, ref_params, start, eval_every=cfg.eval_every,
                            evaluate=lambda p: {"accuracy": evaluate(p, model_cfg, task, cfg.eval_size)})
  rows = read_metrics(rd.path / "metrics.jsonl")
  name = getattr(objective_fn, "__name__", cfg.objective)
  if plot:
    path = plot_curves(rows, rd.path / "curves.png", keys=("reward", "accuracy", "clip_frac"),
                       title=f"arithmetic_tiny: {name} / {cfg.advantage}")
    print(f"plot: {path}")
  evals = [(r["step"], r["accuracy"]) for r in rows if "accuracy" in r]
  print(f"accuracy curve: {' -> '.join(f'{a:.3f}' for _, a in evals)}")
  return {"accuracy": [a for _, a in evals], "evals": evals, "history": history, "params": jax.device_get(state.params),
          "params_sharding": jax.tree.map(lambda x: x.sharding, state.params)}


if __name__ == "__main__":
  main(loop.command_line(Config(), sys.argv[1:], __doc__))
