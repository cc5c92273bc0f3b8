"""The PyTorch peer of issue #7: torchvision's ResNet-50 training step, timed as train_step.py times ours.

    python3 benchmarks/peer_torchvision.py --json out.json                   # eager and torch.compile
    python3 benchmarks/peer_torchvision.py --modes eager --json out.json     # eager only (no compile)
    python3 benchmarks/peer_torchvision.py --model tiny --device cpu --batch_size 4 --image_size 32  # smoke

The setting of the issue's torch figures (4,663 img/s eager, 6,887 with torch.compile on one H200):
torchvision `resnet50` (v1.5), channels_last memory format, bf16 autocast, SGD with momentum 0.9 and
weight decay 1e-4, cross-entropy, one synthetic batch resident on the device. Not part of the
package and not imported by it; needs torch (and torchvision unless --model tiny).

Timing: the first step alone (for torch.compile mostly its compilation; reported as "compile_s"),
then `--warmup` steps, then `--repeats` x `--steps` steps, each repeat from a synchronised device to
a synchronised device; the median repeat is reported.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


def build_model(name: str, num_classes: int):
    """torchvision's model `name`, or "tiny": a small conv net for smoke runs without torchvision."""
    import torch

    if name == "tiny":
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, num_classes),
        )
    import torchvision

    return getattr(torchvision.models, name)(num_classes=num_classes)


def measure(args: argparse.Namespace, mode: str) -> dict:
    """One row: the training step in `mode` ("eager" or "compile")."""
    import torch
    import torch.nn.functional as F

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    forward = torch.compile(model) if mode == "compile" else model

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times) / args.steps
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "peer": f"torchvision {args.model}, channels_last, bf16 autocast, {mode}",
        "peer_source": f"torch {torch.__version__}"
        + ("" if args.model == "tiny" else f", torchvision {__import__('torchvision').__version__}"),
        "mode": mode,
        "dtype": "bfloat16 autocast",
        "dynamic_scale": False,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "device_kind": kind,
        "platform": device.type,
        "device_count": 1,
        "lower_s": 0.0,
        "compile_s": first_s,  # the first step: for torch.compile, mostly its compilation
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "step_ms": 1e3 * step_s,
        "step_ms_repeats": [1e3 * t / args.steps for t in times],
        "images_per_s": args.batch_size / step_s,
        "final_loss": float(loss.detach()),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50", help="a torchvision model, or 'tiny' for a smoke run")
    p.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", help="write the rows here, one file per mode: <stem>_<mode>.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in ("eager", "compile"):
            raise SystemExit(f"--modes: unknown mode {mode!r}; use eager and/or compile")
        row = measure(args, mode)
        rows.append(row)
        print(
            f"{row['peer']}, batch {row['batch_size']} on {row['device_kind']}: first step "
            f"{row['compile_s']:.1f} s, {row['step_ms']:.2f} ms/step, {row['images_per_s']:,.0f} img/s",
            flush=True,
        )
        if args.json:  # one file per row, the format session_summary.py reads ("peer")
            path = pathlib.Path(args.json)
            write_json(path.with_name(f"{path.stem}_{mode}{path.suffix}"), {"peer": row})
    return rows


if __name__ == "__main__":
    main()
