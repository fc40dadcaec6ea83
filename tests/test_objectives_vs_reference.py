"""Every objective against the float64 NumPy reference (values and gradients w.r.t. logp), jit and eager."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives
from objective_cases import make_batch
from reference import objectives_loops_np as ref

# (method, hyperparameters): defaults plus the switches that the docstrings expose.
CASES = [
    ("grpo", {}), ("grpo", {"agg": "token-mean", "kl_estimator": "k1"}), ("grpo", {"kl_estimator": "k2", "beta": 0.3}),
    ("grpo", {"dual_clip_c": 1.5, "agg": "seq-mean-token-sum", "beta": 0.0}),
    ("ppo_dual_clip", {}), ("dr_grpo", {"max_len": 16}), ("dapo", {}), ("dapo", {"agg": "seq-mean-token-mean"}),
    ("ngrpo", {}), ("dcpo", {}), ("dcpo", {"eps_low": 0.16, "eps_high": 0.2}),
    ("minpro", {}), ("minpro", {"include_current": True, "cap_at_one": True}),
    ("gspo", {}), ("gspo", {"eps_low": 0.05, "eps_high": 0.08}), ("gspo_token", {"eps_low": 0.05, "eps_high": 0.08}),
    ("sapo", {}), ("sapo", {"tau_pos": 3.0, "tau_neg": 5.0, "agg": "token-mean"}),
    ("cispo", {}), ("cispo", {"eps_low": 0.2, "eps_high": 0.1, "trust_mask": True}),
    ("cispo", {"cap_mode": "absolute", "eps_high": 1.1}),
    ("gmpo", {}), ("gmpo", {"clip_c": 0.1}),
    ("dhpo", {}), ("dhpo", {"mixing": "entropy"}), ("dhpo", {"mixing": "entropy", "mix_space": "geometric"}),
    ("sspo", {}), ("sspo", {"entropy": True}),
    ("rank_grpo", {}),
    ("hapo", {}), ("hapo", {"reproduce_code_sign": False}), ("hapo", {"entropy_pivot": 0.5, "adv_beta": 0.5}),
    ("kl_cov", {"kl_cov_frac": 0.1}), ("clip_cov", {"clip_cov_ratio": 1.0, "clip_cov_lb": -1.0, "clip_cov_ub": 0.5}),
    ("gtpo", {}),
    ("tis", {"base": "dapo"}), ("tis", {"base": "grpo", "level": "sequence", "tis_cap": 1.5}),
    ("mis", {"base": "dapo", "mis_low": 0.8, "mis_high": 1.2}), ("mis", {"base": "grpo", "level": "sequence"}),
    ("topr", {}), ("minirl", {}), ("minirl", {"rollout": True}),
]


def arrays_for(name, hp, extras):
  """Per-method keyword arrays for the JAX call and the reference call."""
  jax_kw, ref_kw = dict(hp), dict(hp)
  if name in ("hapo", "gtpo") or hp.get("mixing") == "entropy":
    jax_kw["entropy"] = ref_kw["entropy"] = extras["entropy"]
  if name == "sspo":
    jax_kw["segment_ids"] = ref_kw["segment_ids"] = extras["segment_ids"]
    if hp.get("entropy"):
      jax_kw["entropy"] = ref_kw["entropy"] = extras["entropy"]
    else:
      jax_kw.pop("entropy", None)
      ref_kw.pop("entropy", None)
  if name == "rank_grpo":
    jax_kw["rank_ids"] = ref_kw["rank_ids"] = extras["segment_ids"]
  if name == "gtpo":
    for kw in (jax_kw, ref_kw):
      kw.update(token_ids=extras["token_ids"], group_size=2, ent_threshold=1.5)
  if name == "clip_cov":
    jax_kw["rng"] = jax.random.PRNGKey(3)
  if name in ("tis", "mis") or hp.get("rollout"):
    jax_kw.pop("rollout", None)
    ref_kw.pop("rollout", None)
    jax_kw["rollout_logp"] = ref_kw["rollout_logp"] = extras["rollout_logp"]
  return jax_kw, ref_kw


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_float64_reference(case, jit):
  name, hp = CASES[case]
  for seed, seq_adv in ((21, True), (22, False)):
    if not seq_adv and name in ("gmpo", "gtpo", "topr"):
      continue
    logp, old, refl, adv, mask, extras = make_batch(seed=seed, seq_adv=seq_adv, spread=0.25)
    # Token ids from a 2-letter alphabet so GTPO sees real conflicts.
    extras["token_ids"] = (np.random.default_rng(seed).integers(0, 2, logp.shape)).astype(np.int32)
    jax_kw, ref_kw = arrays_for(name, hp, extras)
    masked = [x * mask for x in (logp, old, refl)]
    ref_kw = {k: (v * mask if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in ref_kw.items()}
    want_loss, want_grad = ref.value_and_grad(getattr(ref, name), masked[0], masked[1], adv, mask, masked[2], **ref_kw)
    fn = objectives.get(name)
    f32 = lambda x: jnp.asarray(x, jnp.float32)

    def loss(lp):
      return fn(lp, f32(old), f32(adv), f32(mask), ref_logp=f32(refl), **jax_kw)[0]

    vg = jax.value_and_grad(loss)
    got_loss, got_grad = (jax.jit(vg) if jit else vg)(f32(logp))
    scale = max(1.0, abs(want_loss))
    np.testing.assert_allclose(float(got_loss), want_loss, rtol=2e-5, atol=2e-6 * scale)
    np.testing.assert_allclose(np.asarray(got_grad), want_grad, rtol=2e-3, atol=2e-5)
