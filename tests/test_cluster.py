"""The multi-host start path on each platform as the platform presents itself, with 2 CPU processes.

Each platform is simulated by what a process there starts with (tests/platforms.py): the GCE metadata
server of each TPU VM worker, the variables of a 2-task SLURM step, of a GKE TPU pod, of Open MPI; jax's
own cluster detection reads them. Real TPUs, GPUs, clusters and networks are not involved.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import checkpoint_steps, read_metrics
from platforms import (
    base_env,
    finish,
    free_port,
    gke_tpu_env,
    metadata_servers,
    ompi_env,
    slurm_batch_shell_env,
    slurm_job_id_for_port,
    slurm_step_env,
    start,
    tpu_vm_attributes,
    tpu_vm_env,
)

from resnet_jax import cluster

TRAIN = [
    "-m",
    "resnet_jax.main",
    "--config=tests/configs/tiny.py",
    "--config.num_train_steps=2",
    "--config.eval_every_steps=2",
    "--config.checkpoint_every_steps=2",
]
# No real wait is shorter than this: jax's metadata retries take 6 x 0.5 s, its coordinator connection
# waits up to initialization_timeout (300 s); detection itself reads variables and asks, on a TPU VM,
# one local HTTP server, which takes milliseconds.
NO_WAIT_S = 1.0


def two_processes(platform: str, servers: list) -> list[dict[str, str]]:
    """The environments of process 0 and 1 of a 2-host run on `platform`."""
    port = free_port(61440, 65535)
    if platform == "tpu_vm":  # a v4-16 slice: 2 workers, each with its own metadata server
        return [base_env() | tpu_vm_env(servers[i], port) for i in range(2)]
    if platform == "gke_tpu":  # the same slice as 2 pods of a JobSet
        return [base_env() | gke_tpu_env(i, ["localhost", "localhost"], servers[i], port) for i in range(2)]
    if platform == "slurm":  # srun --ntasks=2 on one node
        return [base_env() | slurm_step_env(i, 2, slurm_job_id_for_port(port)) for i in range(2)]
    if platform == "ompi":  # mpirun -np 2 on one host
        return [base_env() | ompi_env(i, 2, port) for i in range(2)]
    raise ValueError(platform)


def metadata_for(platform: str) -> list[dict[str, str]]:
    if platform == "tpu_vm":
        return [tpu_vm_attributes(i, 2, "v4-16") for i in range(2)]
    if platform == "gke_tpu":  # a GKE TPU node's metadata server: its tpu-env, nothing that names a slice
        return [{"tpu-env": tpu_vm_attributes(i, 2, "v4-16")["tpu-env"]} for i in range(2)]
    return []


@pytest.mark.parametrize("platform", ["tpu_vm", "gke_tpu", "slurm", "ompi"])
def test_two_processes_of_each_platform_join_one_run(platform, tmp_path):
    """Both processes join (8 devices = 2 x 4), train in one workdir, and write one checkpoint together:
    each process writes its own shard of it (orbax's ocdbt.process_<i>), and only process 0 reports."""
    with metadata_servers(metadata_for(platform)) as servers:
        envs = two_processes(platform, servers)
        procs = [start([*TRAIN, f"--workdir={tmp_path}"], env) for env in envs]
        outputs = finish(procs)
        asked = [s.requests for s in servers]
    assert "on process 0 of 2, 8 cpu devices" in outputs[0] and "done: step 2" in outputs[0], outputs[0]
    assert "ResNet-8" not in outputs[1] and "done" not in outputs[1], outputs[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_devices"] == 8 and summary["step"] == 2 and summary["done"]
    assert checkpoint_steps(tmp_path) == [2]
    shards = sorted(p.name for p in (tmp_path / "checkpoints" / "2" / "state").glob("ocdbt.process_*"))
    assert shards == ["ocdbt.process_0", "ocdbt.process_1"]
    assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [2]  # one writer
    if platform == "tpu_vm":  # found through each worker's own metadata server
        assert all("agent-worker-number" in a and "worker-network-endpoints" in a for a in asked)


DESCRIBE = """
import json, time, jax
import requests  # jax imports it at its first metadata query: local work, not a wait, so not timed
from resnet_jax import cluster
t0 = time.perf_counter()
p = cluster.initialize(timeout_s=60)
took = time.perf_counter() - t0
print(json.dumps({"source": p.source, "took": took, "joined": jax.distributed.is_initialized(),
                  "describe": cluster.describe(), "index": jax.process_index()}))
"""


def test_a_multislice_queued_resource_joins_its_slices(tmp_path):
    """2 slices x 1 worker (queued-resources create --node-count=2): the slices' MEGASCALE_* values in each
    worker's tpu-env make one run of 2 processes, process index = slice x workers per slice + worker."""
    attributes = [tpu_vm_attributes(0, 1, "v4-8", slice_id=i, num_slices=2) for i in range(2)]
    port = free_port()
    with metadata_servers(attributes) as servers:
        procs = [start(["-c", DESCRIBE], base_env() | tpu_vm_env(s, port)) for s in servers]
        results = [json.loads(out.splitlines()[-1]) for out in finish(procs)]
    assert [r["index"] for r in results] == [0, 1]
    assert all(r["joined"] and r["describe"] == f"process {r['index']} of 2, 8 cpu devices" for r in results)


def single(platform: str, servers: list) -> dict[str, str]:
    """A process that is alone on `platform`."""
    if platform == "plain machine":  # the metadata server stands by: jax must not ask it off a TPU VM
        return base_env() | {"GCE_METADATA_IP": servers[0].address}
    if platform == "single-host TPU VM":  # a v4-8: one worker
        return base_env() | tpu_vm_env(servers[0], free_port())
    if platform == "GKE single-host TPU pod":  # (its node's metadata server also answers tpu-env)
        return base_env() | gke_tpu_env(0, ["localhost"], servers[0], free_port())
    if platform == "sbatch script, no srun":  # the allocation says 16 tasks, but no step runs them
        return base_env() | slurm_batch_shell_env(16)
    if platform == "srun --ntasks=1 in a 16-task allocation":
        return base_env() | slurm_step_env(0, 1, 7)
    if platform == "mpirun -np 1":
        return base_env() | ompi_env(0, 1, free_port(61440, 65535))
    raise ValueError(platform)


SINGLE = [
    "plain machine",
    "single-host TPU VM",
    "GKE single-host TPU pod",
    "sbatch script, no srun",
    "srun --ntasks=1 in a 16-task allocation",
    "mpirun -np 1",
]


def test_a_process_alone_never_waits_for_a_coordinator():
    """Alone on each platform, a process starts at once as process 0 of 1: no jax.distributed, no
    coordinator, and on a plain machine not even a metadata query."""
    attributes = [tpu_vm_attributes(0, 1, "v4-8") for _ in SINGLE]
    with metadata_servers(attributes) as servers:
        procs = [start(["-c", DESCRIBE], single(p, [s])) for p, s in zip(SINGLE, servers, strict=True)]
        results = [json.loads(out.splitlines()[-1]) for out in finish(procs)]
        asked = [s.requests for s in servers]
    for platform, result in zip(SINGLE, results, strict=True):
        assert not result["joined"] and result["describe"] == "process 0 of 1, 4 cpu devices", platform
        assert result["took"] < NO_WAIT_S, (platform, result)
    assert asked[SINGLE.index("plain machine")] == []
    assert "worker-network-endpoints" in asked[SINGLE.index("single-host TPU VM")]


def clear_clusters(monkeypatch) -> None:
    """This test process outside any cluster, whatever it runs under."""
    for key in set(os.environ) - set(base_env()):
        monkeypatch.delenv(key)


@pytest.fixture
def slurm_step(monkeypatch):
    """This process as task 1 of a 2-task SLURM step (jax's SLURM detection reads only variables);
    returns a function that changes some of the step's variables."""

    def set_env(env: dict[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    clear_clusters(monkeypatch)
    set_env(slurm_step_env(1, 2, slurm_job_id_for_port(61500)))
    return set_env


def test_the_environment_fills_in_what_the_flags_leave_out_and_the_flags_win(slurm_step):
    found = cluster.find()
    assert found == cluster.Processes("slurm", 2, 1, "localhost:61500", (1,))  # one GPU each on its host
    assert cluster.find(coordinator_address="10.0.0.9:1234").coordinator_address == "10.0.0.9:1234"
    flags = cluster.find("10.0.0.9:1234", 4, 3)
    assert flags == cluster.Processes("flags", 4, 3, "10.0.0.9:1234", ())
    assert cluster.find(num_processes=1, process_id=0) == cluster.Processes("slurm")  # alone: no coordinator


def test_one_task_per_node_keeps_every_gpu_and_a_narrowed_gpu_stays(slurm_step):
    """jax's rule (one device per process from SLURM_LOCALID) would leave 7 of 8 GPUs idle on one task per
    node, and pick a device that does not exist where Slurm already bound one GPU to each task."""
    slurm_step({"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_LOCALID": "0"})
    assert cluster.find().local_device_ids == ()
    slurm_step({"SLURM_STEP_NUM_NODES": "1", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "0"})
    assert cluster.find().local_device_ids == ()


def test_incomplete_or_inconsistent_flags_outside_a_cluster_are_one_sentence(monkeypatch):
    clear_clusters(monkeypatch)
    assert cluster.find() == cluster.Processes("single")
    with pytest.raises(cluster.ClusterError, match=r"without --coordinator_address outside a cluster"):
        cluster.find(num_processes=2, process_id=1)
    with pytest.raises(
        cluster.ClusterError, match=r"--process_id=2 is not one of the 2 processes \(0 to 1\)"
    ):
        cluster.find("127.0.0.1:1", 2, 2)


def test_a_coordinator_that_never_answers_is_one_sentence(tmp_path):
    port = free_port()
    code = (
        "from resnet_jax import cluster\n"
        "try:\n"
        f"    cluster.initialize('127.0.0.1:{port}', 2, 1, timeout_s=2)\n"
        "except cluster.ClusterError as e:\n"
        "    print(e)\n"
    )
    t0 = time.perf_counter()
    (out,) = finish([start(["-c", code], base_env())], timeout=120)
    assert time.perf_counter() - t0 < 60
    line = out.strip().splitlines()[-1]
    assert line.startswith(
        f"process 1 of 2 (flags) could not reach the coordinator at 127.0.0.1:{port} within 2 s"
    )
    assert line.endswith("that process 0 was started and that its host accepts connections on that port")


def test_describe_names_this_process_and_every_device():
    import jax

    assert cluster.describe() == f"process 0 of 1, {jax.device_count()} cpu devices"
