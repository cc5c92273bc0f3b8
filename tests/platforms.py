"""Clusters as they present themselves to a process, on one machine: a GCE metadata server, SLURM, GKE, MPI.

Each builder returns the environment a process of that platform starts with (the variables the platform
sets, not the ones our code reads), with the addresses pointed at this machine. Nothing here decides
anything for the code under test; jax's own detection reads what these present.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_VM_SITE = ROOT / "tests" / "tpu_vm_site"  # jax's PCI probe sees TPU chips (see its docstring)
# Variables of any cluster this test process itself may run under: a simulated platform starts clean.
CLUSTER_PREFIXES = ("SLURM", "OMPI_", "PMIX_", "TPU_", "MEGASCALE_", "KUBERNETES_", "JAX_COORDINATOR")
CLUSTER_NAMES = ("GCE_METADATA_IP", "JOB_COMPLETION_INDEX", "JAX_LOCAL_DEVICE_IDS", "CUDA_VISIBLE_DEVICES")


def free_port(low: int = 0, high: int = 0) -> int:
    """A TCP port nobody listens on: any (default), or the first free one in [low, high]."""
    for port in range(low, high + 1) if low else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high}]")


def base_env(local_devices: int = 4) -> dict[str, str]:
    """This process's environment without any cluster's variables, with `local_devices` CPU devices."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES) and k not in CLUSTER_NAMES
    }
    env |= {"XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}", "JAX_PLATFORMS": "cpu"}
    return env


class MetadataServer(http.server.ThreadingHTTPServer):
    """One VM's GCE metadata server: /computeMetadata/v1/instance/attributes/<key>, with the
    `Metadata-Flavor: Google` header GCE requires (403 without it), 404 for keys the VM does not have.
    `requests` lists the keys asked for."""

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.address = f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        prefix = "/computeMetadata/v1/instance/attributes/"
        key = self.path[len(prefix) :] if self.path.startswith(prefix) else None
        self.server.requests.append(key or self.path)
        if self.headers.get("Metadata-Flavor") != "Google":
            status, body = 403, "Missing Metadata-Flavor:Google header."
        elif key in self.server.attributes:
            status, body = 200, self.server.attributes[key]
        else:
            status, body = 404, "Not Found"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/text")
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def metadata_servers(attributes: list[dict[str, str]]) -> Iterator[list[MetadataServer]]:
    """One metadata server per VM, serving while the block runs."""
    servers = [MetadataServer(a) for a in attributes]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield servers
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def tpu_vm_attributes(
    worker: int, workers: int, accelerator_type: str, slice_id: int = 0, num_slices: int = 1
) -> dict[str, str]:
    """Worker `worker`'s metadata attributes on a TPU VM slice (every worker's address is 127.0.0.1 here).

    A multislice queued resource adds its MEGASCALE_* values to tpu-env (jax reads them there)."""
    tpu_env = {"ACCELERATOR_TYPE": accelerator_type, "WORKER_ID": str(worker), "ZONE": "us-central2-b"}
    if num_slices > 1:
        tpu_env |= {
            "MEGASCALE_COORDINATOR_ADDRESS": "127.0.0.1",
            "MEGASCALE_NUM_SLICES": str(num_slices),
            "MEGASCALE_SLICE_ID": str(slice_id),
            "MEGASCALE_PORT": "8080",
        }
    return {
        "accelerator-type": accelerator_type,
        "agent-worker-number": str(worker),
        "worker-network-endpoints": ",".join("unknown:unknown:127.0.0.1" for _ in range(workers)),
        "tpu-env": "".join(f"{k}: '{v}'\n" for k, v in tpu_env.items()),
    }


