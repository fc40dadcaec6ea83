"""The README's composition example runs as written and agrees with the named method it rebuilds."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_compose_example_runs_and_matches_gspo_token():
  block = next(b for b in python_blocks() if "def gspo_token_clip_higher" in b)
  scope = {}
  exec(compile(block, str(README), "exec"), scope)
  loss, grads = scope["loss"], scope["grads"]
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))
  from rl_jax import objectives
  ref, _ = objectives.gspo_token(scope["logp"], scope["logp"] - 0.01, scope["adv"], scope["mask"], eps_low=3e-4,
                                 eps_high=4e-4, agg="token-mean")
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def test_smollm2_five_line_example_runs():
  import pytest
  from rl_jax.models import smollm2_gguf_path
  try:
    smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  block = next(b for b in python_blocks() if "load_gguf(smollm2_gguf_path())" in b)
  scope = {}
  exec(compile(block, str(README), "exec"), scope)
  text = scope["tok"].decode(scope["out"].tokens[0][scope["out"].mask[0] > 0])
  assert "12 + 7" in text
