"""Plain readers of the math datasets into one record shape: {id, problem, answer, solution}.

Each eval set in the data folder has its own columns (GSM8K `question`/`answer` ending in `#### n`,
SVAMP `Body`/`Question`/`Answer`, ASDiv `answer` like "9 (apples)", MAWPS `input`/`target`, Minerva's
answer inside `\\boxed{}` of its solution, ...). `read(name, split, root)` yields the common shape; the
TFDS builders in `rl_jax.data.builders` store exactly these records.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Iterator

from rl_jax.rewards.math import extract_boxed

# name -> {split: relative path under the data root}
FILES = {
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "math500": {"test": "eval/math500.jsonl"},
    "aime24": {"test": "eval/aime24.jsonl"},
    "amc23": {"test": "eval/amc23.jsonl"},
    "minerva_math": {"test": "eval/minerva_math.jsonl"},
    "svamp": {"test": "eval/svamp.jsonl"},
    "asdiv": {"test": "eval/asdiv.jsonl"},
    "mawps": {"test": "eval/mawps.jsonl"},
}


def default_root() -> pathlib.Path:
  """The data folder: $RL_JAX_DATA_DIR, else ../shared/data next to the repository."""
  env = os.environ.get("RL_JAX_DATA_DIR")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def format_number(x) -> str:
  """27.0 -> "27", 2.5 -> "2.5", "27" -> "27"."""
  value = float(x)
  return str(int(value)) if value.is_integer() else repr(value)


def _record(idx, problem, answer, solution="") -> dict:
  return {"id": str(idx), "problem": problem.strip(), "answer": str(answer).strip(), "solution": solution or ""}


def _normalise(name: str, i: int, row: dict) -> dict:
  if name == "gsm8k":
    return _record(i, row["question"], row["answer"].rsplit("####", 1)[1].strip().replace(",", ""), row["answer"])
  if name in ("math500", "aime24"):
    return _record(row.get("unique_id", row.get("id", i)), row["problem"], row["answer"], row.get("solution", ""))
  if name == "amc23":
    return _record(row.get("id", i), row["problem"], format_number(row["answer"]))
  if name == "minerva_math":
    answer = extract_boxed(row["solution"])
    if answer is None:
      raise ValueError(f"minerva_math row {i}: no \\boxed{{}} answer in its solution.")
    return _record(row.get("idx", i), row["problem"], answer, row["solution"])
  if name == "svamp":
    body = row["Body"].strip()
    sep = "" if body.endswith((".", "?", "!")) else "."
    return _record(row.get("ID", i), f"{body}{sep} {row['Question'].strip()}", format_number(row["Answer"]),
                   row.get("Equation", ""))
  if name == "asdiv":
    answer = re.sub(r"\s*\(.*\)\s*$", "", row["answer"]).strip()
    return _record(row.get("idx", i), f"{row['body'].strip()} {row['question'].strip()}", answer, row.get("formula", ""))
  if name == "mawps":
    return _record(row.get("idx", i), row["input"], format_number(row["target"]))
  raise KeyError(name)


def read(name: str, split: str = "test", root=None) -> Iterator[dict]:
  """Yields {id, problem, answer, solution} for each row of dataset `name`, split `split`, in file order."""
  if name not in FILES:
    raise ValueError(f"Unknown dataset {name!r}; choose from {sorted(FILES)}.")
  if split not in FILES[name]:
    raise ValueError(f"{name} has splits {sorted(FILES[name])}, not {split!r}.")
  path = pathlib.Path(root or default_root()) / FILES[name][split]
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: point RL_JAX_DATA_DIR (or root) at a data folder holding it, or "
                            f"use rl_jax.data.load, which downloads it from its published source.")
  with open(path) as f:
    for i, line in enumerate(f):
      if line.strip():
        yield _normalise(name, i, json.loads(line))
