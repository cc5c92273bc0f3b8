"""Compile the trainer's training step for an NVIDIA GPU without one, and count what it launches.

    python benchmarks/gpu_aot.py --config=configs/cifar10.py:resnet20 --dtype bfloat16 --steps_per_call 1,20
    python benchmarks/gpu_aot.py --config=configs/imagenet_r50.py:v1.5 --dtype bfloat16 --batch_size 256
    python benchmarks/gpu_aot.py ... --target benchmarks/gpu_targets/h200_sxm.txtpb --dump /tmp/aot_dump
    python benchmarks/gpu_aot.py ... --state_layout auto --no_donate   # as train_step.py: see update_fn
    python benchmarks/gpu_aot.py --config=configs/cifar10.py:resnet20 --dtype bfloat16 --pack 1,2,4,8,16

Deviceless ahead-of-time compilation: jax's CPU backend runs the Python side, and the CUDA PJRT
plugin (jax-cuda13-plugin, which needs no GPU, no driver and no cuDNN/cuBLAS to compile) makes a
compile-only client from a GPU target description (a GpuTargetConfigProto in text format,
benchmarks/gpu_targets/). XLA:GPU then runs its whole pipeline for that card; the PTX goes
through the ptxas found on PATH (or CUDA's own folders). No autotuning happens without a device:
cuDNN convolutions keep algorithm -1 (chosen at run time) and GEMMs take XLA's default choices, so
kernel *choices* inside a cuDNN/cuBLAS call may differ from a device compile; the fusion and thunk
structure is the compiler's own.

The step is the trainer's own: `train.setup(cfg)` (with benchmarks/train_step.py's config
overrides) builds `run.update`, lowered on the state's and a batch's shapes exactly as
train_step.py's count_flops does; with --pack K, the packed step of K seeds (`pack.setup(cfg)`, as
`train_step.py --pack` and `resnet_jax.main --config.num_seeds=K` build it), and each row adds the
FLOPs per host-issued launch (6 x multiply-adds x K batches / launches). Only where arrays would live
changes: the mesh is the target's (compile-only) devices and the data arrays are ShapeDtypeStructs on it.

Counts come from XLA's dumps of the compiled module: the thunk sequence (what the GPU executable
runs: kernels, cuDNN/cuBLAS calls, copies, loops, command buffers) and the optimized HLO (fusions by
kind, custom calls by target, copies, transposes, collectives, while loops, command-buffer calls).

Needs jax's CUDA plugin (jax-cuda13-plugin and jax-cuda13-pjrt, the installed jax's version, without
the [with-cuda] extra) and CUDA 13's ptxas and libcudart: BENCHMARKS.md says how. To count what a real
run compiled, dump it and read the dump (any machine, no plugin needed):
    XLA_FLAGS=--xla_dump_to=/tmp/d python benchmarks/train_step.py ...
    python benchmarks/gpu_aot.py --from_dump /tmp/d

To describe the real card instead of the spec-sheet file, on a GPU machine:
    python benchmarks/gpu_aot.py --dump_target_config /tmp/h100_real.txtpb
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import add_config_flags, build_config, compile_update, write_json  # noqa: E402 (jax-free)
from train_step import add_step_flags, memory, state_layouts_round_trip, update_fn  # noqa: E402

DEFAULT_TARGET = ROOT / "benchmarks" / "gpu_targets" / "h100_sxm.txtpb"
COLLECTIVES = (
    "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
    "collective-broadcast", "ragged-all-to-all",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The GPU target.


def dump_target_config(path: str) -> None:
    """Write the local GPU's target description (run on a machine with the GPU)."""
    import jax
    from jax._src.lib import _jax as xc  # jax's own test reads it the same way

    text = xc.get_topology_for_devices(jax.devices()).target_config
    pathlib.Path(path).write_text(text if isinstance(text, str) else text.decode())
    print(f"wrote {path} ({jax.devices()[0].device_kind})")


def gpu_mesh(target: str, topology: str = "1x1x1"):
    """A 1-D `data` mesh over the compile-only devices of `topology` (slices x hosts x GPUs per host)
    of `target` GPUs."""
    import jax
    from jax.experimental import topologies

    jax.config.update("jax_platforms", "cpu")  # the Python side runs on the CPU backend
    try:
        topo = topologies.get_topology_desc(
            platform="cuda", target_config=pathlib.Path(target).read_text(), topology=topology
        )
    except NotImplementedError:
        raise SystemExit(
            f"compiling for a GPU needs jax's CUDA plugin: pip install jax-cuda13-plugin=={jax.__version__} "
            f"jax-cuda13-pjrt=={jax.__version__} (no GPU needed; use a separate environment, BENCHMARKS.md)"
        ) from None
    devices = topo.devices
    return jax.sharding.Mesh(
        __import__("numpy").array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )


