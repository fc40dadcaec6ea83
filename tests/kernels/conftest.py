import jax
import pytest


def has_accelerator() -> bool:
  return jax.default_backend() in ("gpu", "tpu")


def pytest_collection_modifyitems(config, items):
  skip = pytest.mark.skip(reason="compiled Pallas kernels need a GPU/TPU; on CPU they run in interpret mode")
  for item in items:
    if "gpu" in item.keywords and not has_accelerator():
      item.add_marker(skip)
