"""chex variants (the same test with and without jax.jit) and tree assertions on objectives, advantages and
the policy's parameter gradients, against the float64 NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from reference import advantages_np as adv_ref
from reference import objectives_np as obj_ref
from rl_jax import advantages, objectives
from rl_jax.models import forward, init_params, tiny_config

B, T = 4, 7


def _inputs(seed):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, (B, T))
  old = logp + rng.normal(0, 0.3, (B, T))
  ref = logp + rng.normal(0, 0.3, (B, T))
  adv = rng.normal(0, 1, B)
  mask = (np.arange(T)[None] < np.array([7, 5, 1, 3])[:, None]).astype(np.float64)
  return logp, old, ref, adv, mask


class ObjectiveVariants(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("grpo", "grpo", {"beta": 0.04}), ("dapo", "dapo", {}), ("gspo", "gspo", {}))
  def test_loss_and_gradient_equal_the_float64_reference(self, name, hp):
    logp, old, ref, adv, mask = _inputs(len(name))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731

    @self.variant
    def loss_and_grad(lp):
      return jax.value_and_grad(lambda x: objectives.get(name)(x, f32(old), f32(adv), f32(mask), ref_logp=f32(ref),
                                                               **hp)[0])(lp)

    loss, grad = loss_and_grad(f32(logp))
    want_loss, want_grad, _ = getattr(obj_ref, name)(logp, old, adv, mask, ref_logp=ref, **hp)
    chex.assert_shape(grad, (B, T))
    chex.assert_tree_all_finite((loss, grad))
    chex.assert_trees_all_close((loss, grad), (want_loss, want_grad), rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_equal(grad * (1 - f32(mask)), jnp.zeros((B, T)))    # masked tokens get no gradient


class AdvantageVariants(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("grpo", "grpo"), ("rloo", "rloo"))
  def test_group_estimators_equal_the_float64_reference(self, name):
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.4, 0.7]])
    got = self.variant(advantages.get(name))(jnp.asarray(rewards, jnp.float32))
    chex.assert_shape(got, rewards.shape)
    chex.assert_trees_all_close(got, getattr(adv_ref, name)(rewards), rtol=1e-5, atol=1e-6)


class ParameterTreeVariants(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradients_have_the_parameter_tree_and_match_across_variants(self):
    cfg = tiny_config(32, d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 32)

    def loss(p):
      logits = forward(p, tokens, cfg)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = self.variant(jax.grad(loss))(params)
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads, jax.grad(loss)(params), rtol=1e-5, atol=1e-7)