@contextlib.contextmanager
def on_mesh(mesh):
    """train.setup and Run.batches with `mesh` for the run's mesh, and abstract arrays on it.

    The compile-only devices hold no data: device_put and make_array_from_process_local_data give
    ShapeDtypeStructs with the sharding they were asked for, which is all that lowering reads.
    """
    import jax
    import numpy as np

    from resnet_jax import inputs

    def abstract(x, sharding=None, *a, **k):
        x = np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    def from_local(sharding, value, *a, **k):
        return abstract(value, sharding)

    saved = (inputs.create_mesh, jax.device_put, jax.make_array_from_process_local_data, jax.device_count)
    inputs.create_mesh = lambda: mesh
    jax.device_put = abstract
    jax.make_array_from_process_local_data = from_local
    jax.device_count = lambda *a: mesh.devices.size
    try:
        yield
    finally:
        inputs.create_mesh, jax.device_put, jax.make_array_from_process_local_data, jax.device_count = saved


# ---------------------------------------------------------------------------------------------
# Reading the compiled module.


def parse_thunks(text: str) -> dict:
    """What the executable runs, from a thunk-sequence dump (indentation nests thunks).

    The host issues the top-level thunks in order, and for a kWhile its condition's and body's
    direct children once per iteration. A kCommandBuffer is one CUDA-graph launch of everything
    nested in it; other thunks (kConvolution: a cuDNN call, kKernel/kCustomKernel: one kernel,
    kCopy: a device copy) are issued one by one. `host_issued_per_call` counts those issues for one
    call of the executable (loop bodies times their trip count, from `trip_counts`, else once).
    """
    nodes = []  # (indent, kind, name, parent, section)
    section_at = {}  # indent of a "condition:"/"body:" header -> its name
    for line in text.splitlines():
        h = re.match(r"(\s*)(condition|body):\s*$", line)
        if h:
            section_at = {i: n for i, n in section_at.items() if i < len(h.group(1))}
            section_at[len(h.group(1))] = h.group(2)
            continue
        m = re.match(r"(\s*)\d+: (k\w+)\s+\[.*?\]\s*(\S+)?", line)
        if not m:
            continue
        indent = len(m.group(1))
        parent = next((i for i in range(len(nodes) - 1, -1, -1) if nodes[i][0] < indent), None)
        section = None
        if parent is not None and nodes[parent][1] == "kWhile":
            section = next((n for at, n in sorted(section_at.items(), reverse=True) if at < indent), "body")
        nodes.append((indent, m.group(2), m.group(3) or "", parent, section))

    def children(parent, section=None):
        c = collections.Counter()
        for _, kind, _, p, sec in nodes:
            if p == parent and (section is None or sec == section):
                c[kind] += 1
        return c

    def inside(kind_of_ancestor):
        c = collections.Counter()
        for _, kind, _, p, _ in nodes:
            while p is not None and nodes[p][1] != kind_of_ancestor:
                p = nodes[p][3]
            if p is not None:
                c[kind] += 1
        return c

    kernels = collections.Counter(
        re.sub(r"(_\d+)+$", "", name) for _, kind, name, _, _ in nodes if kind in ("kKernel", "kCustomKernel")
    )

    def in_command_buffer(i):
        p = nodes[i][3]
        while p is not None and nodes[p][1] != "kCommandBuffer":
            p = nodes[p][3]
        return p is not None

    loops = [
        {
            "condition": dict(children(i, "condition")),
            "body": dict(children(i, "body")),
            "in_command_buffer": in_command_buffer(i),
        }
        for i, n in enumerate(nodes)
        if n[1] == "kWhile"
    ]
    return {
        "top_level": dict(children(None).most_common()),
        "while_loops": loops,
        "in_command_buffers": dict(inside("kCommandBuffer").most_common()),
        "all": dict(collections.Counter(n[1] for n in nodes).most_common()),
        "kernel_thunks": sum(kernels.values()),
        "kernels_by_fusion_name": dict(kernels.most_common(15)),
    }


