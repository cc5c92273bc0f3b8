"""Where the time of the trainer's training step goes: a device trace, read without TensorFlow.

    python benchmarks/profile_step.py --config=configs/cifar10.py:resnet20 --dtype bfloat16 \
        --steps_per_call 20 --steps 40 --trace_dir /tmp/r20_trace --json /tmp/r20_profile.json
    python benchmarks/profile_step.py --config=configs/imagenet_r50.py:v1.5 --dtype bfloat16 \
        --batch_size 256 --steps 10 --trace_dir /tmp/r50_trace --json /tmp/r50_profile.json
    python benchmarks/profile_step.py --from_trace /tmp/r20_trace     # read a saved trace again, anywhere

What runs is what benchmarks/train_step.py times (its config flags and `build_config`): the
trainer's jitted `run.update` from `train.setup(cfg)`, compiled ahead of time and called on batches
staged on the device. After `--warmup` steps, `--steps` steps are timed once without the profiler,
then once more under `jax.profiler.start_trace/stop_trace` (python tracer off). The trace
(`<trace_dir>/plugins/profile/<time>/<host>.xplane.pb`, plus `profile_step_meta.json`) is kept.

Reading the trace: `jax.profiler.ProfileData` (jaxlib's XSpace reader; no TensorFlow or TensorBoard).
- GPU: the plane "/device:GPU:<n>"; every event on its "Stream #..." lines is a kernel, memcpy or
  memset run by the device, with the stats "hlo_op" and "hlo_module" taken from XLA's launch
  annotation. A trace without stream lines falls back to an "XLA Ops" line (TPU traces have one).
- CPU: no device plane; XLA:CPU records each executed HLO op (thunk) on the host threads of
  "/host:CPU" with "hlo_op", "hlo_module" and "device_ordinal" stats. Control-flow ops (while,
  conditional, call) wrap the ops of their bodies and are left out, so nothing counts twice.
  Asynchronous thunks (Eigen convolutions) count until their "end: <op>" completion event.
Only the events of the step's HLO module (or without a module) on device `--device` count.
When no device ops are found, the planes and lines of the trace are listed and nothing is lost: the
trace stays in --trace_dir for --from_trace.

How to read the output (all "per step" figures divide by the steps captured):
- "step ms": host clock, unprofiled and profiled. Profiling costs time; on GPUs XLA also turns its
  command buffers (CUDA graphs) off while a profiler runs, so the profiled step is the one without
  them (worth ~20% at 1 step/call for ResNet-20, see BENCHMARKS.md). To keep them:
  XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true; kernels launched from a graph may
  then carry the graph's annotation instead of their op's (try --group_by kernel).
- "device busy": the union of the op intervals (overlapping streams or threads count once) over
  the span from the first op's start to the last op's end. The idle rest of the span is time the
  device waited: kernel launch gaps, host dispatch, synchronisation. High busy fraction and a
  slow step: the kernels themselves are slow; low: launch or host overhead.
- "kernels/step": device events per step (on CPU: HLO ops per step). "host dispatch": host time
  inside the jitted calls per call (the "PjitFunction" events); near the step time means the host
  cannot run ahead of the device.
- Categories, from the compiled HLO (an op that is or fuses a convolution or matrix product) and
  else the op and kernel names: convolution (convolutions, cuDNN custom calls and matrix
  products), collective (all-reduce & co.), copy/transpose (copies, transposes, memcpy,
  memset), reduce (reduction fusions), fusion (other fusions: elementwise, batch norm, optimizer;
  XLA:CPU's single-op "wrapped_*" too), other.
- "ms/step" and "share" of an op or category: its part of the busy time. Time in which several ops
  overlap (several GPU streams, XLA:CPU's threads) is split evenly among them, so ops and categories
  add up to the busy time; "concurrency" is the ops' summed durations over the busy time (1.0 on one
  stream). On XLA:CPU an asynchronous op's interval includes time queued behind other ops.
- The op table: the top --top ops by time, with events per step, the mean duration of one event
  (µs, its own start to end) and the kernel that took most of the op's time (a cuDNN convolution
  can launch a few kernels).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402 (jax-free at import)
    add_config_flags,
    build_config,
    compile_update,
    environment,
    run_calls,
    staged_batches,
    write_json,
)
from train_step import _COMPUTATION, _HEAVY  # noqa: E402

if TYPE_CHECKING:
    from jax.profiler import ProfileData

META = "profile_step_meta.json"
CATEGORIES = ("convolution", "collective", "copy/transpose", "reduce", "fusion", "other")
# (category, pattern): the first pattern found in "<hlo op> <kernel name>" (lower case) wins.
_RULES = (
    ("collective", re.compile(r"all-reduce|all-gather|reduce-scatter|all-to-all|collective|nccl")),
    ("convolution", re.compile(r"conv(?!ert)|cudnn|xmma|fprop|dgrad|wgrad|gemm|cublas|\bdot\b|dot\.")),
    ("copy/transpose", re.compile(r"copy|transpose|memcpy|memset")),
    ("reduce", re.compile(r"reduce|reduction")),
    ("fusion", re.compile(r"fusion|\bwrapped_")),  # XLA:CPU wraps single elementwise ops as "wrapped_*"
)
_CONTROL = {"while", "conditional", "call"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", re.M)
_FUSED = re.compile(r"\bcalls=\{?([%\w.\-, ]+)\}?")
_DEVICE_PLANE = re.compile(r"^/device:([A-Za-z_]+):(\d+)$")


class NoDeviceOps(RuntimeError):
    """The trace holds no op events of the step; the message lists what it does hold."""


class OpEvent(NamedTuple):
    op: str  # HLO op name, or the event's name where the event has no "hlo_op" stat
    kernel: str  # the event's name (the kernel on a GPU)
    module: str | None
    start_ns: float
    end_ns: float


def category(op: str, kernel: str = "", conv_ops: frozenset[str] = frozenset()) -> str:
    if op in conv_ops:
        return "convolution"
    text = f"{op} {kernel}".lower()
    return next((name for name, pattern in _RULES if pattern.search(text)), "other")


def conv_ops(hlo: str) -> frozenset[str]:
    """Instructions of an optimised HLO module that are, or fuse, convolutions or matrix products.

    Names alone miss some: XLA:CPU's "ynn_fusion.N" and GPU "custom-call.N" / "fusion.N" can hold a
    convolution. Control flow (while, conditional) is not followed: its ops are timed on their own.
    """
    comps = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo)}
    heavy = (*_HEAVY, "__cudnn$")
    memo: dict[str, bool] = {}

    def is_heavy(text: str) -> bool:
        if any(h in text for h in heavy):
            return True
        called = [n.strip().lstrip("%") for m in _FUSED.finditer(text) for n in m.group(1).split(",")]
        return any(comp_heavy(n) for n in called)

    def comp_heavy(name: str) -> bool:
        if name not in memo:
            memo[name] = False  # no recursion through cycles
            memo[name] = is_heavy(comps.get(name, ""))
        return memo[name]

    return frozenset(m.group(1) for m in _INSTRUCTION.finditer(hlo) if is_heavy(m.group(2)))


def find_xplane(trace_dir: str) -> str:
    files = sorted(
        glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime
    )
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
    return files[-1]


def describe(profile: ProfileData) -> str:
    """Every plane and line of a trace with event counts, a few event names and their stat keys."""
    out = []
    for plane in profile.planes:
        out.append(f"plane {plane.name!r}")
        for line in plane.lines:
            events = list(line.events)
            names = collections.Counter(e.name for e in events).most_common(4)
            keys = sorted({k for e in events[:200] for k, _ in e.stats})
            out.append(f"  line {line.name!r}: {len(events)} events; e.g. {names}; stats {keys}")
    return "\n".join(out)


def _event(e: Any, op: str | None = None, end_ns: float = 0.0) -> OpEvent:
    stats = dict(e.stats)
    module = stats.get("hlo_module")
    return OpEvent(
        op=str(op or stats.get("hlo_op") or e.name),
        kernel=e.name,
        module=str(module) if module is not None else None,
        start_ns=e.start_ns,
        end_ns=max(e.start_ns + e.duration_ns, end_ns),
    )


def _host_events(planes: list, device: int) -> tuple[list[OpEvent], int]:
    """XLA:CPU's op events of one device on the host threads, and the number of threads they ran on.

    Some thunks (Eigen convolutions) run asynchronously: their event ends when they are launched and
    an "end: <op>" event, linked by the flow stats "_p" (op) and "_c" (end), marks their completion.
    """
    lines = [line for p in planes if p.name.startswith("/host:") for line in p.lines]
    done = {}
    for line in lines:
        for e in line.events:
            if e.name.startswith("end: "):
                flow = dict(e.stats).get("_c")
                if flow is not None:
                    done[flow] = e.start_ns + e.duration_ns
    events, threads = [], set()
    for line in lines:
        for e in line.events:
            stats = dict(e.stats)
            op = stats.get("hlo_op")
            if op is None or int(stats.get("device_ordinal", device)) != device:
                continue
            if str(op).split(".")[0] in _CONTROL:
                continue
            events.append(_event(e, end_ns=done.get(stats.get("_p"), 0.0)))
            threads.add(line.name)
    return events, len(threads)


def device_events(profile: ProfileData, device: int = 0, host_ops: bool = True) -> tuple[list[OpEvent], str]:
    """The op events of device `device` and a line saying where they were found.

    A device plane ("/device:GPU:0", ...) wins: its "Stream #" lines, else its "XLA Ops" line. Without
    any device plane, and if `host_ops` (XLA:CPU), the host threads' events with an "hlo_op" stat for
    that device. A GPU run without a device plane gets no host fallback: the host's "hlo_op" events
    there are launches, not device time.
    """
    planes = list(profile.planes)
    device_planes = [p for p in planes if _DEVICE_PLANE.match(p.name)]
    if device_planes:
        plane = next((p for p in device_planes if int(_DEVICE_PLANE.match(p.name).group(2)) == device), None)
        if plane is None:
            raise NoDeviceOps(f"no device plane for device {device}\n{describe(profile)}")
        lines = list(plane.lines)
        streams = [line for line in lines if line.name.startswith("Stream #")]
        if streams:
            events = [_event(e) for line in streams for e in line.events]
            where = f"plane {plane.name}, {len(streams)} stream line(s)"
        else:
            events = [_event(e, e.name) for line in lines if line.name == "XLA Ops" for e in line.events]
            where = f"plane {plane.name}, line 'XLA Ops'"
    elif not host_ops:
        raise NoDeviceOps(
            "no device plane: the device tracer (CUPTI on GPUs) recorded nothing; look for CUPTI errors "
            f"in the log above (e.g. CUPTI_ERROR_INSUFFICIENT_PRIVILEGES)\n{describe(profile)}"
        )
    else:
        events, threads = _host_events(planes, device)
        where = f"host threads, {threads} of them, device_ordinal {device}"
    if not events:
        raise NoDeviceOps(f"no op events found ({where})\n{describe(profile)}")
    return events, where


def busy_ns(events: list[OpEvent]) -> float:
    """The length of the union of the events' intervals."""
    total, end = 0.0, float("-inf")
    for e in sorted(events, key=lambda e: e.start_ns):
        if e.end_ns > end:
            total += e.end_ns - max(e.start_ns, end)
            end = e.end_ns
    return total


