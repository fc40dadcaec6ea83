"""Launch scripts: the TPU pod dry run prints a correct command sequence; bad input is refused."""

import pathlib
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
POD = ["bash", str(ROOT / "launch/tpu_pod.sh")]


def dry_run(*extra):
  return subprocess.run(POD + ["--name=rl-v5p", "--zone=us-east5-a", "--type=v5p-64", "--project=proj", "--dry-run",
                               "--no-aot-check", *extra, "--", "rl_jax.experiments.gsm8k_smollm2", "--preset=pod",
                               "--model=qwen2.5-math-7b"], capture_output=True, text=True, check=True).stdout.splitlines()


def test_tpu_pod_dry_run_prints_the_command_sequence():
  out = dry_run()
  assert len(out) == 6
  create, mkdir, scp, install, prepare, start = out
  # Create or reuse: describe first, create only when it fails.
  assert create.startswith("gcloud compute tpus tpu-vm describe rl-v5p --zone=us-east5-a --project=proj")
  assert "|| gcloud compute tpus tpu-vm create rl-v5p --zone=us-east5-a --accelerator-type=v5p-64" in create
  assert "--version=v2-alpha-tpuv5 --project=proj" in create
  assert prepare.endswith("--command='cd ~/rl_jax && python3 -m rl_jax.data prepare'")   # data on every worker
  for line in (mkdir, scp, install, prepare, start):
    assert "--worker=all" in line and "--project=proj" in line and "--zone=us-east5-a" in line
  assert "mkdir -p ~/rl_jax" in mkdir
  assert scp.startswith("gcloud compute tpus tpu-vm scp --recurse") and scp.endswith("rl-v5p:~/rl_jax/")
  for path in ("rl_jax", "pyproject.toml", "constraints.txt", "LICENSE"):
    assert f"{ROOT}/{path}" in scp and (ROOT / path).exists()
  assert "pip install" in install and '".[tpu]"' in install and "-c constraints.txt" in install
  assert start.startswith("gcloud compute tpus tpu-vm ssh rl-v5p")
  command = shlex.split(start)[-1]  # what every worker runs
  assert command.startswith("--command=cd ~/rl_jax && ")
  assert "RL_JAX_MULTIHOST=1" in command
  assert command.endswith("python3 -m rl_jax.experiments.gsm8k_smollm2 --preset=pod --model=qwen2.5-math-7b")


def test_tpu_pod_copies_a_data_folder_to_every_worker(tmp_path):
  out = dry_run(f"--data={tmp_path}")
  assert len(out) == 6 and not any("rl_jax.data prepare" in line for line in out)
  copy, start = out[4], out[5]
  assert copy.startswith("gcloud compute tpus tpu-vm scp --recurse") and "--worker=all" in copy
  assert f" {tmp_path} rl-v5p:~/rl_jax_data" in copy
  assert "RL_JAX_DATA_DIR=~/rl_jax_data RL_JAX_MULTIHOST=1" in shlex.split(start)[-1]
  r = subprocess.run(POD + ["--name=a", "--zone=z", "--dry-run", "--no-aot-check", f"--data={tmp_path}/none", "--", "m"],
                     capture_output=True, text=True)
  assert r.returncode == 2 and "is not a folder" in r.stderr


def test_tpu_pod_skip_install_and_no_project():
  out = subprocess.run(POD + ["--name=a", "--zone=z", "--dry-run", "--no-aot-check", "--skip-install", "--", "m"], capture_output=True,
                       text=True, check=True).stdout.splitlines()
  assert len(out) == 5 and not any("pip install" in line for line in out)
  assert not any("--project" in line for line in out)
  assert "--accelerator-type=v5p-8" in out[0]  # default slice


def test_tpu_pod_refuses_bad_input():
  r = subprocess.run(POD + ["--dry-run"], capture_output=True, text=True)
  assert r.returncode == 2 and "usage" in r.stderr
  r = subprocess.run(POD + ["--name=a", "--zone=b", "--dry-run"], capture_output=True, text=True)
  assert r.returncode == 2 and "missing the experiment module" in r.stderr
  r = subprocess.run(POD + ["--name=a", "--zone=b", "--bogus"], capture_output=True, text=True)
  assert r.returncode == 2 and "unknown option" in r.stderr