def host_issued(thunks: dict, trip_counts: list[int]) -> int:
    """Thunks the host issues per call: a command buffer is one launch, whatever it holds (loops
    included); a loop outside one issues its condition's and body's children every iteration."""
    top = sum(n for k, n in thunks["top_level"].items())
    for loop, trips in zip(
        thunks["while_loops"], trip_counts or [1] * len(thunks["while_loops"]), strict=False
    ):
        if not loop.get("in_command_buffer"):
            top += trips * (sum(loop["condition"].values()) + sum(loop["body"].values()))
    return top


_COMP = re.compile(r"^(ENTRY )?%?([\w.\-]+) (?:\([^\n]*?\) -> [^\n]*?)?\{\n(.*?)^\}", re.M | re.S)
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")


def _opcode(rhs: str) -> str:
    """The opcode of an HLO instruction's right-hand side (after its shape, tuples included)."""
    end = rhs.find(" ")
    if rhs.startswith("("):
        depth = 0
        for end, ch in enumerate(rhs, 1):  # noqa: B007 - `end` is read after the loop
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
    m = re.match(r"\s*([\w\-]+)\(", rhs[end:])
    return m.group(1) if m else "?"


def parse_hlo(hlo: str) -> dict:
    """Counts over the computations the executable runs (entry, loop bodies, branches, calls)."""
    comps, entry = {}, None
    for m in _COMP.finditer(hlo):
        comps[m.group(2)] = m.group(3)
        if m.group(1):
            entry = m.group(2)
    ops = collections.Counter()
    fusion_kinds = collections.Counter()
    custom_calls = collections.Counter()
    fusion_cc = collections.Counter()  # fusions that are library calls or custom kernels
    per_comp = {}
    command_buffers = 0
    seen, stack = set(), [entry]
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        n_here = 0
        for line in comps[name].splitlines():
            m = _INSTR.match(line)
            if not m:
                continue
            rhs = m.group(2)
            op = _opcode(rhs)
            ops[op] += 1
            n_here += 1
            if op == "fusion":
                kind = re.search(r"kind=(k\w+)", rhs)
                fusion_kinds[kind.group(1) if kind else "?"] += 1
                fk = re.search(r'"fusion_backend_config":\{[^\n]*?"kind":"([^"]+)"', rhs)
                called = re.search(r"calls=%?([\w.\-]+)", rhs)
                if fk:
                    fusion_cc[fk.group(1)] += 1
                elif (
                    kind and kind.group(1) == "kCustom"
                ):  # e.g. conv_fprop_fusion_comp: XLA's own conv kernels
                    fusion_cc[re.sub(r"[._]\d+", "", called.group(1)) if called else "?"] += 1
            elif op == "custom-call":
                t = re.search(r'custom_call_target="([^"]+)"', rhs)
                custom_calls[t.group(1) if t else "?"] += 1
            if op == "while":
                stack += re.findall(r"(?:body|condition)=%?([\w.\-]+)", rhs)
            elif op == "conditional":
                b = re.search(r"branch_computations=\{([^}]*)\}", rhs)
                stack += [x.strip().lstrip("%") for x in b.group(1).split(",")] if b else []
                stack += re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", rhs)
            elif op in ("call", "async-start") or op.endswith("-start"):
                called = re.findall(r"(?:to_apply|calls)=%?([\w.\-]+)", rhs)
                if op == "call" and any("command_buffer" in c for c in called):
                    command_buffers += 1
                stack += called
        per_comp[name] = n_here
    collectives = {
        op: n for op, n in ops.items() if op.replace("-start", "").replace("-done", "") in COLLECTIVES
    }
    return {
        "computations_run": len(seen),
        "fusions": ops["fusion"],
        "fusion_kinds": dict(fusion_kinds.most_common()),
        "fusion_backend_kinds": dict(fusion_cc.most_common()),
        "custom_calls": dict(custom_calls.most_common()),
        "cudnn_calls": sum(n for c, n in custom_calls.items() if "cudnn" in c.lower()),
        "library_gemm_calls": sum(
            n for c, n in custom_calls.items() if "cublas" in c.lower() or "gemm" in c.lower()
        ),
        "copies": ops["copy"] + ops["copy-start"],
        "transposes": ops["transpose"],
        "collectives": collectives,
        "while_loops": ops["while"],
        "while_trip_counts": [int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', hlo)],
        "conditionals": ops["conditional"],
        "command_buffer_calls": command_buffers,
        "command_buffer_in_text": "command_buffer" in hlo,
        "opcodes": dict(ops.most_common()),
    }


STEP_MODULES = ("jit_train_step", "jit_multi_step")  # the trainer's update (1 / several steps a call)


def read_dump(dump: pathlib.Path, modules: tuple[str, ...] = STEP_MODULES) -> dict:
    """Counts of the newest training-step module in an XLA dump folder.

    Works on this script's compile-only dumps and on a real GPU run's (`XLA_FLAGS=--xla_dump_to=DIR`):
    the thunk sequence as run (after the thunk passes that form command buffers; the sequence
    before them when XLA wrote no second file) and the optimized HLO.
    """
    dump = pathlib.Path(dump)

    def module_no(f: pathlib.Path) -> int:
        m = re.match(r"module_(\d+)\.", f.name)
        return int(m.group(1)) if m else -1

    hlos = [f for f in dump.glob("module_*gpu_after_optimizations.txt") if f.name.split(".")[1] in modules]
    if not hlos:
        raise SystemExit(
            f"no optimized HLO of {' or '.join(modules)} in {dump} (XLA_FLAGS=--xla_dump_to=...)"
        )
    hlo_file = max(hlos, key=module_no)
    prefix = hlo_file.name.split(".")[0] + "." + hlo_file.name.split(".")[1]
    after = dump / f"{prefix}.thunk_sequence_after_thunk_passes.txt"
    before = dump / f"{prefix}.thunk_sequence.txt"
    thunks = parse_thunks((after if after.exists() else before).read_text()) if before.exists() else None
    h = parse_hlo(hlo_file.read_text())
    if thunks:
        thunks["host_issued_per_call"] = host_issued(thunks, h["while_trip_counts"])
    return {
        "module": prefix,
        "thunks": thunks,
        "thunks_before_thunk_passes": parse_thunks(before.read_text()) if before.exists() else None,
        "hlo": h,
    }


# ---------------------------------------------------------------------------------------------
# One row.


def compile_row(args, mesh, k: int, dump_root: pathlib.Path, seeds: int = 0) -> dict:
    import jax

    from resnet_jax import pack, train
    from resnet_jax.models import flops as flops_lib

    cfg = build_config(args, k)
    cfg.num_seeds = max(seeds, 1)
    with on_mesh(mesh):
        run = pack.setup(cfg, pack.create_mesh(seeds, mesh.devices.flat)) if seeds else train.setup(cfg)
        state = run.abstract_state()
        batch = next(run.batches(0))
    variant = ("_auto_layout" if args.state_layout == "auto" else "") + ("" if args.donate else "_no_donate")
    variant += f"_pack{seeds}" if seeds else ""
    stem = pathlib.Path(args.config.split(":")[0]).stem
    dump = (
        dump_root
        / f"{stem}_{cfg.model.depth}_{jax.numpy.dtype(run.dtype).name}_b{cfg.batch_size}_k{k}{variant}"
    )
    shutil.rmtree(dump, ignore_errors=True)  # read_dump must not find an earlier compile's modules
    dump.mkdir(parents=True)
    compiled, lower_s, compile_s = compile_update(update_fn(run, args), state, batch, xla_dump_to=str(dump))
    counts = read_dump(dump)  # a packed update is named jit_train_step too (vmap keeps the name)
    mem = memory(compiled)
    flops = 6.0 * flops_lib.count_macs(run.model, run.inputs.image_shape[0]) * cfg.batch_size * max(seeds, 1)
    launches = (counts["thunks"] or {}).get("host_issued_per_call")
    if args.state_layout == "auto":  # train_step.place_state needs them equal to run the step
        counts["state_layouts_round_trip"] = state_layouts_round_trip(compiled)
    return {
        "config": args.config,
        "family": cfg.model.family,
        "depth": cfg.model.depth,
        "dtype": str(jax.numpy.dtype(run.dtype)),
        "batch_size": cfg.batch_size,
        "steps_per_call": k,
        "pack": seeds,
        "analytic_flops_per_step": flops,
        "flops_per_launch": flops * k / launches if launches else None,
        "state_layout": args.state_layout,
        "donate": args.donate,
        "device_kind": mesh.devices.flat[0].device_kind,
        "lower_s": lower_s,
        "compile_s": compile_s,
        **counts,
        "memory": mem,
        "dump": str(dump),
    }


def counts_text(r: dict, steps_per_call: int = 1) -> str:
    """The thunk and HLO counts of one row (or of `read_dump`'s result), three lines."""
    h, t = r["hlo"], r["thunks"] or {}
    fmt = lambda d: ", ".join(f"{k}={v}" for k, v in (d or {}).items())  # noqa: E731
    trips = h["while_trip_counts"] or ["?"] * len(t.get("while_loops", []))
    loops = "".join(
        f"; while x{n}{' (in a command buffer)' if lp.get('in_command_buffer') else ''}: "
        f"condition ({fmt(lp['condition'])}), body ({fmt(lp['body'])})"
        for lp, n in zip(t.get("while_loops", []), trips, strict=False)
    )
    issued = t.get("host_issued_per_call")
    per_step = f"{issued / steps_per_call:.1f}" if issued else "-"
    return (
        f"  thunks: all ({fmt(t.get('all'))}); top level ({fmt(t.get('top_level'))}){loops}\n"
        f"  inside command buffers ({fmt(t.get('in_command_buffers'))}); "
        f"host-issued per call {issued if issued else '-'}, per step {per_step}\n"
        f"  HLO: {h['fusions']} fusions ({fmt(h['fusion_kinds'])}), "
        f"custom fusions ({fmt(h['fusion_backend_kinds'])}), "
        f"custom calls: cudnn {h['cudnn_calls']}, cublas/gemm {h['library_gemm_calls']} "
        f"({fmt(h['custom_calls'])}), "
        f"copies {h['copies']}, transposes {h['transposes']}, collectives {sum(h['collectives'].values())}, "
        f"while {h['while_loops']}, conditionals {h['conditionals']}, "
        f"command-buffer calls in HLO {h['command_buffer_calls']}"
    )


def summary(r: dict) -> str:
    name = f"{r['family']}-{r['depth']} b{r['batch_size']} k{r['steps_per_call']} {r['dtype']}"
    name += f" x{r['pack']} seeds" if r.get("pack") else ""
    per_launch = f", {r['flops_per_launch'] / 1e9:.2f} GFLOP per launch" if r.get("flops_per_launch") else ""
    return (
        f"{name} on {r['device_kind']}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s"
        f"{per_launch}\n" + counts_text(r, r["steps_per_call"])
    )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_flags(p, required=False)
    p.add_argument("--steps_per_call", default="1", help="comma list, one compile each")
    p.add_argument("--pack", default="", help="seeds in one program (comma list, one compile each)")
    add_step_flags(p)
    p.add_argument("--target", default=str(DEFAULT_TARGET), help="GpuTargetConfigProto text file")
    p.add_argument("--topology", default="1x1x1", help="slices x hosts x GPUs per host, e.g. 1x1x8")
    p.add_argument("--dump", default="", help="keep XLA's dumps here (default: a temporary folder)")
    p.add_argument("--json", default="")
    p.add_argument("--dump_target_config", default="", help="write this GPU's target description and exit")
    p.add_argument("--from_dump", default="", help="only read an XLA dump folder (e.g. of a real GPU run)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.dump_target_config:
        dump_target_config(args.dump_target_config)
        return []
    if args.from_dump:
        row = {"dump": args.from_dump, **read_dump(pathlib.Path(args.from_dump))}
        k = max([1, *row["hlo"]["while_trip_counts"]])
        print(f"{row['module']} in {args.from_dump} ({k} steps per call, from its loop's trip count)")
        print(counts_text(row, k), flush=True)
        if args.json:
            write_json(args.json, [row])
        return [row]
    if not args.config:
        raise SystemExit("--config is required (or --from_dump DIR, or --dump_target_config FILE)")
    mesh = gpu_mesh(args.target, args.topology)
    dump_root = pathlib.Path(args.dump or tempfile.mkdtemp(prefix="gpu_aot_"))
    rows = []
    packs = [int(x) for x in args.pack.split(",") if x.strip()] or [0]
    for k, seeds in [
        (k, n) for k in [int(x) for x in args.steps_per_call.split(",") if x.strip()] for n in packs
    ]:
        row = compile_row(args, mesh, k, dump_root, seeds)
        rows.append(row)
        print(summary(row), flush=True)
        if args.json:
            write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
