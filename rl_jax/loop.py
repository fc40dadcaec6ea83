"""The RL run loop behind every experiment: one place for what a run is and how it proceeds.

An experiment supplies a `Task` (its prompts and verifier), its model, its evaluation and its config
(a subclass of `RLConfig`); the loop owns the rest:

  RunDir   the run directory: lock (one live process), settings guard (a resumed run must train as
           the stored one), config.json, fresh-run cleanup of the logs, checkpoints, metrics logger;
  Run      everything the run compiles, built before any compute: the device mesh, the optimizer,
           the objective and advantage estimator (checked), and the sampler, log-prob forward and
           train step jitted with explicit shardings from `rl_jax.sharding`;
  train    the RL steps: prompts → rollouts (dynamic sampling: DAPO, arXiv 2503.14476) → rewards →
           advantages (stateful estimators carry their per-question state, checkpointed with
           the policy) → epochs × mini-batches of updates (`rl_iteration`, reference
           model when β > 0) → metrics → checkpoint (orbax CheckpointManager, asynchronous: the
           state, reference params, estimator state and data position); SIGTERM saves a final
           checkpoint, a multi-host preemption saves at the step every process reaches together.

Multi-host: every process runs the same steps on its devices; the run dir's files are written by
process 0 only (each process holds its own lock file); checkpoints are written by every process through
the CheckpointManager, whose primary process alone deletes old ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import signal
import warnings
from typing import Callable, ClassVar, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import rl_jax
from rl_jax import advantages as advantages_lib
from rl_jax import objectives as objectives_lib
from rl_jax import loop_extras, registry, sharding
from rl_jax.advantages import batch as batch_adv
from rl_jax.advantages.stateful import init_reward_stats
from rl_jax.checkpoint import Checkpoints, RunLock, SaveOnSigterm, abstract, check_layout, saved_steps
from rl_jax.distributed import is_main_process
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, check, from_command_line, to_dict
from rl_jax.metrics_log import MetricsLogger, atomic_write_text, rewrite_rows
from rl_jax.progress import progress
from rl_jax.run_dir import open_run, restart_logs
from rl_jax.models.llama import sampler_dtype
from rl_jax.packing import pack_groups
from rl_jax.sampling import DECODE_BLOCK, Samples, generate_raw
from rl_jax.tree_rollout import TreeRollout, first_width, impute_empty_rows, tree_rollout_raw, tree_to_rollouts, tree_widths
from rl_jax.mc_values import SPO_CHAIN_INTERVAL, SPO_CHAIN_THRESHOLD, spo_chain_mc_values
from rl_jax.train import (RLBatch, Rollouts, Timer, TrainState, dynamic_sampling, init_state, make_logprob_fn,
                          make_rl_step, rl_iteration)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
  """The settings every RL experiment shares; an experiment's Config subclasses it (and may change defaults)."""
  seed: int = 0
  rl_steps: int = 8                 # RL iterations
  prompts_per_step: int = 8         # P questions per step
  group_size: int = 4               # G samples per question
  temperature: float = 1.0          # rollout sampling temperature
  temperature_tau: float = 0.0      # HAPO adaptive sampling temperature τ in [0, 1) (0 = fixed; --objective=hapo)
  top_p: float = 1.0                # rollout nucleus sampling
  lr: float = 5e-6                  # Adam, global-norm clip 1.0
  epochs: int = 1                   # optimizer passes per rollout batch (1 and minibatches 1: on-policy, no π_old pass)
  minibatches: int = 1              # mini-batches per pass
  objective: str = "grpo"           # any name in rl_jax.objectives.names() the loop can feed (see check_methods)
  advantage: str = "grpo"           # group-reward estimators, "tempo" (token-level), "dcpo" (per-question state)
  objective_args: str = ""          # the objective's keywords k=v,k2=v2 (or --objective.k=v), e.g. eps_high=0.3
  advantage_args: str = ""          # the estimator's keywords (or --advantage.k=v), e.g. scale_by_std=false
  reward_shaping: str = ""          # rl_jax.loop_extras: kimi, grpo_lambda, ada_grpo, effort, tlts ("" = none)
  reward_shaping_args: str = ""     # its keywords (or --reward_shaping.k=v), e.g. threshold=0.6
  prompt_sampling: str = ""         # "vas" (MMR1 variance-aware sampling over the task's questions)
  prompt_sampling_args: str = ""
  replay: str = ""                  # "arpo" (successes replayed into all-negative groups)
  replay_args: str = ""
  group_filter: str = ""            # "rest" (ReST-GRPO variance filter: rejected groups leave the loss)
  group_filter_args: str = ""
  beta: float = 0.0                 # KL to the reference (the initial policy); > 0 runs a reference forward
  dynamic_sampling: bool = False    # DAPO: drop groups whose rewards all agree, refill from fresh prompts
  max_gen_batches: int = 4          # DAPO: rollout batches tried per step before giving up (<= 0: unlimited)
  rollout: str = "group"            # "group": G independent samples per prompt; "tree": TreePO tree rollouts of G leaves
  tree_segment_len: int = 1         # tree: tokens per segment (depth ceil(max_new_tokens / segment), forks in 2)
  checkpoint_every: int = 4         # RL steps between checkpoints (0 = never)
  checkpoint_keep: int = 3          # checkpoints kept: the newest ones
  checkpoint_keep_every: int = 0    # also keep every checkpoint whose step is a multiple of this (0 = none)
  checkpoint_dir: str = ""          # where checkpoints go, a local path or gs://...; "" = <run_dir>/checkpoints
  mesh: str = "1,1,1"               # device mesh data,fsdp,tensor (-1 = the remaining devices; 1,1,1 = one device)
  micro_batches: int = 1            # gradient accumulation: micro-batches per update (0 = auto: the fewest that fit, from compiled memory)
  logprob_micro_batches: int = 1    # micro-batches of the π_old / reference forward (0 = auto, like micro_batches)
  aot: str = ""                     # a TPU slice (v5p-64, v6e-16) or JAX topology (v5p:2x4x4): compile the run for it, report per-chip memory, run nothing
  aot_json: str = ""                # where --aot writes its JSON report
  packed: bool = True               # log-prob forwards and updates on packed groups (each prompt once, no padding,
                                    # rl_jax.packing; same values); false: the plain padded [B, P + T] rows
  run_dir: str = "results/run"
  resume: bool = True               # continue from the latest checkpoint in run_dir
  progress_bar: bool = True

  BOUNDS: ClassVar[dict] = dict(
      rl_steps=NON_NEGATIVE, prompts_per_step=AT_LEAST_ONE, group_size=AT_LEAST_ONE, temperature=POSITIVE, top_p=UNIT,
      lr=POSITIVE, epochs=AT_LEAST_ONE, minibatches=AT_LEAST_ONE, beta=NON_NEGATIVE, checkpoint_every=NON_NEGATIVE,
      checkpoint_keep=AT_LEAST_ONE, checkpoint_keep_every=NON_NEGATIVE, micro_batches=NON_NEGATIVE,
      logprob_micro_batches=NON_NEGATIVE, tree_segment_len=AT_LEAST_ONE)

  def __post_init__(self):
    check(self)            # the subclass's BOUNDS (which extend these)
    if (self.prompts_per_step * self.group_size) % self.minibatches:
      raise ValueError("prompts_per_step * group_size must be divisible by minibatches.")
    rows = self.prompts_per_step * self.group_size
    if self.micro_batches and (rows // self.minibatches) % self.micro_batches:
      raise ValueError(f"micro_batches={self.micro_batches} does not divide the {rows // self.minibatches} rows of a "
                       "mini-batch (prompts_per_step * group_size / minibatches).")
    if self.logprob_micro_batches and rows % self.logprob_micro_batches:
      raise ValueError(f"logprob_micro_batches={self.logprob_micro_batches} does not divide the {rows} rollout rows.")
    if self.aot_json and not self.aot:
      raise ValueError("--aot_json names where --aot=TOPOLOGY writes its report; give --aot too.")
    mesh_config(self.mesh)
    check_methods(self.objective, self.advantage, dynamic_sampling=self.dynamic_sampling, rollout=self.rollout)
    objective_kwargs(self, 1)
    if advantage_kwargs(self) and (self.advantage == "spo_tree" or (self.rollout == "tree" and self.advantage == "grpo")):
      raise ValueError(f"advantage={self.advantage} on tree rollouts takes no keywords (got {self.advantage_args!r}).")
    if self.rollout == "tree" and self.temperature_tau:
      raise ValueError("temperature_tau (HAPO's adaptive temperature) drives the group sampler; the tree sampler "
                       "keeps --temperature. Use group rollouts.")
    if self.rollout == "tree" and self.replay:
      raise ValueError(f"replay={self.replay} swaps rows of a group, which would break a tree's paths; "
                       "use group rollouts.")
    loop_extras.check_config(self)


# Settings a resumed run may change: its length and bookkeeping. Any other change would continue a
# checkpoint trained with other settings. Experiments add their evaluation settings.
# Micro-batch counts change the memory layout, not the update (equal to float32 rounding), so a run may resume
# on another slice.
RESUMABLE = frozenset({"rl_steps", "run_dir", "resume", "progress_bar", "checkpoint_every", "checkpoint_keep",
                       "checkpoint_keep_every", "aot", "aot_json", "micro_batches", "logprob_micro_batches",
                       "packed"})


def mesh_config(text: str) -> sharding.MeshConfig:
  """'data,fsdp,tensor' (e.g. '2,2,2', '-1,1,1') -> MeshConfig; errors name the option."""
  parts = text.split(",")
  try:
    sizes = [int(p) for p in parts]
  except ValueError:
    sizes = []
  if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(f"--mesh expects three sizes data,fsdp,tensor (positive, at most one -1), got {text!r}.")
  return sharding.MeshConfig(*sizes)


# ------------------------------------------------------------------------------------------ methods

# What the loop can feed an objective's keyword-only arguments without a default.
OBJECTIVE_INPUTS = {"entropy": "the policy's token entropies", "token_ids": "the completion tokens",
                    "group_size": "the group layout", "rng": "a fresh key per update",
                    "rollout_logp": "the sampler's log-probs"}
# Keywords the run sets from its own config (not through --objective.KEY=VALUE).
LOOP_KEYWORDS = ("beta", "group_size", "rng", "rollout_logp", "entropy", "token_ids")
# Advantage estimators beyond the ones that read only the group rewards [P, G].
TOKEN_ADVANTAGES = ("tempo",)        # (tokens [P, G, T], mask, rewards)
STATEFUL_ADVANTAGES = ("dcpo",)      # (rewards, question ids, per-question state)
MASK_ADVANTAGE = ("rewards", "mask")  # positional data of estimators of (rewards, completion mask [P, G, T])
MC_ADVANTAGES = ("spo_chain",)       # Monte-Carlo values of continuations (the task's `reward` scores them)
ROLLOUTS = ("group", "tree")


def reward_advantages(data: tuple = ("rewards",)) -> list[str]:
  """Registered advantages computed from the group rewards [P, G] alone (one required argument, `rewards`), or
  from the positional arguments `data` (("rewards", "mask"): rewards and the completion mask [P, G, T])."""
  return [n for n in advantages_lib.names() if registry.positional(advantages_lib.get(n)) == list(data)
          and not registry.needs(advantages_lib.get(n))]


def check_methods(objective: str, advantage: str, *, dynamic_sampling: bool = False, rollout: str = "group") -> None:
  """Raises a ValueError naming what is missing when the loop cannot run `objective` with `advantage`."""
  if objective not in objectives_lib.names():
    raise ValueError(f"Unknown objective {objective!r}; choose from {objectives_lib.names()}.")
  if advantage not in advantages_lib.names():
    raise ValueError(f"Unknown advantage {advantage!r}; choose from {advantages_lib.names()}.")
  if rollout not in ROLLOUTS:
    raise ValueError(f"--rollout must be one of {ROLLOUTS}, got {rollout!r}.")
  missing = [n for n in registry.needs(objectives_lib.get(objective)) if n not in OBJECTIVE_INPUTS]
  if missing:
    raise ValueError(f"objective={objective} needs {missing}, which the RL loop does not provide (it provides "
                     f"{sorted(OBJECTIVE_INPUTS)}).")
  runnable = (reward_advantages() + reward_advantages(MASK_ADVANTAGE) + list(TOKEN_ADVANTAGES)
              + list(STATEFUL_ADVANTAGES) + list(MC_ADVANTAGES) + list(batch_adv.PATH_ADVANTAGES))
  if advantage not in runnable:
    fn = advantages_lib.get(advantage)
    raise ValueError(f"Advantage {advantage!r} cannot run here: it needs {registry.positional(fn) + registry.needs(fn)},"
                     f" which the RL loop does not provide; choose one of {sorted(runnable)}.")
  if advantage in batch_adv.PATH_ADVANTAGES and rollout != "tree":
    fn = advantages_lib.get(advantage)
    raise ValueError(f"Advantage {advantage!r} cannot run here: it needs {registry.positional(fn)} from the tree "
                     "paths of --rollout=tree.")
  if rollout == "tree" and (advantage not in batch_adv.TREE_ADVANTAGES or dynamic_sampling):
    raise ValueError(f"rollout=tree runs the advantages {batch_adv.TREE_ADVANTAGES} without dynamic_sampling "
                     f"(got advantage={advantage}, dynamic_sampling={dynamic_sampling}).")
  if advantage in STATEFUL_ADVANTAGES and dynamic_sampling:
    raise ValueError(f"advantage={advantage} keeps per-question statistics; it does not run with "
                     "dynamic_sampling (which drops and refills groups).")


def parse_keywords(fn: Callable, text: str, what: str, *, reserved: Sequence[str] = ()) -> dict:
  """'k=v,k2=v2' -> keywords for `fn`, each value parsed as the type of the keyword's default; unknown
  keywords, reserved ones (set by the run itself) and unparsable values are ValueErrors naming them."""
  out = {}
  defaults = registry.hyperparameters(fn)
  for item in filter(None, text.split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key:
      raise ValueError(f"{what} keywords look like key=value, got {item!r}.")
    if key in reserved:
      raise ValueError(f"{what}: {key} is set by the run (--{key} or the task), not as a keyword.")
    out[key] = _parse_value(defaults.get(key), value.strip(), f"{what}.{key}")
  registry.check_keywords(fn, out, what)
  return out


def _parse_value(default, text: str, name: str):
  kind = type(default)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    if kind in (int, float, str):
      return kind(text)
  except ValueError:
    raise ValueError(f"--{name} expects {kind.__name__}, got {text!r}.") from None
  for parse in (int, float):   # no typed default (None): a number if it reads as one
    try:
      return parse(text)
    except ValueError:
      pass
  return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def objective_kwargs(cfg: RLConfig, max_new_tokens: int) -> dict:
  """The named objective's keywords: β, the group size, the constant length normaliser (max_new_tokens
  when it has no default), then --objective.KEY=VALUE (cfg.objective_args)."""
  fn = objectives_lib.get(cfg.objective)
  defaults, kw = registry.hyperparameters(fn), {}
  if registry.takes(fn, "beta") or registry.accepts_any_keyword(fn):   # TIS / MIS pass it to their base
    kw["beta"] = cfg.beta
  if registry.takes(fn, "group_size"):
    kw["group_size"] = cfg.group_size
  if "max_len" in defaults and defaults["max_len"] is None:
    kw["max_len"] = max_new_tokens
  kw.update(parse_keywords(fn, cfg.objective_args, f"objective {cfg.objective}", reserved=LOOP_KEYWORDS))
  return kw


def advantage_kwargs(cfg: RLConfig) -> dict:
  """--advantage.KEY=VALUE (cfg.advantage_args) for the named estimator."""
  return parse_keywords(advantages_lib.get(cfg.advantage), cfg.advantage_args, f"advantage {cfg.advantage}")


def needs_groups(objective: Callable) -> bool:
  """Whether the objective reads the group layout of a mini-batch (GTPO's `group_size`): then mini-batches
  hold whole groups in order."""
  return registry.takes(objective, "group_size")


def command_line(config, argv: Sequence[str], doc: str = ""):
  """`rl_jax.config.from_command_line`, where --objective.KEY=VALUE and --advantage.KEY=VALUE are the
  chosen method's keywords (collected into objective_args / advantage_args, checked before compute)."""
  rest, methods = [], {k: [] for k in ("objective", "advantage", *loop_extras.CHOICES)}
  for arg in argv:
    head = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
    if head in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
      raise ValueError(f"--{head} is spelled --mesh=data,fsdp,tensor now (e.g. --mesh=1,-1,1: FSDP over every device).")
    kind, dot, _ = head.partition(".")
    if dot and kind in methods:
      methods[kind].append(arg[len(kind) + 3:])
    else:
      rest.append(arg)
  rest += [f"--{kind}_args=" + ",".join(items) for kind, items in methods.items() if items]
  return from_command_line(config, rest, doc)


# --------------------------------------------------------------------------------------------- task

class Prompts(NamedTuple):
  ids: np.ndarray            # [P, L] int32, left-padded
  mask: np.ndarray           # [P, L]
  answers: list              # per prompt, whatever the verifier reads
  question_ids: np.ndarray   # [P] int, stable ids (keys of per-question state)


class Scored(NamedTuple):
  rewards: np.ndarray        # [P, G] float32
  row: dict                  # scalars for the step's metrics row: means over the rows (float, e.g. train_accuracy)
                             # or counts (int, e.g. reward_failures); see batch_rows
  sample: Optional[dict] = None   # one example for samples.jsonl (None: not written)
  correct: Optional[np.ndarray] = None   # [P, G] correctness when rewards hold more (None: the rewards)
  formats: Optional[np.ndarray] = None   # [P, G] int response-format labels (tasks with response_formats)


class Task(Protocol):
  """What an experiment supplies to the loop."""
  max_new_tokens: int
  stop_tokens: tuple
  num_questions: int         # size of the question-id space (per-question state)

  def prompts(self, step: int, attempt: int) -> Prompts:
    """The prompts of data position (step, attempt); attempt > 0 are dynamic-sampling refills, which must
    never reuse another step's prompts."""

  def score(self, rollouts: Rollouts, prompts: Prompts) -> Scored:
    """Rewards of the rows of `rollouts` (prompt i → rows i·G..i·G+G−1)."""

  # Optional, for SPO-chain's Monte-Carlo values: reward(completion token ids [T'], one of Prompts.answers) -> float.


# ---------------------------------------------------------------------------------------------- run

def rl_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam with global-norm clipping 1.0."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


class Run:
  """Everything a run compiles, built before any compute (so it can also be compiled ahead of time).

  `params` may be abstract (jax.ShapeDtypeStruct leaves): only shapes decide the layout. The mesh is
  `cfg.mesh`; parameters, optimizer state and reference parameters are laid out by
  `rl_jax.sharding.state_shardings`, rollout rows over data × fsdp. `sampler`, `logprob_jit` and
  `train_jit` are jax.jit functions with explicit in/out shardings, one per input shape, traced and called
  under the run's mesh (`jax.set_mesh`: activations pinned to the batch axes). Micro-batch counts default to
  cfg's; a count of 0 (auto) is resolved first by `make_run`.
  """

  def __init__(self, cfg: RLConfig, model_cfg, params, task: Task, *, objective: Optional[Callable] = None,
               objective_kw: Optional[dict] = None, devices: Optional[Sequence] = None,
               micro_batches: Optional[int] = None, logprob_micro_batches: Optional[int] = None,
               decode_block: int = DECODE_BLOCK):
    self.cfg, self.model_cfg, self.task = cfg, model_cfg, task
    self.micro_batches = cfg.micro_batches if micro_batches is None else micro_batches
    self.logprob_micro_batches = cfg.logprob_micro_batches if logprob_micro_batches is None else logprob_micro_batches
    if not (self.micro_batches and self.logprob_micro_batches):
      raise ValueError("micro-batch counts of 0 (auto) are picked from compiled memory by loop.make_run.")
    self.decode_block = decode_block
    self.mesh = make_mesh(cfg.mesh, devices)
    self.optimizer = rl_optimizer(cfg.lr)
    self.objective = objective or objectives_lib.get(cfg.objective)
    self.objective_kw = dict(objective_kw or {}) if objective else objective_kwargs(cfg, task.max_new_tokens)
    self.advantage, self.advantage_kw = cfg.advantage, advantage_kwargs(cfg)
    self.extras = loop_extras.Extras(cfg, task)
    if cfg.advantage in MC_ADVANTAGES and not callable(getattr(task, "reward", None)):
      raise ValueError(f"advantage={cfg.advantage} scores Monte-Carlo continuations: the task needs a "
                       "reward(completion_ids, answer) method.")
    if cfg.rollout == "tree":
      tree_widths(group_size=cfg.group_size, branch_factor=2, **self.tree_shape())   # the tree reaches G leaves
    self.abstract_state = jax.eval_shape(lambda p: init_state(p, self.optimizer, jax.random.PRNGKey(0)), params)
    self.state_sharding = sharding.state_shardings(self.mesh, self.abstract_state, self.optimizer)
    self.param_sharding = self.state_sharding.params
    try:
      self._kw_key = tuple(sorted(self.objective_kw.items()))
      hash(self._kw_key)
    except TypeError:   # keywords holding arrays: this run's own compile
      self._kw_key = object()

  def call(self, fn: Callable, *args):
    """`fn(*args)` under the run's mesh (how its jitted functions are traced, here and ahead of time)."""
    with jax.set_mesh(self.mesh):
      return fn(*args)

  def rows(self, n: int, ndim: int = 2) -> NamedSharding:
    """Sharding of an array whose leading axis holds `n` rollout rows (data × fsdp when they divide)."""
    return NamedSharding(self.mesh, sharding.fit_spec(self.mesh, P(sharding.BATCH), (n,) + (1,) * (ndim - 1)))

  def place_state(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self.state_sharding)

  def place_params(self, params):
    return None if params is None else jax.device_put(params, self.param_sharding)

  def init_state(self, params, rng) -> TrainState:
    return self.place_state(init_state(params, self.optimizer, rng))

  def _cached(self, key, build):
    """One jitted function per key, shared by every Run of the same model and mesh (a grid of runs, or a
    test over many methods, compiles each function once)."""
    kind = key[0]
    sample = (self.cfg.temperature, self.cfg.top_p, self.cfg.group_size, self.task.max_new_tokens,
              tuple(self.task.stop_tokens))
    settings = {"sample": sample + (self.decode_block, self.cfg.temperature_tau),
                "tree": sample + (self.cfg.tree_segment_len,),
                "logp": (self.logprob_micro_batches,),
                "step": (self.cfg.lr, self.objective, self._kw_key, self.micro_batches)}[kind]
    full = (self.model_cfg, self.mesh, settings) + tuple(key)
    if full not in _COMPILED:
      _COMPILED[full] = build()
    return _COMPILED[full]

  def sampler(self, n: int, prompt_len: int) -> Callable:
    """Jitted (params, prompts [n, L], mask, rng) -> Samples [n·G, T] with the run's sampling settings: each
    prompt is prefilled once and its KV cache shared by its G = cfg.group_size rows (prompt i → rows
    i·G..i·G+G−1; row keys as for the n·G repeated prompts)."""
    t, g = self.task, self.cfg.group_size

    def build():
      tau = self.cfg.temperature_tau   # HAPO: a fifth argument, the entropy statistics [4]
      fn = lambda params, prompts, mask, rng, stats=None: generate_raw(
          params, self.model_cfg, prompts, mask, rng, max_new_tokens=t.max_new_tokens,
          temperature=self.cfg.temperature, top_p=self.cfg.top_p, stop_tokens=tuple(t.stop_tokens),
          dtype=sampler_dtype(self.model_cfg), decode_block=self.decode_block, group_size=g,
          temperature_stats=stats, temperature_tau=tau)
      rows, out, one = self.rows(n), self.rows(n * g), NamedSharding(self.mesh, P())
      return sharding.jit_global(fn, in_shardings=(self.param_sharding, rows, rows, one) + ((one,) if tau else ()),
                                 out_shardings=Samples(out, out, out))
    return self._cached(("sample", n, prompt_len, g), build)

  def pack(self, tokens: np.ndarray, attn_mask: np.ndarray, prompt_len: int):
    """The rows in the packed layout (rl_jax.packing.pack_groups): R a multiple of lcm(micro-batch counts) ×
    the devices on the batch axes, so every micro-batch's rows spread over all of them; a group longer than
    4 plain rows is split in parts (so the attention window stays within 4 plain rows)."""
    multiple = packed_row_multiple(self)
    return pack_groups(tokens, attn_mask, prompt_len, rows_multiple=multiple, max_span=4 * tokens.shape[1])

  def tree_shape(self) -> dict:
    """max_depth (segments to cover max_new_tokens) and first_width (the smallest power of two that reaches G
    leaves forking in 2) of the run's tree rollouts."""
    depth = -(-self.task.max_new_tokens // self.cfg.tree_segment_len)
    return {"max_depth": depth, "first_width": first_width(self.cfg.group_size, depth)}

  def tree_sampler(self, n: int, prompt_len: int) -> Callable:
    """Jitted (params, prompts [n, L], mask, rng) -> TreeRollout [n, G, D·segment]: TreePO tree rollouts
    (arXiv 2508.17445) of cfg.tree_segment_len-token segments, each unfinished node forking in 2 at the
    highest-entropy open nodes until the prompt holds G = cfg.group_size leaves."""
    t, cfg = self.task, self.cfg

    def build():
      fn = lambda params, prompts, mask, rng: tree_rollout_raw(
          params, self.model_cfg, prompts, mask, rng, group_size=cfg.group_size, segment_len=cfg.tree_segment_len,
          branch_factor=2, branch_by="entropy", temperature=cfg.temperature, top_p=cfg.top_p,
          stop_tokens=tuple(t.stop_tokens), **self.tree_shape())
      rows, leaves = self.rows(n), self.rows(n, 3)
      return sharding.jit_global(fn, in_shardings=(self.param_sharding, rows, rows, NamedSharding(self.mesh, P())),
                                 out_shardings=TreeRollout(leaves, leaves, leaves, leaves, rows))
    return self._cached(("tree", n, prompt_len, cfg.group_size), build)

  def logprob_jit(self, prompt_len: int, n: int, packed=None) -> Callable:
    """Jitted (params, tokens [n, L + T], attn[, packed]) -> completion log-probs [n, T]; with `packed` (the
    batch's Packed rows, arrays or ShapeDtypeStructs) computed on them (rl_jax.packing)."""
    raw = make_logprob_fn(self.model_cfg, prompt_len=prompt_len, micro_batches=self.logprob_micro_batches, jit=False,
                          packed=packed is not None)
    rows = self.rows(n)
    packed_sh = () if packed is None else (jax.tree.map(lambda x: self.rows(x.shape[0], len(x.shape)), packed),)
    return self._cached(("logp", prompt_len, n, layout_key(packed)), lambda: sharding.jit_global(
        raw, in_shardings=(self.param_sharding, rows, rows) + packed_sh, out_shardings=rows))

  def logprob_fn(self, prompt_len: int) -> Callable:
    """(params, tokens [B, L + T], attn[, packed rows]) -> completion log-probs [B, T], jitted per batch layout."""
    return lambda params, tokens, attn, *packed: self.call(
        self.logprob_jit(prompt_len, tokens.shape[0], *packed), params, tokens, attn, *packed)

  def train_jit(self, prompt_len: int, batch: RLBatch) -> Callable:
    """Jitted (state, RLBatch) -> (state, metrics) for the layout of `batch` (arrays or ShapeDtypeStructs); on
    batch.packed when it holds packed rows."""
    shapes = layout_key(batch)

    def build():
      raw = make_rl_step(self.model_cfg, self.optimizer, self.objective, self.objective_kw, prompt_len=prompt_len,
                         jit=False, micro_batches=self.micro_batches, packed=batch.packed is not None)
      batch_sh = jax.tree.map(lambda x: self.rows(x.shape[0], len(x.shape)), batch)
      return sharding.jit_global(raw, in_shardings=(self.state_sharding, batch_sh),
                                 out_shardings=(self.state_sharding, None))
    return self._cached(("step", prompt_len, shapes), build)

  def train_step(self, prompt_len: int) -> Callable:
    """(state, RLBatch) -> (state, metrics), jitted per batch layout with the state's shardings."""
    return lambda state, batch: self.call(self.train_jit(prompt_len, batch), state, batch)

  def rollout(self, params, prompts: Prompts, key) -> Rollouts:
    """`group_size` samples per prompt (prompt i → rows i·G..i·G+G−1) from the run's sampler."""
    g = self.cfg.group_size
    out = self.call(self.sampler(*prompts.ids.shape), params, jnp.asarray(prompts.ids), jnp.asarray(prompts.mask), key,
                    *self.extras.sampler_inputs())
    comp, cmask, lp = (sharding.to_host(x) for x in out)
    p_rep, m_rep = np.repeat(prompts.ids, g, axis=0), np.repeat(prompts.mask, g, axis=0)
    tokens = np.concatenate([p_rep, comp], axis=1)
    attn = np.concatenate([m_rep, cmask.astype(np.int32)], axis=1)
    return Rollouts(tokens, attn, comp, cmask, lp)

  def tree_rollout(self, params, prompts: Prompts, key) -> tuple[Rollouts, np.ndarray, np.ndarray]:
    """Tree rollouts as rows (prompt i → rows i·G..i·G+G−1), their tree paths [P, G, D] and valid rows [P·G]
    (False on the empty rows of a prompt whose branches all ended early)."""
    tr = self.call(self.tree_sampler(*prompts.ids.shape), params, jnp.asarray(prompts.ids), jnp.asarray(prompts.mask),
                   key)
    tr = jax.tree.map(sharding.to_host, tr)
    ro, valid = tree_to_rollouts(prompts.ids, prompts.mask, tr)
    return ro, tr.paths, valid


_COMPILED: dict = {}   # Run._cached


def packed_row_multiple(run: Run) -> int:
  """Packed rows come in multiples of lcm(train, log-prob micro-batch counts) × devices on the batch axes: a
  micro-batch (every k-th row, `rl_jax.train.split_micro`) then holds rows for every device."""
  return math.lcm(run.micro_batches, run.logprob_micro_batches) * run.mesh.shape["data"] * run.mesh.shape["fsdp"]


def layout_key(tree) -> tuple:
  """What a jitted function compiles for: the tree's structure (static fields included) and its leaves' shapes."""
  return jax.tree.structure(tree), tuple(tuple(x.shape) for x in jax.tree.leaves(tree))


class TaskShape(NamedTuple):
  """What of a Task decides the compiled functions: a stand-in for it when compiling ahead of time (the
  host-side choices of rl_jax.loop_extras read nothing compiled, so it claims what they check for)."""
  max_new_tokens: int
  stop_tokens: tuple = (0,)
  num_questions: int = 1
  response_formats: bool = True

  def prompts_for(self, *args):
    raise TypeError("TaskShape only describes shapes; it makes no prompts.")


def make_run(cfg: RLConfig, model_cfg, params, task: Task, *, prompt_len: int, decode_block: int = DECODE_BLOCK,
             **kw) -> Run:
  """`Run(cfg, model_cfg, params, task, ...)`, with micro-batch counts of 0 (auto) picked from the compiled memory
  of the run's own log-prob forward and train step on its devices, for prompts padded to `prompt_len` (the
  widest the task makes): `rl_jax.aot.pick_for_devices`."""
  if cfg.micro_batches and cfg.logprob_micro_batches:
    return Run(cfg, model_cfg, params, task, decode_block=decode_block, **kw)
  from rl_jax import aot
  shapes = aot.run_shapes(cfg, prompt_len=prompt_len, new_tokens=task.max_new_tokens, decode_block=decode_block)
  build = lambda k, k_lp: Run(cfg, model_cfg, params, task, decode_block=decode_block, micro_batches=k,
                              logprob_micro_batches=k_lp, **kw)
  k, k_lp = aot.pick_for_devices(build, shapes)
  print(f"micro-batches: {k} per update, {k_lp} per log-prob forward")
  return build(k, k_lp)


def ahead_of_time(cfg: RLConfig, model_cfg, *, prompt_len: int, max_new_tokens: int, stop_tokens: tuple = (0,),
                  decode_block: int = DECODE_BLOCK, **kw) -> dict:
  """--aot=TOPOLOGY: the run built for that TPU slice (its mesh from cfg.mesh, abstract weights from `model_cfg`)
  and its sampler, log-prob forward and train step compiled there (`rl_jax.aot.aot_report`); prints the per-chip
  memory table, writes the JSON report to cfg.aot_json (process 0), runs nothing. `kw`: Run's keywords."""
  from rl_jax import aot
  from rl_jax.models import init_params
  params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
  task = TaskShape(max_new_tokens, tuple(stop_tokens))
  build = lambda devices, k, k_lp: Run(cfg, model_cfg, params, task, devices=devices, micro_batches=k,
                                       logprob_micro_batches=k_lp, decode_block=decode_block, **kw)
  shapes = aot.run_shapes(cfg, prompt_len=prompt_len, new_tokens=max_new_tokens, decode_block=decode_block)
  report = aot.aot_report(cfg.aot, build, shapes)
  print(aot.format_report(report))
  if cfg.aot_json and is_main_process():
    pathlib.Path(cfg.aot_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.aot_json, json.dumps(report, indent=1))
  return report


def make_mesh(text: str, devices: Optional[Sequence] = None):
  """The run's mesh: with no −1 axis, the first data·fsdp·tensor devices (so '1,1,1' is one device)."""
  config = mesh_config(text)
  devices = list(jax.devices() if devices is None else devices)
  sizes = (config.data, config.fsdp, config.tensor)
  if -1 not in sizes:
    need = int(np.prod(sizes))
    if need > len(devices):
      raise ValueError(f"--mesh={text} needs {need} devices, have {len(devices)}.")
    devices = devices[:need]
  return sharding.make_mesh(config, devices)


# ------------------------------------------------------------------------------------------ run dir

LOGS = ("metrics.jsonl", "rewards.jsonl", "samples.jsonl")


class RunDir:
  """Context manager: a run directory held by this process (RunLock) for the length of a run.

  On entry: takes the lock before anything is written; refuses checkpoints of rl_jax's earlier format and
  a checkpoint past cfg.rl_steps; then `rl_jax.run_dir.open_run`: a resumed run must not change any setting
  outside `resumable` (SettingsChanged, nothing written), resume=false moves an earlier run aside; config.json
  holds the settings (cfg, plus `extra_settings` such as a custom objective's name). Then `ckpt` (a
  `Checkpoints` on `checkpoint_dir(cfg)`) opens; `restore` chooses the checkpoint (or restarts the logs of a
  run with none) and opens `logger` (metrics.jsonl, process 0). On exit the save still being written finishes.

  The run dir's own files (lock, config.json, logs) are local files; only the checkpoints may live elsewhere
  (`--checkpoint_dir`, e.g. gs://...).
  """

  def __init__(self, cfg: RLConfig, *, resumable=RESUMABLE, extra_settings: Optional[dict] = None):
    self.cfg, self.resumable = cfg, frozenset(resumable)
    self.settings = dict(to_dict(cfg), **(extra_settings or {}))
    self.path = pathlib.Path(cfg.run_dir)
    self.primary = is_main_process()
    self.logger = None
    self.ckpt: Optional[Checkpoints] = None
    self.estimator = None       # the restored estimator state (stateful advantages)
    self._lock = RunLock(cfg.run_dir, process=jax.process_index())

  def __enter__(self) -> "RunDir":
    self._lock.__enter__()
    try:
      self._open()
    except BaseException:
      self._lock.__exit__(None, None, None)
      raise
    return self

  def __exit__(self, *exc):
    try:
      if self.logger is not None:
        self.logger.close()
      if self.ckpt is not None:
        self.ckpt.close()        # waits for the save being written
    finally:
      self._lock.__exit__(*exc)
    return False

  def _open(self):
    cfg = self.cfg
    directory = checkpoint_dir(cfg)
    if cfg.resume:
      check_layout(directory)
      steps = saved_steps(directory)
      if steps and steps[-1] > cfg.rl_steps:
        raise ValueError(f"{directory} has a checkpoint at RL step {steps[-1]}, past rl_steps={cfg.rl_steps}.")
    elif cfg.checkpoint_dir and directory.exists() and any(directory.iterdir()):
      raise ValueError(f"resume=false: --checkpoint_dir={cfg.checkpoint_dir} is not empty (an earlier run's "
                       "checkpoints?); only the run dir's own files are moved aside. Empty it or choose another one.")
    self.previous = open_run(self.path, self.settings, resume=cfg.resume, may_change=self.resumable)
    if not is_shared_storage(directory) and jax.process_count() > 1:
      warnings.warn(f"{jax.process_count()} processes write their shards of each checkpoint into {directory}, a "
                    "local path: it must be a file system every host shares; else use --checkpoint_dir=gs://...")
    if jax.process_count() > 1:   # every process sees the earlier run moved aside before opening the checkpoints
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("rl_jax RunDir.open")
    self.ckpt = Checkpoints(directory, keep=cfg.checkpoint_keep, keep_every=cfg.checkpoint_keep_every)
    print(f"rl_jax {rl_jax.__version__} | {jax.devices()[0].device_kind} x{jax.device_count()} | "
          f"config: {json.dumps(to_dict(cfg))}")

  def restore(self, run: "Run", params, rng):
    """(state, reference params, position) from the newest checkpoint all of whose items restore, read straight
    into the run's shardings, or None: a fresh run (also when cfg.resume is false), whose logs start afresh.
    A stateful estimator's restored state is left in `self.estimator`."""
    restored = None
    if self.cfg.resume:
      state = abstract(jax.eval_shape(lambda: init_state(params, run.optimizer, rng)), run.state_sharding)
      ref = abstract(jax.eval_shape(lambda: params), run.param_sharding) if self.cfg.beta > 0 else None
      restored = self.ckpt.restore_latest(state, ref, estimator_template(run))
    if restored is None:
      restart_logs(self.path, (*LOGS, "tb"))
      self.logger = MetricsLogger(self.path)
      return None
    self.logger = MetricsLogger(self.path, purge_step=restored.position + 1)
    self.estimator = restored.estimator
    print(f"resumed from {self.ckpt.directory / str(restored.position)} at RL step {restored.position}")
    return restored.state, restored.ref_params, restored.position

  def trim(self, position: int, *, drop_initial_eval: bool = False) -> None:
    """Logs cut back to `position` for a resumed run: RL rows after it go (they are made again), so do
    evaluation rows after step 0 (and the step-0 ones with `drop_initial_eval`)."""
    if self.primary:
      for name in LOGS:
        if (self.path / name).exists():
          rewrite_rows(self.path / name, lambda r: r["step"] <= position
                       and not (r.get("phase") == "eval" and (r["step"] > 0 or drop_initial_eval)))

  def append(self, name: str, row: dict) -> None:
    if self.primary:
      with open(self.path / name, "a") as f:
        f.write(json.dumps(row) + "\n")


def is_shared_storage(directory) -> bool:
  """Whether `directory` names object storage every host reaches (gs://, s3://, ...) rather than a local path."""
  return "://" in str(directory)


def checkpoint_dir(cfg: RLConfig):
  """Where the run's checkpoints go: --checkpoint_dir (a local path or gs://...), else <run_dir>/checkpoints."""
  from etils import epath
  return epath.Path(cfg.checkpoint_dir or pathlib.Path(cfg.run_dir) / "checkpoints")


# --------------------------------------------------------------------------------------------- loop

def replay_dcpo_stats(log_rows: list, num_questions: int):
  """DCPO's SAS statistics after the logged steps: a pure function of the reward history (rewards.jsonl rows
  {"step", "question_ids", "rewards"}), so an independent rebuild of the state the loop checkpoints."""
  stats = init_reward_stats(num_questions)
  for row in sorted(log_rows, key=lambda r: r["step"]):
    _, stats = advantages_lib.dcpo(jnp.asarray(row["rewards"], jnp.float32), jnp.asarray(row["question_ids"]), stats)
  return stats


def estimator_template(run: Run):
  """The restore template of the stateful estimator's state (host arrays), None for stateless estimators."""
  if run.advantage not in STATEFUL_ADVANTAGES:
    return None
  return jax.tree.map(np.asarray, jax.device_get(init_reward_stats(run.task.num_questions)))


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
  `rl_jax.advantages.batch.batch_advantages` (group, token, tree and Monte-Carlo estimators)."""
  name, rewards, ro = run.advantage, batch.rewards, batch.rollouts
  if name in STATEFUL_ADVANTAGES:
    fn = functools.partial(advantages_lib.get(name), **run.advantage_kw)
    adv, adv_state = fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(batch.prompts.question_ids), adv_state)
    return adv, adv_state, {}, None
  p, g = rewards.shape
  if name in reward_advantages(MASK_ADVANTAGE) and batch.paths is None:   # from rewards and the completion mask
    fn = functools.partial(advantages_lib.get(name), **run.advantage_kw)
    return fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(ro.completion_mask.reshape(p, g, -1))), adv_state, {}, None
  mc = mc_values(run, params, batch, key) if name in MC_ADVANTAGES else None
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
  rng, key = jax.random.split(state.rng)
  state = state._replace(rng=rng)
  batch = sample_step(run, state.params, step, key)
  gen_s = timer.elapsed()
  adv, adv_state, adv_metrics, loss_mask = advantages(run, batch, adv_state, state.params, jax.random.fold_in(key, 7))
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
  it is written). SIGTERM on a single process saves a final checkpoint of the last logged step; on several
  processes, jax's preemption service makes every process save at the same step (`reached_preemption`).
  Either way the run waits for the write and exits with status 143. Returns (final state, these steps' rows)."""
  cfg, ckpt = run.cfg, rd.ckpt
  adv_state = advantage_state(run, rd, start)
  run.extras.restore_from(rd.path, start)
  live = {"state": state, "position": start, "adv_state": adv_state}

  def save(position, state, adv_state):
    ckpt.save(position, state, ref_params, None if adv_state is None else jax.device_get(adv_state))

  def final_checkpoint():
    if cfg.checkpoint_every and ckpt.saved != live["position"]:
      save(live["position"], live["state"], live["adv_state"])
      print(f"SIGTERM: saved a final checkpoint at RL step {live['position']}")
    ckpt.wait()

  history = []
  bar = progress(range(start, cfg.rl_steps), desc=f"RL ({cfg.objective})", enabled=cfg.progress_bar)
  with SaveOnSigterm(final_checkpoint, install=jax.process_count() == 1) as sigterm:
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
      live.update(state=state, position=step + 1, adv_state=adv_state)   # saved by a SIGTERM from now on
      preempted = ckpt.reached_preemption(step + 1)
      if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or last or preempted):
        with sigterm.deferred():
          save(step + 1, state, adv_state)
      if preempted:
        print(f"preemption: every process stops after RL step {step + 1}"
              + (", checkpointed" if cfg.checkpoint_every else " (checkpoint_every=0: no checkpoint)"))
        ckpt.wait()
        raise SystemExit(128 + signal.SIGTERM)
    with sigterm.deferred():
      ckpt.wait()
  return live["state"], history


STEP_PRINT = ("reward", "train_accuracy", "accuracy", "clip_frac", "entropy", "response_len")
