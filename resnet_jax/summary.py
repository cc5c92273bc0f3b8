"""A model's layout, parameters and multiply-adds per stage, like the paper's Table 1.

python -m resnet_jax.summary --family=cifar --depth=110 --shortcut=A
python -m resnet_jax.summary --family=imagenet --depth=50 --shortcut=B --stride_on=3x3 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from resnet_jax import cli, models
from resnet_jax.models.flops import group_by_stage, params_by_stage, stage_name, trace


def _filters(model: models.ResNet, s: int) -> str:
    """The block of stage `s` (1-based) as in Table 1: "[3x3, 16] x2" or "[1x1, 64; 3x3, 64; 1x1, 256]"."""
    w = model.widths[s - 1]
    block = f"[3x3, {w}] x2" if model.block == "basic" else f"[1x1, {w}; 3x3, {w}; 1x1, {4 * w}]"
    if s == 1 and model.stem == "imagenet":
        return f"3x3 max pool, stride 2; {block}"
    return block


def summarise(
    family: str = "cifar",
    depth: int = 20,
    shortcut: str = "A",
    stride_on: str = "1x1",
    num_classes: int = 0,
    image_size: int = 0,
) -> dict[str, Any]:
    """{"model", "params", "macs", "stages": [{name, output_size, blocks, filters, params, macs}]}.

    `num_classes` and `image_size` of 0 mean the family's (10 and 32 for CIFAR, 1000 and 224 for ImageNet).
    Raises models.ModelError for an invalid specification.
    """
    cifar = family == "cifar"
    num_classes = num_classes or (10 if cifar else 1000)
    image_size = image_size or (32 if cifar else 224)
    if num_classes < 1 or image_size < 1:
        raise models.ModelError(
            f"num_classes and image_size must be positive; got {num_classes} and {image_size}"
        )
    model = models.create(family, depth, shortcut, num_classes, stride_on=stride_on)
    layers, shapes = trace(model, image_size)
    params = params_by_stage(shapes["params"])
    macs = group_by_stage(layers)
    sizes = {stage_name(x.path[0]): list(x.out_shape[1:-1]) or [1, 1] for x in layers}  # each row's last
    stem = f"7x7, {model.widths[0]}, stride 2" if model.stem == "imagenet" else f"3x3, {model.widths[0]}"
    layout = [("conv1", 1, stem)]
    layout += [(f"conv{s + 1}_x", n, _filters(model, s)) for s, n in enumerate(model.stage_sizes, start=1)]
    layout.append(("fc", 1, f"average pool, {num_classes}-d fc"))
    stages = [
        dict(name=name, output_size=sizes[name], blocks=n, filters=f, params=params[name], macs=macs[name])
        for name, n, f in layout
    ]
    spec = dict(family=family, depth=depth, shortcut=shortcut, num_classes=num_classes, image_size=image_size)
    if model.block == "bottleneck":
        spec["stride_on"] = stride_on
    return dict(
        model=spec,
        params=models.count_params(shapes["params"]),
        macs=sum(r["macs"] for r in stages),
        stages=stages,
    )


def _human(n: int) -> str:
    """40551040 -> "40.55 M"."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table with a totals row."""
    spec = summary["model"]
    extra = f", stride on the {spec['stride_on']}" if "stride_on" in spec else ""
    net = "plain" if spec["shortcut"] == "none" else "ResNet"
    title = (
        f"{net}-{spec['depth']} ({spec['family']}, shortcut {spec['shortcut']}{extra}), "
        f"{spec['image_size']}x{spec['image_size']} input, {spec['num_classes']} classes"
    )
    header = ("stage", "output size", "blocks", "filters", "params", "multiply-adds")
    body = [
        (
            r["name"],
            "x".join(map(str, r["output_size"])),
            str(r["blocks"]),
            r["filters"],
            f"{r['params']:,}",
            f"{r['macs']:,}",
        )
        for r in summary["stages"]
    ]
    total = ("total", "", "", "", f"{summary['params']:,}", f"{summary['macs']:,}")
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    lines = [title, line(header), rule, *map(line, body), rule, line(total)]
    lines.append(f"{_human(summary['params'])} params, {_human(summary['macs'])} multiply-adds per image")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.Parser(prog="python -m resnet_jax.summary", description=__doc__.splitlines()[0])
    p.add_argument("--family", default="cifar", help="cifar | imagenet")
    p.add_argument("--depth", type=cli.integer(1), default=20)
    p.add_argument("--shortcut", default="A", help="A | B | C | none (plain)")
    p.add_argument("--stride_on", default="1x1", help="bottleneck stride: 1x1 (paper, v1) | 3x3 (v1.5)")
    p.add_argument("--num_classes", type=int, default=0, help="0: 10 for cifar, 1000 for imagenet")
    p.add_argument("--image_size", type=int, default=0, help="0: 32 for cifar, 224 for imagenet")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary; exit status 2 with the one-sentence error for an invalid model."""
    args = parse_args(argv)
    try:
        summary = summarise(
            args.family, args.depth, args.shortcut, args.stride_on, args.num_classes, args.image_size
        )
    except models.ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
