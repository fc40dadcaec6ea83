"""A small transformer learns addition: supervised warm-up, then RL.

Hypothesis: after a short supervised warm-up leaves the model partly right, group-relative RL with
an exact verifier raises greedy accuracy within a few CPU minutes, for any objective in
`rl_jax.objectives` (choose with --objective=..., --advantage=...).

Run:  python -m rl_jax.experiments.arithmetic_tiny [--objective=dapo] [--rl_steps=40] [--key=value ...]
Writes results/arithmetic_tiny/{metrics.jsonl, curves.png, config.json, checkpoints/}.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rl_jax
from rl_jax import advantages as advantages_lib
from rl_jax import objectives as objectives_lib
from rl_jax.checkpoint import Checkpointer, RunLock, SaveOnSigterm
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check, from_command_line, to_dict
from rl_jax.metrics_log import MetricsLogger, plot_curves, read_metrics, rewrite_rows
from rl_jax.models import init_params, tiny_config
from rl_jax.progress import progress
from rl_jax.run_dir import open_run, restart_logs
from rl_jax.sampling import generate
from rl_jax.tasks import ArithmeticTask
from rl_jax.train import (SFTBatch, Timer, dynamic_sampling, init_state, make_logprob_fn, make_rl_step, make_sft_step,
                          rl_iteration, rollout)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  digits: int = 1                  # operand digits (2+ learns too, but needs a longer warm-up)
  ops: str = "+"                   # operators drawn from "+-*"
  seed: int = 0
  d_model: int = 64                # model width (2 layers, 4 heads, 2 KV heads)
  n_layers: int = 2
  sft_steps: int = 50              # supervised warm-up steps (leaves the model partly right, ~40%)
  sft_batch: int = 64
  sft_lr: float = 3e-3
  rl_steps: int = 60               # RL iterations
  prompts_per_step: int = 32       # P
  group_size: int = 8              # G samples per prompt
  temperature: float = 1.0         # sampling temperature for rollouts
  lr: float = 5e-4                 # RL learning rate (Adam, global-norm clip 1.0)
  epochs: int = 2                  # optimizer passes over each rollout batch
  minibatches: int = 4             # mini-batches per pass
  objective: str = "grpo"          # any name in rl_jax.objectives.names()
  advantage: str = "grpo"          # any sequence-level name in rl_jax.advantages.names()
  beta: float = 0.0                # KL-to-reference coefficient (reference = post-warm-up model)
  dynamic_sampling: bool = False   # DAPO: over-sample, drop groups whose rewards all agree, refill the batch
  max_gen_batches: int = 8         # DAPO: rollout batches tried per step before giving up (<= 0: unlimited)
  eval_every: int = 10             # RL steps between greedy evaluations
  eval_size: int = 256             # held-out problems for greedy accuracy
  checkpoint_every: int = 10       # RL steps between checkpoints (0 = never)
  run_dir: str = "results/arithmetic_tiny"
  resume: bool = True              # continue from the latest checkpoint in run_dir
  progress_bar: bool = True

  BOUNDS: ClassVar[dict] = dict(
      digits=AT_LEAST_ONE, d_model=AT_LEAST_ONE, n_layers=AT_LEAST_ONE, sft_steps=NON_NEGATIVE, sft_batch=AT_LEAST_ONE,
      sft_lr=POSITIVE, rl_steps=NON_NEGATIVE, prompts_per_step=AT_LEAST_ONE, group_size=AT_LEAST_ONE,
      temperature=POSITIVE, lr=POSITIVE, epochs=AT_LEAST_ONE, minibatches=AT_LEAST_ONE, beta=NON_NEGATIVE,
      eval_every=AT_LEAST_ONE, eval_size=AT_LEAST_ONE, checkpoint_every=NON_NEGATIVE)

  def __post_init__(self):
    check(self)
    if self.objective not in objectives_lib.names():
      raise ValueError(f"Unknown objective {self.objective!r}; choose from {objectives_lib.names()}.")
    if self.advantage not in advantages_lib.names():
      raise ValueError(f"Unknown advantage {self.advantage!r}; choose from {advantages_lib.names()}.")
    if not self.ops or set(self.ops) - set("+-*"):
      raise ValueError(f"--ops must be drawn from '+-*', got {self.ops!r}.")
    if (self.prompts_per_step * self.group_size) % self.minibatches:
      raise ValueError("prompts_per_step * group_size must be divisible by minibatches.")


def needs_groups(objective: str) -> bool:
  """Whether the objective reads the group layout of a mini-batch (GTPO's `group_size`): then mini-batches
  hold whole groups in order."""
  import inspect
  return "group_size" in inspect.signature(objectives_lib.get(objective)).parameters


def objective_kwargs(cfg: Config) -> dict:
  """Hyperparameters the config sets on the chosen objective (β, and what needs the group layout)."""
  import inspect
  params = inspect.signature(objectives_lib.get(cfg.objective)).parameters
  kw = {}
  if "beta" in params:
    kw["beta"] = cfg.beta
  if "group_size" in params:
    kw["group_size"] = cfg.group_size
  if "rng" in params:
    kw["rng"] = jax.random.PRNGKey(cfg.seed)
  if "max_len" in params and params["max_len"].default is None and "agg" in params and \
      params["agg"].default == "seq-mean-token-sum-norm":
    kw["max_len"] = 8
  return kw


def evaluate(params, model_cfg, task: ArithmeticTask, n: int) -> float:
  """Greedy accuracy on a fixed held-out stream (stream 1)."""
  problems = task.problems(n, stream=1, index=0)
  ids, mask = task.encode_prompts([p for p, _ in problems])
  out = generate(params, model_cfg, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0),
                 max_new_tokens=task.answer_len, temperature=0.0, stop_tokens=(task.vocab.EOS,))
  comps = np.asarray(out.tokens)
  return float(np.mean([task.reward(c, a) for c, (_, a) in zip(comps, problems)]))


def rl_step_once(cfg, task, model_cfg, state, step, rl_step, logprob_fn, adv_fn, ref_params):
  """One RL iteration on the prompts of data position `step`: rollouts, rewards, advantages, updates."""
  timer = Timer()
  rng, sub = jax.random.split(state.rng)
  state = state._replace(rng=rng)

  def sample(attempt):
    """Rollouts and rewards for a fresh batch of prompts (data position = (step, attempt)); refills for
    dynamic sampling draw from their own stream so they never reuse another step's prompts."""
    if attempt == 0:
      problems, key = task.problems(cfg.prompts_per_step, stream=2, index=step), sub
    else:
      problems = task.problems(cfg.prompts_per_step, stream=3, index=step * 1000 + attempt)
      key = jax.random.fold_in(sub, attempt)
    p_ids, p_mask = task.encode_prompts([p for p, _ in problems])
    ro = rollout(state.params, model_cfg, p_ids, p_mask, key, group_size=cfg.group_size,
                 max_new_tokens=task.answer_len, temperature=cfg.temperature, stop_tokens=(task.vocab.EOS,))
    answers = np.repeat([a for _, a in problems], cfg.group_size)
    rewards = np.array([task.reward(c, a) for c, a in zip(ro.completion, answers)], np.float32)
    return ro, rewards.reshape(cfg.prompts_per_step, cfg.group_size)

  if cfg.dynamic_sampling:
    ro, rewards, ds = dynamic_sampling(sample, cfg.prompts_per_step, cfg.group_size, max_batches=cfg.max_gen_batches)
  else:
    (ro, rewards), ds = sample(0), {"gen_batches": 1, "short": 0}
  state, metrics = rl_iteration(state, rl_step, logprob_fn, ro, rewards, adv_fn, epochs=cfg.epochs,
                                minibatches=cfg.minibatches, ref_params=ref_params if cfg.beta > 0 else None,
                                keep_groups=needs_groups(cfg.objective))
  row = {"reward": float(rewards.mean()), "clip_frac": metrics["clip_frac"], "loss": metrics["loss"],
         "gen_batches": ds["gen_batches"],
         "entropy": metrics["entropy"], "nonzero_adv_frac": metrics["nonzero_adv_frac"],
         "tokens_per_s": float(ro.completion_mask.sum()) / timer.elapsed()}
  return row, state


def build(cfg: Config):
  task = ArithmeticTask(digits=cfg.digits, ops=cfg.ops, seed=cfg.seed)
  model_cfg = tiny_config(task.vocab.size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                          head_dim=cfg.d_model // 4, ffn_dim=2 * cfg.d_model,
                          max_seq_len=task.prompt_len + task.answer_len + 1)
  return task, model_cfg


def rl_optimizer(cfg: Config) -> optax.GradientTransformation:
  """Adam with global-norm clipping 1.0."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(cfg.lr))


def warm_up(cfg: Config, task: ArithmeticTask, model_cfg):
  """Fresh model (seeded by cfg.seed) after `cfg.sft_steps` supervised steps; returns its TrainState."""
  rng = jax.random.PRNGKey(cfg.seed)
  params = init_params(model_cfg, jax.random.fold_in(rng, 1))
  sft_opt = optax.adam(cfg.sft_lr)
  state = init_state(params, sft_opt, jax.random.fold_in(rng, 2))
  sft_step = make_sft_step(model_cfg, sft_opt)
  for i in progress(range(cfg.sft_steps), desc="warm-up (SFT)", enabled=cfg.progress_bar):
    problems = task.problems(cfg.sft_batch, stream=0, index=i)
    p_ids, p_mask = task.encode_prompts([p for p, _ in problems])
    a_ids, a_mask = task.encode_answers([a for _, a in problems])
    state, _ = sft_step(state, SFTBatch(*(jnp.asarray(x) for x in (p_ids, p_mask, a_ids, a_mask))))
  return state


# Settings a resumed run may change: its length, how often it evaluates and checkpoints, and bookkeeping.
# Any other change would continue a checkpoint trained with other settings.
RESUMABLE = {"rl_steps", "eval_every", "checkpoint_every", "run_dir", "resume", "progress_bar"}


def main(cfg: Config, objective_fn=None, objective_kw=None) -> dict:
  """Runs the experiment. `objective_fn` replaces the named objective with your own function (same
  signature as rl_jax.objectives.*; `objective_kw` are its keyword arguments)."""
  with RunLock(cfg.run_dir, process=jax.process_index()):
    return _main(cfg, objective_fn, objective_kw)


def _main(cfg: Config, objective_fn=None, objective_kw=None) -> dict:
  task, model_cfg = build(cfg)
  run_dir = pathlib.Path(cfg.run_dir)
  settings = to_dict(cfg)
  if objective_fn is not None:   # a custom objective is part of what the checkpoints were trained with
    settings["objective_fn"] = ".".join(getattr(objective_fn, a, type(objective_fn).__name__)
                                        for a in ("__module__", "__qualname__"))
  open_run(run_dir, settings, resume=cfg.resume, may_change=RESUMABLE)
  print(f"rl_jax {rl_jax.__version__} | config: {json.dumps(to_dict(cfg))}")
  ckpt = Checkpointer(run_dir / "checkpoints")

  rng = jax.random.PRNGKey(cfg.seed)
  params = init_params(model_cfg, jax.random.fold_in(rng, 1))
  rl_opt = rl_optimizer(cfg)
  restored = ckpt.restore_latest(init_state(params, rl_opt, rng)) if cfg.resume else None

  if restored is None:
    restart_logs(run_dir, ["metrics.jsonl", "tb"])
    logger = MetricsLogger(run_dir)
    state = warm_up(cfg, task, model_cfg)
    acc = evaluate(state.params, model_cfg, task, cfg.eval_size)
    print(f"after warm-up: greedy accuracy {acc:.3f}")
    logger.log(0, {"accuracy": acc}, phase="eval")
    ref_params = state.params
    state = init_state(state.params, rl_opt, state.rng)
    start = 0
  else:
    template = init_state(params, rl_opt, rng)
    state, ref_params, start = restored.state(template), restored.ref_params(params), restored.position
    print(f"resumed from {restored.path} at RL step {start}")
    rewrite_rows(run_dir / "metrics.jsonl", lambda r: r["step"] <= start)
    logger = MetricsLogger(run_dir, purge_step=start + 1)

  objective = objective_fn or objectives_lib.get(cfg.objective)
  kw = objective_kwargs(cfg) if objective_fn is None else dict(objective_kw or {})
  adv_fn = advantages_lib.get(cfg.advantage)
  rl_step = make_rl_step(model_cfg, rl_opt, objective, kw, prompt_len=task.prompt_len)
  logprob_fn = make_logprob_fn(model_cfg, prompt_len=task.prompt_len)
  bar = progress(range(start, cfg.rl_steps), desc=f"RL ({cfg.objective})", enabled=cfg.progress_bar)
  history = []
  live = {"state": state, "position": start}

  def final_checkpoint():
    if cfg.checkpoint_every and ckpt.saved != live["position"]:
      ckpt.save(live["position"], live["state"], ref_params)
      print(f"SIGTERM: saved a final checkpoint at RL step {live['position']}")

  with SaveOnSigterm(final_checkpoint) as sigterm:
    for step in bar:
      row, state = rl_step_once(cfg, task, model_cfg, state, step, rl_step, logprob_fn, adv_fn, ref_params)
      if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.rl_steps:
        row["accuracy"] = evaluate(state.params, model_cfg, task, cfg.eval_size)
        print(f"RL step {step + 1:4d} | reward {row['reward']:.3f} | greedy accuracy {row['accuracy']:.3f} "
              f"| clip_frac {row['clip_frac']:.3f} | entropy {row['entropy']:.3f}")
      logger.log(step + 1, row)
      live.update(state=state, position=step + 1)   # a SIGTERM saves a step only once its row is logged
      history.append(row)
      bar.set_postfix(reward=f"{row['reward']:.2f}", clip=f"{row['clip_frac']:.3f}",
                      tok_s=f"{row['tokens_per_s']:.0f}")
      if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.rl_steps):
        with sigterm.deferred():
          ckpt.save(step + 1, state, ref_params)
  logger.close()
  rows = read_metrics(run_dir / "metrics.jsonl")
  plot = plot_curves(rows, run_dir / "curves.png", keys=("reward", "accuracy", "clip_frac"),
                     title=f"arithmetic_tiny: {getattr(objective, '__name__', cfg.objective)} / {cfg.advantage}")
  accs = [r["accuracy"] for r in rows if "accuracy" in r]
  print(f"accuracy curve: {' -> '.join(f'{a:.3f}' for a in accs)}")
  print(f"plot: {plot}")
  return {"accuracy": accs, "history": history}


if __name__ == "__main__":
  main(from_command_line(Config(), sys.argv[1:], __doc__))
