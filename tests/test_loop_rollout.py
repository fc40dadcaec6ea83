"""The loop's rollouts: one prefill per group gives the samples of the repeated prompts, and a step's task
metrics count every rollout batch of dynamic sampling."""

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import loop
from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax.models import init_params
from rl_jax.sampling import generate


def tiny(tmp_path, **kw):
  base = dict(digits=1, d_model=16, n_layers=1, sft_steps=0, rl_steps=1, prompts_per_step=3, group_size=4,
              eval_size=2, checkpoint_every=0, progress_bar=False, run_dir=str(tmp_path))
  return exp.Config(**dict(base, **kw))


def test_rollout_prefills_each_prompt_once_and_samples_as_the_repeated_prompts(tmp_path):
  cfg = tiny(tmp_path, temperature=1.0)
  task, model_cfg = exp.build(cfg)
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  problems = exp.Problems(cfg, task)
  run = loop.Run(cfg, model_cfg, params, problems)
  prompts = problems.prompts(0, 0)
  key = jax.random.PRNGKey(7)
  ro = run.rollout(params, prompts, key)
  g = cfg.group_size
  p_rep, m_rep = np.repeat(prompts.ids, g, axis=0), np.repeat(prompts.mask, g, axis=0)
  ref = generate(params, model_cfg, jnp.asarray(p_rep), jnp.asarray(m_rep), key, max_new_tokens=task.answer_len,
                 temperature=1.0, stop_tokens=(task.vocab.EOS,))                  # G copies, one prefill each
  np.testing.assert_array_equal(ro.completion, np.asarray(ref.tokens))
  np.testing.assert_array_equal(ro.completion_mask, np.asarray(ref.mask))
  np.testing.assert_allclose(ro.rollout_logp, np.asarray(ref.logp), atol=1e-5)
  np.testing.assert_array_equal(ro.tokens[:, :p_rep.shape[1]], p_rep)
  assert len({tuple(r) for r in ro.completion}) > 1                              # the rows are different samples


def test_one_device_rollout_shrinks_and_equals_the_full_batch_sampler(tmp_path, monkeypatch):
  """On one device the loop's rollouts come from the shrinking sampler: finished rows are dropped between decode
  buckets, and every row's tokens, mask and log-probs equal the jitted full-batch sampler's (`Run.sampler`, what
  a sharded run uses) for the same key."""
  from rl_jax import sampling
  cfg = tiny(tmp_path, temperature=1.0, digits=3)
  task, model_cfg = exp.build(cfg)
  params = init_params(model_cfg, jax.random.PRNGKey(1))
  problems = exp.Problems(cfg, task)
  run = loop.Run(cfg, model_cfg, params, problems, decode_block=2)
  sizes, inner = [], sampling._bucket_jit
  monkeypatch.setattr(sampling, "_bucket_jit", lambda w, c, carry, **kw: sizes.append(carry.done.shape[0])
                      or inner(w, c, carry, **kw))
  prompts, key = problems.prompts(0, 0), jax.random.PRNGKey(11)
  assert run.shrinks()
  ro = run.rollout(params, prompts, key)
  full = run.call(run.sampler(*prompts.ids.shape), params, prompts.ids, prompts.mask, key)
  np.testing.assert_array_equal(ro.completion, np.asarray(full.tokens))
  np.testing.assert_array_equal(ro.completion_mask, np.asarray(full.mask))
  np.testing.assert_allclose(ro.rollout_logp, np.asarray(full.logp), atol=1e-5)
  n, lengths = cfg.prompts_per_step * cfg.group_size, ro.completion_mask.sum(1)
  assert lengths.min() < lengths.max() and sizes[0] == n and min(sizes) < n    # rows stopped early; batch shrank
  assert not loop.Run(cfg, model_cfg, params, NoStop(problems)).shrinks()   # nothing stops early: full-batch sampler


class NoStop:
  """A task without stop tokens (every row runs max_new_tokens)."""

  def __init__(self, task):
    self.task, self.stop_tokens = task, ()

  def __getattr__(self, name):
    return getattr(self.task, name)


def test_batch_rows_sums_counts_and_averages_means():
  rows = [{"reward_failures": 2, "train_accuracy": 0.25}, {"reward_failures": 1, "train_accuracy": 0.75},
          {"reward_failures": np.int64(0), "train_accuracy": 0.5}]
  out = loop.batch_rows(rows)
  assert out == {"reward_failures": 3, "train_accuracy": 0.5} and isinstance(out["reward_failures"], int)
  assert loop.batch_rows([{"truncated_frac": 0.5}]) == {"truncated_frac": 0.5}


class CountingProblems(exp.Problems):
  """Problems whose score row counts the batches it scored (1 per call)."""

  def score(self, ro, prompts):
    s = super().score(ro, prompts)
    return s._replace(row={"batches_scored": 1, "rows_scored": len(ro.completion)})


def test_dynamic_sampling_counts_every_rollout_batch(tmp_path, monkeypatch):
  monkeypatch.setattr(exp, "Problems", CountingProblems)
  cfg = tiny(tmp_path, prompts_per_step=4, group_size=4, dynamic_sampling=True, max_gen_batches=3)
  out = exp.main(cfg)
  assert [r["batches_scored"] for r in out["history"]] == [r["gen_batches"] for r in out["history"]]
  assert all(r["rows_scored"] == 16 * r["gen_batches"] for r in out["history"])
  assert out["history"][0]["gen_batches"] > 1          # a refill happened (an untrained model: flat groups)
