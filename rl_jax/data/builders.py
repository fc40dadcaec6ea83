"""TensorFlow Datasets builders for rl_jax's data, stored as array_record (no TensorFlow needed).

* `RlJaxMath`: the math sets: configs gsm8k (train, test), math500, aime24, amc23, minerva_math, svamp,
  asdiv, mawps (test), read from the manual dir (the data folder: $RL_JAX_DATA_DIR, or ../shared/data
  next to a checkout) when it holds them, else downloaded once from their published sources into
  <data_dir>/downloads/rl_jax and checked (`rl_jax.data.sources`). Each split must have its published
  row count. Records are {id, problem, answer, solution} (see `rl_jax.data.records`).
* `RlJaxSynthetic`: generated tasks, configs arithmetic_1d/2d/3d (a+b, a−b, a·b) and countdown, with
  fixed seeds; train and test come from disjoint random streams.

Examples keep file order (`disable_shuffling`), so "the first N test problems" means the same thing
here as in the source files.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rl_jax.data import records, sources

_TEXT_FEATURES = {"id": tfds.features.Text(), "problem": tfds.features.Text(), "answer": tfds.features.Text(),
                  "solution": tfds.features.Text()}


class RlJaxMath(tfds.core.GeneratorBasedBuilder):
  """Math word problems and competition sets from the shared data folder (manual dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "GSM8K, MATH-500, AIME24, AMC23, Minerva, SVAMP, ASDiv, MAWPS."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{name} ({', '.join(splits)})")
                     for name, splits in records.FILES.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Optional: point manual_dir (or RL_JAX_DATA_DIR) at a data folder holding "
                                  "gsm8k/{train,test}.jsonl and eval/*.jsonl; without one the files are downloaded "
                                  "from their published sources (rl_jax.data.sources).")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_TEXT_FEATURES),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    try:
      local = pathlib.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS refuses a missing or empty manual dir; keep its path for the error message
      configured = getattr(dl_manager, "_manual_dir", None)
      local = pathlib.Path(configured) if configured else None
    cache = pathlib.Path(self.data_dir_root) / "downloads" / "rl_jax"
    name = self.builder_config.name
    return {split: self._generate_examples(sources.resolve(name, split, local, cache), split)
            for split in records.FILES[name]}

  def _generate_examples(self, root, split):
    name, n = self.builder_config.name, 0
    for n, rec in enumerate(records.read(name, split, root), start=1):
      yield n - 1, rec
    expected = sources.source(name, split).rows
    if n != expected:
      raise ValueError(f"{root / records.FILES[name][split]} has {n} rows; the published {name} {split} split "
                       f"has {expected}. Use the published file (rl_jax.data.sources) or a new dataset name.")


SYNTHETIC_SIZES = {"train": 20000, "test": 1000}
_STREAM = {"train": 0, "test": 1}


class RlJaxSynthetic(tfds.core.GeneratorBasedBuilder):
  """Generated tasks with exact verifiers (rl_jax.tasks): arithmetic and countdown."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "arithmetic_{1,2,3}d (+-*), countdown (4 numbers in [1, 25])."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"arithmetic_{d}d", description=f"{d}-digit a op b, op in +-*")
                     for d in (1, 2, 3)] + [tfds.core.BuilderConfig(name="countdown", description="countdown")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_TEXT_FEATURES),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SYNTHETIC_SIZES}

  def _generate_examples(self, split):
    from rl_jax.tasks import ArithmeticTask, CountdownTask
    n, stream, name = SYNTHETIC_SIZES[split], _STREAM[split], self.builder_config.name
    if name == "countdown":
      task = CountdownTask(seed=0)
      for i, (nums, target) in enumerate(task.problems(n, stream=stream, index=0)):
        yield i, {"id": f"{split}-{i}", "problem": task.prompt(nums, target), "answer": str(target),
                  "solution": json.dumps({"numbers": nums, "target": target})}
    else:
      task = ArithmeticTask(digits=int(name.split("_")[1][0]), ops="+-*", seed=0)
      for i, (prompt, answer) in enumerate(task.problems(n, stream=stream, index=0)):
        yield i, {"id": f"{split}-{i}", "problem": prompt, "answer": answer, "solution": ""}


del np
