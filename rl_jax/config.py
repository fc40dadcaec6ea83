"""Typed experiment configs with strict command-line overrides.

`apply_overrides(Config(), ["--lr=3e-4", "--objective=dapo"])` returns a new frozen dataclass.
Unknown keys, values that do not parse as the field's type, and values rejected by the config's
own `__post_init__` are errors raised before any compute.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from typing import Any, Sequence


def _parse(field_type: Any, text: str, name: str):
  origin = typing.get_origin(field_type)
  args = typing.get_args(field_type)
  if origin is typing.Union and type(None) in args:  # Optional[X]
    if text.lower() in ("none", "null"):
      return None
    field_type = next(a for a in args if a is not type(None))
  if field_type is bool:
    if text.lower() in ("1", "true", "yes", "on"):
      return True
    if text.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"--{name} expects a boolean (true/false), got {text!r}.")
  if field_type in (int, float, str):
    try:
      return field_type(text)
    except ValueError:
      raise ValueError(f"--{name} expects {field_type.__name__}, got {text!r}.") from None
  if typing.get_origin(field_type) is tuple or field_type is tuple:
    inner = (typing.get_args(field_type) or (str,))[0]
    return tuple(_parse(inner, part, name) for part in text.split(",") if part)
  raise ValueError(f"--{name}: cannot parse a value of type {field_type!r} from the command line.")


def apply_overrides(config, argv: Sequence[str]):
  """Returns `config` with `--key=value` overrides applied (strictly typed)."""
  hints = typing.get_type_hints(type(config))
  fields = {f.name for f in dataclasses.fields(config)}
  changes = {}
  for arg in argv:
    if not arg.startswith("--") or "=" not in arg:
      raise ValueError(f"Overrides look like --key=value, got {arg!r}.")
    key, text = arg[2:].split("=", 1)
    key = key.replace("-", "_")
    if key not in fields:
      raise ValueError(f"Unknown config key {key!r}; valid keys: {sorted(fields)}.")
    changes[key] = _parse(hints[key], text, key)
  return dataclasses.replace(config, **changes)


def usage(config, doc: str = "") -> str:
  """`doc`, then one line per field of `config`: `--name=value` (its current value) and the comment that
  follows the field in the class source, if any."""
  comments = {}
  try:
    for line in inspect.getsource(type(config)).splitlines():
      m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)", line)
      if m:
        comments[m.group(1)] = m.group(2).strip()
  except (OSError, TypeError):   # no source (e.g. a class built at run time): names and values only
    pass
  lines = [doc.strip(), "", "Options (--key=value; the value shown is the default):"] if doc.strip() else [
      "Options (--key=value; the value shown is the default):"]
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    lines.append(f"  --{f.name}={text}" + (f"    {comments[f.name]}" if f.name in comments else ""))
  return "\n".join(lines)


def from_command_line(config, argv: Sequence[str], doc: str = ""):
  """`apply_overrides(config, argv)`; with --help or -h in argv, prints `usage(config, doc)` and exits
  (status 0) before anything runs."""
  if "--help" in argv or "-h" in argv:
    print(usage(config, doc))
    sys.exit(0)
  return apply_overrides(config, argv)


def to_dict(config) -> dict:
  return dataclasses.asdict(config)
