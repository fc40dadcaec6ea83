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
