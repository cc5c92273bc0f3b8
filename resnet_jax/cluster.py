"""How this process starts: alone, or as one of several joined by jax.distributed (TPU VMs, GKE, SLURM, MPI).

Holds the whole multi-host start path and the "process i of N" description; it must not touch a device
before jax.distributed.initialize(), and knows nothing about models, data or training.

Which cluster a process is in is jax's own detection (the ClusterEnv classes jax.distributed uses: a Cloud
TPU VM through the GCE metadata server, GKE TPU pods through TPU_WORKER_HOSTNAMES, SLURM steps, Open MPI,
Kubernetes Jobs), asked once, before anything waits on the network. Explicit values win over what it finds.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import jax

# jax's cluster detection has no public entry point that answers without also joining; the classes below
# are those jax.distributed.initialize() itself walks through (pinned jax: see requirements.txt).
from jax._src import clusters as jax_clusters

DEFAULT_TIMEOUT_S = 300  # jax.distributed.initialize's own default for reaching the coordinator


class ClusterError(Exception):
    """A multi-process start that cannot go ahead; the message is one sentence saying what to do."""


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of this run as found before joining: where they meet and which one this is."""

    source: str  # "single", "flags", or the name of jax's cluster environment ("gcetpu", "slurm", ...)
    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    local_device_ids: tuple[int, ...] = ()  # () = every device this process sees

    @property
    def joins(self) -> bool:
        return self.num_processes > 1


def cluster_environment() -> type | None:
    """The first cluster environment jax's own detection finds here, or None (a plain machine).

    Each check is local and quick on a machine outside that platform (environment variables; the GCE
    metadata server is asked only on a Cloud TPU VM, which jax recognises by its TPU chips)."""
    for env in jax_clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:  # mpi4py: only when asked for by name
            continue
        try:
            present = env.is_env_present()
        except Exception as e:  # e.g. the metadata server of a TPU VM not answering
            raise ClusterError(f"jax's {env.__name__} detection failed ({one_line(e)})") from e
        if present:
            return env
    return None


def find(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> Processes:
    """The processes of this run: the explicit values where given, the rest from the cluster environment.

    One process (no environment, or one that holds a single process) is `Processes("single")`: nothing
    waits on a coordinator then. Raises ClusterError when explicit values are incomplete outside a cluster.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    given = [coordinator_address, num_processes, process_id]
    env = cluster_environment() if None in given else None
    if env is None and given == [None, None, None]:
        return Processes("single")
    source = env.name if env is not None else "flags"
    if env is not None and not source:  # jax's Kubernetes environment has no name
        source = env.__name__.removesuffix("Cluster").lower()
    try:
        if num_processes is None and env is not None:
            num_processes = env.get_process_count()
        if num_processes == 1 and process_id in (None, 0):
            return Processes("single" if env is None else source)
        if process_id is None and env is not None:
            process_id = env.get_process_id()
        if coordinator_address is None and env is not None:
            port = os.environ.get("JAX_COORDINATOR_PORT")
            coordinator_address = env.get_coordinator_address(
                timeout_secs=timeout_s, override_coordinator_port=port
            )
    except Exception as e:  # what the platform presents is incomplete (a metadata key, a variable)
        raise ClusterError(f"jax's {env.__name__} could not read this process's place ({one_line(e)})") from e
    values = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    missing = [flag for flag, value in values.items() if value is None]
    if missing:
        raise ClusterError(
            f"cannot start a multi-process run without --{missing[0]} outside a cluster jax recognises; give "
            "--coordinator_address=<host:port of process 0>, --num_processes and --process_id, or none of "
            "them for one process"
        )
    if not 0 <= process_id < num_processes:
        raise ClusterError(
            f"--process_id={process_id} is not one of the {num_processes} processes "
            f"(0 to {num_processes - 1}); give each process its own index"
        )
    return Processes(source, num_processes, process_id, coordinator_address, local_devices(env))


def local_devices(env: type | None) -> tuple[int, ...]:
    """One GPU each when several processes of a SLURM step / MPI job share a host (jax's rule for those,
    unless the launcher already narrowed CUDA_VISIBLE_DEVICES to one GPU); otherwise all of them.

    On one process per host (one SLURM task per node) jax's own rule would leave 7 of 8 GPUs idle."""
    local_id = env.get_local_process_id() if env is not None else None
    if local_id is None or "JAX_LOCAL_DEVICE_IDS" in os.environ:
        return ()
    if env.name == "slurm":
        on_this_host = int(os.environ["SLURM_NTASKS"]) > int(os.environ.get("SLURM_STEP_NUM_NODES", "1"))
    elif env.name == "ompi":
        on_this_host = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "2")) > 1
    else:
        on_this_host = True
    narrowed = "," not in os.environ.get("CUDA_VISIBLE_DEVICES", ",")
    return (local_id,) if on_this_host and not narrowed else ()


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_seconds: int = 60,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> Processes:
    """Join the other processes of this run (jax.distributed.initialize) where there are any; returns them.

    Must run before anything touches a device. A single process returns at once, with no network wait.
    """
    processes = find(coordinator_address, num_processes, process_id, timeout_s)
    if not processes.joins:
        return processes
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects CPU devices
    ids = list(processes.local_device_ids) or (None if "JAX_LOCAL_DEVICE_IDS" in os.environ else [])
    if processes.process_id != 0:  # jax aborts the process (a C++ check) when it cannot connect
        wait_for_coordinator(processes, timeout_s)
    try:
        # All four values given: jax does not run its detection a second time.
        jax.distributed.initialize(
            coordinator_address=processes.coordinator_address,
            num_processes=processes.num_processes,
            process_id=processes.process_id,
            local_device_ids=ids,
            initialization_timeout=timeout_s,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
    except (ValueError, TypeError) as e:
        raise ClusterError(f"cannot start a multi-process run ({one_line(e)})") from e
    return processes


def wait_for_coordinator(processes: Processes, timeout_s: float) -> None:
    """Until process 0's coordinator accepts connections (it starts with process 0), at most timeout_s."""
    host, _, port = processes.coordinator_address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"process {processes.process_id} of {processes.num_processes} ({processes.source}) could "
                    f"not reach the coordinator at {processes.coordinator_address} within {timeout_s:g} s "
                    f"({one_line(e)}); check that process 0 was started and that its host accepts "
                    "connections on that port"
                ) from e
            time.sleep(0.5)


def describe() -> str:
    """'process i of N, D <kind> devices' for the run's header line (after initialize)."""
    n = jax.device_count()
    kind = jax.devices()[0].device_kind
    return f"process {jax.process_index()} of {jax.process_count()}, {n} {kind} device{'s' if n != 1 else ''}"


def one_line(e: BaseException) -> str:
    """An exception's text on one line, without a closing full stop."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300].rstrip(".")
