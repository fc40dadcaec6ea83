"""The RL run loop behind every experiment: one place for what a run is and how it proceeds.

An experiment supplies a `Task` (its prompts and verifier), its model, its evaluation and its config
(a subclass of `RLConfig`; both in `rl_jax.loop_config`); the loop owns the rest:

  RunDir   the run directory (`rl_jax.loop_run_dir`): lock (one live process), settings guard (a resumed
           run must train as the stored one), config.json, fresh-run cleanup of the logs, checkpoints,
           metrics logger;
  Run      everything the run compiles, built before any compute (`rl_jax.loop_run`): the device mesh, the
           optimizer, the objective and advantage estimator (checked), and the sampler, log-prob forward
           and train step jitted with explicit shardings from `rl_jax.sharding`;
  train    the RL steps: prompts → rollouts (dynamic sampling: DAPO, arXiv 2503.14476) → rewards →
           advantages (stateful estimators carry their per-question state, checkpointed with
           the policy) → epochs × mini-batches of updates (`rl_iteration`, reference
           model when β > 0) → metrics → checkpoint (orbax CheckpointManager, asynchronous: the
           state, reference params, estimator state, ARPO's replay buffer and data position); SIGTERM saves a final
           checkpoint, a multi-host preemption saves at the step every process reaches together.

Multi-host: every process runs the same steps on its devices; the run dir's files are written by
process 0 only (each process holds its own lock file); checkpoints are written by every process through
the CheckpointManager, whose primary process alone deletes old ones.
"""


from __future__ import annotations

import functools
import signal
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import advantages as advantages_lib
from rl_jax import loop_extras
from rl_jax.advantages import batch as batch_adv
from rl_jax.advantages.stateful import init_reward_stats
from rl_jax.checkpoint import SaveOnSigterm, donated
from rl_jax.loop_config import (  # noqa: F401  (re-exported: the loop's public names live on rl_jax.loop)
    LOOP_KEYWORDS, MASK_ADVANTAGE, MC_ADVANTAGES, OBJECTIVE_INPUTS, RESUMABLE, ROLLOUTS, STATEFUL_ADVANTAGES,
    TOKEN_ADVANTAGES, Prompts, RLConfig, Scored, Task, advantage_kwargs, check_methods, command_line, mesh_config,
    needs_groups, objective_kwargs, parse_keywords, reward_advantages)
from rl_jax.loop_run import (  # noqa: F401
    Run, TaskShape, ahead_of_time, layout_key, make_mesh, make_run, packed_row_multiple, rl_optimizer)
from rl_jax.loop_run_dir import LOGS, RunDir, checkpoint_dir, estimator_template, is_shared_storage  # noqa: F401
from rl_jax.mc_values import SPO_CHAIN_INTERVAL, SPO_CHAIN_THRESHOLD, spo_chain_mc_values
from rl_jax.progress import progress
from rl_jax.train import Rollouts, Timer, TrainState, dynamic_sampling, rl_iteration, split_key  # noqa: F401
from rl_jax.tree_rollout import impute_empty_rows


def replay_dcpo_stats(log_rows: list, num_questions: int):
  """DCPO's SAS statistics after the logged steps: a pure function of the reward history (rewards.jsonl rows
  {"step", "question_ids", "rewards"}), so an independent rebuild of the state the loop checkpoints."""
  stats = init_reward_stats(num_questions)
  for row in sorted(log_rows, key=lambda r: r["step"]):
    _, stats = advantages_lib.dcpo(jnp.asarray(row["rewards"], jnp.float32), jnp.asarray(row["question_ids"]), stats)
  return stats



def advantage_state(run: Run, rd: RunDir, position: int):
  """The stateful estimator's state at `position` (None for stateless ones): fresh at 0, else the checkpoint's."""
  if run.advantage not in STATEFUL_ADVANTAGES:
    return None
  if position == 0:
    return init_reward_stats(run.task.num_questions)
  if rd.estimator is None:
    raise RuntimeError(f"no {run.advantage} statistics restored for RL step {position}.")
  return jax.tree.map(jnp.asarray, rd.estimator)


class StepRollouts(NamedTuple):
  """A step's training batch: rollouts [P·G rows], rewards [P, G], and what the estimators may read."""
  rollouts: Rollouts
  rewards: np.ndarray
  prompts: Prompts            # the first batch's prompts (the batch's own unless dynamic sampling refilled it)
  scored: list                # the Scored of every rollout batch sampled
  gen_batches: int
  paths: Optional[np.ndarray] = None   # tree rollouts: [P, G, D] tree paths
  valid: Optional[np.ndarray] = None   # tree rollouts: [P·G] rows that hold a leaf


