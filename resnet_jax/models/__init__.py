"""The paper's model zoo: `create(family, depth, shortcut, ...)` or `build(options)` returns a flax Module.

Models know nothing of configs beyond the ModelOptions record, nor of data or training.

model = models.create(family="cifar", depth=110, shortcut="A", num_classes=10)
variables = model.init(rng, images_nhwc)                 # {"params", "batch_stats"}
logits = model.apply(variables, images_nhwc, train=False)
variables = models.load_torch_state_dict(model, torch_model.state_dict())  # PyTorch weights
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import config
from resnet_jax.config import ModelError
from resnet_jax.models.nets import IMAGENET_STAGES, ResNet
from resnet_jax.models.torch_weights import load_torch_state_dict as load_torch_state_dict
from resnet_jax.schema import ModelOptions

__all__ = ["IMAGENET_STAGES", "ResNet", "build", "create", "init_variables", "load_torch_state_dict"]


def build(options: ModelOptions, num_classes: int) -> ResNet:
    """The net of `options` (a run's: `config.model_options(cfg, num_devices)`) with `num_classes` outputs;
    ModelError (one sentence) for options outside the zoo."""
    config.check_model(options)
    return ResNet(options, num_classes)


def create(
    family: str = "cifar", depth: int = 20, shortcut: str = "A", num_classes: int = 10, **options: Any
):
    """The ResNet of the given family and depth; `options` are ModelOptions fields by their config names
    (dtype as a name or a jnp dtype, bn_group_size > 0 for ghost BN). Raises ModelError (one sentence)."""
    dtype = options.pop("dtype", "float32")
    if not isinstance(dtype, str):
        dtype = jnp.dtype(dtype).name
    if options.get("bn_group_size") and "bn" not in options:
        options["bn"] = "ghost"
    unknown = set(options) - {f.name for f in dataclasses.fields(ModelOptions)}
    if unknown:
        raise ModelError(f"unknown model option(s) {', '.join(sorted(unknown))}; see schema.ModelOptions")
    return build(
        ModelOptions(family=family, depth=depth, shortcut=shortcut, dtype=dtype, **options), num_classes
    )


def init_variables(model: ResNet, seed: int, image_shape: tuple[int, ...]) -> dict:
    """{"params", "batch_stats"} of a freshly initialised net: a pure function of `seed` (call under jit)."""
    # rbg keys make the init cheap to compile.
    variables = model.init(jax.random.key(seed, impl="rbg"), jnp.zeros((1, *image_shape), jnp.float32))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")
_SCAN = re.compile(r"stage(\d+)_scan$")


def scan_to_unrolled(tree: dict) -> dict:
    """Turn each collection's `stage{s}_scan/block` stacked subtree into `stage{s}_block{1..}`."""
    out = {}
    for key, sub in tree.items():
        m = _SCAN.match(key)
        if m is None:
            out[key] = sub
            continue
        stacked = sub["block"]
        length = jax.tree.leaves(stacked)[0].shape[0]
        for i in range(length):
            out[f"stage{m.group(1)}_block{i + 1}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return out


def unrolled_to_scan(tree: dict) -> dict:
    """Stack `stage{s}_block{1..}` into `stage{s}_scan/block` (the layout of `scan_blocks=True`).

    Only stages with more than two blocks are scanned, as in `ResNet.stage`.
    """
    stages: dict[str, list[tuple[int, Any]]] = {}
    out = {}
    for key, sub in tree.items():
        m = _BLOCK.match(key)
        if m is None or int(m.group(2)) == 0:
            out[key] = sub
        else:
            stages.setdefault(m.group(1), []).append((int(m.group(2)), sub))
    for s, blocks in stages.items():
        blocks.sort(key=lambda kv: kv[0])
        if len(blocks) < 2:
            out[f"stage{s}_block1"] = blocks[0][1]
            continue
        subs = [b for _, b in blocks]
        out[f"stage{s}_scan"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *subs)}
    return out


def convert_variables(variables: dict, to_scan: bool) -> dict:
    """Apply the scan <-> unrolled conversion to every collection of a variables dict."""
    fn = unrolled_to_scan if to_scan else scan_to_unrolled
    return {col: fn(dict(tree)) for col, tree in variables.items()}