def attributed_ns(events: list[OpEvent]) -> list[float]:
    """Each event's part of the busy time: time that several events overlap is split evenly among them.

    The parts sum to `busy_ns(events)`, so op and category times add up to the device's busy time even
    where ops run concurrently (XLA:CPU's threads, several GPU streams).
    """
    points = sorted(
        [(e.start_ns, 0, i) for i, e in enumerate(events)] + [(e.end_ns, 1, i) for i, e in enumerate(events)]
    )
    parts, active, last = [0.0] * len(events), set(), 0.0
    for t, is_end, i in points:  # at equal times starts come first: an empty event never stays active
        if active and t > last:
            for j in active:
                parts[j] += (t - last) / len(active)
        last = t
        if is_end:
            active.discard(i)
        else:
            active.add(i)
    return parts


def host_dispatch_ns(profile: ProfileData, calls: int) -> float | None:
    """Host time inside the jitted calls ("PjitFunction(...)" events, nested ones merged) per call."""
    spans = [
        OpEvent("", "", None, e.start_ns, e.start_ns + e.duration_ns)
        for plane in profile.planes
        if plane.name.startswith("/host:")
        for line in plane.lines
        for e in line.events
        if e.name.startswith("PjitFunction(")
    ]
    return busy_ns(spans) / calls if spans and calls else None


