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
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax import cli, probes
from resnet_jax.probes import block_order, layer_name, response_layers
from resnet_jax.report import pyplot, save_figure, write_csv

USAGE_EXIT = cli.USAGE_EXIT
COMMANDS = ("responses", "gradients")


class AnalysisError(ValueError):
    """Bad input (missing run, checkpoint or step); the message is one sentence."""


# ---------------------------------------------------------------------------------------------
# Nets: a run's config, model and variables, ready for analysis.


@dataclasses.dataclass
class Net:
    """One network to analyse: label, the run it came from, the unscanned float32 model and variables."""

    label: str
    step: int | None  # None: at initialisation
    inputs: Any  # inputs.Inputs of the run's config, in float32
    trained_model: Any  # models.ResNet as the run trained it (scanned or not)
    model: Any  # models.ResNet, unscanned, float32, without remat
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

    from resnet_jax import workdir as files

    saved = files.read_config(workdir)
    if saved is None:
        raise AnalysisError(f"{workdir} holds no config.json: give the workdir of a training run")
    return ml_collections.ConfigDict(saved)


def load_net(cfg: Any, label: str, workdir: str | None, step: int | None, at_init: bool) -> Net:
    """Build the run's inputs and net, restore (or initialise) its variables and unstack them."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from resnet_jax import checkpoints, config, data, inputs, models

    num_devices = jax.device_count()
    config.check(cfg, num_devices)
    data.validate(cfg.data)
    mesh = inputs.create_mesh()
    feed = inputs.create(cfg, mesh, jnp.float32)
    options = config.model_options(cfg, num_devices)
    trained = models.build(options, cfg.data.num_classes or feed.num_classes)
    if workdir is None or at_init:
        variables = jax.jit(lambda: models.init_variables(trained, cfg.seed, feed.image_shape))()
        rng, where = inputs.augment_key(cfg.seed), None
    else:
        state = checkpoints.read_state(workdir, step, NamedSharding(mesh, P()))
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        rng, where = state["rng"], int(jax.device_get(state["step"]))
    if options.scan_blocks:
        variables = models.convert_variables(variables, to_scan=False)
    model = trained.with_options(scan_blocks=False, remat=False, dtype="float32")
    return Net(label, where, feed, trained, model, variables, rng)


# ---------------------------------------------------------------------------------------------
# Responses (Figure 7).


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
    if not max_examples or max_examples >= m or not inputs.device_held:
        yield from limited(inputs.host_eval(), max_examples)
        return
    size = len(next(iter(inputs.host_eval()))["index"])  # the evaluation's batch shape
    chosen = np.arange(max_examples) * m // max_examples
    for lo in range(0, max_examples, size):
        idx = chosen[lo : lo + size]
        index = np.pad(idx, (0, size - len(idx)), mode="edge").astype(np.int32)
        yield {"index": index, "mask": np.arange(size) < len(idx)}


def responses(net: Net, max_examples: int = 0) -> list[dict]:
    """Rows {layer_index, layer, std, std_all, examples} for every 3x3 layer, over the eval set."""
    model = net.model
    layers = response_layers(net.variables["params"])

    @jax.jit
    def moments(variables: dict, batch: dict) -> dict:
        images, _, mask = net.inputs.eval_images(batch)
        if images.ndim == 5:  # ten-crop evaluation: every crop of an example counts
            crops = images.shape[1]
            images, mask = images.reshape((-1, *images.shape[2:])), jnp.repeat(mask, crops)
        ys = probes.layer_responses(model, variables, images.astype(jnp.float32), layers)
        return {name: probes.masked_moments(y, mask) for name, y in ys.items()}

    totals: dict[str, tuple] = {}
    examples = 0
    for batch in eval_subset(net.inputs, max_examples):
        examples += int(batch["mask"].sum())
        host = jax.device_get(moments(net.variables, net.inputs.device_batch(batch)))
        totals = {name: probes.combine(totals.get(name), m) for name, m in host.items()}
    rows = []
    for i, path in enumerate(layers, start=1):
        std, std_all = probes.layer_stds(*totals[layer_name(path)])
        rows.append(dict(layer_index=i, layer=layer_name(path), std=std, std_all=std_all, examples=examples))
    return rows


# ---------------------------------------------------------------------------------------------
# Gradients (the vanishing-gradient argument).


def gradients(net: Net, num_batches: int = 4) -> list[dict]:
    """Rows {block_index, block, grad_norm, batches}: per-block gradient norms, mean over training batches.

    The batches are the run's first training steps, one at a time (never stacked as steps_per_call stacks
    them).
    """
    model = net.model

    @jax.jit
    def norms(variables: dict, batch: dict, rng: jax.Array) -> dict:
        images, labels = net.inputs.train_images(rng, batch)
        return probes.block_grad_norms(model, variables, images.astype(jnp.float32), labels)

    key = jax.random.wrap_key_data(net.rng)
    totals: dict[str, float] = {}
    for i, batch in zip(range(num_batches), net.inputs.train_batches(0), strict=False):
        rng = jax.random.fold_in(key, i)
        host = jax.device_get(norms(net.variables, batch, rng))
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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    if not argv or argv[0] not in COMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        raise AnalysisError(f"the first argument must be one of {', '.join(COMMANDS)}; got {got}")
    p = cli.Parser(prog=f"python -m resnet_jax.analyze {argv[0]}", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="", help="run directories, comma-separated")
    p.add_argument(
        "--labels", default="", help="comma-separated legend labels (default: plain-20, ResNet-56, ...)"
    )
    p.add_argument("--step", type=cli.integer(0), default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default="", help="output directory (default: <first workdir>/analysis)")
    if argv[0] == "responses":
        p.add_argument(
            "--max_examples",
            type=cli.integer(0),
            default=0,
            help="evaluation examples to use (0: all; CIFAR, image folders: evenly spaced, not the first N)",
        )
        p.add_argument("--statistic", choices=("channel", "all"), default="channel", help="std plotted")
    else:
        p.add_argument("--config", action="append", default=[], help="config file[:arg], at initialisation")
        p.add_argument("--override", action="append", default=[], help="key=value for every --config")
        p.add_argument("--at_init", action="store_true", help="workdirs: their config, freshly initialised")
        p.add_argument("--batches", type=cli.integer(1), default=4, help="training batches to average over")
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
                cli.override(cfg, key, value)
        except Exception as e:  # noqa: BLE001 - a config file is the user's code: any error is bad input
            raise AnalysisError(f"cannot load config {spec}: {cli.loading_error(e)}") from None
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


def output_dir(args: argparse.Namespace) -> epath.Path:
    """--out, else <first workdir>/analysis, else ./analysis; created."""
    first = next((w for w in args.workdir.split(",") if w), "")
    out = epath.Path(args.out) if args.out else epath.Path(first or ".") / "analysis"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except Exception as e:  # noqa: BLE001 - OSError locally, the store's own errors for gs://
        raise AnalysisError(f"cannot create the output directory {out} ({type(e).__name__})") from None
    return out


def run_responses(args: argparse.Namespace, nets: list[Net], out: epath.Path) -> list[epath.Path]:
    results = {net.label: responses(net, args.max_examples) for net in nets}
    key = "std" if args.statistic == "channel" else "std_all"
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


def run_gradients(args: argparse.Namespace, nets: list[Net], out: epath.Path) -> list[epath.Path]:
    results = {net.label: gradients(net, args.batches) for net in nets}
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

    from resnet_jax import config

    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\n`python -m resnet_jax.analyze <{'|'.join(COMMANDS)}> --help` lists a command's flags.")
        return 0
    try:
        args = parse_args(argv)
        nets = nets_from_args(args)
        out = output_dir(args)  # before the work: an unwritable --out is said at once
        paths = (run_responses if args.command == "responses" else run_gradients)(args, nets, out)
    except (AnalysisError, config.ConfigError, config.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C stops at once (it only reads): no traceback
    sys.exit(main())
