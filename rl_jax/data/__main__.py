"""python -m rl_jax.data prepare [name ...]: prepare the math sets (from the data folder or their published
sources) and check every split's row count against the published one. Exit status 1 names what failed."""

from __future__ import annotations

import sys

from rl_jax import data


def prepare(names) -> int:
  failed = 0
  for name in names:
    for split in data.FILES[name]:
      try:
        n, want = len(data.load(name, split)), data.SOURCES[(name, split)].rows
      except (data.DataUnavailableError, ValueError) as e:
        print(f"{name} {split}: {e}", file=sys.stderr)
        failed += 1
        continue
      print(f"{name} {split}: {n} rows" + ("" if n == want else f", published {want}"))
      failed += n != want
  return 1 if failed else 0


def main(argv) -> int:
  if not argv or argv[0] != "prepare" or any(n not in data.FILES for n in argv[1:]):
    print(f"usage: python -m rl_jax.data prepare [name ...]  (names: {', '.join(sorted(data.FILES))})",
          file=sys.stderr)
    return 2
  return prepare(argv[1:] or sorted(data.FILES))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
