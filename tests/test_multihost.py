"""Two processes x 4 CPU devices (jax.distributed over localhost) == one process x 8 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from helpers import ROOT, read_metrics, restore_state, tiny_config

from resnet_jax import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_eight_devices(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    train.train_and_evaluate(tiny_config(), str(single))

    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resnet_jax.main",
                "--config=tests/configs/tiny.py",
                f"--workdir={multi}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "8 cpu device(s)" in outputs[0] and "done: step 4" in outputs[0]
    assert "done: step" not in outputs[1] and "step 2/4" not in outputs[1]  # only process 0 reports

    a, b = restore_state(single, 4), restore_state(multi, 4)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)
    losses = [[r.get("train/loss") for r in read_metrics(d)] for d in (single, multi)]
    np.testing.assert_allclose(np.array(losses[0], float), np.array(losses[1], float), rtol=1e-5)
