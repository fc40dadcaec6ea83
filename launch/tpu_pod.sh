#!/usr/bin/env bash
# Run an rl_jax experiment on every worker of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh --name=rl-v5p --zone=us-east5-a --type=v5p-32 --version=v2-alpha-tpuv5 \
#       [--project=P] [--dry-run] -- experiments.gsm8k_smollm2 --preset=pod --objective=dapo
#
# Steps: create the TPU VM unless it exists, copy this checkout to every worker, install the
# requirements with jax[tpu], then start the module on all workers at once (--worker=all). JAX's
# multi-host runtime finds the coordinator and process ids from the TPU metadata by itself
# (jax.distributed.initialize() with no arguments; rl_jax.distributed.initialize calls it).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail
name="" zone="" type="v5p-8" version="v2-alpha-tpuv5" project="" dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --type=*) type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$name" && -n "$zone" ]] || { echo "usage: launch/tpu_pod.sh --name=N --zone=Z [--type=T] [--dry-run] -- module [--key=value ...]" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "missing the experiment module after --" >&2; exit 2; }
module="$1"; shift
args="$*"
proj=${project:+--project=$project}
here="$(cd "$(dirname "$0")/.." && pwd)"
remote_dir="rl_jax"

run() {
  if [[ $dry -eq 1 ]]; then printf '%s\n' "$*"; else eval "$@"; fi
}

tpu="gcloud compute tpus tpu-vm"
if [[ $dry -eq 1 ]] || ! $tpu describe "$name" --zone="$zone" $proj >/dev/null 2>&1; then
  run "$tpu create $name --zone=$zone --accelerator-type=$type --version=$version $proj"
fi
run "$tpu scp --recurse --zone=$zone --worker=all $proj $here/rl_jax $here/experiments $here/kernels_pallas $here/launch $here/requirements.txt $name:~/$remote_dir/"
run "$tpu ssh $name --zone=$zone --worker=all $proj --command='cd ~/$remote_dir && python3 -m pip install -q -r requirements.txt \"jax[tpu]\"'"
run "$tpu ssh $name --zone=$zone --worker=all $proj --command='cd ~/$remote_dir && RL_JAX_MULTIHOST=1 python3 -m $module $args'"
