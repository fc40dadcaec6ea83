"""One battery run over every registered objective: jit == eager, finiteness, masking, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_jax import objectives
from objective_cases import GROUP, as_f32, make_batch, method_kwargs

NAMES = objectives.names()
JIT = [False, True]


def loss_and_grad(name, logp, old, ref, adv, mask, kw, jit):
  fn = objectives.get(name)

  def loss(lp):
    return fn(lp, old, adv, mask, ref_logp=ref, **kw)[0]

  vg = jax.value_and_grad(loss)
  if jit:
    vg = jax.jit(vg)
  return vg(logp)


def test_names_lists_every_method():
  expected = {"grpo", "ppo_dual_clip", "dr_grpo", "dapo", "gspo", "gspo_token", "sapo", "dhpo", "sspo", "dcpo",
              "minpro", "hapo", "ngrpo", "cispo", "gmpo", "clip_cov", "kl_cov", "gtpo", "rank_grpo", "tis", "mis"}
  assert expected <= set(NAMES)
  assert NAMES == sorted(NAMES)
  for name in NAMES:
    assert objectives.get(name).__name__ == name
    assert "arXiv" in objectives.get(name).__doc__ or name in ("tis", "mis")


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_is_finite(name):
  logp, old, ref, adv, mask, extras = make_batch(seed=1)
  kw = method_kwargs(name, extras)
  args = as_f32(logp, old, ref, adv, mask)
  l0, g0 = loss_and_grad(name, *args, kw, jit=False)
  l1, g1 = loss_and_grad(name, *args, kw, jit=True)
  assert np.isfinite(float(l0)) and np.all(np.isfinite(np.asarray(g0)))
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(g0)[mask == 0] == 0.0), "gradient must vanish on masked tokens"
  _, metrics = objectives.get(name)(*as_f32(logp, old), jnp.asarray(adv, jnp.float32), jnp.asarray(mask),
                                    ref_logp=jnp.asarray(ref, jnp.float32), **kw)
  for key in ("clip_frac", "ratio_mean", "ratio_max", "loss"):
    assert key in metrics and np.shape(metrics[key]) == ()
  assert 0.0 <= float(metrics["clip_frac"]) <= 1.0
  if name in ("grpo", "rank_grpo"):  # beta > 0 by default
    assert "kl" in metrics and float(metrics["kl"]) >= 0.0


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("name", NAMES)
def test_masked_garbage_and_empty_rows_do_not_leak(name, jit):
  logp, old, ref, adv, mask, extras = make_batch(seed=2)
  kw = method_kwargs(name, extras)
  base_loss, base_grad = loss_and_grad(name, *as_f32(logp, old, ref, adv, mask), kw, jit)
  # NaN/inf in every masked slot of every per-token input.
  dirty = [np.where(mask > 0, x, np.nan) for x in (logp, old, ref)]
  kw_dirty = {k: (np.where(mask > 0, v, np.nan) if k in ("entropy", "rollout_logp") else v) for k, v in kw.items()}
  loss, grad = loss_and_grad(name, *as_f32(*dirty, adv, mask), kw_dirty, jit)
  np.testing.assert_allclose(float(loss), float(base_loss), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(base_grad), rtol=1e-6, atol=1e-7)
  # A whole extra group of empty rows (garbage everywhere) changes nothing.
  pad = lambda x, v: np.concatenate([x, np.full((GROUP,) + x.shape[1:], v, x.dtype)], 0)
  kw_pad = {k: (pad(v, 7 if v.dtype.kind == "i" else np.nan) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
  args = [pad(x, np.nan) for x in (logp, old, ref)] + [pad(adv, np.nan), pad(mask, 0.0)]
  loss_p, grad_p = loss_and_grad(name, *as_f32(*args), kw_pad, jit)
  np.testing.assert_allclose(float(loss_p), float(base_loss), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad_p)[:-GROUP], np.asarray(base_grad), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad_p)[-GROUP:] == 0.0)


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("name", NAMES)
def test_all_zero_mask_gives_zero_loss_and_gradient(name, jit):
  logp, old, ref, adv, mask, extras = make_batch(seed=3)
  kw = method_kwargs(name, extras)
  zero = np.zeros_like(mask)
  loss, grad = loss_and_grad(name, *as_f32(logp, old, ref, adv, zero), kw, jit)
  assert float(loss) == 0.0
  assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_give_float32_loss(name):
  logp, old, ref, adv, mask, extras = make_batch(seed=4)
  kw = method_kwargs(name, extras)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  loss, metrics = objectives.get(name)(bf(logp), bf(old), bf(adv), jnp.asarray(mask), ref_logp=bf(ref), **kw)
  assert loss.dtype == jnp.float32
  ref_loss, _ = objectives.get(name)(*[jnp.asarray(bf(x), jnp.float32) for x in (logp, old, adv)], jnp.asarray(mask),
                                     ref_logp=jnp.asarray(bf(ref), jnp.float32), **kw)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("gmpo", "gtpo", "topr")])
def test_token_level_advantages_accepted(name):
  logp, old, ref, adv, mask, extras = make_batch(seed=5, seq_adv=False)
  loss, _ = objectives.get(name)(*as_f32(logp, old, adv, mask), ref_logp=jnp.asarray(ref, jnp.float32),
                                 **method_kwargs(name, extras))
  assert np.isfinite(float(loss))
  # Broadcasting a sequence advantage by hand gives the same loss as passing it as [B].
  logp, old, ref, adv, mask, extras = make_batch(seed=5)
  kw = method_kwargs(name, extras)
  seq, _ = objectives.get(name)(*as_f32(logp, old, adv, mask), ref_logp=jnp.asarray(ref, jnp.float32), **kw)
  tok, _ = objectives.get(name)(*as_f32(logp, old, np.broadcast_to(adv[:, None], mask.shape), mask),
                                ref_logp=jnp.asarray(ref, jnp.float32), **kw)
  np.testing.assert_allclose(float(tok), float(seq), rtol=1e-6, atol=1e-7)
