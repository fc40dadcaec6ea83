#!/usr/bin/env bash
# Exercise the sharded code paths on one CPU: 8 fake devices, then any experiment module.
#   launch/cpu_smoke.sh rl_jax.experiments.arithmetic_tiny --rl_steps=2
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu
module="${1:-rl_jax.experiments.arithmetic_tiny}"; shift || true
exec "${PYTHON:-.venv/bin/python}" -m "$module" "$@"
