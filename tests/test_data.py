"""rl_jax.data: the TFDS builders (array_record, no TensorFlow) against the source files."""

import json
import subprocess
import sys

import pytest

from rl_jax import data
from rl_jax.data import records
from rl_jax.rewards import answers_equivalent
from rl_jax.tasks import ArithmeticTask, CountdownTask

ROOT = records.default_root()
pytestmark = pytest.mark.usefixtures("data_root")   # skips without the data folder; fails in CI


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _lines(rel):
  with open(ROOT / rel) as f:
    return [json.loads(x) for x in f if x.strip()]


def test_records_by_hand():
  """The first row of each set, normalised by hand from the raw JSON."""
  gsm = next(records.read("gsm8k", "test"))
  assert gsm["answer"] == "18" and gsm["problem"].startswith("Janet")
  assert next(records.read("asdiv"))["answer"] == "9"                 # "9 (apples)"
  assert next(records.read("amc23"))["answer"] == "27"                # 27.0
  assert next(records.read("mawps"))["answer"] == "43"                # 43.0
  assert next(records.read("minerva_math"))["answer"] == "1.6"        # \boxed{1.6} in the solution
  sv = next(records.read("svamp"))
  assert sv["answer"] == "145" and sv["problem"].endswith("groups. How big is each group of bananas?")


def test_every_gsm8k_answer_is_the_number_after_the_marker():
  for raw, rec in zip(_lines("gsm8k/train.jsonl"), records.read("gsm8k", "train")):
    assert answers_equivalent(rec["answer"], raw["answer"].split("####")[-1].strip())


@pytest.mark.parametrize("name", sorted(records.FILES))
def test_tfds_source_equals_the_plain_reader(name, data_dir):
  for split in records.FILES[name]:
    source = data.load(name, split, data_dir=data_dir)
    expected = list(records.read(name, split))
    assert len(source) == len(expected) == len(_lines(records.FILES[name][split])) == data.SOURCES[(name, split)].rows
    assert source[:] == expected                    # same records, same (file) order
    assert source[-1] == expected[-1]
  assert (data_dir / "rl_jax_math" / name).exists()
  assert list((data_dir / "rl_jax_math" / name).rglob("*.array_record*"))


def test_synthetic_builders_match_the_tasks(data_dir):
  arith = data.load("arithmetic_2d", "test", data_dir=data_dir)
  expect = ArithmeticTask(digits=2, ops="+-*", seed=0).problems(len(arith), stream=1, index=0)
  assert [(r["problem"], r["answer"]) for r in arith] == expect
  train = data.load("arithmetic_2d", "train", data_dir=data_dir)
  assert not {r["problem"] for r in arith[:200]} >= {r["problem"] for r in train[:200]}
  cd = data.load("countdown", "test", data_dir=data_dir, limit=50)
  for r in cd:
    meta = json.loads(r["solution"])
    assert CountdownTask.prompt(meta["numbers"], meta["target"]) == r["problem"] and str(meta["target"]) == r["answer"]


def test_errors(data_dir):
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.load("gsm9k", data_dir=data_dir)
  with pytest.raises(ValueError, match="splits"):
    data.load("math500", "train", data_dir=data_dir)
  with pytest.raises(FileNotFoundError):
    list(records.read("gsm8k", "test", root=data_dir / "nowhere"))


def test_no_tensorflow_needed(data_dir):
  code = (f"import sys; from rl_jax import data; s = data.load('aime24', data_dir={str(data_dir)!r}); "
          "print(len(s), 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-2:] == ["30", "False"]
