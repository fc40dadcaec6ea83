#!/usr/bin/env bash
# Run an rl_jax experiment on every worker of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh --name=rl-v5p --zone=us-east5-a --type=v5p-64 [--version=v2-alpha-tpuv5] \
#       [--project=P] [--skip-install] [--data=DIR] [--dry-run] -- rl_jax.experiments.gsm8k_smollm2 --preset=pod \
#       --model=qwen2.5-math-7b --hf_folder=PATH
#
# Steps: create the TPU VM unless it already exists (describe || create), copy this checkout to
# every worker, install it with its tpu extra at the versions of constraints.txt, put the data on
# every worker (--data=DIR copies a local data folder there and points RL_JAX_DATA_DIR at it; without
# it every worker downloads and checks the sets with `python3 -m rl_jax.data prepare`, so a missing or
# corrupt set stops the launch before training), then start the module on all workers at
# once (--worker=all) with RL_JAX_MULTIHOST=1. JAX's multi-host runtime finds the coordinator,
# process count and process ids from the TPU metadata by itself: rl_jax.distributed.initialize()
# calls jax.distributed.initialize() with no arguments. Every worker must run the same program.
# --dry-run prints the command sequence instead of running it.
set -euo pipefail
name="" zone="" type="v5p-8" version="v2-alpha-tpuv5" project="" dry=0 install=1 data="" aot=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --type=*) type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --skip-install) install=0 ;;
    --data=*) data="${1#*=}" ;;
    --dry-run) dry=1 ;;
    --no-aot-check) aot=0 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$name" && -n "$zone" ]] || {
  echo "usage: launch/tpu_pod.sh --name=N --zone=Z [--type=T] [--project=P] [--skip-install] [--data=DIR] [--dry-run] [--no-aot-check] -- module [--key=value ...]" >&2
  exit 2
}
[[ $# -gt 0 ]] || { echo "missing the experiment module after --" >&2; exit 2; }
module="$1"; shift
args=""
for a in "$@"; do
  [[ "$a" != *"'"* ]] || { echo "experiment arguments may not contain single quotes: $a" >&2; exit 2; }
  args+=" $a"
done
proj=${project:+ --project=$project}
here="$(cd "$(dirname "$0")/.." && pwd)"
remote_dir="rl_jax"
tpu="gcloud compute tpus tpu-vm"
on_all="--zone=$zone --worker=all$proj"

run() {
  if [[ $dry -eq 1 ]]; then printf '%s\n' "$1"; else bash -c "$1"; fi
}

# Before anything is created: compile the run for the requested slice on this host (rl_jax.aot, libtpu
# deviceless; the module must accept --aot=TOPOLOGY --aot_json=PATH) and refuse a run that does not fit.
if [[ $aot -eq 1 ]]; then
  report="$(mktemp -d)/aot.json"
  echo "AOT check: ${RL_JAX_PYTHON:-python3} -m $module$args --aot=$type --aot_json=$report" >&2
  (cd "$here" && ${RL_JAX_PYTHON:-python3} -m $module$args --aot="$type" --aot_json="$report" >&2) || {
    echo "refused: the AOT check of $module for $type failed (see above)" >&2; exit 3; }
  fits=$(${RL_JAX_PYTHON:-python3} -c 'import json, sys; print(json.load(open(sys.argv[1]))["fits"] is True)' "$report")
  [[ "$fits" == "True" ]] || { echo "refused: $module does not fit $type (per-chip memory in $report)" >&2; exit 3; }
fi

run "$tpu describe $name --zone=$zone$proj >/dev/null 2>&1 || $tpu create $name --zone=$zone --accelerator-type=$type --version=$version$proj"
run "$tpu ssh $name $on_all --command='mkdir -p ~/$remote_dir'"
code="$here/rl_jax $here/launch $here/pyproject.toml $here/constraints.txt"
code+=" $here/README.md $here/LICENSE $here/DATA_LICENSES.md"
run "$tpu scp --recurse $on_all $code $name:~/$remote_dir/"
if [[ $install -eq 1 ]]; then
  run "$tpu ssh $name $on_all --command='cd ~/$remote_dir && python3 -m pip install -q -c constraints.txt \".[tpu]\"'"
fi
if [[ -n "$data" ]]; then
  [[ -d "$data" ]] || { echo "--data=$data is not a folder" >&2; exit 2; }
  run "$tpu scp --recurse $on_all $data $name:~/rl_jax_data"
  envs="RL_JAX_DATA_DIR=~/rl_jax_data "
else
  run "$tpu ssh $name $on_all --command='cd ~/$remote_dir && python3 -m rl_jax.data prepare'"
  envs=""
fi
run "$tpu ssh $name $on_all --command='cd ~/$remote_dir && ${envs}RL_JAX_MULTIHOST=1 PYTHONUNBUFFERED=1 python3 -m $module$args'"
