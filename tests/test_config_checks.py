"""Bad config values are errors that name the key, raised before any compute (rl_jax.config.check)."""

import dataclasses
import pathlib
import subprocess
import sys
from typing import ClassVar, Optional

import pytest

from rl_jax.experiments import arithmetic_tiny, gsm8k_smollm2
from rl_jax.config import apply_overrides, check, in_interval

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Toy:
  lr: float = 1e-3
  steps: int = 1
  mode: str = "a"
  widths: tuple[float, ...] = (1.0,)
  cap: Optional[float] = None
  anything: float = 0.0

  BOUNDS: ClassVar[dict] = dict(lr="(0, inf)", steps="[1, 10]", mode=("a", "b"), widths="(0, 1]", cap="[0, inf)")


@pytest.mark.parametrize("argv, match", [
    (["--lr=nan"], "--lr must be a finite number"),
    (["--anything=inf"], "--anything must be a finite number"),
    (["--anything=-inf"], "--anything must be a finite number"),
    (["--widths=0.5,nan"], "--widths must be a finite number"),
    (["--cap=nan"], "--cap must be a finite number"),
    (["--lr=0"], r"--lr must be in \(0, inf\)"),
    (["--steps=0"], r"--steps must be in \[1, 10\]"),
    (["--steps=11"], r"--steps must be in \[1, 10\]"),
    (["--mode=c"], "--mode must be one of"),
    (["--widths=0.5,1.5"], r"--widths must be in \(0, 1\]"),
    (["--cap=-1"], "--cap must be in"),
])
def test_values_outside_their_domain_name_the_key(argv, match):
  with pytest.raises(ValueError, match=match):
    apply_overrides(Toy(), argv)


def test_values_inside_their_domain_pass():
  cfg = apply_overrides(Toy(), ["--lr=0.5", "--steps=10", "--mode=b", "--widths=1,0.25", "--cap=none",
                                "--anything=-3"])
  assert cfg == Toy(lr=0.5, steps=10, mode="b", widths=(1.0, 0.25), cap=None, anything=-3.0)
  check(cfg)


def test_intervals_and_a_bounds_key_that_names_no_field():
  assert in_interval(0.0, "[0, 1]") and not in_interval(0.0, "(0, 1]") and in_interval(1.0, "(0, 1]")
  assert not in_interval(1.0, "[0, 1)") and in_interval(1e300, "[1, inf)")
  with pytest.raises(ValueError, match="Bad interval"):
    in_interval(1.0, "0..1")

  @dataclasses.dataclass(frozen=True)
  class Typo:
    lr: float = 1.0
    BOUNDS: ClassVar[dict] = dict(learning_rate="(0, inf)")
  with pytest.raises(ValueError, match="BOUNDS names no field"):
    check(Typo())


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key, value", [
    ("lr", NAN), ("temperature", NAN), ("eval_every", 0), ("temperature", -1.0), ("sft_lr", INF),
    ("checkpoint_every", -1), ("checkpoint_keep", 0), ("checkpoint_keep_every", -1), ("beta", -0.1), ("digits", 0),
    ("ops", "+/"),
])
def test_arithmetic_config_rejects_bad_values(key, value):
  with pytest.raises(ValueError, match=f"--{key}"):
    apply_overrides(arithmetic_tiny.Config(), [f"--{key}={value}"])
  with pytest.raises(ValueError, match=f"--{key}"):   # direct construction is checked too
    arithmetic_tiny.Config(**{key: value})


@pytest.mark.parametrize("argv, key", [
    (["--lr=nan"], "lr"), (["--temperature=nan"], "temperature"), (["--top_p=1.5"], "top_p"), (["--top_p=0"], "top_p"),
    (["--lr=inf"], "lr"), (["--format_bonus=nan"], "format_bonus"), (["--eval_samples=-1"], "eval_samples"),
    (["--max_prompt_len=0"], "max_prompt_len"),
])
def test_gsm8k_config_rejects_bad_values(argv, key):
  with pytest.raises(ValueError, match=f"--{key}"):
    gsm8k_smollm2.make_config(argv)


def test_the_command_line_fails_before_any_compute(tmp_path):
  run_dir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "rl_jax.experiments.arithmetic_tiny", "--lr=nan", f"--run_dir={run_dir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "--lr must be a finite number" in proc.stderr
  assert not run_dir.exists()