def sample_step(run: Run, params, step: int, key) -> StepRollouts:
  """The rollouts of data position `step`: one batch (group or tree rollouts), or dynamic sampling's refills,
  each scored by the task and then `run.extras` (replay, reward shaping). Tree rollouts' empty rows get
  their group's valid mean reward (they are left out of the loss and of the group statistics)."""
  cfg, task, scored = run.cfg, run.task, []
  if cfg.rollout == "tree":
    prompts = run.extras.prompts(step, 0)
    ro, paths, valid = run.tree_rollout(params, prompts, key)
    ro, sc = run.extras.score(ro, prompts, task.score(ro, prompts), step)
    rewards = impute_empty_rows(np.asarray(sc.rewards, np.float32), valid.reshape(sc.rewards.shape))
    return StepRollouts(ro, rewards, prompts, [sc], 1, paths, valid)

  def sample(attempt):
    prompts = run.extras.prompts(step, attempt)
    ro = run.rollout(params, prompts, key if attempt == 0 else jax.random.fold_in(key, attempt))
    ro, score = run.extras.score(ro, prompts, task.score(ro, prompts), step)
    scored.append((prompts, score))
    return ro, score.rewards

  if cfg.dynamic_sampling:
    ro, rewards, ds = dynamic_sampling(sample, cfg.prompts_per_step, cfg.group_size, max_batches=cfg.max_gen_batches)
  else:
    (ro, rewards), ds = sample(0), {"gen_batches": 1}
  return StepRollouts(ro, rewards, scored[0][0], [sc for _, sc in scored], ds["gen_batches"])


def mc_values(run: Run, params, batch: StepRollouts, key):
  """SPO-chain's Monte-Carlo values of the batch's cut points (continuations scored by `task.reward`)."""
  g, kw, prompts = run.cfg.group_size, run.advantage_kw, batch.prompts
  return spo_chain_mc_values(params, run.model_cfg, prompts.ids, prompts.mask, batch.rollouts,
                             lambda ids, row: run.task.reward(ids, prompts.answers[row // g]), key, group=g,
                             stop_tokens=tuple(run.task.stop_tokens), interval=kw.get("interval", SPO_CHAIN_INTERVAL),
                             threshold=kw.get("threshold", SPO_CHAIN_THRESHOLD))


def advantages(run: Run, batch: StepRollouts, adv_state, params, key):
  """(advantages [P, G] or [P, G, T], the estimator's new state, metrics, loss mask [P·G, T] or None) of the
  step's batch: stateful estimators carry their per-question state; the rest are
  `rl_jax.advantages.batch.batch_advantages` (group, token, tree and Monte-Carlo estimators). Monte-Carlo
  estimators sample their continuations with fold_in(key, 7), `key` being the step's rollout key."""
  name, rewards, ro = run.advantage, batch.rewards, batch.rollouts
  if name in STATEFUL_ADVANTAGES:
    fn = functools.partial(advantages_lib.get(name), **run.advantage_kw)
    adv, adv_state = fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(batch.prompts.question_ids), adv_state)
    return adv, adv_state, {}, None
  p, g = rewards.shape
  if name in reward_advantages(MASK_ADVANTAGE) and batch.paths is None:   # from rewards and the completion mask
    fn = functools.partial(advantages_lib.get(name), **run.advantage_kw)
    return fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(ro.completion_mask.reshape(p, g, -1))), adv_state, {}, None
  mc = mc_values(run, params, batch, jax.random.fold_in(key, 7)) if name in MC_ADVANTAGES else None
  out = batch_adv.batch_advantages(name, run.advantage_kw, ro.completion.reshape(p, g, -1),
                                   ro.completion_mask.reshape(p, g, -1), rewards, paths=batch.paths,
                                   valid=None if batch.valid is None else batch.valid.reshape(p, g), mc=mc)
  loss_mask = None if out.loss_mask is None else out.loss_mask.reshape(p * g, -1)
  return out.advantages, adv_state, out.metrics, loss_mask


def batch_rows(rows: Sequence[dict]) -> dict:
  """The step's task metrics from the `Scored.row` of each of its rollout batches (several under dynamic
  sampling): integer values are counts, summed over the batches (e.g. reward_failures); other values are
  means over a batch's P·G rows, so their mean over the batches is the mean over every sampled row."""
  out = {}
  for key in rows[0]:
    values = [r[key] for r in rows]
    counts = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    out[key] = int(sum(values)) if counts else float(np.mean(values))
  return out


