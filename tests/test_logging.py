"""Run logs: metrics.jsonl and TensorBoard event files from process 0 only; quiet stdout elsewhere."""

import os
import struct
import sys

import pytest

from rl_jax import distributed
from rl_jax.metrics_log import MetricsLogger, read_metrics
from rl_jax.progress import progress


def _tb_events(folder):
  """The events of a folder's TensorBoard event files in order (TFRecord framing: u64 length, u32 crc, data,
  u32 crc), parsed with tensorboardX's own Event proto."""
  from tensorboardX.proto import event_pb2
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      yield event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4


def _tb_scalars(folder):
  """{tag: [(step, value)]} of every scalar in the folder's event files."""
  out = {}
  for event in _tb_events(folder):
    for v in event.summary.value:
      out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_process_zero_writes_jsonl_and_tensorboard(tmp_path):
  pytest.importorskip("tensorboardX")
  log = MetricsLogger(tmp_path)
  assert log.enabled and log._tb is not None
  log.log(1, {"reward": 0.25, "note": "x", "bad": float("nan")})
  log.log(2, {"reward": 0.5}, phase="eval")
  log.close()
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["phase"], r["reward"]) for r in rows] == [(1, "rl", 0.25), (2, "eval", 0.5)]
  assert rows[0]["note"] == "x"
  scalars = _tb_scalars(tmp_path / "tb")
  assert scalars["rl/reward"] == [(1, 0.25)] and scalars["eval/reward"] == [(2, 0.5)]
  assert "rl/bad" not in scalars and "rl/note" not in scalars       # non-finite and non-numeric stay out


def _tb_view(folder, tag):
  """(step, value) of `tag` as TensorBoard shows them: a session START event at step s (what purge_step
  writes) hides the events logged before it with step >= s."""
  shown = []
  for event in _tb_events(folder):
    if event.HasField("session_log") and event.session_log.status == event.session_log.START:
      shown = [(s, v) for s, v in shown if s < event.step]
    shown += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return shown


def test_a_resumed_logger_hides_the_steps_it_logs_again_from_tensorboard(tmp_path):
  pytest.importorskip("tensorboardX")
  first = MetricsLogger(tmp_path)
  for step in (1, 2, 3):                    # steps 1-2 checkpointed, step 3 logged before a kill
    first.log(step, {"reward": float(step)})
  first.close()
  resumed = MetricsLogger(tmp_path, purge_step=3)
  resumed.log(3, {"reward": 30.0})
  resumed.log(4, {"reward": 40.0})
  resumed.close()
  assert _tb_view(tmp_path / "tb", "rl/reward") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 3)
  log = MetricsLogger(tmp_path / "run")
  assert not log.enabled
  log.log(1, {"reward": 1.0})
  log.close()
  assert list((tmp_path / "run").iterdir()) == []
  bar = progress(range(3), desc="x")
  assert type(bar).__name__ == "_Silent" and list(bar) == [0, 1, 2]


def test_other_processes_send_stdout_to_their_own_file(tmp_path, monkeypatch):
  original = sys.stdout
  monkeypatch.setattr(sys, "stdout", original)                      # restored after the test
  assert distributed.quiet_non_main_stdout(str(tmp_path)) is None   # process 0 keeps its stdout
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 2)
  target = distributed.quiet_non_main_stdout(str(tmp_path))
  print("from process 2")
  sys.stdout.close()
  assert target == str(tmp_path / "process_2.log")
  assert (tmp_path / "process_2.log").read_text() == "from process 2\n"
  sys.stdout = original
  monkeypatch.delenv("RL_JAX_LOG_DIR", raising=False)
  assert distributed.quiet_non_main_stdout() == os.devnull
  sys.stdout.close()
