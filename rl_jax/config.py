"""Typed experiment configs with strict command-line overrides.

`apply_overrides(Config(), ["--lr=3e-4", "--objective=dapo"])` returns a new frozen dataclass.
Unknown keys, values that do not parse as the field's type, values outside their declared domain
(`check`) and values rejected by the config's own `__post_init__` are errors raised before any compute.

Domains: every float field (also inside Optional and tuple fields) must be finite; a config class may
declare more in a class attribute `BOUNDS: ClassVar[dict]` mapping a field name to an interval such as
"(0, inf)", "[0, 1]", "[1, inf)" or to a tuple of allowed values. A config calls `check(self)` in its
`__post_init__` so that direct construction is checked too.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
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


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, UNIT = "(0, inf)", "[0, inf)", "[1, inf)", "(0, 1]"   # common BOUNDS
_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])\s*$")


def in_interval(value, interval: str) -> bool:
  """Whether a number lies in an interval written "(lo, hi]" etc. ("inf" and "-inf" allowed)."""
  m = _INTERVAL.match(interval)
  if not m:
    raise ValueError(f"Bad interval {interval!r}; write e.g. '(0, inf)' or '[0, 1]'.")
  lo, hi = float(m.group(2)), float(m.group(3))
  above = value > lo if m.group(1) == "(" else value >= lo
  below = value < hi if m.group(4) == ")" else value <= hi
  return above and below


def _values(value):
  return value if isinstance(value, tuple) else (value,)


def check(config) -> None:
  """Raises a ValueError naming the key of the first field outside its domain (see the module docstring):
  a float that is NaN or infinite, a number outside its `BOUNDS` interval, a value not among its choices."""
  bounds = getattr(type(config), "BOUNDS", {})
  unknown = set(bounds) - {f.name for f in dataclasses.fields(config)}
  if unknown:
    raise ValueError(f"{type(config).__name__}.BOUNDS names no field: {sorted(unknown)}.")
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    for v in _values(value):
      if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"--{f.name} must be a finite number, got {value!r}.")
    domain = bounds.get(f.name)
    if domain is None or value is None:
      continue
    if isinstance(domain, str):
      bad = [v for v in _values(value) if isinstance(v, bool) or not isinstance(v, (int, float)) or
             not in_interval(v, domain)]
      if bad:
        raise ValueError(f"--{f.name} must be in {domain}, got {value!r}.")
    elif any(v not in domain for v in _values(value)):
      raise ValueError(f"--{f.name} must be one of {sorted(map(str, domain))}, got {value!r}.")


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
  out = dataclasses.replace(config, **changes)
  check(out)
  return out


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
