"""Analyse trained runs: layer responses (the paper's Figure 7) and per-block gradient norms.

    python -m resnet_jax.analyze responses --workdir=runs/plain20,runs/resnet20 [--labels=plain-20,ResNet-20]
        [--step=N] [--max_examples=N] [--statistic=channel|all] [--out=<dir>]
    python -m resnet_jax.analyze gradients --workdir=runs/plain20,runs/resnet20 [--step=N] [--at_init]
    python -m resnet_jax.analyze gradients --config=configs/cifar10.py:plain20 --config=configs/cifar10.py:resnet20

Responses: for every 3x3 convolution (the CIFAR stem included), its BN output (eval mode: running
statistics), i.e. before the ReLU and before the shortcut addition, over the evaluation set. For each
output channel c, std_c is the population standard deviation over all examples and positions; a layer's
`std` is the mean of std_c over its channels. `std_all` is the std over all the layer's elements
(examples, positions and channels together: sqrt(mean_c var_c + var_c mean_c)).

Gradients: the L2 norm of the gradient of the training loss (train-mode BN, as the trainer's step)
with respect to all parameters of each block (the stem and fc as their own rows), averaged over
--batches training batches.

Scanned models are unstacked (`models.convert_variables`) and analysed as the unscanned model, in
float32, without remat. Files go to --out (default <first workdir>/analysis, or ./analysis).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

USAGE_EXIT = 2
COMMANDS = ("responses", "gradients")
_BN = re.compile(r"bn(\d+)$")
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


class AnalysisError(ValueError):
    """Bad input (missing run, checkpoint or step); the message is one sentence."""


# ---------------------------------------------------------------------------------------------
# Nets: a run's config, model and variables, ready for analysis.


@dataclasses.dataclass
class Net:
    """One network to analyse: label, the run it came from, the unscanned float32 model and variables."""

    label: str
    step: int | None  # None: at initialisation
    run: Any  # train.Run
    model: Any  # models.ResNet, unscanned
    variables: dict  # {"params", "batch_stats"}, unscanned
    rng: jax.Array  # the state's raw key data


def net_name(cfg: Any) -> str:
    """ "plain-20", "ResNet-56", "ResNet-34 (B)": the paper's names (shortcut shown unless it is A)."""
    m = cfg.model
    if m.shortcut == "none":
        return f"plain-{m.depth}"
    return f"ResNet-{m.depth}" + ("" if m.shortcut == "A" else f" ({m.shortcut})")


def read_config(workdir: str) -> Any:
    """The resolved config a run wrote to <workdir>/config.json."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise AnalysisError(f"{workdir} holds no config.json: give the workdir of a training run")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore(workdir: str, run: Any, step: int | None) -> Any:
    """The TrainState of checkpoint `step` (None: the latest readable one), read-only."""
    import orbax.checkpoint as ocp

    from resnet_jax import train

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise AnalysisError(f"no checkpoints in {directory}; train the run first")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        if step is None:
            state, _ = train.restore_checkpoint(mngr, run.abstract_state())
            return state
        if step not in steps:
            raise AnalysisError(f"no checkpoint for step {step} in {directory}; there are {sorted(steps)}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(run.abstract_state()))
        return mngr.restore(step, args=args)["state"]
    finally:
        mngr.close()


def load_net(cfg: Any, label: str, workdir: str | None, step: int | None, at_init: bool) -> Net:
    """Set the run up, restore (or initialise) its state and unstack it for the unscanned model."""
    from resnet_jax import models, train

    run = train.setup(cfg)
    if workdir is None or at_init:
        state = run.init()
    else:
        state = restore(workdir, run, step)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if cfg.model.scan_blocks:
        variables = models.convert_variables(variables, to_scan=False)
    model = run.model.clone(scan_blocks=False, remat=False, dtype=jnp.float32)
    where = None if workdir is None or at_init else int(jax.device_get(state.step))
    return Net(label, where, run, model, variables, state.rng)


# ---------------------------------------------------------------------------------------------
# Responses (Figure 7).


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


def limited(batches: Iterator[dict], max_examples: int) -> Iterator[dict]:
    """Eval batches with the mask cut after `max_examples` examples (0: all)."""
    seen = 0
    for batch in batches:
        if max_examples and seen >= max_examples:
            return
        mask = np.asarray(batch["mask"], bool)
        if max_examples:
            mask = mask & (np.cumsum(mask) + seen <= max_examples)
        seen += int(mask.sum())
        yield {**batch, "mask": mask}


def responses(net: Net, max_examples: int = 0) -> list[dict]:
    """Rows {layer_index, layer, std, std_all, examples} for every 3x3 layer, over the eval set."""
    from resnet_jax import train

    run, model = net.run, net.model
    layers = response_layers(net.variables["params"])

    @jax.jit
    def moments(variables: dict, batch: dict, arrays: dict) -> dict:
        images, _, mask = run.inputs.eval_images(batch, arrays)
        ys = layer_responses(model, variables, images.astype(jnp.float32), layers)
        return {name: masked_moments(y, mask) for name, y in ys.items()}

    totals: dict[str, tuple] = {}
    examples = 0
    for batch in limited(run.inputs.eval_batches(), max_examples):
        examples += int(batch["mask"].sum())
        device_batch = train.to_global(batch, run.mesh, run.inputs.resident)
        host = jax.device_get(moments(net.variables, device_batch, run.inputs.arrays))
        totals = {name: combine(totals.get(name), m) for name, m in host.items()}
    rows = []
    for i, path in enumerate(layers, start=1):
        std, std_all = layer_stds(*totals[layer_name(path)])
        rows.append(dict(layer_index=i, layer=layer_name(path), std=std, std_all=std_all, examples=examples))
    return rows


# ---------------------------------------------------------------------------------------------
# Gradients (the vanishing-gradient argument).


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
    from resnet_jax import train

    def loss_fn(params: dict) -> jax.Array:
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return train.cross_entropy(logits, labels).mean()

    grads = jax.grad(loss_fn)(variables["params"])
    squares: dict[str, jax.Array] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        name = block_of(keys)
        squares[name] = squares.get(name, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
    return {name: jnp.sqrt(s) for name, s in squares.items()}


def gradients(net: Net, num_batches: int = 4) -> list[dict]:
    """Rows {block_index, block, grad_norm, batches}: per-block gradient norms, mean over training batches."""
    run, model = net.run, net.model

    @jax.jit
    def norms(variables: dict, batch: dict, arrays: dict, rng: jax.Array) -> dict:
        images, labels = run.inputs.train_images(rng, batch, arrays)
        return block_grad_norms(model, variables, images.astype(jnp.float32), labels)

    key = jax.random.wrap_key_data(net.rng)
    totals: dict[str, float] = {}
    for i, batch in zip(range(num_batches), run.batches(0), strict=False):
        host = jax.device_get(norms(net.variables, batch, run.inputs.arrays, jax.random.fold_in(key, i)))
        totals = {name: totals.get(name, 0.0) + float(v) for name, v in host.items()}
    names = sorted(totals, key=block_order)
    return [
        dict(block_index=i, block=name, grad_norm=totals[name] / num_batches, batches=num_batches)
        for i, name in enumerate(names)
    ]
