"""Bad input is a clear error at trace time, under jit too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives

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
