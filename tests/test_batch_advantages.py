"""rl_jax.advantages.batch (the loop's advantages of a rollout batch) against hand values, and the loop's
refusals of tree-rollout combinations before any compute."""

import numpy as np
import pytest

from rl_jax import advantages
from rl_jax.advantages import batch
from rl_jax.experiments import arithmetic_tiny as exp

PATHS = np.array([[[0, 0], [0, 1], [1, 2], [1, 3]]])        # root → A (leaves 0, 1), B (leaves 2, 3)
MASK = np.ones((1, 4, 2), np.float32)
TOKENS = np.array([[[3, 4], [3, 5], [6, 7], [6, 8]]])


def test_grpo_on_a_tree_uses_the_valid_rows_only():
  rewards = np.array([[1.0, 0.0, 0.5, 0.5]], np.float32)        # rows 2, 3 empty (their imputed mean)
  valid = np.array([[True, True, False, False]])
  out = batch.batch_advantages("grpo", {}, TOKENS, MASK, rewards, paths=PATHS, valid=valid)
  sd = np.std([1.0, 0.0], ddof=1)
  np.testing.assert_allclose(out.advantages, [[0.5 / sd, -0.5 / sd, 0.0, 0.0]], rtol=1e-5)


def test_group_estimators_equal_the_registered_function():
  rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]], np.float32)
  for name, kw in [("grpo", {}), ("rloo", {}), ("grpo", {"scale_by_std": False})]:
    out = batch.batch_advantages(name, kw, None, None, rewards)
    np.testing.assert_allclose(out.advantages, np.asarray(advantages.get(name)(rewards, **kw)), rtol=1e-6)
    assert out.metrics == {} and out.loss_mask is None


def test_spo_tree_keeps_the_hand_edges_and_counts_its_tree_term():
  rewards = np.array([[1.0, 0.0, 1.0, 1.0]], np.float32)
  out = batch.batch_advantages("spo_tree", {}, TOKENS, MASK, rewards, paths=PATHS, valid=np.ones((1, 4), bool))
  # V(A) = 0.5, V(B) = 1, V(root) = 0.75; B → its leaves: advantage 0, dropped by the best-of-4 rule
  np.testing.assert_allclose(out.advantages[0], [[-0.25, 0.5], [-0.25, -0.5], [0.25, 0.0], [0.25, 0.0]], atol=1e-6)
  assert out.metrics["tree_term_frac"] == pytest.approx(6 / 8)


def test_tempo_is_the_registered_estimator_and_its_tree_term_is_the_td_part():
  rewards = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
  out = batch.batch_advantages("tempo", {}, TOKENS, MASK, rewards)
  np.testing.assert_allclose(out.advantages, np.asarray(advantages.tempo(TOKENS, MASK, rewards)), rtol=1e-6)
  raw = np.asarray(advantages.tempo(TOKENS, MASK, rewards, norm_adv_by_std=False))
  td = raw - (rewards - rewards.mean())[..., None]
  assert out.metrics["tree_term_frac"] == pytest.approx(np.mean(np.abs(td) > 1e-6)) and 0 < np.mean(np.abs(td) > 1e-6)


def test_what_a_batch_lacks_is_named():
  r = np.zeros((1, 4), np.float32)
  with pytest.raises(ValueError, match="treepo reads the tree paths"):
    batch.batch_advantages("treepo", {}, TOKENS, MASK, r)
  with pytest.raises(ValueError, match="On tree rollouts the estimators are"):
    batch.batch_advantages("rloo", {}, TOKENS, MASK, r, paths=PATHS, valid=np.ones((1, 4), bool))
  with pytest.raises(ValueError, match="Monte-Carlo values"):
    batch.batch_advantages("spo_chain", {}, TOKENS, MASK, r)


def test_the_loop_refuses_tree_combinations_before_compute():
  with pytest.raises(ValueError, match="from the tree paths of --rollout=tree"):
    exp.Config(advantage="spo_tree")
  with pytest.raises(ValueError, match="rollout=tree runs the advantages"):
    exp.Config(rollout="tree", advantage="dcpo")
  with pytest.raises(ValueError, match="rollout=tree runs the advantages"):
    exp.Config(rollout="tree", dynamic_sampling=True)
  with pytest.raises(ValueError, match="--rollout must be one of"):
    exp.Config(rollout="beam")
  with pytest.raises(ValueError, match="takes no keywords"):
    exp.Config(rollout="tree", advantage="spo_tree", advantage_args="bok=2")
  assert exp.Config(rollout="tree", advantage="treepo", advantage_args="whiten=false").advantage == "treepo"
