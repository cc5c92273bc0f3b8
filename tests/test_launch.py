"""Launch scripts and manifests: --help, --dry-run output in current gcloud syntax, their control flow
against stand-ins for gcloud/srun/scontrol (preemption, failures, signals), the GKE JobSets, shellcheck,
and every command of docs/launch.md."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from gcloud_syntax import errors as gcloud_errors
from gcloud_syntax import line_errors
from helpers import popen_as_in_a_terminal

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/tpu_vm.sh", "launch/slurm_gpu.sbatch", "launch/local_gpus.sh", "launch/lib.sh"]
TRAIN = "python3 -m resnet_jax.main --config=configs/imagenet_r50.py"
FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_DIR/calls"
while [[ $1 == --* ]]; do shift; done
for id in 0 1; do SLURM_PROCID=$id SLURM_LOCALID=$id "$@"; done
"""
STATE = "value(state.state)"
PYTHON_C = f'#!/usr/bin/env bash\n[ "$1" = -c ] && exec {sys.executable} "$@"\n'  # python -c runs for real
FAKE_RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_DIR/calls"\n'
FAKE_PYTHON = """#!/usr/bin/env bash
echo "gpu=${CUDA_VISIBLE_DEVICES:-all} $*"
"""


def sh(
    script: str, *args: str, env: dict[str, str] | None = None, cwd: pathlib.Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a launch script with bash; its stdout and stderr as text."""
    clean = {k: v for k, v in os.environ.items() if k != "BUCKET" and not k.startswith("SLURM")}
    env = {**clean, "USER": "alice", "TMPDIR": "/tmp", **(env or {})}
    return subprocess.run(
        ["bash", str(ROOT / script), *args], capture_output=True, text=True, env=env, cwd=cwd, check=check,
        timeout=60,
    )  # fmt: skip


def fake_bin(tmp_path: pathlib.Path, **scripts: str) -> dict[str, str]:
    """Executables named after the keywords, first on PATH; gcloud is tests/fake_gcloud.py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts.setdefault("gcloud", f'#!/bin/sh\nexec {sys.executable} {ROOT}/tests/fake_gcloud.py "$@"\n')
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path), "TPU_POLL_SECONDS": "0"}


def gcloud_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("gcloud ")]


# --- tpu_vm.sh --------------------------------------------------------------------------------------


def test_tpu_dry_run_defaults():
    lines = sh("launch/tpu_vm.sh", "--dry-run").stdout.splitlines()
    where = "--zone=us-central2-b"
    ssh = f"gcloud compute tpus tpu-vm ssh resnet-jax-alice {where} --strict-host-key-checking=no"
    assert lines[0] == (
        f"gcloud compute tpus queued-resources create resnet-jax-alice {where} --accelerator-type=v4-8 "
        "--runtime-version=tpu-ubuntu2204-base --node-id=resnet-jax-alice"
    )
    assert (
        lines[1]
        == f"gcloud compute tpus queued-resources describe resnet-jax-alice {where} '--format={STATE}'"
    )
    assert (
        lines[3] == f"git -C {ROOT} archive --format=tar.gz -o /tmp/resnet_jax-resnet-jax-alice.tar.gz HEAD"
    )
    assert lines[4] == (
        "gcloud compute tpus tpu-vm scp /tmp/resnet_jax-resnet-jax-alice.tar.gz "
        f"resnet-jax-alice:resnet_jax.tar.gz {where} --worker=all"
    )
    assert lines[5].startswith(f"{ssh} --worker=all '--command=command -v python3.11")
    assert "'\\''jax[tpu]==0.10.2'\\''" in lines[5]
    assert lines[8] == (
        f"{ssh} --worker=0 '--command=cd ~/resnet_jax && echo $$ > /tmp/resnet_jax.pid && exec "
        "~/resnet_jax_venv/bin/python -m resnet_jax.main --config=configs/imagenet_r50.py "
        "--workdir=gs://BUCKET/resnet_jax/imagenet_r50' > logs/resnet-jax-alice/worker-0.log 2>&1 &"
    )
    assert lines[-2] == f"{ssh} --worker=all '--command=kill $(cat /tmp/resnet_jax.pid) 2>/dev/null || true'"
    assert (
        lines[-1] == f"gcloud compute tpus queued-resources delete resnet-jax-alice {where} --force --quiet"
    )


