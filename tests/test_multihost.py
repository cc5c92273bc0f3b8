"""Two processes x 4 CPU devices (jax.distributed over localhost) == one process x 8 devices."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import (
    ROOT,
    TINY_TFDS_VAL,
    assert_trees_equal,
    checkpoint_steps,
    read_metrics,
    restore_state,
    tiny_config,
)

from resnet_jax import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(workdir, *extra: str) -> list[subprocess.Popen]:
    """Process 0 and 1 of a 2 x 4-device CPU run on localhost."""
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    flags = [
        "--config=tests/configs/tiny.py",
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
    ]
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resnet_jax.main",
                *flags,
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def finish_pair(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for both processes; each must exit 0. Their outputs, process 0's first."""
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def reduction_order_tolerance(steps: int, devices: int, bn_layers: int) -> float:
    """How far two layouts of the same devices may drift apart in float32 after `steps` steps.

    1 x 8 and 2 x 4 devices hold the same 2 examples each and compute the same per-device values; they
    differ only in the order of the cross-device sums (XLA's in-process all-reduce vs gloo's). A float32
    sum of N terms in another order differs by at most (N - 1) u relative to the sum of the terms'
    magnitudes (u = 2^-24, the unit roundoff). Per step, a value passes through 4 such sums per BN layer
    (mean and mean square forward, their two gradients backward) and 1 gradient all-reduce; to first
    order the relative perturbations of successive sums add up over layers and steps:
    steps x (4 x bn_layers + 1) x (N - 1) x u (ResNet-8, 4 steps, 8 devices: 4 x 29 x 7 x u = 4.8e-5).
    """
    return steps * (4 * bn_layers + 1) * (devices - 1) * 2.0**-24


def test_when_one_process_dies_the_other_stops_naming_it(tmp_path):
    long_run = ["--config.num_train_steps=100000", "--config.eval_every_steps=100000"]
    procs = start_pair(
        tmp_path, "--heartbeat_timeout_seconds=10", *long_run, "--config.checkpoint_every_steps=100000"
    )
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert time.time() < deadline and procs[0].poll() is None
        time.sleep(0.2)
    procs[1].kill()
    killed = time.time()
    out = procs[0].communicate(timeout=120)[0]
    assert procs[0].returncode != 0
    assert time.time() - killed < 60
    assert "unhealthy (stopped sending heartbeats):\n1\n" in out  # names process 1