def test_local_sh_needs_a_module():
  r = subprocess.run(["bash", str(ROOT / "launch/local.sh")], capture_output=True, text=True)
  assert r.returncode != 0 and "usage" in r.stderr


def test_local_sh_exports_the_malloc_env_of_rl_jax_machine(tmp_path):
  """local.sh sets rl_jax.machine.MALLOC_ENV (same values), keeps a value already set, and RL_JAX_MALLOC_ENV=0
  leaves all of it unset; a stand-in python prints what it was started with."""
  import os

  from rl_jax.machine import MALLOC_ENV, MALLOC_SWITCH

  fake = tmp_path / "python"
  fake.write_text("#!/usr/bin/env bash\n" + "".join(f'echo "{k}=${{{k}-unset}}"\n' for k in MALLOC_ENV) + 'echo "$*"\n')
  fake.chmod(0o755)
  base = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != MALLOC_SWITCH}
  run = lambda **env: subprocess.run(["bash", str(ROOT / "launch/local.sh"), "some.module", "--x=1"],
                                     env={**base, "PYTHON": str(fake), **env}, capture_output=True, text=True,
                                     check=True).stdout.split()
  assert run() == [f"{k}={v}" for k, v in MALLOC_ENV.items()] + ["-m", "some.module", "--x=1"]
  assert run(MALLOC_ARENA_MAX="8")[0] == "MALLOC_ARENA_MAX=8"
  assert run(**{MALLOC_SWITCH: "0"})[:len(MALLOC_ENV)] == [f"{k}=unset" for k in MALLOC_ENV]


def test_tpu_pod_runs_the_commands_and_reuses_an_existing_vm(tmp_path):
  """Without --dry-run, a stand-in gcloud on PATH records the calls: create only when describe fails."""
  log = tmp_path / "calls.txt"
  fake = tmp_path / "gcloud"
  fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[[ "$4" != describe ]] || exit "${{DESCRIBE_RC:-0}}"\n')
  fake.chmod(0o755)
  for rc, creates in (("0", False), ("1", True)):
    log.write_text("")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DESCRIBE_RC": rc}
    subprocess.run(POD + ["--name=a", "--zone=z", "--skip-install", "--no-aot-check", "--", "m", "--k=v"], env=env, check=True)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm describe a")
    assert any(c.startswith("compute tpus tpu-vm create a") for c in calls) == creates
    assert calls[-1].endswith("--command=cd ~/rl_jax && RL_JAX_MULTIHOST=1 PYTHONUNBUFFERED=1 python3 -m m --k=v")
    assert len(calls) == 5 + creates   # describe [create] mkdir scp prepare start


def test_tpu_pod_runs_the_aot_check_first_and_refuses_a_run_that_does_not_fit(tmp_path):
  """A stand-in experiment writes the AOT report: fits → the command sequence; not fits or a crash → exit 3
  before any gcloud command."""
  (tmp_path / "stand_in.py").write_text(
      "import json, sys\n"
      "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
      "assert args['aot'] == 'v5p-64', args\n"
      "if args.get('crash'): sys.exit(1)\n"
      "json.dump({'fits': args['fits'] == 'yes'}, open(args['aot_json'], 'w'))\n")
  env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
  base = POD + ["--name=a", "--zone=z", "--type=v5p-64", "--dry-run", "--", "stand_in"]
  ok = subprocess.run(base + ["--fits=yes"], capture_output=True, text=True, env=env)
  assert ok.returncode == 0 and ok.stdout.startswith("gcloud compute tpus tpu-vm describe a")
  assert "AOT check" in ok.stderr and "--aot=v5p-64" in ok.stderr
  for extra, why in ((["--fits=no"], "does not fit v5p-64"), (["--fits=yes", "--crash=1"], "AOT check of stand_in")):
    r = subprocess.run(base + extra, capture_output=True, text=True, env=env)
    assert r.returncode == 3 and r.stdout == "" and why in r.stderr
