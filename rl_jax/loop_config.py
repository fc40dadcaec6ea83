"""What an RL experiment gives the loop (`rl_jax.loop`): its config and its task.

  RLConfig   the settings every RL experiment shares (an experiment's Config subclasses it), checked on
             construction: bounds, batch divisibility, the mesh, and the methods — an objective or advantage
             estimator the loop cannot feed is refused here, before any compute, naming what it needs;
  methods    what the loop supplies to objectives and estimators (`OBJECTIVE_INPUTS`), `check_methods`, and
             --objective.KEY=VALUE / --advantage.KEY=VALUE keywords parsed against the method's signature
             (`rl_jax.registry`);
  Task       the prompts and verifier an experiment supplies (`Prompts` in, `Scored` out).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from rl_jax import advantages as advantages_lib
from rl_jax import objectives as objectives_lib
from rl_jax import loop_extras, registry, sharding
from rl_jax.advantages import batch as batch_adv
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, check, from_command_line
from rl_jax.train import Rollouts


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