def test_two_processes_match_one_process_and_resume_a_preemption_of_one_of_them(tmp_path):
    """2 x 4 devices == 1 x 8 devices; process 1 alone preempted (SIGTERM) resumes bit-identically.

    The two layouts reduce in different orders, so they agree to ~1e-6 early on and drift apart
    later in this tiny, noisy run: they are compared at step 4. With process 1 preempted half-way,
    the processes agree to stop at the next log step (an all-gather), both checkpoint and exit 0,
    and the rerun of the pair ends exactly where an uninterrupted pair does.
    """
    overrides = dict(num_train_steps=8, eval_every_steps=8, checkpoint_every_steps=4)
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    single, straight, preempted = tmp_path / "single", tmp_path / "straight", tmp_path / "preempted"
    train.train_and_evaluate(tiny_config(**overrides), str(single))
    procs = start_pair(straight, *flags)
    outputs = finish_pair(procs)
    assert "on process 0 of 2, 8 cpu devices" in outputs[0] and "done: step 8" in outputs[0]
    assert "done: step" not in outputs[1] and "step 2/8" not in outputs[1]  # only process 0 reports
    a, b = restore_state(single, 4), restore_state(straight, 4)
    tol = reduction_order_tolerance(steps=4, devices=8, bn_layers=len(a["batch_stats"]))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)
    losses = [
        [r["train/loss"] for r in read_metrics(d) if r["step"] <= 4 and "train/loss" in r]
        for d in (single, straight)
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=tol)

    for _ in range(3):
        procs = start_pair(preempted, *flags)
        deadline = time.time() + 300
        while not (preempted / "metrics.jsonl").exists() or not (preempted / "metrics.jsonl").read_text():
            assert time.time() < deadline and procs[0].poll() is None, procs[0].communicate()[0][-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        outputs = finish_pair(procs, timeout=300)
        if "preempted at step" in outputs[0]:
            break
        shutil.rmtree(preempted)  # the pair finished before the signal arrived: start over
    stopped = int(outputs[0].split("preempted at step ")[1].split(";")[0])
    assert 2 <= stopped < 8 and stopped % 2 == 0 and stopped in checkpoint_steps(preempted)
    procs = start_pair(preempted, *flags)
    outputs = finish_pair(procs)
    assert f"resuming from step {stopped}" in outputs[0] and "done: step 8" in outputs[0]
    assert_trees_equal(restore_state(straight, 8), restore_state(preempted, 8))
    assert [r.get("train/loss") for r in read_metrics(straight)] == [
        r.get("train/loss") for r in read_metrics(preempted)
    ]


PLACE_BATCH = """
import sys
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from resnet_jax import inputs, train

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
d = jax.devices()
mesh = Mesh(np.array([d[0], d[4], d[1], d[5], d[2], d[6], d[3], d[7]]), ("data",))  # hosts interleaved
index = np.arange(16, dtype=np.int32)
for axis, batch in ((0, index), (1, np.stack([index, index + 16]))):  # steps_per_call stacks on axis 0
    placed = inputs.to_global({"i": batch}, mesh, True, axis)["i"]
    placed = multihost_utils.process_allgather(placed, tiled=True)
    assert (np.asarray(placed) == batch).all(), placed.tolist()
"""


def test_a_resident_global_batch_keeps_its_order_on_a_mesh_that_interleaves_processes(tmp_path):
    """Each device gets its own slice of the global index batch wherever the mesh places the process's
    devices (a TPU mesh can interleave hosts), so a layout never permutes the batch (BN groups, crops)."""
    port = str(free_port())
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-c", PLACE_BATCH, port]
    procs = [
        subprocess.Popen([*cmd, str(i)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for i in (0, 1)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-3000:] + errors[1][-3000:]


def test_per_device_bn_resumed_on_another_device_count_is_refused(tmp_path):
    """per_device BN on 8 devices normalises over groups of 2; resumed on 1 device, the groups would
    silently hold all 16 examples: refused, naming the groups, before anything trains."""
    flags = {
        "model.bn": "per_device",
        "num_train_steps": 2,
        "eval_every_steps": 2,
        "checkpoint_every_steps": 2,
    }
    train.train_and_evaluate(tiny_config(**flags), str(tmp_path))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    longer = [f"--config.{k}={v}" for k, v in {**flags, "num_train_steps": 4}.items()]
    cmd = [sys.executable, "-m", "resnet_jax.main", "--config=tests/configs/tiny.py", f"--workdir={tmp_path}"]
    out = subprocess.run([*cmd, *longer], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "normalised BN over groups of 2 examples" in out.stderr and "groups of 16" in out.stderr
    assert "on 8 devices" in out.stderr and "Traceback" not in out.stderr
    assert checkpoint_steps(tmp_path) == [2]


def test_a_run_resumed_on_another_device_count_continues_and_counts_each_part_s_devices(tmp_path):
    """Global BN trained on 8 devices resumes on 1 (the replicated state restores onto any mesh);
    summary.json's device_hours adds 8 devices' time before the checkpoint and 1 device's after it."""
    flags = {"num_train_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 2}
    train.train_and_evaluate(tiny_config(**flags), str(tmp_path))
    before = json.loads((tmp_path / "checkpoints" / "2" / "clock" / "metadata").read_text())["wall_time_s"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    longer = [f"--config.{k}={v}" for k, v in {**flags, "num_train_steps": 4}.items()]
    cmd = [sys.executable, "-m", "resnet_jax.main", "--config=tests/configs/tiny.py", f"--workdir={tmp_path}"]
    out = subprocess.run([*cmd, *longer], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "resuming from step 2" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-2000:]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 4 and summary["num_devices"] == 1
    after = summary["wall_time_s"] - before
    assert summary["device_hours"] * 3600 == pytest.approx(8 * before + after, rel=1e-3)


def test_two_processes_stream_a_tfds_dataset_and_evaluate_every_image_once(tiny_tfds, tmp_path):
    """The streamed path over 2 processes: each reads its own part of the splits through tf.data.

    The processes' training batches differ from one process's, so the runs cannot match step for
    step; with a zero learning rate and BN momentum 1 the state stays at its (seeded) initial value,
    so their evaluation must match that of the initial state on one process x 8 devices: every
    validation image evaluated once, the padded batches masked, the sums reduced across processes.
    """
    overrides = {
        "data.name": tiny_tfds["name"],
        "data.tfds_dir": tiny_tfds["tfds_dir"],
        "data.shuffle_buffer": 16,
        "data.image_size": 32,
        "data.eval_batch_size": 8,
        "batch_size": 8,
        "num_train_steps": 2,
        "eval_every_steps": 2,
        "schedule.base_lr": 0.0,
        "model.bn_momentum": 1.0,
    }
    procs = start_pair(tmp_path, *(f"--config.{k}={v}" for k, v in overrides.items()))
    run = train.setup(tiny_config(**overrides))  # one process, 8 devices: the initial state evaluated
    one = run.evaluate(run.init())
    outputs = finish_pair(procs)
    assert "on process 0 of 2, 8 cpu devices" in outputs[0] and "done: step 2" in outputs[0]
    (two,) = [r for r in read_metrics(tmp_path) if "eval/count" in r]
    assert one["eval/count"] == two["eval/count"] == TINY_TFDS_VAL
    assert one["eval/top1_error"] == two["eval/top1_error"], (one, two)
    np.testing.assert_allclose(one["eval/loss"], two["eval/loss"], rtol=1e-5)


@pytest.mark.parametrize("pipeline", ["tfdata", "dali"])
def test_two_processes_read_a_jpeg_folder_as_one_process_does(tmp_path, pipeline):
    """An ImageNet-style folder, through tf.data or DALI: each process reads its rows of the same global
    batches, so 2 x 4 devices train as 1 x 8 (up to the cross-device sums' order, reduction_order_tolerance)
    and evaluate every image once."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is optional: pip install nvidia-dali-cuda120==2.4.0")
    from test_data_folder import SIZES, blocks, write

    rng, folder = np.random.default_rng(5), tmp_path / "folder"
    for cls in ("n0", "n1"):
        write(folder, "train", cls, [blocks(rng, *SIZES[i % 4]) for i in range(8)])
        write(folder, "val", cls, [blocks(rng, *SIZES[i % 4]) for i in range(5)])
    overrides = {
        "data.name": "imagenet2012", "data.path": str(folder), "data.pipeline": pipeline,
        "data.num_classes": 0, "data.image_size": 32, "data.eval_crop": "center", "data.augment": "paper",
        "batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 2,
    }  # fmt: skip
    single, pair = tmp_path / "single", tmp_path / "pair"
    procs = start_pair(pair, *(f"--config.{k}={v}" for k, v in overrides.items()))
    one = train.train_and_evaluate(tiny_config(**overrides), str(single))
    outputs = finish_pair(procs)
    assert "on process 0 of 2, 8 cpu devices" in outputs[0] and "done: step 2" in outputs[0]
    a, b = restore_state(single, 2), restore_state(pair, 2)
    tol = reduction_order_tolerance(steps=2, devices=8, bn_layers=len(a["batch_stats"]))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)
    (two,) = [r for r in read_metrics(pair) if "eval/count" in r]
    assert two["eval/count"] == 10 and one["done"]  # the 10 validation images, each once
