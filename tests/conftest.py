"""Test configuration shared by every rl_jax test.

Eight fake CPU devices (for mesh tests) and rank promotion disabled, so an accidental
[B] vs [B, T] broadcast fails loudly.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if os.environ.get("RL_JAX_TEST_ACCELERATOR") != "1":  # set it to run the @gpu tests on a GPU/TPU machine
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

try:  # deterministic hypothesis runs
  from hypothesis import settings

  settings.register_profile("rl_jax", derandomize=True, database=None, deadline=None, max_examples=25)
  settings.load_profile("rl_jax")
except ImportError:  # pragma: no cover
  pass


def _in_ci() -> bool:
  return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def data_root():
  """The data folder (RL_JAX_DATA_DIR, else ../shared/data). Missing: the test skips, except in CI (CI=true),
  where it fails, so a CI run without its data cannot pass by skipping."""
  from rl_jax.data import default_root
  root = default_root()
  if not (root / "gsm8k" / "test.jsonl").exists():
    message = f"no data folder at {root} (set RL_JAX_DATA_DIR)"
    if _in_ci():
      pytest.fail(message + "; CI must provide the data", pytrace=False)
    pytest.skip(message)
  return root