def summarize(
    profile: ProfileData,
    steps: int,
    module: str | None,
    device: int = 0,
    top: int = 25,
    group_by: str = "op",
    convs: frozenset[str] = frozenset(),
    platform: str | None = None,
) -> dict:
    """Per-step device time, busy fraction, kernels, categories and the top ops of a captured trace."""
    events, where = device_events(profile, device, host_ops=platform in (None, "cpu"))
    modules = collections.Counter()
    for e in events:
        modules[e.module] += e.end_ns - e.start_ns
    if module and module not in modules:
        print(f"note: no events of module {module}; counting all modules {dict(modules)}", file=sys.stderr)
        module = None
    if module:
        events = [e for e in events if e.module in (module, None)]
    ops: dict[str, dict] = {}
    for e, part in zip(events, attributed_ns(events), strict=True):
        key = e.kernel if group_by == "kernel" else e.op
        o = ops.setdefault(key, {"ns": 0.0, "wall_ns": 0.0, "n": 0, "kernels": collections.Counter()})
        o["ns"] += part
        o["wall_ns"] += e.end_ns - e.start_ns
        o["n"] += 1
        o["kernels"][e.kernel] += part
    total_ns = sum(o["ns"] for o in ops.values())
    wall_ns = sum(o["wall_ns"] for o in ops.values())
    span_ns = max(e.end_ns for e in events) - min(e.start_ns for e in events)
    busy = busy_ns(events)
    rows = []
    for name, o in sorted(ops.items(), key=lambda kv: -kv[1]["ns"]):
        kernel = o["kernels"].most_common(1)[0][0]
        rows.append(
            {
                "op": name,
                "category": category(name, kernel, convs),
                "count_per_step": o["n"] / steps,
                "mean_us": o["wall_ns"] / o["n"] / 1e3,
                "ms_per_step": o["ns"] / steps / 1e6,
                "share": o["ns"] / total_ns if total_ns else 0.0,
                "kernel": kernel,
            }
        )
    cats = {c: {"category": c, "ms_per_step": 0.0, "share": 0.0, "count_per_step": 0.0} for c in CATEGORIES}
    for r in rows:
        c = cats[r["category"]]
        c["ms_per_step"] += r["ms_per_step"]
        c["share"] += r["share"]
        c["count_per_step"] += r["count_per_step"]
    return {
        "source": where,
        "module": module,
        "other_modules_ms_per_step": {
            str(m): ns / steps / 1e6 for m, ns in modules.items() if module and m not in (module, None)
        },
        "steps": steps,
        "events": len(events),
        "kernels_per_step": len(events) / steps,
        "distinct_ops": len(rows),
        "op_ms_per_step": total_ns / steps / 1e6,
        "concurrency": wall_ns / busy if busy else 1.0,
        "device_ms_per_step": busy / steps / 1e6,
        "span_ms_per_step": span_ns / steps / 1e6,
        "idle_ms_per_step": (span_ns - busy) / steps / 1e6,
        "busy_fraction": busy / span_ns if span_ns else 1.0,
        "categories": sorted(cats.values(), key=lambda c: -c["ms_per_step"]),
        "ops": rows[:top],
    }


