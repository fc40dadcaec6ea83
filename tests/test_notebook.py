"""The example notebook runs top to bottom (its own cells assert what they show)."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_edit_objective_notebook_executes():
  nb = nbformat.read(ROOT / "rl_jax" / "experiments" / "edit_objective.ipynb", as_version=4)
  env_path = os.environ.get("PYTHONPATH", "")
  os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env_path}" if env_path else str(ROOT)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "checks passed" in outputs and "accuracy:" in outputs
