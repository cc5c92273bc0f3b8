"""What analyze measures in a net: the responses of its 3x3 layers (the BN outputs, Fig. 7) and the
gradient norm of each block; pure functions of a model, its variables and a batch (no files, no data).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.losses import cross_entropy

_BN = re.compile(r"bn(\d+)$")
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


def response_layers(params: dict) -> list[tuple[str, ...]]:
    """Paths of the BN modules that follow a 3x3 convolution, in network order.

    A BN `bn<k>` follows the sibling `conv<k>`; only 3x3 kernels count: in a CIFAR net the stem
    and both convolutions of every basic block (6n+1 layers for depth 6n+2), in a bottleneck only
    bn2; the ImageNet 7x7 stem and the 1x1 convolutions (shortcut projections included) do not.
    """
    found = []

    def walk(tree: dict, path: tuple[str, ...]) -> None:
        for key, sub in tree.items():
            m = _BN.match(key)
            conv = tree.get(f"conv{m.group(1)}") if m else None
            if conv is not None and tuple(conv["kernel"].shape[:2]) == (3, 3):
                found.append((*path, key))
            elif isinstance(sub, dict) and not m:
                walk(sub, (*path, key))

    walk(dict(params), ())
    return sorted(found, key=layer_order)


def layer_order(path: tuple[str, ...]) -> tuple[int, int, int]:
    """(stage, block, k) for ("stage2_block1", "bn2"); the stem sorts first."""
    m = _BLOCK.match(path[0]) if len(path) > 1 else None
    stage, block = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return stage, block, int(_BN.match(path[-1]).group(1))


def layer_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


def layer_responses(model: Any, variables: dict, images: jax.Array, layers: list[tuple[str, ...]]) -> dict:
    """{layer name: BN output [B, H, W, C]} of an eval-mode forward pass, via capture_intermediates."""
    wanted = set(layers)

    def is_wanted(mdl: Any, method: str) -> bool:
        return method == "__call__" and tuple(mdl.path) in wanted

    _, state = model.apply(
        variables, images, train=False, capture_intermediates=is_wanted, mutable=["intermediates"]
    )
    out = {}
    for path in layers:
        node = state["intermediates"]
        for key in path:
            node = node[key]
        out[layer_name(path)] = node["__call__"][0]
    return out


def masked_moments(y: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-channel (count, mean, sum of squared deviations) over the examples in `mask` and all positions."""
    y = y.astype(jnp.float32)
    w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (y.ndim - 1))
    n = w.sum() * np.prod(y.shape[1:-1])
    axes = tuple(range(y.ndim - 1))
    mean = (y * w).sum(axes) / jnp.maximum(n, 1.0)
    m2 = (jnp.square(y - mean) * w).sum(axes)
    return n, mean, m2


def combine(a: tuple | None, b: tuple) -> tuple:
    """Chan et al.'s parallel update of (count, mean, M2), in float64 on the host."""
    nb, mb, m2b = (np.asarray(x, np.float64) for x in b)
    if a is None:
        return nb, mb, m2b
    na, ma, m2a = a
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * nb / n, m2a + m2b + delta**2 * na * nb / n


def layer_stds(n: float, mean: np.ndarray, m2: np.ndarray) -> tuple[float, float]:
    """(mean over channels of the per-channel std, std over all elements) from per-channel moments."""
    var = m2 / n
    return float(np.sqrt(var).mean()), float(np.sqrt(var.mean() + mean.var()))


def block_of(path: tuple[str, ...]) -> str:
    """The row a parameter belongs to: its block ("stage1_block0"), "fc", or "stem" (conv1, bn1)."""
    return path[0] if _BLOCK.match(path[0]) or path[0] == "fc" else "stem"


def block_order(name: str) -> tuple[int, int]:
    if name == "stem":
        return 0, 0
    if name == "fc":
        return 10**6, 0
    m = _BLOCK.match(name)
    return int(m.group(1)), int(m.group(2))


def block_grad_norms(model: Any, variables: dict, images: jax.Array, labels: jax.Array) -> dict:
    """{block: L2 norm of d(mean training loss)/d(its parameters)}, train-mode BN as in training."""

    def loss_fn(params: dict) -> jax.Array:
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return cross_entropy(logits, labels).mean()

    grads = jax.grad(loss_fn)(variables["params"])
    squares: dict[str, jax.Array] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        name = block_of(keys)
        squares[name] = squares.get(name, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
    return {name: jnp.sqrt(s) for name, s in squares.items()}
