"""PyTorch ResNet state_dicts -> this package's variables, so that logits match the torch model's.

Two layouts are read, chosen by the model's stem:
- ImageNet models: torchvision's ResNet (`conv1`, `bn1`, `layer{1..4}.{i}.{conv1,bn1,...,downsample.0,
  downsample.1}`, `fc`); use `stride_on="3x3"` for torchvision's v1.5 bottlenecks and shortcut "B".
- CIFAR models: the classic PyTorch CIFAR ResNet (`conv1`, `bn1`, `layer{1..3}.{i}.{conv1,bn1,conv2,bn2,
  shortcut.0,shortcut.1}`, `linear`); option A's LambdaLayer shortcut has no parameters.

Torch inputs are NCHW: feed our model `x.transpose(0, 2, 3, 1)`. torch is never imported here; values may
be torch tensors or numpy arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


def _torch_module(path: tuple[str, ...], cifar: bool) -> str:
    """The torch name of a flax module path: stage2_block0/shortcut_conv -> layer2.0.downsample.0."""
    parts = []
    for name in path:
        m = _BLOCK.match(name)
        if m:
            parts.append(f"layer{m.group(1)}.{m.group(2)}")
        elif name in ("shortcut_conv", "shortcut_bn"):
            parts.append(f"{'shortcut' if cifar else 'downsample'}.{0 if name == 'shortcut_conv' else 1}")
        elif name == "fc" and cifar:
            parts.append("linear")
        else:
            parts.append(name)
    return ".".join(parts)


def _to_flax(value: np.ndarray, leaf: str, ndim: int) -> np.ndarray:
    """Torch layout -> flax layout: conv OIHW -> HWIO, Linear (out, in) -> (in, out)."""
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if ndim == 4 else value.T
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The torch shape of a flax variable of this shape (inverse of `_to_flax`)."""
    if leaf == "kernel":
        return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (shape[1], shape[0])
    return tuple(shape)


def _as_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like."""
    if hasattr(value, "detach"):  # a torch.Tensor (also bfloat16, which .numpy() refuses)
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the `module.` prefix that torch.nn.DataParallel checkpoints carry, and BN step counters."""
    keys = list(state_dict)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    return {
        (k[len("module.") :] if strip else k): v
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }


def expected_torch_keys(model: Any) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (flax (collection, *path), torch shape) for every variable of the unrolled `model`."""
    unrolled = model.with_options(scan_blocks=False, remat=False)
    size = 32 if model.stem == "cifar" else 64
    shapes = jax.eval_shape(lambda: unrolled.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        module, name = path[1:-1], path[-1]
        key = f"{_torch_module(module, model.stem == 'cifar')}.{_LEAF[name]}"
        out[key] = (path, _torch_shape(leaf.shape, name))
    return out


def load_torch_state_dict(model: Any, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Variables {"params", "batch_stats"} for `model` (from `models.create`) from a torch state_dict.

    Raises ValueError, naming the key, for a missing or unexpected key or a shape mismatch. A model
    created with `scan_blocks=True` gets the stacked layout.
    """
    state = _strip_prefix(state_dict)
    expected = expected_torch_keys(model)
    for key, (path, _) in expected.items():
        if key not in state:
            raise ValueError(f"state_dict is missing {key!r}, needed for the model's {'/'.join(path)}")
    for key in state:
        if key not in expected:
            raise ValueError(
                f"state_dict has unexpected key {key!r}, which this model has no variable for "
                f"(check the family, depth and shortcut option)"
            )
    flat = {}
    for key, (path, shape) in expected.items():
        value = _as_numpy(state[key])
        if value.shape != shape:
            raise ValueError(f"state_dict key {key!r} has shape {value.shape}; the model expects {shape}")
        flat[path] = jnp.asarray(_to_flax(value, path[-1], value.ndim))
    variables = traverse_util.unflatten_dict(flat)
    if model.options.scan_blocks:
        from resnet_jax.models import convert_variables

        variables = convert_variables(variables, to_scan=True)
    return variables
