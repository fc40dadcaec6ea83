"""Batched generation throughput for SmolLM2-135M-Instruct on this machine: rl_jax (jit, KV cache)
vs transformers' PyTorch `generate`, same prompts, greedy, fixed number of new tokens.

  python -m rl_jax.experiments.benchmarks.generation_bench [--batches=1,8,32] [--new-tokens=32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax.models import load_gguf, load_tokenizer, smollm2_gguf_path
from rl_jax.sampling import generate


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", default="1,8,32")
  ap.add_argument("--new-tokens", type=int, default=32)
  args = ap.parse_args()
  path = smollm2_gguf_path()
  params, cfg = load_gguf(path)
  params = jax.tree.map(jnp.asarray, params)
  tok = load_tokenizer(path)
  import torch
  from transformers import AutoModelForCausalLM
  torch_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  questions = [f"What is {a} + {b}?" for a, b in zip(range(11, 99, 3), range(7, 95, 3))]
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}")
  print("| batch | new tokens | rl_jax tokens/s | transformers tokens/s |")
  print("|---|---|---|---|")
  for b in (int(x) for x in args.batches.split(",")):
    texts = [tok.apply_chat_template([{"role": "user", "content": questions[i % len(questions)]}], tokenize=False,
                                     add_generation_prompt=True) for i in range(b)]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="np", padding=True)
    ids, mask = jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])
    run = lambda: generate(params, cfg, ids, mask, jax.random.PRNGKey(0), max_new_tokens=args.new_tokens,
                           temperature=0.0)
    jax.block_until_ready(run())  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    ours = b * args.new_tokens / (time.perf_counter() - t0)
    with torch.no_grad():
      t_ids, t_mask = torch.tensor(np.asarray(ids)), torch.tensor(np.asarray(mask))
      torch_model.generate(t_ids, attention_mask=t_mask, max_new_tokens=2, do_sample=False)  # warm-up
      t0 = time.perf_counter()
      torch_model.generate(t_ids, attention_mask=t_mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False, pad_token_id=tok.pad_token_id or 2)
      theirs = b * args.new_tokens / (time.perf_counter() - t0)
    print(f"| {b} | {args.new_tokens} | {ours:.1f} | {theirs:.1f} |")


if __name__ == "__main__":
  main()
