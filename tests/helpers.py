"""Shared helpers for trainer tests: tiny configs and checkpoint readers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import cli, schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
# The tiny TFDS dataset of real JPEGs (conftest.py's tiny_tfds): 3 classes, upscaled CIFAR images.
TINY_TFDS_SIZES = [
    (400, 300),
    (300, 400),
    (480, 480),
    (341, 256),
]  # (W, H): landscape, portrait, square, small
TINY_TFDS_TRAIN, TINY_TFDS_VAL = 24, 11  # 11: the last eval batch is padded


U32 = 2.0**-24  # float32's unit roundoff


def reordered_sum_rtol(terms: int, sums: int = 1) -> float:
    """How far two float32 evaluations of one computation may differ when the grouping of its sums
    differs (another device split, another XLA program or fusion), relative to the magnitudes summed.

    One sum of `terms` terms regrouped differs by at most (terms - 1) u (u: unit roundoff), typically by
    sqrt(terms) u (the rounding errors add like a random walk). `sums` such sums in sequence (the BN
    moments and gradients of every layer, over steps) are added here linearly, which overstates their
    independent errors by ~sqrt(sums): that is the margin."""
    return sums * math.sqrt(terms) * U32


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """tests/configs/tiny.py (CIFAR ResNet-8, synthetic 32x32, 4 steps) with dotted-key overrides."""
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "tests" / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in overrides.items():
        cli.override(c, key, value)
    return c


def data_cfg(section: dict | None = None, **overrides):
    """A whole `data` config section (the schema's defaults) with the keys of `section` and `overrides`."""
    return schema.data_config(**{**(section or {}), **overrides})


def trainer_command(workdir, overrides: dict, *extra: str) -> list[str]:
    """`python -m resnet_jax.main` on tests/configs/tiny.py in `workdir` with `--config.<key>=<value>`s."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return [
        sys.executable,
        "-m",
        "resnet_jax.main",
        "--config=tests/configs/tiny.py",
        f"--workdir={workdir}",
        *flags,
        *extra,
    ]


def popen_as_in_a_terminal(cmd: list[str], **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` for a child the test signals: SIGINT and SIGHUP reach it as from a terminal.

    Under `nohup` or a shell's `&` every child starts with them ignored, and neither Python nor bash can
    catch a signal ignored when it started; the test would then measure how it was launched. The parent's
    ignored dispositions are set to default for the spawn only (no preexec_fn: JAX's threads forbid it)."""
    ignored = [s for s in (signal.SIGINT, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_IGN]
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)
    try:
        return subprocess.Popen(cmd, **kwargs)
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


def without_dali(monkeypatch) -> None:
    """Imports of nvidia.* fail from now on in this test, as on a machine without DALI installed."""
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def restore_state(workdir, step: int) -> dict:
    """The raw state tree of checkpoint `step` as numpy arrays."""
    import jax

    path = pathlib.Path(workdir, "checkpoints", str(step), "state").resolve()
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return jax.device_get(checkpointer.restore(path, target))


def assert_trees_equal(a, b) -> None:
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def checkpoint_steps(workdir) -> list[int]:
    """The steps of the complete checkpoints in `workdir` (set-aside or temporary ones excluded)."""
    d = pathlib.Path(workdir, "checkpoints")
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def damage_checkpoint(workdir, step: int) -> None:
    """Truncate every file of checkpoint `step`'s state to half its size, as a torn copy would."""
    for f in pathlib.Path(workdir, "checkpoints", str(step), "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
