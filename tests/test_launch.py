"""Launch scripts: the TPU pod dry run prints a correct command sequence; local.sh validates its input."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tpu_pod_dry_run_prints_the_command_sequence():
  out = subprocess.run(["bash", str(ROOT / "launch/tpu_pod.sh"), "--name=rl-v5p", "--zone=us-east5-a",
                        "--type=v5p-32", "--project=proj", "--dry-run", "--", "experiments.arithmetic_tiny",
                        "--objective=dapo"], capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 4
  assert out[0].startswith("gcloud compute tpus tpu-vm create rl-v5p --zone=us-east5-a --accelerator-type=v5p-32")
  assert "--project=proj" in out[0]
  assert out[1].startswith("gcloud compute tpus tpu-vm scp --recurse") and "--worker=all" in out[1]
  assert "pip install" in out[2] and "jax[tpu]" in out[2] and "--worker=all" in out[2]
  assert "--worker=all" in out[3] and "python3 -m experiments.arithmetic_tiny --objective=dapo" in out[3]
  assert "RL_JAX_MULTIHOST=1" in out[3]


def test_tpu_pod_requires_name_zone_and_module():
  r = subprocess.run(["bash", str(ROOT / "launch/tpu_pod.sh"), "--dry-run"], capture_output=True, text=True)
  assert r.returncode == 2 and "usage" in r.stderr
  r = subprocess.run(["bash", str(ROOT / "launch/tpu_pod.sh"), "--name=a", "--zone=b", "--dry-run"],
                     capture_output=True, text=True)
  assert r.returncode == 2 and "missing the experiment module" in r.stderr


def test_local_sh_needs_a_module():
  r = subprocess.run(["bash", str(ROOT / "launch/local.sh")], capture_output=True, text=True)
  assert r.returncode != 0 and "usage" in r.stderr