@pytest.mark.parametrize(
    "accelerator,zone,runtime,hosts",
    [
        ("v4-32", "us-central2-b", "tpu-ubuntu2204-base", 4),  # v4 counts TensorCores: 16 chips, 4 a host
        ("v5litepod-16", "us-west4-a", "v2-alpha-tpuv5-lite", 4),  # v5e counts chips: 4 a host
        ("v5p-32", "us-east5-a", "v2-alpha-tpuv5", 4),
        ("v6e-16", "us-east1-d", "v2-alpha-tpuv6e", 4),
        ("v6e-8", "us-east1-d", "v2-alpha-tpuv6e", 1),  # one host of 8 chips
    ],
)
def test_tpu_dry_run_requests_each_generation_as_a_queued_resource(accelerator, zone, runtime, hosts):
    out = sh(
        "launch/tpu_vm.sh", "--dry-run", f"--accelerator-type={accelerator}", f"--zone={zone}", "--name=r",
        "--spot", "--project=p", "--config=configs/imagenet_r50.py:batch=4096", "--workdir=gs://b/r50", "--",
        "--config.data.tfds_dir=gs://b/tfds",
    ).stdout  # fmt: skip
    assert (
        f"gcloud compute tpus queued-resources create r --zone={zone} --project=p "
        f"--accelerator-type={accelerator} --runtime-version={runtime} --node-id=r --spot\n" in out
    )
    starts = [line for line in out.splitlines() if "--command=cd ~/resnet_jax" in line]
    assert [f"--worker={i} " in s and f"worker-{i}.log" in s for i, s in enumerate(starts)] == [True] * hosts
    assert all(
        "--config=configs/imagenet_r50.py:batch=4096 --workdir=gs://b/r50 --config.data.tfds_dir=gs://b/tfds'"
        in s
        for s in starts
    )
    assert [e for line in gcloud_lines(out) for e in line_errors(line)] == []


def test_tpu_dry_run_multislice_requests_n_slices_and_runs_every_worker_of_each():
    out = sh(
        "launch/tpu_vm.sh", "--dry-run", "--num-slices=2", "--accelerator-type=v5p-16", "--name=ms",
        "--reserved", "--keep",
    ).stdout  # fmt: skip
    assert (
        "gcloud compute tpus queued-resources create ms --zone=us-central2-b --accelerator-type=v5p-16 "
        "--runtime-version=v2-alpha-tpuv5 --node-count=2 --node-prefix=ms --reserved\n" in out
    )
    for node in ("ms-0", "ms-1"):  # shipped to and installed on each slice
        assert f"tpu-vm scp /tmp/resnet_jax-ms.tar.gz {node}:resnet_jax.tar.gz" in out
        assert (
            f"tpu-vm ssh {node} --zone=us-central2-b --strict-host-key-checking=no --worker=all "
            "'--command=command" in out
        )
    starts = [
        re.search(r"ssh (\S+) .*--worker=(\d) .*worker-(\d)\.log", s)
        for s in out.splitlines()
        if "=cd ~" in s
    ]
    # worker-<k>.log: k = jax's process index = slice x 2 workers per slice + worker
    assert [m.groups() for m in starts] == [
        ("ms-0", "0", "0"),
        ("ms-0", "1", "1"),
        ("ms-1", "0", "2"),
        ("ms-1", "1", "3"),
    ]
    assert " delete " not in out and [e for line in gcloud_lines(out) for e in line_errors(line)] == []


