"""TensorFlow Datasets builders for rl_jax's data, stored as array_record (no TensorFlow needed).

* `RlJaxMath`: the math sets read from a manual dir (the shared data folder): configs gsm8k (train,
  test), math500, aime24, amc23, minerva_math, svamp, asdiv, mawps (test). Records are
  {id, problem, answer, solution} (see `rl_jax.data.records`).
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

from rl_jax.data import records

_TEXT_FEATURES = {"id": tfds.features.Text(), "problem": tfds.features.Text(), "answer": tfds.features.Text(),
                  "solution": tfds.features.Text()}


class RlJaxMath(tfds.core.GeneratorBasedBuilder):
  """Math word problems and competition sets from the shared data folder (manual dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "GSM8K, MATH-500, AIME24, AMC23, Minerva, SVAMP, ASDiv, MAWPS."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{name} ({', '.join(splits)})")
                     for name, splits in records.FILES.items()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at the data folder holding gsm8k/{train,test}.jsonl and "
                                  "eval/*.jsonl (by default ../shared/data next to the repository).")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_TEXT_FEATURES),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split) for split in records.FILES[self.builder_config.name]}

  def _generate_examples(self, root, split):
    for i, rec in enumerate(records.read(self.builder_config.name, split, root)):
      yield i, rec


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
