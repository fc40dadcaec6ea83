"""Bad input is a clear error at trace time, under jit too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives
from objective_cases import method_kwargs

B, T = 3, 4
LOGP = jnp.full((B, T), -1.0)
MASK = jnp.ones((B, T))
ADV = jnp.ones((B,))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case, match", [
    (dict(logp=jnp.zeros((B,))), "rank 2"),
    (dict(old_logp=jnp.zeros((B, T + 1))), "old_logp must have shape"),
    (dict(mask=jnp.ones((B + 1, T))), "mask must have shape"),
    (dict(advantages=jnp.ones((B + 1,))), "advantages must have shape"),
    (dict(advantages=jnp.ones((B, T, 1))), "advantages must have shape"),
    (dict(ref_logp=jnp.zeros((B, 2))), "ref_logp must have shape"),
])
def test_shape_errors(case, match, jit):
  args = dict(logp=LOGP, old_logp=LOGP, advantages=ADV, mask=MASK, ref_logp=LOGP)
  args.update(case)
  fn = lambda a: objectives.grpo(a["logp"], a["old_logp"], a["advantages"], a["mask"], ref_logp=a["ref_logp"])
  with pytest.raises(ValueError, match=match):
    (jax.jit(fn) if jit else fn)(args)


def test_dtype_errors():
  with pytest.raises(TypeError, match="logp must be a floating"):
    objectives.dapo(jnp.zeros((B, T), jnp.int32), LOGP, ADV, MASK)
  with pytest.raises(TypeError, match="advantages must be a floating"):
    objectives.dapo(LOGP, LOGP, jnp.ones((B,), jnp.int32), MASK)


def test_unknown_names():
  with pytest.raises(ValueError, match="Unknown objective 'grpoo'.*grpo"):
    objectives.get("grpoo")
  with pytest.raises(ValueError, match="Unknown aggregation mode"):
    objectives.dapo(LOGP, LOGP, ADV, MASK, agg="token-sum")
  with pytest.raises(ValueError, match="Unknown kl_estimator"):
    objectives.grpo(LOGP, LOGP, ADV, MASK, ref_logp=LOGP, kl_estimator="k4")
  with pytest.raises(ValueError, match="Unknown mixing"):
    objectives.dhpo(LOGP, LOGP, ADV, MASK, mixing="random")


@pytest.mark.parametrize("name, kw, match", [
    ("grpo", dict(eps_low=-0.1), "eps_low must be >= 0"),
    ("dapo", dict(eps_high=float("nan")), "eps_high"),
    ("ppo_dual_clip", dict(dual_clip_c=0.5), "dual_clip_c must be > 1"),
    ("grpo", dict(beta=-1.0), "beta must be >= 0"),
    ("sapo", dict(tau_pos=0.0), "tau_pos must be > 0"),
    ("dr_grpo", dict(max_len=None), "needs max_len"),
])
def test_bad_hyperparameters(name, kw, match):
  with pytest.raises(ValueError, match=match):
    objectives.get(name)(LOGP, LOGP, ADV, MASK, ref_logp=LOGP, **kw)


def test_missing_required_arrays():
  with pytest.raises(ValueError, match="needs ref_logp"):
    objectives.grpo(LOGP, LOGP, ADV, MASK)  # β = 0.04 by default
  with pytest.raises(ValueError, match="hapo needs the keyword array entropy"):
    objectives.hapo(LOGP, LOGP, ADV, MASK, entropy=None)
  with pytest.raises(ValueError, match="clip_cov needs rng"):
    objectives.clip_cov(LOGP, LOGP, ADV, MASK, rng=None)
  with pytest.raises(ValueError, match="gmpo needs sequence-level advantages"):
    objectives.gmpo(LOGP, LOGP, jnp.ones((B, T)), MASK)
  with pytest.raises(ValueError, match="group_size must be a positive int dividing"):
    objectives.gtpo(LOGP, LOGP, ADV, MASK, token_ids=jnp.zeros((B, T), jnp.int32), entropy=LOGP, group_size=2)
  with pytest.raises(ValueError, match="segment_ids must have shape"):
    objectives.sspo(LOGP, LOGP, ADV, MASK, segment_ids=jnp.zeros((B, 1), jnp.int32))


def test_nan_in_valid_positions_is_not_hidden():
  """Masking protects padding only: a NaN on a valid token shows in the loss."""
  logp = np.full((B, T), -1.0, np.float32)
  logp[0, 0] = np.nan
  loss, _ = objectives.dapo(jnp.asarray(logp), LOGP, ADV, MASK)
  assert np.isnan(float(loss))


@pytest.mark.parametrize("shape, jit", [((0, 4), False), ((2, 0), False), ((0, 4), True), ((2, 0), True),
                                        ((0, 0), True)])
def test_empty_batch_gives_zero_loss_zero_gradient_and_finite_metrics(shape, jit):
  """B = 0 or T = 0 is the all-masked case: loss 0, a zero gradient of the input's shape, finite metrics. Every
  objective under jit; without jit (slow op by op) those whose own code once reduced over the empty batch."""
  b, t = shape
  extras = {"entropy": np.ones(shape), "token_ids": np.zeros(shape, np.int32),
            "segment_ids": np.zeros(shape, np.int32), "rollout_logp": np.zeros(shape)}
  z = jnp.zeros(shape)
  for name in objectives.names() if jit else ("grpo", "dapo", "dhpo", "hapo", "steer", "gtpo"):
    kw = method_kwargs(name, extras, b)
    f = lambda lp: objectives.get(name)(lp, z, jnp.zeros((b,)), jnp.ones(shape), ref_logp=z, **kw)
    if jit:
      (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(z)
      assert grad.shape == shape and not np.asarray(grad).any(), name
    else:
      loss, metrics = f(z)
    assert float(loss) == 0.0, name
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), name


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, np.nan])
def test_masks_must_hold_only_zero_and_one(bad):
  """A mask selects tokens; 0.5 or 2 are not silently read as 1 (weights go in token_weights)."""
  mask = np.ones((B, T), np.float32)
  mask[1, 2] = bad
  for name in ("grpo", "dapo", "gspo"):
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
      objectives.get(name)(LOGP, LOGP, ADV, jnp.asarray(mask), ref_logp=LOGP)
  mask[1, 2] = 0.0
  want = objectives.dapo(LOGP, LOGP, ADV, jnp.asarray(mask))[0]
  for ok in (mask.astype(bool), mask.astype(np.int32)):   # bool, int and float 0/1 masks agree
    assert float(objectives.dapo(LOGP, LOGP, ADV, jnp.asarray(ok))[0]) == float(want)
  jitted = jax.jit(lambda m: objectives.dapo(LOGP, LOGP, ADV, m)[0])   # traced: not checkable, counted as m > 0
  assert float(jitted(jnp.asarray(mask))) == float(want)
