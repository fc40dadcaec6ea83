"""Every objective against the independently written float64 references (tests/reference/objectives_np.py):
loss, gradient w.r.t. logp, and the clip fraction, with and without jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives
from objective_cases import make_batch
from reference import objectives_np as ind
from test_objectives_vs_reference import CASES, arrays_for


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_independent_reference(case, jit):
  name, hp = CASES[case]
  if name in ("topr", "minirl"):
    pytest.skip(f"{name} is outside the reference's scope (checked against the loop reference)")
  for seed, seq_adv in ((31, True), (32, False)):
    if not seq_adv and name in ("gmpo", "gtpo"):
      continue
    logp, old, refl, adv, mask, extras = make_batch(seed=seed, seq_adv=seq_adv, spread=0.25)
    extras["token_ids"] = np.random.default_rng(seed).integers(0, 2, logp.shape).astype(np.int32)
    jax_kw, ref_kw = arrays_for(name, hp, extras)
    if name == "clip_cov":
      ref_kw.pop("rng", None)
    want_loss, want_grad, want_metrics = getattr(ind, name)(logp, old, adv, mask, ref_logp=refl, **ref_kw)
    fn = objectives.get(name)
    f32 = lambda x: jnp.asarray(x, jnp.float32)

    def loss(lp):
      return fn(lp, f32(old), f32(adv), f32(mask), ref_logp=f32(refl), **jax_kw)

    vg = jax.value_and_grad(loss, has_aux=True)
    (got_loss, got_metrics), got_grad = (jax.jit(vg) if jit else vg)(f32(logp))
    np.testing.assert_allclose(float(got_loss), want_loss, rtol=2e-5, atol=2e-6 * max(1.0, abs(want_loss)))
    np.testing.assert_allclose(np.asarray(got_grad), want_grad, rtol=2e-3, atol=2e-5)
    if name not in ("gtpo", "kl_cov"):
      assert float(got_metrics["clip_frac"]) == pytest.approx(want_metrics["clip_frac"], abs=1e-6)
