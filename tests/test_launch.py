"""Launch scripts: their --dry-run output, their control flow against fake gcloud/srun, shellcheck."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/tpu_vm.sh", "launch/slurm_gpu.sbatch", "launch/local_gpus.sh", "launch/lib.sh"]
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/calls"
case "$*" in
  *" describe "*"--format="*) echo 2 ;;
  *" describe "*) exit 1 ;;
  *"--worker=0 --command=cd"*) echo "worker 0 fails"; exit 3 ;;
  *"--worker=1 --command=cd"*) while [ ! -e "$FAKE_DIR/stopped" ]; do sleep 0.05; done; exit 143 ;;
  *"--command=kill"*) touch "$FAKE_DIR/stopped" ;;
esac
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
for id in 0 1; do SLURM_PROCID=$id SLURM_LOCALID=$id "$@"; done
"""
FAKE_PYTHON = """#!/usr/bin/env bash
echo "gpu=${CUDA_VISIBLE_DEVICES:-all} $*"
"""


def sh(
    script: str, *args: str, env: dict[str, str] | None = None, cwd: pathlib.Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a launch script with bash; its stdout and stderr as text."""
    clean = {k: v for k, v in os.environ.items() if k != "BUCKET"}  # defaults must not depend on the caller
    env = {**clean, "USER": "alice", **(env or {})}
    return subprocess.run(
        ["bash", str(ROOT / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=check,
        timeout=60,
    )


def fake_bin(tmp_path: pathlib.Path, **scripts: str) -> dict[str, str]:
    """Executables named after the keywords, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path)}


def test_tpu_dry_run_defaults():
    lines = sh("launch/tpu_vm.sh", "--dry-run", env={"TMPDIR": "/tmp"}).stdout.splitlines()
    ssh = "gcloud compute tpus tpu-vm ssh resnet-jax-alice --zone=us-central2-b --strict-host-key-checking=no"
    assert lines[0] == (
        "gcloud compute tpus tpu-vm create resnet-jax-alice --zone=us-central2-b "
        "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base"
    )
    assert (
        lines[1] == f"git -C {ROOT} archive --format=tar.gz -o /tmp/resnet_jax-resnet-jax-alice.tar.gz HEAD"
    )
    assert lines[2] == (
        "gcloud compute tpus tpu-vm scp /tmp/resnet_jax-resnet-jax-alice.tar.gz "
        "resnet-jax-alice:resnet_jax.tar.gz --zone=us-central2-b --worker=all"
    )
    assert (
        lines[3].startswith(f"{ssh} --worker=all '--command=command -v python3.11")
        and "jax[tpu]==0.10.2" in lines[3]
    )
    assert lines[6] == (
        f"{ssh} --worker=0 '--command=cd ~/resnet_jax && echo $$ > /tmp/resnet_jax.pid && exec "
        "~/resnet_jax_venv/bin/python -m resnet_jax.main --config=configs/imagenet_r50.py "
        "--workdir=gs://BUCKET/resnet_jax/imagenet_r50' > logs/resnet-jax-alice/worker-0.log 2>&1 &"
    )
    assert lines[-2] == f"{ssh} --worker=all '--command=kill $(cat /tmp/resnet_jax.pid) 2>/dev/null || true'"
    assert lines[-1] == "gcloud compute tpus tpu-vm delete resnet-jax-alice --zone=us-central2-b --quiet"


def test_default_workdirs_keep_the_config_argument_apart():
    """configs/imagenet_r34.py:C and :A (or no argument) must not share a run folder."""
    tpu = sh(
        "launch/tpu_vm.sh", "--dry-run", "--config=configs/imagenet_r34.py:C", env={"TMPDIR": "/tmp"}
    ).stdout
    assert "--workdir=gs://BUCKET/resnet_jax/imagenet_r34-C'" in tpu
    gpus = sh("launch/local_gpus.sh", "--dry-run", "--config=configs/imagenet_r50.py:batch=1024,smoke").stdout
    assert "--workdir=runs/imagenet_r50-batch-1024-smoke " in gpus


def test_tpu_dry_run_pod_slice_runs_every_worker():
    out = sh(
        "launch/tpu_vm.sh",
        "--dry-run",
        "--accelerator-type=v5litepod-32",
        "--name=pod",
        "--keep",
        "--config=configs/imagenet_r50.py:batch=4096",
        "--workdir=gs://b/r50",
        "--spot",
        "--project=p",
        "--",
        "--config.data.tfds_dir=gs://b/tfds",
    ).stdout
    assert (
        "--zone=us-central2-b --project=p --accelerator-type=v5litepod-32 "
        "--version=v2-alpha-tpuv5-lite --spot" in out
    )
    assert [f"--worker={i} " in out for i in range(9)] == [True] * 8 + [False]
    assert (
        "--config=configs/imagenet_r50.py:batch=4096 --workdir=gs://b/r50 --config.data.tfds_dir=gs://b/tfds'"
        in out
    )
    assert " delete " not in out


