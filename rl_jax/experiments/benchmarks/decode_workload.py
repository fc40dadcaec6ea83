"""The GSM8K sampling workload for `decode_bench`: useful tokens/s of transformers' `generate` and rl_jax's
static sampler (every row decoded until the last row stops, and shrinking: finished rows dropped between buckets)
and continuous-batching sampler on the same model, prompts and sampling settings."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.chat import chat_text, encode_prompts
from rl_jax.continuous_sampling import generate_continuous
from rl_jax.experiments.benchmarks.rl_step_bench import compile_seconds
from rl_jax.sampling import generate

SETTINGS = [("T = 1.0", dict(temperature=1.0, top_p=1.0)), ("T = 0.6, top-p 0.95", dict(temperature=0.6, top_p=0.95))]


def useful_tokens(tokens: np.ndarray, eos: int) -> int:
  """Tokens per row up to and including the first EOS, summed."""
  hit = tokens == eos
  first = np.where(hit.any(1), hit.argmax(1) + 1, tokens.shape[1])
  return int(first.sum())


def torch_run(model, ids, mask, n_new, eos, pad, kw):
  import torch
  torch.manual_seed(0)
  with torch.no_grad():
    t0, c0 = time.perf_counter(), time.process_time()
    out = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n_new, do_sample=True,
                         top_k=0, eos_token_id=eos, pad_token_id=pad, **kw)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
  return useful_tokens(out[:, ids.shape[1]:].numpy(), eos), dt, cpu


def jax_run(fn, warm_keys=(1,)):
  """(useful tokens, wall s, CPU s, compile s) of fn(PRNGKey(2)) after warm-up calls with `warm_keys`."""
  for k in warm_keys:
    jax.block_until_ready(fn(jax.random.PRNGKey(k)))      # compile
  t0, c0, k0 = time.perf_counter(), time.process_time(), compile_seconds()
  out = jax.block_until_ready(fn(jax.random.PRNGKey(2)))
  dt, cpu = time.perf_counter() - t0, time.process_time() - c0
  return int(np.asarray(out.mask).sum()), dt, cpu, compile_seconds() - k0


def workload_table(params, cfg, tok, path, questions: int, n_new: int, slots: int):
  import torch
  from transformers import AutoModelForCausalLM

  from rl_jax import data
  recs = [data.load("gsm8k", "test", limit=questions)[i] for i in range(questions)]
  ids, mask = encode_prompts(tok, [chat_text(tok, r["problem"]) for r in recs], bucket=16)
  eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else 0
  model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  model.generate(torch.tensor(ids[:2]), attention_mask=torch.tensor(mask[:2]), max_new_tokens=2, pad_token_id=pad)
  j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
  print(f"\nGSM8K sampling, {questions} questions (prompt width {ids.shape[1]}), up to {n_new} new tokens, stop at "
        f"EOS; useful tokens per CPU second of this process (tokens up to the stop), wall-clock rates in brackets; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the shrinking sampler's warm-up calls use "
        f"keys 1 and the timed key 2 (each batch size it reaches is compiled once per process)")
  print("| sampling | transformers | rl_jax static | rl_jax static, shrinking | rl_jax continuous "
        f"({slots} slots) | static / transformers | shrinking / transformers | continuous / transformers |")
  print("|---|---|---|---|---|---|---|---|")
  for name, kw in SETTINGS:
    common = dict(max_new_tokens=n_new, stop_tokens=(eos,), pad_id=pad, **kw)
    static = jax_run(lambda k: generate(params, cfg, j_ids, j_mask, k, shrink=False, **common))
    shrink = jax_run(lambda k: generate(params, cfg, j_ids, j_mask, k, shrink=True, **common), warm_keys=(1, 2))
    cont = jax_run(lambda k: generate_continuous(params, cfg, j_ids, j_mask, k, slots=slots, **common))
    ref = torch_run(model, ids, mask, n_new, eos, pad, kw)
    cpu, wall = (lambda r: r[0] / r[2]), (lambda r: r[0] / r[1])
    cell = lambda r: f"{cpu(r):.1f} [{wall(r):.1f}]"
    ratio = lambda r: f"{cpu(r) / cpu(ref):.2f} [{wall(r) / wall(ref):.2f}]"
    print(f"| {name} | {cell(ref)} | {cell(static)} | {cell(shrink)} | {cell(cont)} | {ratio(static)} | "
          f"{ratio(shrink)} | {ratio(cont)} |", flush=True)
    print(f"  ({name}: useful tokens {ref[0]} transformers, {static[0]} static, {shrink[0]} shrinking, {cont[0]} "
          f"continuous; compile seconds inside the timed calls {static[3]:.1f}, {shrink[3]:.1f}, {cont[3]:.1f})",
          flush=True)
