"""Steady-state throughput, compile time and MFU of the trainer's own training step.

    python benchmarks/train_step.py --config=configs/cifar10.py:resnet56 --json /tmp/r56.json
    python benchmarks/train_step.py --config=configs/imagenet_r50.py:v1.5 --set model.dtype=bfloat16
    python benchmarks/train_step.py --config=configs/cifar10.py:resnet20 --steps_per_call 1,20
    python benchmarks/train_step.py --config=configs/cifar10.py:resnet20 --pack 1,2,4,8,16  # seeds a program

What is timed is exactly what `python -m resnet_jax.main` executes: `train.setup(cfg)` builds the
run, `run.init()` the state, `run.batches()` the device batches and `run.update` (jitted, donating
the state) the step. The update is compiled ahead of time (`run.update.lower(...).compile()`, the two
phases timed separately) and that executable is then called; its first call is timed on its own.

Data: "synthetic" (random uint8 images resident on the device, gathered and normalised inside the
step; no input pipeline) unless --real_data. The trainer augments only real data: synthetic CIFAR
figures leave out the on-device pad/crop/flip; use --real_data --set data.path=<cifar tar> for them.

Timing: `warmup` steps, then `repeats` x `steps` training steps, each repeat timed from an idle
device to jax.block_until_ready(final state): no host sync inside a repeat; the median is reported.
Two loops are timed: "step" feeds batches staged on the device beforehand (the step alone), "loop"
makes each batch on the host as the trainer does and accumulates the metrics (the trainer's loop
without logging, evaluation and checkpoints), after two untimed calls of its own (the first sums of
`train.accumulate` compile its eager ops).

--pack K (a comma list measures each): K seeds side by side in one program, as `python -m
resnet_jax.main --config.num_seeds=K` runs them (`pack.setup(cfg)`, `Pack.init`, `Pack.batches` and the
packed `update`, the trainer's step vmapped over the seeds); img/s and FLOPs are the pack's aggregate
(K x batch images a step), `step_ms` one packed step of all K.

FLOPs: XLA's cost analysis of the compiled call (compiled.cost_analysis()["flops"]: one device's part
of the SPMD program, times the device count), and the model's exact multiply-adds
(resnet_jax.models.flops.count_macs) x 2 (multiply + add) x 3 (forward + backward ~ 3 x forward) per
image as a cross-check. XLA's cost analysis counts the body of a while
loop once, whatever its trip count: with steps_per_call > 1 or scanned blocks the compiled call has
loops, and its XLA FLOPs per step are taken from a loop-free row of the same model measured in the
same process (--steps_per_call 1,k), else left out. MFU = FLOPs per step / step time / peak dense
bf16 rate of the devices (PEAK_BF16; no MFU on CPU or unknown devices).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402 (jax-free at import)
    add_config_flags,
    build_config,
    compilation_cache,
    compile_update,
    environment,
    run_calls,
    staged_batches,
    write_json,
)

# Dense bfloat16 matrix FLOP/s of one device, matched (first hit) against jax's device_kind.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # SXM; also GH200
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
)


def peak_bf16(device_kind: str, platform_name: str) -> float | None:
    if platform_name == "cpu":
        return None
    return next((peak for name, peak in PEAK_BF16 if name.lower() in device_kind.lower()), None)


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)^\}", re.M | re.S)
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?([%\w.\-, ]+)\}?")
_HEAVY = ("convolution(", " dot(", "cudnn$conv", "cublas", "triton_gemm")


def loops_with_matmuls(hlo: str) -> bool:
    """Whether a while loop of this optimised HLO runs convolutions or matrix products in its body.

    XLA's cost analysis counts such a body once whatever the trip count. Loops without them (e.g. the
    gathers XLA:CPU expands into loops) do not matter for the FLOP count.
    """
    comps = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo)}

    def called(text: str) -> list[str]:
        return [n.strip().lstrip("%") for m in _CALLED.finditer(text) for n in m.group(1).split(",")]

    bodies = [n for text in comps.values() for n in re.findall(r"\bwhile\(.*?body=%?([\w.\-]+)", text)]
    seen: set[str] = set()
    stack = list(bodies)
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        if any(h in comps[name] for h in _HEAVY):
            return True
        stack.extend(called(comps[name]))
    return False


def cost(compiled) -> tuple[float | None, float | None, bool]:
    """(flops, bytes accessed, whether loops hide convolutions/matmuls from the count) of a compiled call."""
    flops = nbytes = None
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, list | tuple) else ca
        flops, nbytes = ca.get("flops"), ca.get("bytes accessed")
    except Exception as e:  # noqa: BLE001 - some backends have no cost analysis
        print(f"note: no cost analysis ({type(e).__name__}: {e})", file=sys.stderr)
    try:
        loops = loops_with_matmuls(compiled.as_text())
    except Exception:  # noqa: BLE001
        loops = True  # unknown: do not trust the count
    return flops, nbytes, loops


def memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def update_fn(run, args):
    """The step to compile: the trainer's own `run.update` unless an experiment flag changes its jit.

    --state_layout auto lets XLA choose the state's memory layouts (jax's Layout.AUTO on the state
    in and out) instead of row-major: on a GPU the conv kernels' weight gradients come out of cuDNN
    in another layout, and the donated update otherwise transposes them and copies the result
    back (BENCHMARKS.md, "What the GPU step launches"). --no_donate compiles it without donating
    the state. Both only re-jit the trainer's step function (`run.update.__wrapped__`), unchanged.
    """
    import jax

    if args.state_layout == "default" and args.donate:
        return run.update
    from jax.experimental.layout import Format, Layout

    kwargs = {"donate_argnums": (0,)} if args.donate else {}
    if args.state_layout == "auto":
        kwargs["in_shardings"] = (Format(Layout.AUTO), None)
        kwargs["out_shardings"] = (Format(Layout.AUTO), None)
    return jax.jit(run.update.__wrapped__, **kwargs)


def state_layouts_round_trip(compiled) -> bool:
    """Whether the compiled step returns the state in the layouts it takes it in (needed to loop it)."""
    import jax

    def layouts(formats):
        return [f.layout for f in jax.tree.leaves(formats)]

    return layouts(compiled.input_formats[0][0]) == layouts(compiled.output_formats[0])


def place_state(compiled, state, args):
    """`state` in the layouts the compiled step takes (--state_layout auto), as it also returns them."""
    if args.state_layout == "default":
        return state
    import jax

    if not state_layouts_round_trip(compiled):
        raise SystemExit("--state_layout auto: XLA returns the state in other layouts than it takes it")
    return jax.device_put(state, compiled.input_formats[0][0])


def timed_repeats(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(args, steps_per_call: int, log=print, seeds: int = 0) -> dict:
    """One row: build, compile, run and time the step at `steps_per_call` (`seeds` > 0: a pack of so many
    seeds, its aggregate images)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resnet_jax import pack, train
    from resnet_jax.models import flops as flops_lib

    k = steps_per_call
    cfg = build_config(args, k)
    cfg.num_seeds = max(seeds, 1)
    t = time.perf_counter()
    run = pack.setup(cfg) if seeds else train.setup(cfg)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    state = jax.block_until_ready(run.init())
    init_s = time.perf_counter() - t
    batches = run.batches(0)
    first = next(batches)
    # Layout.AUTO lowers on shapes only: a jax.Array argument has a concrete layout already.
    spec = run.abstract_state() if args.state_layout == "auto" else state
    compiled, lower_s, compile_s = compile_update(update_fn(run, args), spec, first)
    state = place_state(compiled, state, args)
    xla_flops, xla_bytes, loops = cost(compiled)
    log(f"  compiled in {lower_s:.1f} s (lower) + {compile_s:.1f} s (compile)")

    t = time.perf_counter()
    state = run_calls(compiled, state, [first], 1)
    first_run_s = time.perf_counter() - t

    staged = staged_batches(batches, args.steps, k)
    calls = len(staged)
    state = run_calls(compiled, state, staged, -(-args.warmup // k))

    box = {"state": state}

    def step_loop():
        s = box["state"]
        box["state"] = run_calls(compiled, s, staged, calls)

    def trainer_loop(n: int = calls):
        s, total = box["state"], None
        for _ in range(n):
            s, metrics = compiled(s, next(batches))
            total = train.accumulate(total, metrics)
        box["state"], _ = jax.block_until_ready((s, total))

    step_times = timed_repeats(step_loop, args.repeats)
    if args.loop:
        trainer_loop(min(calls, 2))  # untimed: the eager ops of `accumulate` compile on their first use
    loop_times = timed_repeats(trainer_loop, args.repeats) if args.loop else []
    _, metrics = compiled(box["state"], staged[0])
    metrics = jax.device_get(metrics)
    loss = float(np.sum(metrics["loss"])) / float(np.sum(metrics["count"]))
    box.clear()  # the state was donated

    steps = calls * k
    step_s = statistics.median(step_times) / steps
    loop_s = statistics.median(loop_times) / steps if loop_times else None
    devices = jax.devices()
    kind, plat, n_dev = devices[0].device_kind, devices[0].platform, len(devices)
    peak = peak_bf16(kind, plat)
    image_size = run.inputs.image_shape[0]
    macs = flops_lib.count_macs(run.model, image_size)
    images = cfg.batch_size * max(seeds, 1)  # a pack trains K batches a step
    analytic = 6.0 * macs * images
    # The compiled program is one device's part of the SPMD step: x devices for the whole step.
    xla_per_step = xla_flops * n_dev / k if (xla_flops is not None and not loops) else None
    row = {
        "config": args.config,
        "family": cfg.model.family,
        "depth": cfg.model.depth,
        "shortcut": cfg.model.shortcut,
        "stride_on": cfg.model.stride_on,
        "scan_blocks": bool(cfg.model.scan_blocks),
        "remat": bool(cfg.model.remat),
        "dtype": jnp.dtype(run.dtype).name,
        "batch_size": cfg.batch_size,
        "image_size": image_size,
        "steps_per_call": k,
        "pack": seeds,
        "data": cfg.data.name,
        "augmented": cfg.data.name != "synthetic" and cfg.model.family == "cifar",
        "overrides": list(args.set or []),
        "state_layout": args.state_layout,
        "donate": args.donate,
        "device_kind": kind,
        "platform": plat,
        "device_count": n_dev,
        "setup_s": setup_s,
        "init_s": init_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "first_run_s": first_run_s,
        "timed_steps": steps,
        "repeats": args.repeats,
        "step_ms": 1e3 * step_s,
        "step_ms_repeats": [1e3 * x / steps for x in step_times],
        "images_per_s": images / step_s,
        "images_per_s_per_device": images / step_s / n_dev,
        "loop_step_ms": 1e3 * loop_s if loop_s else None,
        "loop_images_per_s": images / loop_s if loop_s else None,
        "final_loss": loss,
        "xla_flops_per_call_per_device": xla_flops,
        "xla_bytes_per_call_per_device": xla_bytes,
        "loops_hide_flops": loops,
        "xla_flops_per_step": xla_per_step,
        "analytic_macs_per_image": macs,
        "analytic_flops_per_step": analytic,
        "peak_bf16_flops": peak * n_dev if peak else None,
        "memory": memory(compiled),
    }
    fill_mfu(row)
    return row


def count_flops(args) -> dict:
    """XLA's cost analysis of the compiled step on this backend, without running it (--flops_only).

    XLA:GPU's cost analysis leaves out the cuDNN convolutions, so the FLOPs of a GPU step are
    counted by compiling the same step for the CPU, whose analysis counts them; nothing is run, so
    any batch size compiles here. MFU = these FLOPs / a measured step time / the peak.
    """
    import jax
    import jax.numpy as jnp

    from resnet_jax import train
    from resnet_jax.models import flops as flops_lib

    cfg = build_config(args, 1)
    t = time.perf_counter()
    run = train.setup(cfg)
    update = update_fn(run, args)
    compiled, _, _ = compile_update(update, run.abstract_state(), next(run.batches(0)))
    xla_flops, xla_bytes, loops = cost(compiled)
    n_dev = len(jax.devices())
    macs = flops_lib.count_macs(run.model, run.inputs.image_shape[0])
    analytic = 6.0 * macs * cfg.batch_size
    xla = xla_flops * n_dev if (xla_flops is not None and not loops) else None
    return {
        "config": args.config,
        "overrides": list(args.set or []),
        "batch_size": cfg.batch_size,
        "dtype": jnp.dtype(run.dtype).name,
        "backend": jax.default_backend(),
        "lower_and_compile_s": time.perf_counter() - t,
        "xla_flops_per_step": xla,
        "xla_bytes_per_step": xla_bytes * n_dev if xla_bytes is not None else None,
        "loops_hide_flops": loops,
        "analytic_flops_per_step": analytic,
        "xla_over_analytic": xla / analytic if xla else None,
    }


def fill_mfu(row: dict) -> None:
    step_s = row["step_ms"] / 1e3
    peak = row["peak_bf16_flops"]
    xla = row["xla_flops_per_step"]
    row["xla_over_analytic"] = xla / row["analytic_flops_per_step"] if xla else None
    row["mfu_xla"] = xla / step_s / peak if (xla and peak) else None
    row["mfu_analytic"] = row["analytic_flops_per_step"] / step_s / peak if peak else None
    row["achieved_tflops_analytic"] = row["analytic_flops_per_step"] / step_s / 1e12


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<24} {'batch':>5} {'dtype':>8} {'k':>3} {'data':>9} {'compile s':>9} {'first s':>8} "
        f"{'step ms':>9} {'img/s':>9} {'loop img/s':>10} {'MFU xla':>7} {'MFU 6MAC':>8} {'xla/6MAC':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        name = f"{r['family']}-{r['depth']}{'-scan' if r['scan_blocks'] else ''}"
        if r["family"] == "imagenet" and r["stride_on"] == "3x3":
            name += "-v1.5"
        name += "-auto_layout" if r.get("state_layout") == "auto" else ""
        name += "-no_donate" if r.get("donate") is False else ""
        name += f" x{r['pack']} seeds" if r.get("pack") else ""
        lines.append(
            f"{name:<24} {r['batch_size']:>5} {r['dtype']:>8} {r['steps_per_call']:>3} "
            f"{r['data'][:9]:>9} {r['lower_s'] + r['compile_s']:>9.1f} {r['first_run_s']:>8.2f} "
            f"{r['step_ms']:>9.3f} {r['images_per_s']:>9,.0f} {fmt(r['loop_images_per_s'], ',.0f'):>10} "
            f"{fmt(r['mfu_xla'], '.1%'):>7} {fmt(r['mfu_analytic'], '.1%'):>8} "
            f"{fmt(r['xla_over_analytic'], '.2f'):>8}"
        )
    return "\n".join(lines)


def add_step_flags(p: argparse.ArgumentParser) -> None:
    """Flags that change how the trainer's step is compiled (experiments; see `update_fn`)."""
    p.add_argument(
        "--state_layout", choices=("default", "auto"), default="default",
        help="auto: XLA picks the state's memory layouts (experiment; the trainer uses default)",
    )  # fmt: skip
    p.add_argument(
        "--no_donate", dest="donate", action="store_false",
        help="do not donate the state to the step (experiment; the trainer donates it)",
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_flags(p)
    p.add_argument("--steps", type=int, default=50, help="training steps per timed repeat")
    p.add_argument("--warmup", type=int, default=10, help="training steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument(
        "--steps_per_call", default="1", help="steps fused into one call; a comma list measures each"
    )
    add_step_flags(p)
    p.add_argument(
        "--pack", default="", help="seeds side by side in one program (num_seeds); a comma list measures each"
    )
    p.add_argument("--no_loop", dest="loop", action="store_false", help="skip the trainer-like loop timing")
    p.add_argument("--compilation_cache", action="store_true", help="allow the persistent compilation cache")
    p.add_argument(
        "--flops_only", action="store_true", help="compile, print XLA's FLOPs per step and exit (no run)"
    )
    p.add_argument("--json", default="", help="write the rows and the environment here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    ks = [int(x) for x in str(args.steps_per_call).split(",") if x.strip()]
    env = environment()
    if args.flops_only:
        with compilation_cache(args.compilation_cache):
            result = {"environment": env, "flops": count_flops(args)}
        f = result["flops"]
        print(
            f"{args.config} batch {f['batch_size']} {f['dtype']} on {f['backend']}: XLA "
            f"{fmt(f['xla_flops_per_step'], '.4g')} FLOPs/step, 6 x MACs {f['analytic_flops_per_step']:.4g} "
            f"(ratio {fmt(f['xla_over_analytic'], '.3f')}), compiled in {f['lower_and_compile_s']:.1f} s"
        )
        if args.json:
            write_json(args.json, result)
        return result
    print(f"[{time.strftime('%H:%M:%S')}] jax {env['jax']} on {env['devices']}; load {env['load_average']}")
    packs = [int(x) for x in str(args.pack).split(",") if x.strip()] or [0]
    rows = []
    with compilation_cache(args.compilation_cache):
        for k, seeds in [(k, n) for k in ks for n in packs]:
            what = f" pack={seeds}" if seeds else ""
            print(f"[{time.strftime('%H:%M:%S')}] {args.config} steps_per_call={k}{what}", flush=True)
            row = measure(args, k, seeds=seeds)
            rows.append(row)
            # XLA counts a while loop's body once: take FLOPs per step from a loop-free row of this model.
            loop_free = {r["pack"]: r["xla_flops_per_step"] for r in rows[::-1] if r["xla_flops_per_step"]}
            for r in rows:
                if r["xla_flops_per_step"] is None and r["pack"] in loop_free and r["scan_blocks"] is False:
                    r["xla_flops_per_step"] = loop_free[r["pack"]]
                    r["xla_flops_per_step_from"] = "steps_per_call=1 row"
                    fill_mfu(r)
            print(
                f"[{time.strftime('%H:%M:%S')}]   {row['step_ms']:.3f} ms/step, "
                f"{row['images_per_s']:,.0f} img/s",
                flush=True,
            )
            result = {"environment": {**env, "load_average_end": list(os.getloadavg())}, "rows": rows}
            if args.json:  # after every row: a timeout keeps what was measured
                write_json(args.json, result)
    print(table(rows))
    return result


if __name__ == "__main__":
    main()
