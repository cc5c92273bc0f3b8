"""Time to the first training step against depth: CIFAR ResNets, blocks scanned and unrolled.

    python benchmarks/compile_time.py --json /tmp/compile_time.json              # 20, 56, 110, 1202
    python benchmarks/compile_time.py --depths 20,1202 --scan on --run never     # compile only

Each point runs in a fresh process (nothing cached; the persistent compilation cache is off) and
times, in order: importing jax and the trainer, `train.setup(cfg)`, tracing + lowering the trainer's
update (`run.update.lower(...)` on the abstract state), XLA compiling it (`.compile()`), then
`run.init()` (its own jit: compile + run; "ready" = process start to a compiled step and an initial
state) and the first call of the compiled update (runs the step; "to 1st step" = start to its end).
The config is configs/cifar10.py:resnet<d> with synthetic 32x32 data, batch 128, float32, one step per
call, `model.scan_blocks` on or off as asked.

Left out by default, and said so in the output:
  * ResNet-1202 unrolled (--unrolled_1202 adds it): on the 2-core CPU its compile was still running
    after 14 minutes (10.9 GB, shared/ENV-NOTES.md).
  * running the first step of a scanned net on the CPU (--run always runs it): XLA:CPU runs the
    backward convolutions inside the scan's while loop 12-14x slower than unrolled ones; a ResNet-1202
    step at batch 128 would take the best part of an hour there. Its compile is still measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

T_START = time.perf_counter()
ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = "RESULT "


def point(depth: int, scan: bool, batch: int, dtype: str, run_mode: str) -> dict:
    """Child process: one (depth, scan) point."""
    sys.path.insert(0, str(ROOT))
    import jax

    from resnet_jax import experiments, train

    jax.config.update("jax_enable_compilation_cache", False)
    out = {"depth": depth, "scan_blocks": scan, "batch_size": batch, "dtype": dtype}
    out["import_s"] = time.perf_counter() - T_START
    cfg = experiments.load_config(f"{ROOT}/configs/cifar10.py:resnet{depth}")
    cfg.data.name, cfg.data.path, cfg.data.image_size = "synthetic", "", 32
    cfg.batch_size, cfg.model.dtype, cfg.model.scan_blocks = batch, dtype, scan
    cfg.steps_per_call, cfg.num_train_steps = 1, 1000
    cfg.log_every_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = 1000

    t = time.perf_counter()
    run = train.setup(cfg)
    abstract = run.abstract_state()
    batches = run.batches(0)
    first = next(batches)
    out["setup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lowered = run.update.lower(abstract, first)
    out["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - t
    device = jax.devices()[0]
    out.update(platform=device.platform, device_kind=device.device_kind, device_count=jax.device_count())
    out["jax"] = jax.__version__
    out["params"] = sum(x.size for x in jax.tree.leaves(abstract.params))

    do_run = run_mode == "always" or (run_mode == "auto" and not (scan and device.platform == "cpu"))
    out["ran_first_step"] = do_run
    if run_mode != "never":
        t = time.perf_counter()
        state = jax.block_until_ready(run.init())
        out["init_s"] = time.perf_counter() - t
        out["ready_s"] = time.perf_counter() - T_START  # compiled step + initial state, step not run
    if do_run:
        t = time.perf_counter()
        state, metrics = compiled(state, first)
        jax.block_until_ready(state)
        out["first_run_s"] = time.perf_counter() - t
        out["first_loss"] = float(metrics["loss"]) / float(metrics["count"])
        out["time_to_first_step_s"] = time.perf_counter() - T_START
    out["load_average"] = list(os.getloadavg())
    return out


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<18} {'import s':>8} {'setup s':>7} {'trace+lower s':>13} {'compile s':>9} "
        f"{'init s':>7} {'ready s':>7} {'first run s':>11} {'to 1st step s':>13} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        name = f"ResNet-{r['depth']} {'scan' if r['scan_blocks'] else 'unrolled'}"
        if "error" in r:
            lines.append(f"{name:<18} {r['error']}")
            continue
        lines.append(
            f"{name:<18} {r['import_s']:>8.1f} {r['setup_s']:>7.1f} {r['lower_s']:>13.1f} "
            f"{r['compile_s']:>9.1f} {fmt(r.get('init_s')):>7} {fmt(r.get('ready_s')):>7} "
            f"{fmt(r.get('first_run_s')):>11} "
            f"{fmt(r.get('time_to_first_step_s')):>13} {r['load_average'][0]:>5.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="20,56,110,1202")
    p.add_argument("--scan", choices=("both", "on", "off"), default="both")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--run", choices=("auto", "always", "never"), default="auto",
                   help="run the first step: auto = except scanned nets on the CPU")  # fmt: skip
    p.add_argument("--unrolled_1202", action="store_true", help="also compile ResNet-1202 unrolled (slow)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    p.add_argument("--json", default="")
    p.add_argument("--_point", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._point:
        depth, scan = args._point.split(",")
        row = point(int(depth), scan == "1", args.batch_size, args.dtype, args.run)
        print(RESULT + json.dumps(row), flush=True)
        return row

    scans = {"both": (False, True), "on": (True,), "off": (False,)}[args.scan]
    notes = []
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        for scan in scans:
            name = f"ResNet-{depth} {'scan' if scan else 'unrolled'}"
            if depth == 1202 and not scan and not args.unrolled_1202:
                notes.append(
                    f"skipped {name}: its compile ran for over 14 minutes on the 2-core CPU (--unrolled_1202)"
                )
                print(f"[{time.strftime('%H:%M:%S')}] {notes[-1]}", flush=True)
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name}, batch {args.batch_size} ...", flush=True)
            cmd = [sys.executable, __file__, f"--_point={depth},{int(scan)}", f"--run={args.run}"]
            cmd += [f"--batch_size={args.batch_size}", f"--dtype={args.dtype}"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
                if not found:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    row = {"depth": depth, "scan_blocks": scan, "error": f"exit {proc.returncode}: {tail}"}
                else:
                    row = json.loads(found[-1][len(RESULT) :])
            except subprocess.TimeoutExpired:
                row = {"depth": depth, "scan_blocks": scan, "error": f"timed out after {args.timeout:.0f} s"}
            rows.append(row)
            if "error" not in row:
                ran = "" if row["ran_first_step"] else " (first step not run)"
                print(
                    f"[{time.strftime('%H:%M:%S')}]   trace+lower {row['lower_s']:.1f} s, compile "
                    f"{row['compile_s']:.1f} s{ran}; load {row['load_average'][0]:.1f}",
                    flush=True,
                )
            result = {"rows": rows, "notes": notes, "argv": sys.argv[1:]}
            if args.json:
                pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    if any(r.get("scan_blocks") and not r.get("ran_first_step", True) for r in rows):
        notes.append("scanned nets on the CPU: compile measured, first step not run (--run always runs it)")
    print(table(rows))
    for n in notes:
        print("note:", n)
    result = {"rows": rows, "notes": notes, "argv": sys.argv[1:]}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
