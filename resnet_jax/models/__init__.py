"""The paper's model zoo: `create(family, depth, shortcut, ...)` returns a flax.linen Module.

model = models.create(family="cifar", depth=110, shortcut="A", num_classes=10)
variables = model.init(rng, images_nhwc)                 # {"params", "batch_stats"}
logits = model.apply(variables, images_nhwc, train=False)
variables = models.load_torch_state_dict(model, torch_model.state_dict())  # PyTorch weights
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.blocks import SHORTCUTS
from resnet_jax.models.nets import IMAGENET_STAGES, ResNet
from resnet_jax.models.torch_weights import load_torch_state_dict as load_torch_state_dict

FAMILIES = ("cifar", "imagenet")
CIFAR_DEPTHS_NAMED = (20, 32, 44, 56, 110, 1202)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ModelError(ValueError):
    """An invalid model specification; the message is one sentence saying what is valid."""


def validate(
    family: str, depth: int, shortcut: str = "A", stride_on: str = "1x1", init: str = "fan_in"
) -> None:
    """Raise ModelError with one sentence if the combination is not in the zoo."""
    if family not in FAMILIES:
        raise ModelError(f"model family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if family == "cifar" and (not isinstance(depth, int) or depth < 8 or (depth - 2) % 6):
        named = ", ".join(map(str, CIFAR_DEPTHS_NAMED))
        raise ModelError(f"CIFAR depth must be 6n+2 ({named}, ...); got {depth}")
    if family == "imagenet" and depth not in IMAGENET_STAGES:
        valid = ", ".join(map(str, IMAGENET_STAGES))
        raise ModelError(f"ImageNet depth must be one of {valid}; got {depth}")
    if shortcut not in SHORTCUTS:
        raise ModelError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {shortcut!r}")
    if stride_on not in ("1x1", "3x3"):
        raise ModelError(f"stride_on must be '1x1' (paper, v1) or '3x3' (v1.5); got {stride_on!r}")
    if init not in ("fan_in", "fan_out"):
        raise ModelError(f"init must be 'fan_in' (paper) or 'fan_out' (torchvision); got {init!r}")


def create(
    family: str = "cifar",
    depth: int = 20,
    shortcut: str = "A",
    num_classes: int = 10,
    *,
    dtype: Any = jnp.float32,
    scan_blocks: bool = False,
    scan_unroll: int = 1,
    remat: bool = False,
    stride_on: str = "1x1",
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    bn_group_size: int = 0,
    zero_init_residual: bool = False,
    init: str = "fan_in",
    stem_channels: int = 0,
) -> ResNet:
    """The ResNet of the given family and depth (see the module docstring)."""
    validate(family, depth, shortcut, stride_on, init)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        dtype = DTYPES[dtype]
    if family == "cifar":
        n = (depth - 2) // 6
        arch = dict(stem="cifar", block="basic", stage_sizes=(n, n, n), widths=(16, 32, 64))
    else:
        block, sizes = IMAGENET_STAGES[depth]
        arch = dict(stem="imagenet", block=block, stage_sizes=sizes, widths=(64, 128, 256, 512))
    return ResNet(
        **arch,
        num_classes=num_classes,
        shortcut=shortcut,
        stride_on=stride_on,
        dtype=dtype,
        scan_blocks=scan_blocks,
        scan_unroll=scan_unroll,
        remat=remat,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        bn_group_size=bn_group_size,
        zero_init_residual=zero_init_residual,
        init_mode=init,
        stem_channels=stem_channels,
    )


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
