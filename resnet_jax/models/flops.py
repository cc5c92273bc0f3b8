"""Exact multiply-adds of a model, counted on its real modules (the paper's "FLOPs").

Every `nn.Conv` and `nn.Dense` call is intercepted while `model.init` is traced under `jax.eval_shape`
(nothing is computed). Per example: a convolution costs out_h * out_w * kh * kw * cin * cout / groups,
a dense layer in * out. BN, ReLU, pooling, the additions and option A's zero padding are not counted.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_STAGE = re.compile(r"stage(\d+)_")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution or dense call: its module path, shapes (batch 1) and multiply-adds."""

    path: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: tuple[int, ...]  # (kh, kw) for a convolution, () for dense
    macs: int


def _layer_macs(module: nn.Module, x: Any, y: Any) -> int:
    cin, cout = x.shape[-1], y.shape[-1]
    if isinstance(module, nn.Conv):
        spatial = int(np.prod(y.shape[1:-1]))
        return spatial * int(np.prod(module.kernel_size)) * cin * cout // module.feature_group_count
    return cin * cout


def trace(model: nn.Module, image_size: int) -> tuple[list[Layer], dict]:
    """Every conv and dense call of `model` on one `image_size`^2 RGB image, in call order, and the
    variables' shapes. The model is traced unrolled and with the plain stem: scan, remat and the
    channel-padded stem (`stem_channels`, the same function) do not change the count."""
    unrolled = (
        model.with_options(scan_blocks=False, remat=False, stem_channels=0)
        if hasattr(model, "options")
        else model
    )
    layers: list[Layer] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
            x = args[0]
            kernel = tuple(module.kernel_size) if isinstance(module, nn.Conv) else ()
            path = tuple(module.scope.path)
            layers.append(Layer(path, tuple(x.shape), tuple(out.shape), kernel, _layer_macs(module, x, out)))
        return out

    def init() -> Any:
        with nn.intercept_methods(interceptor):
            return unrolled.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))

    shapes = jax.eval_shape(init)
    return layers, shapes


def count_macs(model: nn.Module, image_size: int) -> int:
    """Multiply-adds of one forward pass on one image (conv + dense)."""
    return sum(layer.macs for layer in trace(model, image_size)[0])


def stage_name(top: str) -> str:
    """The paper's row for a top-level module: conv1 (conv1, bn1), conv2_x (stage1_...), ..., fc."""
    m = _STAGE.match(top)
    if m:
        return f"conv{int(m.group(1)) + 1}_x"
    return "conv1" if top == "bn1" else top


def macs_by_stage(model: nn.Module, image_size: int) -> dict[str, int]:
    """Multiply-adds per row of the paper's Table 1: conv1, conv2_x, ..., fc (in network order)."""
    return group_by_stage(trace(model, image_size)[0])


def group_by_stage(layers: list[Layer]) -> dict[str, int]:
    """Sum the layers' multiply-adds per row (conv1, conv2_x, ..., fc), in network order."""
    out: dict[str, int] = {}
    for layer in layers:
        name = stage_name(layer.path[0])
        out[name] = out.get(name, 0) + layer.macs
    return out


def params_by_stage(params: Any) -> dict[str, int]:
    """Parameter count per row (conv1, conv2_x, ..., fc), BN scale and bias included."""
    out: dict[str, int] = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        name = stage_name(path[0])
        out[name] = out.get(name, 0) + int(np.prod(leaf.shape))
    return out