def module_name(hlo: str) -> str | None:
    m = re.search(r"HloModule ([\w.\-]+)", hlo)
    return m.group(1) if m else None


def model_name(cfg: Any) -> str:
    name = f"{cfg.model.family}-{cfg.model.depth}{'-scan' if cfg.model.scan_blocks else ''}"
    return name + ("-v1.5" if cfg.model.family == "imagenet" and cfg.model.stride_on == "3x3" else "")


def capture(args: argparse.Namespace) -> dict:
    """Build the trainer's step, time it, trace `args.steps` steps into args.trace_dir; the run's facts."""
    import jax
    import jax.numpy as jnp

    from resnet_jax import train

    k = args.steps_per_call
    cfg = build_config(args, k)
    run = train.setup(cfg)
    state = run.init()
    batches = run.batches(0)
    first = next(batches)
    compiled, _, compile_s = compile_update(run.update, state, first)
    hlo = compiled.as_text() or ""
    staged = staged_batches(batches, args.steps, k)
    calls = len(staged)
    state = run_calls(compiled, state, [first], 1)
    state = run_calls(compiled, state, staged, -(-args.warmup // k))

    def loop(s: Any) -> tuple[Any, float]:
        t = time.perf_counter()
        s = run_calls(compiled, s, staged, calls)
        return s, time.perf_counter() - t

    state, plain_s = loop(state)
    options = jax.profiler.ProfileOptions()
    with contextlib.suppress(AttributeError):  # python frames are not wanted and slow the host down
        options.python_tracer_level = 0
    jax.profiler.start_trace(args.trace_dir, profiler_options=options)
    try:
        state, traced_s = loop(state)
    finally:
        jax.profiler.stop_trace()
    device = jax.devices()[args.device]
    return {
        "config": args.config,
        "model": model_name(cfg),
        "batch_size": cfg.batch_size,
        "dtype": jnp.dtype(run.dtype).name,
        "steps_per_call": k,
        "steps": calls * k,
        "calls": calls,
        "data": cfg.data.name,
        "overrides": list(args.set or []),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device": args.device,
        "module": module_name(hlo),
        "compile_s": compile_s,
        "step_ms_unprofiled": 1e3 * plain_s / (calls * k),
        "step_ms_profiled": 1e3 * traced_s / (calls * k),
        "conv_ops": sorted(conv_ops(hlo)),  # kept in the trace's meta file, not in the result
    }


def table(r: dict) -> str:
    """The result as text: header lines, the category table and the op table."""
    p = r["profile"]
    disp = r.get("host_dispatch_ms_per_call")
    head = (
        f"{r.get('model', '?')}, batch {r.get('batch_size', '?')}, {r.get('dtype', '?')}, "
        f"{r.get('steps_per_call', '?')} steps/call, {p['steps']} steps traced "
        f"on {r.get('device_kind', '?')} "
        f"({p['source']}; module {p['module']})"
    )
    lines = [head]
    if "step_ms_unprofiled" in r:
        lines.append(
            f"step (host clock): {r['step_ms_unprofiled']:.3f} ms unprofiled, "
            f"{r['step_ms_profiled']:.3f} ms profiled"
        )
    lines.append(
        f"device: {p['device_ms_per_step']:.3f} ms busy per step in a {p['span_ms_per_step']:.3f} ms span "
        f"({p['busy_fraction']:.1%} busy, {p['idle_ms_per_step']:.3f} ms idle per step); "
        f"{p['kernels_per_step']:.1f} kernels/step, {p['distinct_ops']} distinct ops, "
        f"concurrency {p['concurrency']:.2f}"
        + (f"; host dispatch {disp:.3f} ms per call" if disp is not None else "")
    )
    if p["other_modules_ms_per_step"]:
        lines.append(f"other modules in the trace (left out), ms/step: {p['other_modules_ms_per_step']}")
    lines += ["", f"{'category':<16} {'ms/step':>9} {'share':>7} {'kernels/step':>12}"]
    for c in p["categories"]:
        lines.append(
            f"{c['category']:<16} {c['ms_per_step']:>9.3f} {c['share']:>7.1%} {c['count_per_step']:>12.1f}"
        )
    lines.append(f"{'total':<16} {p['op_ms_per_step']:>9.3f} {1:>7.1%} {p['kernels_per_step']:>12.1f}")
    cols = f"{'n/step':>7} {'mean us':>9} {'ms/step':>8} {'share':>6}"
    head = f"{'#':>3} {'op':<40} {'category':<14} {cols}  kernel"
    lines += ["", head, "-" * len(head)]
    for i, o in enumerate(p["ops"], 1):
        kernel = "" if o["kernel"] == o["op"] else o["kernel"][:60]
        lines.append(
            f"{i:>3} {o['op'][:40]:<40} {o['category']:<14} {o['count_per_step']:>7.2f} {o['mean_us']:>9.1f} "
            f"{o['ms_per_step']:>8.3f} {o['share']:>6.1%}  {kernel}".rstrip()
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_flags(p, required=False)
    p.add_argument("--steps", type=int, default=20, help="training steps traced (rounded up to whole calls)")
    p.add_argument("--warmup", type=int, default=5, help="training steps before timing")
    p.add_argument("--steps_per_call", type=int, default=1, help="steps fused into one call")
    p.add_argument("--device", type=int, default=0, help="which device's ops to read")
    p.add_argument("--trace_dir", default="", help="where the trace goes (default: a new temporary dir)")
    p.add_argument("--from_trace", default="", help="read this trace dir again instead of running")
    p.add_argument("--top", type=int, default=25, help="ops listed")
    p.add_argument("--group_by", choices=("op", "kernel"), default="op", help="rows by HLO op or kernel")
    p.add_argument("--json", default="", help="write the result here")
    args = p.parse_args(argv)
    if not args.config and not args.from_trace:
        p.error("--config or --from_trace is required")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import jax

    if args.from_trace:
        trace_dir = args.from_trace
        meta_file = pathlib.Path(trace_dir, META)
        result = json.loads(meta_file.read_text()) if meta_file.exists() else {"steps": args.steps}
    else:
        trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
        args.trace_dir = trace_dir
        env = environment()
        print(
            f"[{time.strftime('%H:%M:%S')}] jax {env['jax']} on {env['devices']}; load {env['load_average']}"
        )
        result = {"environment": env, **capture(args)}
        write_json(pathlib.Path(trace_dir, META), result)
    xplane = find_xplane(trace_dir)
    result.update(trace_dir=trace_dir, xplane=xplane)
    convs = frozenset(result.pop("conv_ops", ()))
    print(f"[{time.strftime('%H:%M:%S')}] reading {xplane}", flush=True)
    profile = jax.profiler.ProfileData.from_file(xplane)
    try:
        result["profile"] = summarize(
            profile,
            result["steps"],
            result.get("module"),
            args.device,
            args.top,
            args.group_by,
            convs,
            result.get("platform"),
        )
    except NoDeviceOps as e:
        result["error"] = str(e)
        print(f"NO DEVICE OPS FOUND: {e}\nThe trace is kept in {trace_dir} (--from_trace reads it again).")
    else:
        dispatch = host_dispatch_ns(profile, result.get("calls", 0))
        result["host_dispatch_ms_per_call"] = dispatch / 1e6 if dispatch is not None else None
        print(table(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(1 if "error" in main() else 0)