def test_tpu_dry_run_watch_prints_the_loop_that_requests_a_preempted_slice_again():
    out = sh("launch/tpu_vm.sh", "--dry-run", "--spot", "--watch", "--name=w").stdout.splitlines()
    at = out.index("# --watch: until worker 0 prints 'done' (at most 20 restarts): when the workers end,")
    assert (
        out[at + 1]
        == f"gcloud compute tpus queued-resources describe w --zone=us-central2-b '--format={STATE}'"
    )
    assert out[at + 3] == "gcloud compute tpus queued-resources delete w --zone=us-central2-b --force --quiet"
    assert out[at + 4] == out[0] and out[0].endswith("--node-id=w --spot")  # the same request again
    assert [e for line in out if line.startswith("gcloud ") for e in line_errors(line)] == []


def test_the_gcloud_syntax_check_rejects_what_current_gcloud_rejects():
    create = ["compute", "tpus", "queued-resources", "create", "q", "--zone=z", "--accelerator-type=v4-8"]
    assert gcloud_errors([*create, "--runtime-version=v", "--node-id=q"]) == []
    assert gcloud_errors([*create, "--version=v", "--node-id=q"]) == [
        "compute tpus queued-resources create has no flag --version",
        "compute tpus queued-resources create needs --runtime-version",
    ]
    assert "compute tpus queued-resources create has no flag --best-effort" in gcloud_errors(
        [*create, "--runtime-version=v", "--node-id=q", "--best-effort"]  # alpha only
    )
    assert gcloud_errors([*create, "--runtime-version=v", "--node-count=2"]) == [
        "['--node-count', '--node-prefix'] go together"
    ]
    assert gcloud_errors([*create, "--runtime-version=v", "--node-id=q", "--spot", "--reserved"]) == [
        "only one of ['--guaranteed', '--reserved', '--spot']"
    ]
    assert gcloud_errors(["compute", "tpus", "tpu-vm", "create", "x"])[0].startswith("not a gcloud command")


def test_tpu_bad_options_are_one_sentence():
    for args, message in [
        (["--spot", "--reserved"], "give --spot or --reserved, not both"),
        (["--num-slices=two"], "--num-slices and --max-restarts take whole numbers (see --help)"),
        (["--acelerator-type=v4-8"], "unknown option --acelerator-type=v4-8 (see launch/tpu_vm.sh --help)"),
    ]:
        result = sh("launch/tpu_vm.sh", "--dry-run", *args, check=False)
        assert result.returncode == 2 and result.stderr == f"tpu_vm.sh: {message}\n", (args, result.stderr)


def test_tpu_real_run_needs_a_shared_workdir(tmp_path):
    result = sh("launch/tpu_vm.sh", env=fake_bin(tmp_path), check=False)
    assert result.returncode == 2 and "--workdir=gs://" in result.stderr


def tpu_run(tmp_path, worker_sh: str, *args: str, check_rc: int | None = None) -> list[str]:
    """tpu_vm.sh --name=t against the fake gcloud, workers acting out `worker_sh`; gcloud's calls."""
    (tmp_path / "worker.sh").write_text(worker_sh)
    env = fake_bin(tmp_path) | {"TMPDIR": str(tmp_path), "BUCKET": "bkt"}
    result = sh("launch/tpu_vm.sh", "--name=t", *args, env=env, cwd=tmp_path, check=False)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stdout + result.stderr
    return (tmp_path / "calls").read_text().splitlines()


def test_tpu_stops_all_workers_at_the_first_failure_and_deletes(tmp_path):
    worker = """
if [ "$1" = 0 ]; then echo "worker 0 fails"; exit 3; fi
while [ ! -e "$FAKE_DIR/stopped" ]; do sleep 0.05; done; exit 143
"""
    calls = tpu_run(tmp_path, worker, check_rc=1)
    assert calls[1].startswith("compute tpus queued-resources create t ")
    train = [i for i, c in enumerate(calls) if "--command=cd ~/resnet_jax" in c]
    kill = [i for i, c in enumerate(calls) if "--worker=all --command=kill" in c]
    assert len(train) == 2 and len(kill) == 1 and min(train) < kill[0]  # (the two start concurrently)
    assert all("--workdir=gs://bkt/resnet_jax/imagenet_r50" in calls[i] for i in train)
    assert calls[-1] == "compute tpus queued-resources delete t --zone=us-central2-b --force --quiet"
    assert (tmp_path / "logs/t/worker-0.log").read_text() == "worker 0 fails\n"
    assert (tmp_path / "logs/t/worker-1.log").exists()