def rl_step(run: Run, state: TrainState, step: int, ref_params, adv_state):
  """One RL step on data position `step`: rollouts (with dynamic-sampling refills), rewards, advantages,
  epochs × mini-batches of updates. Returns (state, metrics row, estimator state, rewards record, sample)."""
  cfg, timer = run.cfg, Timer()
  rng, key = split_key(state.rng)
  state = state._replace(rng=rng)
  batch = sample_step(run, state.params, step, key)
  gen_s = timer.elapsed()
  adv, adv_state, adv_metrics, loss_mask = advantages(run, batch, adv_state, state.params, key)
  ro, rewards = batch.rollouts, batch.rewards
  train_ro = ro if loss_mask is None else ro._replace(completion_mask=loss_mask)
  prompt_len = ro.tokens.shape[1] - ro.completion.shape[1]
  valid = [v for v in (batch.valid, run.extras.valid_rows(rewards)) if v is not None]
  state, m = rl_iteration(state, run.train_step(prompt_len), run.logprob_fn(prompt_len), train_ro, rewards,
                          lambda _: adv, epochs=cfg.epochs, minibatches=cfg.minibatches, ref_params=ref_params,
                          valid_rows=np.logical_and.reduce(valid) if valid else None,
                          keep_groups=needs_groups(run.objective),
                          pack=functools.partial(run.pack, prompt_len=prompt_len) if cfg.packed else None)
  run.extras.after_update(m)
  reward = rewards.mean() if batch.valid is None else rewards.reshape(-1)[batch.valid].mean()
  row = dict(m, reward=float(reward), **batch_rows([sc.row for sc in batch.scored]), **adv_metrics,
             gen_batches=batch.gen_batches, gen_seconds=gen_s, step_seconds=timer.elapsed(),
             tokens_per_s=float(ro.completion_mask.sum()) / timer.elapsed())
  # the question ids of a dynamically sampled batch are not tracked
  record = None if cfg.dynamic_sampling else {"question_ids": [int(i) for i in batch.prompts.question_ids],
                                              "rewards": np.asarray(rewards).tolist(),
                                              **run.extras.record(batch.scored[0])}
  return state, row, adv_state, record, batch.scored[0].sample


def train(run: Run, rd: RunDir, state: TrainState, ref_params, start: int, *,
          evaluate: Optional[Callable[[dict], dict]] = None, eval_every: int = 0) -> tuple[TrainState, list]:
  """RL steps start..cfg.rl_steps: each logs its row (metrics.jsonl, rewards.jsonl, samples.jsonl), is
  evaluated every `eval_every` steps and at the last (`evaluate(params)` -> scalars merged into the row),
  and checkpointed every cfg.checkpoint_every steps and at the last (asynchronously: the next step runs while
  it is written). SIGTERM on a single process saves a final checkpoint of the last logged step (once the step in
  progress has donated that state to its train step, it waits until this step is logged and saves it); on
  several processes, jax's preemption service makes every process save at the same step (`reached_preemption`).
  Either way the run waits for the write and exits with status 143. Returns (final state, these steps' rows)."""
  cfg, ckpt = run.cfg, rd.ckpt
  adv_state = advantage_state(run, rd, start)
  run.extras.restore_from(rd.path, start, rd.replay)
  live = {"state": state, "position": start, "adv_state": adv_state, "replay": run.extras.replay_state()}

  def save(position, state, adv_state, replay):
    ckpt.save(position, state, ref_params, None if adv_state is None else jax.device_get(adv_state),
              None if replay is None else loop_extras.replay_record(replay))

  def final_checkpoint():
    if cfg.checkpoint_every and ckpt.saved != live["position"]:
      save(live["position"], live["state"], live["adv_state"], live["replay"])
      print(f"SIGTERM: saved a final checkpoint at RL step {live['position']}")
    ckpt.wait()

  history = []
  bar = progress(range(start, cfg.rl_steps), desc=f"RL ({cfg.objective})", enabled=cfg.progress_bar)
  # the step donates live["state"] to its train step: a SIGTERM from then on saves the step's own state once logged
  with SaveOnSigterm(final_checkpoint, install=jax.process_count() == 1,
                     ready=lambda: not donated(live["state"])) as sigterm:
    for step in bar:
      state, row, adv_state, record, sample = rl_step(run, live["state"], step, ref_params, adv_state)
      last = step + 1 == cfg.rl_steps
      if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
        row.update(evaluate(state.params))
      rd.logger.log(step + 1, row)
      if record is not None:
        rd.append("rewards.jsonl", dict(step=step + 1, **record))
      if sample is not None:
        rd.append("samples.jsonl", dict(step=step + 1, **sample))
      history.append(row)
      bar.set_postfix(reward=f"{row['reward']:.2f}", tok_s=f"{row['tokens_per_s']:.0f}")
      print(f"RL step {step + 1:4d} | " + " | ".join(f"{k} {row[k]:.3f}" for k in STEP_PRINT if k in row)
            + f" | {row['step_seconds']:.1f}s")
      with sigterm.deferred():
        live.update(state=state, position=step + 1, adv_state=adv_state,   # saved by a SIGTERM from now on
                    replay=run.extras.replay_state())
      preempted = ckpt.reached_preemption(step + 1)
      if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or last or preempted):
        with sigterm.deferred():
          save(step + 1, state, adv_state, live["replay"])
      if preempted:
        print(f"preemption: every process stops after RL step {step + 1}"
              + (", checkpointed" if cfg.checkpoint_every else " (checkpoint_every=0: no checkpoint)"))
        ckpt.wait()
        raise SystemExit(128 + signal.SIGTERM)
    with sigterm.deferred():
      ckpt.wait()
  return live["state"], history


STEP_PRINT = ("reward", "train_accuracy", "accuracy", "clip_frac", "entropy", "response_len")
