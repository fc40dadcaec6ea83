"""The RL step's host side: its keys and row orders come from single compiled calls equal to jax.random's eager
results, every mini-batch gets the rows of that order (picked on the host), and repeated steps of one batch
layout compile nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import loop
from rl_jax.experiments import arithmetic_tiny as exp
from rl_jax.models import init_params
from rl_jax.train import Rollouts, TrainState, rl_iteration, shuffle_key, split_key


@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key])
def test_split_key_and_shuffle_key_equal_the_eager_jax_random_calls(make_key):
  for seed in (0, 1, 12345):
    key = make_key(seed)
    ref = jax.random.split(key)
    first, second = split_key(key)
    assert jnp.array_equal(first, ref[0]) and jnp.array_equal(second, ref[1])
    for n in (1, 7, 16):
      nxt, perm = shuffle_key(key, n)
      assert jnp.array_equal(nxt, ref[0])
      np.testing.assert_array_equal(perm, jax.random.permutation(ref[1], n))
      assert sorted(np.asarray(perm).tolist()) == list(range(n))


@pytest.mark.parametrize("keep_groups", [False, True])
def test_rl_iteration_mini_batches_hold_the_rows_of_eager_permutations(keep_groups):
  p, g, t, width = 4, 2, 3, 5
  n = p * g
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 50, (n, width)).astype(np.int32)
  cmask = (rng.random((n, t)) > 0.3).astype(np.float32)
  mu = rng.normal(size=(n, t)).astype(np.float32)
  ro = Rollouts(tokens, np.ones_like(tokens), tokens[:, width - t:], cmask, mu)
  rewards = rng.random((p, g)).astype(np.float32)
  old = rng.normal(size=(n, t)).astype(np.float32)
  seen = []

  def step(state, batch):
    seen.append(batch)
    return state._replace(step=state.step + 1), {"loss": jnp.sum(batch.advantages)}

  state = TrainState({}, (), jnp.int32(0), jax.random.PRNGKey(3))
  out, m = rl_iteration(state, step, lambda params, tok, attn: old, ro, rewards, lambda r: 2 * r, epochs=2,
                        minibatches=2, keep_groups=keep_groups)
  key, expected = jax.random.PRNGKey(3), []                  # the eager reference: split, then permutation
  for _ in range(2):
    key, sub = jax.random.split(key)
    order = np.asarray(jax.random.permutation(sub, p if keep_groups else n))
    if keep_groups:
      order = (order[:, None] * g + np.arange(g)).reshape(n)
    expected += [order[:n // 2], order[n // 2:]]
  assert len(seen) == 4 and int(out.step) == 4 and jnp.array_equal(out.rng, key)
  for batch, idx in zip(seen, expected):
    np.testing.assert_array_equal(batch.tokens, tokens[idx])
    np.testing.assert_array_equal(batch.completion_mask, cmask[idx])
    np.testing.assert_array_equal(batch.old_logp, old[idx])
    np.testing.assert_array_equal(batch.rollout_logp, mu[idx])
    np.testing.assert_array_equal(batch.advantages, 2 * rewards.reshape(n)[idx])
    if keep_groups:
      assert all(len(set(idx[i:i + g] // g)) == 1 for i in range(0, len(idx), g))
  assert m["loss"] == pytest.approx(np.mean([float(np.sum(2 * rewards.reshape(n)[i])) for i in expected]))


def test_repeated_rl_steps_of_one_layout_compile_nothing(tmp_path):
  """The plain layout is the same every step (answers padded to their fixed length): after the first step,
  neither the jitted functions nor the step's small host-side jax calls compile again."""
  cfg = exp.Config(digits=1, d_model=16, n_layers=1, sft_steps=0, rl_steps=3, prompts_per_step=2, group_size=2,
                   eval_size=2, checkpoint_every=0, progress_bar=False, run_dir=str(tmp_path), packed=False)
  task, model_cfg = exp.build(cfg)
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  run = loop.Run(cfg, model_cfg, params, exp.Problems(cfg, task))
  state = run.init_state(params, jax.random.PRNGKey(1))
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
  counts = []
  for step in range(3):
    before = len(compiles)
    state, *_ = loop.rl_step(run, state, step, None, None)
    counts.append(len(compiles) - before)
  assert counts[0] > 0 and counts[1:] == [0, 0], counts
