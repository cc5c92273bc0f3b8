"""Shared helpers for trainer tests: tiny configs and checkpoint readers."""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """CIFAR ResNet-8 on synthetic 32x32 data, a few steps: seconds on CPU."""
    c = config.base_config()
    c.model.depth = 8
    c.batch_size = 16
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.data.name = "synthetic"
    c.data.image_size = 32
    c.data.synthetic_examples = 64
    c.data.eval_batch_size = 24
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


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