def tpu_vm_env(server: MetadataServer, coordinator_port: int) -> dict[str, str]:
    """A Cloud TPU VM worker's process: TPU chips on its PCI bus, its metadata server. jax's coordinator port
    on TPU VMs is fixed (8482); JAX_COORDINATOR_PORT, jax's override, keeps parallel tests apart."""
    return {
        "PYTHONPATH": os.pathsep.join([str(TPU_VM_SITE), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "JAX_FORCE_TPU_INIT": "1",
        "GCE_METADATA_IP": server.address,
        "JAX_COORDINATOR_PORT": str(coordinator_port),
    }


def gke_tpu_env(worker: int, hosts: list[str], node_metadata: MetadataServer, coordinator_port: int) -> dict:
    """A pod of a GKE TPU JobSet (one per host): GKE's TPU variables, the node's metadata server (jax asks
    it for tpu-env even under TPU_SKIP_MDS_QUERY: jax issue #40854), Kubernetes' own variables."""
    return tpu_vm_env(node_metadata, coordinator_port) | {
        "TPU_WORKER_HOSTNAMES": ",".join(hosts),
        "TPU_WORKER_ID": str(worker),
        "TPU_SKIP_MDS_QUERY": "true",
        "TPU_ACCELERATOR_TYPE": "v4-16",
        "TPU_TOPOLOGY": "2x2x2",
        "TPU_HOST_BOUNDS": "1,1,2",
        "TPU_CHIPS_PER_HOST_BOUNDS": "2,2,1",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "HOSTNAME": f"resnet-jax-slice-0-{worker}-x7k2p",
        "JOB_COMPLETION_INDEX": str(worker),
    }


def slurm_job_id_for_port(port: int) -> int:
    """A job id whose jax coordinator port (61440 + id mod 4096, jax/_src/clusters/slurm_cluster.py) is
    `port`: srun sets no port, so the test picks the job."""
    return 4096 * 1000 + port - 61440


def slurm_step_env(task: int, ntasks: int, job_id: int, node: str = "localhost") -> dict[str, str]:
    """Task `task` of `srun --ntasks=<ntasks>` on one node, inside its sbatch job."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_JOB_NAME": "resnet_jax",
        "SLURM_CLUSTER_NAME": "test",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NODELIST": node,
        "SLURM_NODELIST": node,
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NPROCS": str(ntasks),
        "SLURM_TASKS_PER_NODE": str(ntasks),
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_STEP_NODELIST": node,
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_STEP_TASKS_PER_NODE": str(ntasks),
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": str(task),
        "SLURM_NODEID": "0",
        "SLURM_GTIDS": ",".join(map(str, range(ntasks))),
        "SLURMD_NODENAME": node,
        "SLURM_TOPOLOGY_ADDR": node,
        "SLURM_CPUS_ON_NODE": "2",
    }


def slurm_batch_shell_env(ntasks: int, job_id: int = 7) -> dict[str, str]:
    """The sbatch script itself (no srun step): the allocation's variables, rank 0, but no step."""
    step = slurm_step_env(0, ntasks, job_id)
    return {k: v for k, v in step.items() if not k.startswith("SLURM_STEP")} | {"SLURM_GTIDS": "0"}


def ompi_env(rank: int, size: int, port: int) -> dict[str, str]:
    """Rank `rank` of `mpirun -np <size>` (Open MPI 4, which jax detects) on one host; its job id is one
    whose jax coordinator port (61440 + id // 4096 mod 4096, jax/_src/clusters/ompi_cluster.py) is `port`."""
    job_id = 4096 * (4096 * 300 + port - 61440)
    return {
        "OMPI_MCA_orte_hnp_uri": f"{job_id}.0;tcp://127.0.0.1:{free_port()}",
        "OMPI_MCA_orte_ess_num_procs": str(size),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(size),
        "OMPI_COMM_WORLD_NODE_RANK": str(rank),
        "OMPI_UNIVERSE_SIZE": str(size),
        "PMIX_RANK": str(rank),
    }


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A Python process in the repository root, stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process; each must exit 0. Their outputs, in order."""
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs
