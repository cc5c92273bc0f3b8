"""Analyse trained runs: layer responses (the paper's Figure 7) and per-block gradient norms.

    python -m resnet_jax.analyze responses --workdir=runs/plain20,runs/resnet20 [--labels=plain-20,ResNet-20]
        [--step=N] [--max_examples=N] [--statistic=channel|all] [--out=<dir>]
    python -m resnet_jax.analyze gradients --workdir=runs/plain20,runs/resnet20 [--step=N] [--at_init]
    python -m resnet_jax.analyze gradients --config=configs/cifar10.py:plain20 \
        --config=configs/cifar10.py:resnet20 [--override=key=value ...] [--batches=N]

Responses: for every 3x3 convolution, its BN output (eval mode: running statistics), i.e. before the
ReLU and before the shortcut addition, over the evaluation set. The CIFAR stem is a 3x3 layer and counts
(layer 1), so a CIFAR net of depth 6n+2 has 6n+1 layers (ResNet-20: 19); both BNs of a basic block count
(bn1 is followed by a ReLU only, bn2 by the addition), of a bottleneck only bn2. For each output channel
c, std_c is the population standard deviation over all examples and positions; a layer's `std` is the
mean of std_c over its channels. `std_all` is the std over all the layer's elements (examples, positions
and channels together: sqrt(mean_c var_c + var_c mean_c)); the CSV has both, --statistic picks the plot's.

Gradients: the L2 norm of the gradient of the training loss (train-mode BN, as the trainer's step)
with respect to all parameters of each block (the stem and fc as their own rows), averaged over
--batches training batches.

Scanned models are unstacked (`models.convert_variables`) and analysed as the unscanned model, in
float32, without remat. Files go to --out (default <first workdir>/analysis, or ./analysis). Workdirs and
--out may be local or object-store URLs (gs://): everything is read and written through etils.epath
(checkpoints through orbax), and nothing in a workdir is changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax.report import pyplot, save_figure, write_csv

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
    """The paper's name of the net: plain-20, ResNet-56, ResNet-34 (B) (the shortcut shown unless A)."""
    m = cfg.model
    if m.shortcut == "none":
        return f"plain-{m.depth}"
    return f"ResNet-{m.depth}" + ("" if m.shortcut == "A" else f" ({m.shortcut})")


def read_config(workdir: str) -> Any:
    """The resolved config a run wrote to <workdir>/config.json."""
    import ml_collections

    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise AnalysisError(f"{workdir} holds no config.json: give the workdir of a training run")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore(workdir: str, run: Any, step: int | None) -> Any:
    """The TrainState of checkpoint `step` (None: the latest readable one), read-only."""
    import orbax.checkpoint as ocp

    from resnet_jax import train

    directory = train.checkpoint_dir(workdir)
    steps = ocp.utils.checkpoint_steps(directory) if directory.is_dir() else []
    if not steps:
        raise AnalysisError(f"no checkpoints in {directory}; train the run first")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        if step is None:
            state, _ = train.restore_checkpoint(mngr, run.abstract_state(), set_aside_damaged=False)
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


def eval_subset(inputs: Any, max_examples: int) -> Iterator[dict]:
    """The evaluation batches, all or `max_examples` examples of them: an evenly spaced subset of
    device-resident data (an image folder's test split is sorted by class, so its first N examples
    would be one or two classes), the first N of streamed data."""
    m = inputs.num_eval
    if not max_examples or max_examples >= m or not inputs.resident:
        yield from limited(inputs.eval_batches(), max_examples)
        return
    size = len(next(iter(inputs.eval_batches()))["index"])  # the evaluation's batch shape
    chosen = np.arange(max_examples) * m // max_examples
    for lo in range(0, max_examples, size):
        idx = chosen[lo : lo + size]
        index = np.pad(idx, (0, size - len(idx)), mode="edge").astype(np.int32)
        yield {"index": index, "mask": np.arange(size) < len(idx)}


def responses(net: Net, max_examples: int = 0) -> list[dict]:
    """Rows {layer_index, layer, std, std_all, examples} for every 3x3 layer, over the eval set."""
    from resnet_jax import train

    run, model = net.run, net.model
    layers = response_layers(net.variables["params"])

    @jax.jit
    def moments(variables: dict, batch: dict, arrays: dict) -> dict:
        images, _, mask = run.inputs.eval_images(batch, arrays)
        if images.ndim == 5:  # ten-crop evaluation: every crop of an example counts
            crops = images.shape[1]
            images, mask = images.reshape((-1, *images.shape[2:])), jnp.repeat(mask, crops)
        ys = layer_responses(model, variables, images.astype(jnp.float32), layers)
        return {name: masked_moments(y, mask) for name, y in ys.items()}

    totals: dict[str, tuple] = {}
    examples = 0
    for batch in eval_subset(run.inputs, max_examples):
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
    """Rows {block_index, block, grad_norm, batches}: per-block gradient norms, mean over training batches.

    The batches are the run's first training steps, one at a time (not `run.batches`, which stacks
    `steps_per_call` of them).
    """
    from resnet_jax import train

    run, model = net.run, net.model

    @jax.jit
    def norms(variables: dict, batch: dict, arrays: dict, rng: jax.Array) -> dict:
        images, labels = run.inputs.train_images(rng, batch, arrays)
        return block_grad_norms(model, variables, images.astype(jnp.float32), labels)

    key = jax.random.wrap_key_data(net.rng)
    totals: dict[str, float] = {}
    for i, batch in zip(range(num_batches), run.inputs.train_batches(0), strict=False):
        device_batch = train.to_global(batch, run.mesh, run.inputs.resident)
        rng = jax.random.fold_in(key, i)
        host = jax.device_get(norms(net.variables, device_batch, run.inputs.arrays, rng))
        totals = {name: totals.get(name, 0.0) + float(v) for name, v in host.items()}
    names = sorted(totals, key=block_order)
    return [
        dict(block_index=i, block=name, grad_norm=totals[name] / num_batches, batches=num_batches)
        for i, name in enumerate(names)
    ]


# ---------------------------------------------------------------------------------------------
# Files: CSV, plots and the console table.


def plot_responses(results: dict[str, list[dict]], key: str, path: epath.Path) -> None:
    """Figure 7: std against layer index (top), and sorted by magnitude (bottom), one line per net."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7))
    for label, rows in results.items():
        stds = [r[key] for r in rows]
        top.plot(range(1, len(stds) + 1), stds, marker=".", label=label)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), marker=".", label=label)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    what = "std (mean over channels)" if key == "std" else "std (all elements)"
    for ax in (top, bottom):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_gradients(results: dict[str, list[dict]], path: epath.Path) -> None:
    """Per-block gradient norm against block index (0: stem, last: fc), log y, one line per net."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in results.items():
        ax.plot([r["block_index"] for r in rows], [r["grad_norm"] for r in rows], marker=".", label=label)
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("block index (0: stem, last: fc)")
    ax.set_ylabel("gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def table(results: dict[str, list[dict]], index: str, name: str, value: str) -> str:
    """One row per index, one column per net; the name column only where every net has the same name."""
    longest = max(results.values(), key=len)
    header = [index, name, *results]
    body = []
    for i, row in enumerate(longest):
        names = {rows[i][name] if i < len(rows) else None for rows in results.values()}
        cells = [str(row[index]), row[name] if len(names) == 1 else ""]
        cells += [f"{rows[i][value]:.4g}" if i < len(rows) else "" for rows in results.values()]
        body.append(cells)
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if k == 1 else c.rjust(w) for k, (c, w) in pairs).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *map(line, body)])


# ---------------------------------------------------------------------------------------------
# Command line.


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one sentence and exit status 2."""

    def error(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USAGE_EXIT)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    if not argv or argv[0] not in COMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        raise AnalysisError(f"the first argument must be one of {', '.join(COMMANDS)}; got {got}")
    p = Parser(prog=f"python -m resnet_jax.analyze {argv[0]}", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="", help="run directories, comma-separated")
    p.add_argument(
        "--labels", default="", help="comma-separated legend labels (default: plain-20, ResNet-56, ...)"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default="", help="output directory (default: <first workdir>/analysis)")
    if argv[0] == "responses":
        p.add_argument(
            "--max_examples",
            type=int,
            default=0,
            help="evaluation examples to use (0: all; CIFAR, image folders: evenly spaced, not the first N)",
        )
        p.add_argument("--statistic", choices=("channel", "all"), default="channel", help="std plotted")
    else:
        p.add_argument("--config", action="append", default=[], help="config file[:arg], at initialisation")
        p.add_argument("--override", action="append", default=[], help="key=value for every --config")
        p.add_argument("--at_init", action="store_true", help="workdirs: their config, freshly initialised")
        p.add_argument("--batches", type=int, default=4, help="training batches to average over")
    args = p.parse_args(argv[1:])
    args.command = argv[0]
    return args


def nets_from_args(args: argparse.Namespace) -> list[Net]:
    """Every --workdir (restored) and --config (initialised) net, labelled."""
    from resnet_jax import experiments, sweep

    specs: list[tuple[Any, str | None]] = []
    for workdir in [w for w in args.workdir.split(",") if w]:
        if not epath.Path(workdir).is_dir():
            raise AnalysisError(f"no such run directory: {workdir}")
        specs.append((read_config(workdir), workdir))
    for spec in getattr(args, "config", []):
        try:
            cfg = experiments.load_config(spec)
            for key, value in sweep.parse_overrides(args.override).items():
                set_dotted(cfg, key, value)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise AnalysisError(f"cannot load config {spec}: {e}") from None
        specs.append((cfg, None))
    if not specs:
        extra = " or --config=<file.py[:arg]>" if args.command == "gradients" else ""
        raise AnalysisError(f"give --workdir=<run>[,<run>...]{extra}")
    labels = [x for x in args.labels.split(",") if x]
    if labels and len(labels) != len(specs):
        raise AnalysisError(f"--labels has {len(labels)} names for {len(specs)} nets")
    if args.step is not None and args.command == "gradients" and not any(w for _, w in specs):
        raise AnalysisError("--step needs a --workdir")
    nets = []
    at_init = getattr(args, "at_init", False)
    for i, (cfg, workdir) in enumerate(specs):
        net = load_net(cfg, labels[i] if labels else net_name(cfg), workdir, args.step, at_init)
        if not labels and args.command == "gradients":
            net.label += " at init" if net.step is None else f" at step {net.step}"
        nets.append(net)
    seen: dict[str, int] = {}
    for net in nets:  # legend labels must be unique
        seen[net.label] = seen.get(net.label, 0) + 1
        if seen[net.label] > 1:
            net.label += f" ({seen[net.label]})"
    return nets


def set_dotted(cfg: Any, key: str, value: str) -> None:
    """cfg["model"]["depth"] = value for "model.depth", the value parsed as the existing key's type."""
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    old = node[leaf]
    if isinstance(old, bool):
        node[leaf] = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)):
        node[leaf] = type(old)(value)
    else:
        node[leaf] = value


def output_dir(args: argparse.Namespace) -> epath.Path:
    """--out, else <first workdir>/analysis, else ./analysis; created."""
    first = next((w for w in args.workdir.split(",") if w), "")
    out = epath.Path(args.out) if args.out else epath.Path(first or ".") / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_responses(args: argparse.Namespace, nets: list[Net]) -> list[epath.Path]:
    results = {net.label: responses(net, args.max_examples) for net in nets}
    key = "std" if args.statistic == "channel" else "std_all"
    out = output_dir(args)
    rows = [dict(net=net.label, step=net.step, **row) for net in nets for row in results[net.label]]
    paths = [out / "responses.csv", out / "responses.png"]
    write_csv(rows, paths[0])
    plot_responses(results, key, paths[1])
    examples = {r["examples"] for r in rows}
    print(
        f"std of each 3x3 layer's BN output ({'mean over channels' if key == 'std' else 'all elements'}), "
        f"over {', '.join(map(str, sorted(examples)))} evaluation examples"
    )
    print(table(results, "layer_index", "layer", key))
    return paths


def run_gradients(args: argparse.Namespace, nets: list[Net]) -> list[epath.Path]:
    results = {net.label: gradients(net, args.batches) for net in nets}
    out = output_dir(args)
    rows = [dict(net=net.label, step=net.step, **row) for net in nets for row in results[net.label]]
    paths = [out / "gradients.csv", out / "gradients.png"]
    write_csv(rows, paths[0])
    plot_gradients(results, paths[1])
    what = "L2 norm of the loss gradient w.r.t. each block's parameters"
    print(f"{what}, mean over {args.batches} training batches")
    print(table(results, "block_index", "block", "grad_norm"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; bad input is one sentence on stderr and exit status 2."""
    from absl import logging

    from resnet_jax import data, models, train

    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\n`python -m resnet_jax.analyze <{'|'.join(COMMANDS)}> --help` lists a command's flags.")
        return 0
    try:
        args = parse_args(argv)
        nets = nets_from_args(args)
        paths = (run_responses if args.command == "responses" else run_gradients)(args, nets)
    except (AnalysisError, train.ConfigError, models.ModelError, data.DataError, train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
