"""Project structure: no function longer than 80 lines, and signatures are read only by rl_jax.registry."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 80


def python_files():
  for folder in ("rl_jax", "tests", "launch"):
    yield from sorted((ROOT / folder).rglob("*.py"))


def long_functions(source: str, max_lines: int = MAX_LINES) -> list:
  """(name, first line, length) of every function or method whose definition spans more than `max_lines`
  lines (decorators excluded, docstring included)."""
  return [(node.name, node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= max_lines]


def signature_calls(source: str) -> list:
  """Line numbers of `inspect.signature(...)` / `signature(...)` calls."""
  return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
          and (getattr(node.func, "attr", None) == "signature" or getattr(node.func, "id", None) == "signature")]


def test_the_checks_see_what_they_look_for():
  body = "\n".join(f"  x{i} = {i}" for i in range(79))
  assert long_functions(f"def f():\n{body}\n") == []                      # 80 lines: allowed
  method = "\n".join(f"    x{i} = {i}" for i in range(80))
  assert long_functions(f"class A:\n  def g(self):\n{method}\n") == [("g", 2, 81)]
  assert signature_calls("import inspect\ninspect.signature(f)\nfrom inspect import signature\nsignature(g)") == [2, 4]


def test_no_function_in_the_project_is_longer_than_80_lines():
  found = [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)" for path in python_files()
           for name, line, n in long_functions(path.read_text())]
  assert not found, found


def test_only_the_registry_reads_signatures():
  found = [f"{path.relative_to(ROOT)}:{line}" for path in python_files() if path != ROOT / "rl_jax" / "registry.py"
           for line in signature_calls(path.read_text())]
  assert not found, found