# A Spot slice preempted in the first run: the VMs go (ssh ends with 255), the request is SUSPENDED.
PREEMPTED_ONCE = """
if [ "$2" = 1 ]; then echo SUSPENDED > "$FAKE_DIR/state"; echo "Connection closed"; exit 255; fi
[ "$1" = 0 ] && echo "done: step 8, validation top-1 error 23.90%"
exit 0
"""


def test_tpu_watch_requests_a_preempted_slice_again_and_reruns_until_done(tmp_path):
    calls = tpu_run(tmp_path, PREEMPTED_ONCE, "--spot", "--watch", check_rc=0)
    verbs = [c.split()[3] if c.startswith("compute tpus queued-resources") else None for c in calls]
    creates = [i for i, v in enumerate(verbs) if v == "create"]
    deletes = [i for i, v in enumerate(verbs) if v == "delete"]
    train = [i for i, c in enumerate(calls) if "--command=cd ~/resnet_jax" in c]
    assert len(creates) == 2 and len(train) == 4 and all(calls[i].endswith("--spot") for i in creates)
    # first run, then the suspended request deleted and requested again, then the rerun, then the end
    assert train[1] < deletes[0] < creates[1] < train[2] and deletes[-1] == len(calls) - 1
    ships = [i for i, c in enumerate(calls) if " scp " in f" {c} "]
    assert len(ships) == 2 and creates[1] < ships[1] < train[2]  # the new VMs get the project again
    assert (tmp_path / "logs/t/worker-0.log").read_text().startswith("done: step 8")


def test_tpu_watch_does_not_rerun_a_worker_that_fails_on_a_healthy_slice(tmp_path):
    calls = tpu_run(tmp_path, 'echo "Traceback: bug"; exit 1\n', "--watch", check_rc=1)
    assert sum("--command=cd ~/resnet_jax" in c for c in calls) == 2  # one run, no crash loop
    assert sum(" create " in f" {c} " for c in calls) == 1


