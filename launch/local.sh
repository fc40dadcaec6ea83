#!/usr/bin/env bash
# Run any experiment module locally: launch/local.sh <module> [--key=value ...]
#   launch/local.sh rl_jax.experiments.arithmetic_tiny --objective=dapo --rl_steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
module="${1:?usage: launch/local.sh <rl_jax.experiments.module> [--key=value ...]}"; shift
PY="${PYTHON:-.venv/bin/python}"
# glibc malloc for XLA:CPU's per-call buffers (rl_jax.machine.MALLOC_ENV: one arena, no mmap, no trimming, so a
# step's temporary buffer is not faulted in afresh on every call); a variable already set wins; RL_JAX_MALLOC_ENV=0 skips.
if [ "${RL_JAX_MALLOC_ENV:-1}" != "0" ]; then
  export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}" MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}" \
    MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-68719476736}"
fi
exec "$PY" -m "$module" "$@"