def test_tpu_stops_all_workers_at_the_first_failure_and_deletes(tmp_path):
    env = fake_bin(tmp_path, gcloud=FAKE_GCLOUD) | {"TMPDIR": str(tmp_path), "BUCKET": "bkt"}
    result = sh("launch/tpu_vm.sh", "--name=t", env=env, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[1].startswith("compute tpus tpu-vm create t ")
    # The two workers' ssh calls start concurrently: their order in the log is not fixed.
    train = [i for i, c in enumerate(calls) if "--command=cd ~/resnet_jax" in c]
    kill = [i for i, c in enumerate(calls) if "--worker=all --command=kill" in c]
    assert len(train) == 2 and len(kill) == 1 and min(train) < kill[0]
    assert all("--workdir=gs://bkt/resnet_jax/imagenet_r50" in calls[i] for i in train)
    assert calls[-1] == "compute tpus tpu-vm delete t --zone=us-central2-b --quiet"
    assert (tmp_path / "logs/t/worker-0.log").read_text() == "worker 0 fails\n"
    assert (tmp_path / "logs/t/worker-1.log").exists()


def test_tpu_real_run_needs_a_shared_workdir(tmp_path):
    result = sh("launch/tpu_vm.sh", env=fake_bin(tmp_path, gcloud=FAKE_GCLOUD), check=False)
    assert result.returncode == 2 and "--workdir=gs://" in result.stderr


def test_slurm_dry_run_defaults():
    lines = sh("launch/slurm_gpu.sbatch", "--dry-run").stdout.splitlines()
    assert (
        lines[0] == "# outside a Slurm job; submit with: "
        "sbatch launch/slurm_gpu.sbatch --config=configs/imagenet_r50.py"
    )
    assert lines[1].startswith("srun --kill-on-bad-exit=1 --ntasks=16 bash -c ")
    assert lines[1].endswith(
        f"resnet_jax python3 -m resnet_jax.main --config=configs/imagenet_r50.py "
        f"--workdir={ROOT}/runs/imagenet_r50 '--coordinator_address=<first node of the job>:12355' "
        "--num_processes=16"
    )


def test_slurm_job_starts_one_process_per_gpu(tmp_path):
    env = fake_bin(
        tmp_path, srun=FAKE_SRUN, scontrol="#!/bin/sh\necho nodeA\necho nodeB\n", python=FAKE_PYTHON
    )
    env |= {
        "SLURM_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node[A-B]",
        "PYTHON": "python",
    }
    out = sh(
        "launch/slurm_gpu.sbatch", "--config=configs/cifar10.py:resnet56", "--", "--config.seed=1", env=env
    ).stdout.splitlines()
    common = (
        f"-m resnet_jax.main --config=configs/cifar10.py:resnet56 --workdir={ROOT}/runs/cifar10-resnet56 "
        "--coordinator_address=nodeA:12355 --num_processes=2 --config.seed=1"
    )
    assert out[1:] == [f"gpu=0 {common} --process_id=0", f"gpu=1 {common} --process_id=1"]


def test_local_gpus_dry_run_and_run(tmp_path):
    assert sh("launch/local_gpus.sh", "--dry-run").stdout == (
        "python3 -m resnet_jax.main --config=configs/imagenet_r50.py --workdir=runs/imagenet_r50 "
        "2>&1 | tee -a runs/imagenet_r50/train.log\n"
    )
    env = fake_bin(tmp_path, python=FAKE_PYTHON) | {"PYTHON": "python"}
    out = sh(
        "launch/local_gpus.sh", "--gpus=0,1", f"--workdir={tmp_path}/wd", "--", "--config.seed=2", env=env
    ).stdout
    assert out.splitlines()[1] == (
        f"gpu=0,1 -m resnet_jax.main --config=configs/imagenet_r50.py --workdir={tmp_path}/wd --config.seed=2"
    )
    assert (tmp_path / "wd" / "train.log").read_text() == out.splitlines()[1] + "\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it where apt-get is available)")
    result = subprocess.run(["shellcheck", str(ROOT / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