def test_tpu_without_watch_a_preemption_ends_the_script(tmp_path):
    calls = tpu_run(tmp_path, PREEMPTED_ONCE, "--spot", check_rc=1)
    assert sum("--command=cd ~/resnet_jax" in c for c in calls) == 2 and calls[-1].split()[3] == "delete"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_tpu_a_signal_stops_the_workers_so_they_checkpoint_then_releases(tmp_path, sig):
    """Ctrl-C, SIGTERM and a closed terminal (SIGHUP): the workers get SIGTERM (the stop ssh) before the
    capacity is deleted, so each finishes its step and checkpoints."""
    (tmp_path / "worker.sh").write_text('while [ ! -e "$FAKE_DIR/stopped" ]; do sleep 0.05; done; exit 0\n')
    env = {**os.environ, **fake_bin(tmp_path), "TMPDIR": str(tmp_path), "BUCKET": "bkt", "USER": "alice"}
    proc = popen_as_in_a_terminal(
        ["bash", str(ROOT / "launch/tpu_vm.sh"), "--name=t"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )  # fmt: skip
    deadline = time.time() + 60
    calls = tmp_path / "calls"
    while not calls.exists() or calls.read_text().count("--command=cd") < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"tpu_vm.sh: {sig.name}: stopping the workers (each checkpoints first)" in err
    calls = (tmp_path / "calls").read_text().splitlines()
    kill = [i for i, c in enumerate(calls) if "--command=kill" in c]
    assert kill and kill[0] < len(calls) - 1 and calls[-1].split()[3] == "delete"


# --- slurm_gpu.sbatch -------------------------------------------------------------------------------


def test_slurm_dry_run_defaults():
    lines = sh("launch/slurm_gpu.sbatch", "--dry-run").stdout.splitlines()
    assert lines == [
        "# outside a Slurm job; submit with: sbatch launch/slurm_gpu.sbatch --config=configs/imagenet_r50.py",
        f"srun --kill-on-bad-exit=1 --ntasks=16 {TRAIN} --workdir={ROOT}/runs/imagenet_r50",
        f"# when the tasks stop early (SIGTERM) and {ROOT}/runs/imagenet_r50/summary.json does not say done:",
        "scontrol requeue '<job id>'",
    ]
    header = (ROOT / "launch/slurm_gpu.sbatch").read_text()
    assert all(f"#SBATCH {o}\n" in header for o in ("--requeue", "--signal=TERM@300", "--open-mode=append"))


def slurm_job(tmp_path, python: str, workdir: pathlib.Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The batch script inside job 7 (2 tasks on one node) with stand-ins for srun, scontrol, python."""
    env = fake_bin(
        tmp_path, srun=FAKE_SRUN, python=python, scontrol=FAKE_RECORDER
    )  # fmt: skip
    env |= {"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NTASKS": "2", "PYTHON": "python"}
    result = sh(
        "launch/slurm_gpu.sbatch", "--config=configs/cifar10.py:resnet56", f"--workdir={workdir}", "--",
        "--config.seed=1", env=env, check=False,
    )  # fmt: skip
    return result, (tmp_path / "calls").read_text().splitlines()


def test_slurm_job_runs_the_trainer_in_every_task_of_one_step(tmp_path):
    """No coordinator flags: each task joins through jax's SLURM detection (tests/test_cluster.py)."""
    done = PYTHON_C + 'echo "gpu=${CUDA_VISIBLE_DEVICES:-all} $*"\n'
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "summary.json").write_text('{"done": true}')
    result, calls = slurm_job(tmp_path, done, tmp_path / "wd")
    assert result.returncode == 0, result.stderr
    common = (
        f"-m resnet_jax.main --config=configs/cifar10.py:resnet56 --workdir={tmp_path}/wd --config.seed=1"
    )
    assert result.stdout.splitlines()[1:] == [f"gpu=all {common}", f"gpu=all {common}"]
    assert calls == [f"srun --kill-on-bad-exit=1 --ntasks=2 python {common}"]  # done: no requeue


def test_slurm_job_requeues_itself_when_its_tasks_stopped_before_the_run_was_done(tmp_path):
    """The time limit's SIGTERM (--signal=TERM@300): the tasks checkpoint and exit 0, the run is not done."""
    stopped = PYTHON_C + "exit 0\n"
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "summary.json").write_text('{"done": false}')
    result, calls = slurm_job(tmp_path, stopped, tmp_path / "wd")
    assert result.returncode == 0 and calls[-1] == "scontrol requeue 7", result.stdout + result.stderr
    assert "stopped before the run was done (time limit): requeueing job 7" in result.stdout
    result, calls = slurm_job(tmp_path, stopped.replace("exit 0", "exit 1"), tmp_path / "wd")
    assert result.returncode == 1 and calls[-1] != "scontrol requeue 7"  # a failure is not requeued


# --- local_gpus.sh ----------------------------------------------------------------------------------


def test_local_gpus_dry_run_and_run(tmp_path):
    assert sh("launch/local_gpus.sh", "--dry-run").stdout == (
        f"{TRAIN} --workdir=runs/imagenet_r50 2>&1 | tee -a runs/imagenet_r50/train.log\n"
    )
    env = fake_bin(tmp_path, python=FAKE_PYTHON) | {"PYTHON": "python"}
    out = sh(
        "launch/local_gpus.sh", "--gpus=0,1", f"--workdir={tmp_path}/wd", "--", "--config.seed=2", env=env
    ).stdout
    assert out.splitlines()[1] == (
        f"gpu=0,1 -m resnet_jax.main --config=configs/imagenet_r50.py --workdir={tmp_path}/wd --config.seed=2"
    )
    assert (tmp_path / "wd" / "train.log").read_text() == out.splitlines()[1] + "\n"


