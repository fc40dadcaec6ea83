"""rl_jax.machine: the CPU model named in every table's and run's machine line."""

import builtins
import io
import platform

import jax

from rl_jax import machine


def _fake_cpuinfo(monkeypatch, text):
  real_open = builtins.open

  def fake_open(path, *a, **k):
    if path == "/proc/cpuinfo":
      if text is None:
        raise OSError("no /proc here")
      return io.StringIO(text)
    return real_open(path, *a, **k)

  monkeypatch.setattr(builtins, "open", fake_open)


def test_cpu_model_reads_the_model_name_line(monkeypatch):
  _fake_cpuinfo(monkeypatch, "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6148\n"
                             "model name\t: second line ignored\n")
  assert machine.cpu_model() == "Intel(R) Xeon(R) Gold 6148"


def test_cpu_model_falls_back_without_cpuinfo_or_without_a_name(monkeypatch):
  fallback = platform.processor() or platform.machine()
  _fake_cpuinfo(monkeypatch, None)
  assert machine.cpu_model() == fallback
  _fake_cpuinfo(monkeypatch, "processor\t: 0\nmodel name\t:\n")
  assert machine.cpu_model() == fallback


def test_describe_names_cpu_cores_and_jax(monkeypatch):
  _fake_cpuinfo(monkeypatch, "model name\t: Test CPU 9000\n")
  line = machine.describe()
  assert line.startswith(f"Test CPU 9000 ({platform.machine()}), ")
  assert f"jax {jax.__version__} on {jax.devices()[0].platform}" in line


def test_malloc_env_missing_adds_only_what_is_unset_and_only_for_glibc():
  assert machine.malloc_env_missing({}, libc="glibc") == machine.MALLOC_ENV
  assert machine.MALLOC_ENV["MALLOC_ARENA_MAX"] == "1" and machine.MALLOC_ENV["MALLOC_MMAP_MAX_"] == "0"
  partial = machine.malloc_env_missing({"MALLOC_ARENA_MAX": "4"}, libc="glibc")
  assert "MALLOC_ARENA_MAX" not in partial and set(partial) == set(machine.MALLOC_ENV) - {"MALLOC_ARENA_MAX"}
  assert machine.malloc_env_missing(dict(machine.MALLOC_ENV), libc="glibc") == {}
  assert machine.malloc_env_missing({}, libc="") == {}          # musl, macOS: not glibc's variables
  for off in ("0", "off", " False "):
    assert machine.malloc_env_missing({machine.MALLOC_SWITCH: off}, libc="glibc") == {}


def test_entry_point_restarts_with_the_malloc_env_unless_switched_off():
  import os
  import subprocess
  import sys

  if platform.libc_ver()[0] != "glibc":
    import pytest
    pytest.skip("glibc only")
  base = {k: v for k, v in os.environ.items() if k not in machine.MALLOC_ENV and k != machine.MALLOC_SWITCH}
  line = lambda env: subprocess.run([sys.executable, "-m", "rl_jax.machine"], env=env, capture_output=True, text=True,
                                    check=True, timeout=120).stdout.strip().splitlines()[-1]
  assert line(base) == " ".join(f"{k}={v}" for k, v in machine.MALLOC_ENV.items())
  assert line({**base, machine.MALLOC_SWITCH: "0"}) == " ".join(f"{k}=None" for k in machine.MALLOC_ENV)
  assert line({**base, "MALLOC_ARENA_MAX": "2"}).startswith("MALLOC_ARENA_MAX=2 MALLOC_MMAP_MAX_=0")
