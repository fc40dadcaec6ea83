#!/usr/bin/env bash
# Run any experiment module locally: launch/local.sh <module> [--key=value ...]
#   launch/local.sh rl_jax.experiments.arithmetic_tiny --objective=dapo --rl_steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
module="${1:?usage: launch/local.sh <rl_jax.experiments.module> [--key=value ...]}"; shift
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" -m "$module" "$@"