def test_default_workdirs_keep_the_config_argument_apart():
    """configs/imagenet_r34.py:C and :A (or no argument) must not share a run folder."""
    tpu = sh("launch/tpu_vm.sh", "--dry-run", "--config=configs/imagenet_r34.py:C").stdout
    assert "--workdir=gs://BUCKET/resnet_jax/imagenet_r34-C'" in tpu
    gpus = sh("launch/local_gpus.sh", "--dry-run", "--config=configs/imagenet_r50.py:batch=1024,smoke").stdout
    assert "--workdir=runs/imagenet_r50-batch-1024-smoke " in gpus


# --- every script -----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS[:3])
def test_help_documents_every_option(script):
    """--help exits 0 and names every option the script's parser accepts."""
    result = sh(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: ") and result.stderr == ""
    parsed = re.findall(r"^\s+((?:-[\w-]+(?:=\*)?(?: \| )?)+)\)", (ROOT / script).read_text(), re.M)
    options = {o.removesuffix("=*") for group in parsed for o in group.split(" | ") if o != "--"}
    assert options and {o for o in options if o not in result.stdout} == set()


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it where apt-get is available)")
    result = subprocess.run(["shellcheck", str(ROOT / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# --- GKE JobSets ------------------------------------------------------------------------------------


def fill(text: str, **values: str) -> str:
    """envsubst '$NAME ...': ${NAME} and $NAME of the given names replaced, everything else kept."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: values.get(m[1] or m[2], m[0]), text)


def jobset(name: str) -> tuple[dict, dict, dict]:
    """The JobSet (placeholders filled in), its replicated job and its container."""
    text = fill((ROOT / "launch" / name).read_text(), IMAGE="img", BUCKET="bkt")
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    (rjob,) = doc["spec"]["replicatedJobs"]
    (container,) = rjob["template"]["spec"]["template"]["spec"]["containers"]
    return doc, rjob, container


def tpu_vm_trainer_args() -> list[str]:
    """The trainer flags tpu_vm.sh runs on every worker, for the JobSets' default workdir and data."""
    out = sh("launch/tpu_vm.sh", "--dry-run", "--", "--config.data.tfds_dir=gs://bkt/tensorflow_datasets",
             env={"BUCKET": "bkt"}).stdout  # fmt: skip
    start = next(line for line in out.splitlines() if "--worker=0 '--command=cd" in line)
    command = shlex.split(next(t for t in shlex.split(start) if t.startswith("--command=")).split("=", 1)[1])
    return command[command.index("resnet_jax.main") + 1 :]


def test_the_tpu_jobset_runs_the_tpu_vm_command_on_one_pod_per_host():
    doc, rjob, container = jobset("gke_tpu_jobset.yaml")
    assert container["command"] == ["python3", "-m", "resnet_jax.main"]
    assert container["args"] == tpu_vm_trainer_args()  # the same run as launch/tpu_vm.sh
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    chips = 1
    for n in pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"].split("x"):
        chips *= int(n)
    per_host = container["resources"]["limits"]["google.com/tpu"]
    assert job["parallelism"] == job["completions"] == chips // per_host  # one pod per TPU VM host
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert doc["spec"]["failurePolicy"]["maxRestarts"] > 0 and pod["terminationGracePeriodSeconds"] >= 60
    assert "env" not in container  # GKE sets TPU_WORKER_HOSTNAMES / TPU_WORKER_ID; jax reads them


def test_the_gpu_jobset_passes_consistent_explicit_flags():
    doc, rjob, container = jobset("gke_gpu_jobset.yaml")
    assert container["command"] == ["python3", "-m", "resnet_jax.main"]
    args = container["args"]
    assert args[:3] == tpu_vm_trainer_args()
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[3:])
    job = rjob["template"]["spec"]
    name, rjob_name = doc["metadata"]["name"], rjob["name"]
    # pod 0 of job 0 of the replicated job, through the JobSet's headless service (named after it)
    assert flags["coordinator_address"].split(":")[0] == f"{name}-{rjob_name}-0-0.{name}"
    assert int(flags["num_processes"]) == job["parallelism"] == job["completions"]
    assert flags["process_id"] == "$(JOB_COMPLETION_INDEX)"
    (env,) = container["env"]
    assert env["name"] == "JOB_COMPLETION_INDEX" and "job-completion-index" in str(env["valueFrom"])
    assert {"containerPort": int(flags["coordinator_address"].split(":")[1])} in container["ports"]


def test_the_dockerfile_installs_the_pinned_requirements_and_jax():
    text = (ROOT / "launch/Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in text and "jax[${JAX_EXTRA}]==" in text
    assert "FROM python:3.11" in text


# --- docs/launch.md ---------------------------------------------------------------------------------

FAKE_KUBECTL = f"""#!/bin/sh
echo "kubectl $*" >> "$FAKE_DIR/calls"
case "$*" in
  *"apply -f -"*) exec {sys.executable} -c '
import sys, yaml
doc = yaml.safe_load(sys.stdin)
assert doc["kind"] == "JobSet" and "${{" not in str(doc), doc' ;;
esac
"""
FAKE_ENVSUBST = f"""#!/bin/sh
exec {sys.executable} -c '
import os, re, sys
names = set(re.findall(r"\\$\\{{?(\\w+)", sys.argv[1]))
fill = lambda m: os.environ.get(m[1] or m[2], "") if (m[1] or m[2]) in names else m[0]
sys.stdout.write(re.sub(r"\\$(?:\\{{(\\w+)\\}}|(\\w+))", fill, sys.stdin.read()))' "$@"
"""
FAKE_SBATCH = """#!/usr/bin/env bash
echo "sbatch $*" >> "$FAKE_DIR/calls"
while [[ $1 == --* ]]; do shift; done
script=$1; shift
exec bash "$script" --dry-run "$@"
"""
FAKE_PYTHON3 = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && printf '#!/bin/sh\\n' > "$3/bin/pip" && chmod +x "$3/bin/pip"
fi
"""


def docs_commands() -> list[str]:
    text = (ROOT / "docs/launch.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_every_command_in_docs_launch_runs(tmp_path):
    """Each command of docs/launch.md, run: launch scripts with --dry-run, cloud and cluster tools as
    stand-ins that check their arguments (gcloud: current syntax; kubectl apply: a filled-in JobSet)."""
    recorders = {n: FAKE_RECORDER for n in ("ssh-add", "tail", "squeue", "scancel", "docker")}
    env = fake_bin(
        tmp_path, kubectl=FAKE_KUBECTL, envsubst=FAKE_ENVSUBST, sbatch=FAKE_SBATCH, python3=FAKE_PYTHON3,
        **recorders,
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if k != "BUCKET"},
        **env,
        "HOME": str(tmp_path),
        "USER": "alice",
    }
    (tmp_path / "state").write_text("ACTIVE\n")  # the queued resource the docs watch and delete
    commands = docs_commands()
    assert len(commands) > 30
    for command in commands:
        if (
            "launch/" in command.split("|")[0].split("<")[0]
            and "--dry-run" not in command
            and "--help" not in command
        ):
            command = re.sub(r"(launch/(?:tpu_vm\.sh|local_gpus\.sh))", r"\1 --dry-run", command, count=1)
        result = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        for line in gcloud_lines(result.stdout):
            assert line_errors(line) == [], (command, line)
    calls = (tmp_path / "calls").read_text()
    assert "kubectl apply -f -" in calls and "sbatch --nodes=4 launch/slurm_gpu.sbatch" in calls
