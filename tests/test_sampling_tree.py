"""Tree rollouts: tree structure, shared prefixes, cache copies == full forward, early stop, treepo input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax.advantages import treepo
from rl_jax.logprobs import token_logprobs
from rl_jax.models import init_params, tiny_config
from rl_jax.sampling import generate
from rl_jax.tree_rollout import allocate_children, tree_rollout, tree_rollout_raw, tree_widths

CFG = tiny_config(23, max_seq_len=32)
PARAMS = init_params(CFG, jax.random.PRNGKey(0))
IDS = jnp.asarray([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]], jnp.int32)
MASK = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
TREE = dict(group_size=8, segment_len=3, max_depth=4, first_width=2, branch_factor=2)
STOPS = (3,)  # one compiled configuration shared by most tests (the seed is not static)


def rollout(seed, **kw):
  return tree_rollout(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(seed), **{**TREE, "stop_tokens": STOPS, **kw})


def test_tree_widths():
  assert tree_widths(group_size=16, first_width=8, branch_factor=2, max_depth=14) == (8,) + (16,) * 13
  assert tree_widths(group_size=8, first_width=1, branch_factor=2, max_depth=4) == (1, 2, 4, 8)
  with pytest.raises(ValueError, match="reaches only 4 leaves"):
    tree_widths(group_size=8, first_width=1, branch_factor=2, max_depth=3)
  with pytest.raises(ValueError, match="first_width"):
    tree_widths(group_size=8, first_width=9, branch_factor=2, max_depth=3)


@pytest.mark.parametrize("jit", [False, True])
def test_allocate_children_hand_cases(jit):
  fn = jax.jit(allocate_children, static_argnums=2) if jit else allocate_children
  finished = jnp.asarray([[False, True, False], [True, True, True], [False, False, False]])
  score = jnp.asarray([[0.1, 9.0, 0.5], [0.0, 0.0, 0.0], [0.3, 0.3, 0.2]])
  parent, alive = fn(finished, score, 6)
  # row 0: open parents ranked 2 (0.5) then 0 (0.1); row 1: none open; row 2: ties keep row order.
  np.testing.assert_array_equal(np.asarray(parent), [[0, 1, 2, 2, 0, 2], [0, 1, 2, 0, 0, 0], [0, 1, 2, 0, 1, 2]])
  np.testing.assert_array_equal(np.asarray(alive), [[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 6])
  with pytest.raises(ValueError, match="width_next"):
    allocate_children(finished, score, 2)


def test_leaves_sharing_a_node_share_the_whole_prefix_and_widths_follow_the_schedule():
  out = rollout(1)
  paths, toks = np.asarray(out.paths), np.asarray(out.tokens)
  L = TREE["segment_len"]
  for p in range(2):
    for d in range(TREE["max_depth"]):
      ids = paths[p, :, d]
      assert len(set(ids[ids >= 0])) <= (2, 4, 8, 8)[d]
      for i in range(8):
        for j in range(8):
          if ids[i] >= 0 and ids[i] == ids[j]:
            np.testing.assert_array_equal(toks[p, i, :(d + 1) * L], toks[p, j, :(d + 1) * L])
            np.testing.assert_array_equal(paths[p, i, :d], paths[p, j, :d])
  assert np.all(paths[:, :, 0] >= 0)  # every leaf has a first-segment node
  assert all(len(set(map(tuple, paths[p]))) == 8 for p in range(2))  # 8 distinct leaves per prompt


@pytest.mark.parametrize("jit", [False, True])
def test_tree_logprobs_equal_the_full_forward_of_each_leaf(jit):
  if jit:
    kw, out = TREE, rollout(3)
  else:  # eager: a smaller tree (one root branch that forks once)
    kw = dict(group_size=2, segment_len=3, max_depth=2, first_width=1, branch_factor=2)
    out = tree_rollout_raw(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(3), **kw)
    assert np.asarray(out.paths)[:, :, 0].tolist() == [[0, 0], [0, 0]]
    assert np.asarray(out.paths)[:, :, 1].tolist() == [[0, 1], [0, 1]]
  g = kw["group_size"]
  tokens = jnp.concatenate([jnp.repeat(IDS, g, 0), out.tokens.reshape(2 * g, -1)], 1)
  attn = jnp.concatenate([jnp.repeat(MASK, g, 0), out.mask.reshape(2 * g, -1).astype(jnp.int32)], 1)
  logp, _ = token_logprobs(PARAMS, tokens, CFG, prompt_len=IDS.shape[1], attn_mask=attn)
  m = out.mask.reshape(2 * g, -1)
  np.testing.assert_allclose(np.asarray(logp * m), np.asarray(out.logp.reshape(2 * g, -1)), atol=1e-5)


def test_greedy_tree_equals_the_greedy_sampler_on_every_leaf():
  out = rollout(0, temperature=0.0, stop_tokens=())
  ref = generate(PARAMS, CFG, IDS, MASK, jax.random.PRNGKey(0), max_new_tokens=12, temperature=0.0)
  for g in range(8):
    np.testing.assert_array_equal(np.asarray(out.tokens[:, g]), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.logp[:, g]), np.asarray(ref.logp), atol=1e-5)


def test_finished_branches_stop_and_are_never_forked():
  stops, n_finished = STOPS, 0
  for seed in range(4):
    out = rollout(seed)
    toks, m, paths = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.paths)
    L = TREE["segment_len"]
    for p in range(2):
      for g in range(8):
        if not out.valid[p, g]:
          assert np.all(m[p, g] == 0) and np.all(paths[p, g] == -1)
          continue
        hits = [i for i, t in enumerate(toks[p, g]) if t in stops and m[p, g, i]]
        if not hits:
          assert np.all(m[p, g] == 1) and np.all(paths[p, g] >= 0)
          continue
        n_finished += 1
        first, leaf_depth = hits[0], hits[0] // L
        assert np.all(m[p, g, :first + 1] == 1) and np.all(m[p, g, first + 1:] == 0)
        assert np.all(toks[p, g, first + 1:] == 0)
        assert np.all(paths[p, g, :leaf_depth + 1] >= 0) and np.all(paths[p, g, leaf_depth + 1:] == -1)
        others = [h for h in range(8) if h != g and paths[p, h, leaf_depth] == paths[p, g, leaf_depth]]
        assert not others  # a finished node keeps exactly one child: itself
  assert n_finished > 0


def test_every_branch_finished_early_leaves_empty_rows():
  out = rollout(0, temperature=1.0, stop_tokens=tuple(range(23)))  # every token stops
  assert np.asarray(out.valid).sum(1).tolist() == [2, 2]  # the two first-segment leaves only
  m = np.asarray(out.mask)
  assert np.all(m[~np.asarray(out.valid)] == 0) and np.all(m.sum(-1)[np.asarray(out.valid)] == 1)


def test_tree_output_feeds_the_treepo_advantage():
  out = rollout(4)
  rewards = jnp.asarray(np.random.default_rng(0).integers(0, 2, (2, 8)), jnp.float32)
  adv = treepo(rewards, out.paths, out.mask)
  assert adv.shape == out.mask.shape and np.all(np.isfinite(np.asarray(adv)))


def test_bad_input():
  with pytest.raises(ValueError, match="exceeds the model's cache/context max_seq_len=32"):
    rollout(0, segment_len=8)
  with pytest.raises(ValueError, match="branch_by"):
    rollout(0, branch_by="random")
