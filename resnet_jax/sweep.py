"""Run a sweep: one `python -m resnet_jax.main` training run per point, each in its own workdir.

    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py --workdir=runs/cifar_depth
    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py --workdir=runs/cifar_depth --mode=print
    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py:smoke --workdir=/tmp/sw --only=resnet20,plain20 \
        --override=num_train_steps=4

A sweep file defines `get_sweep(arg=None) -> list[dict]`; each point has "name", "config"
("configs/x.py[:arg]", relative to the repository root), "overrides" ({"model.shortcut": "B"}) and
optionally "seeds" (runs per point, default 1; --seeds=N sets every point's). A run goes to
<workdir>/<name>-seed<k> with --config.seed=<k>. --pack trains a point's seeds side by side as one
program (one trainer with --config.num_seeds=N, writing the same <name>-seed<k> workdirs; device-held
data only: CIFAR, image folders, synthetic). Modes:

  local   run the points one after another here (--per_gpu: one per visible GPU at a time)
  print   print the training commands
  slurm   print `sbatch launch/slurm_gpu.sbatch ...` per point (--submit submits them)
  tpu     print `launch/tpu_vm.sh ...` per point (--submit runs them one after another)

Every point's config, with its overrides, is checked before any run starts (config.check on one device:
whether the batch divides the device count is checked when each run starts). Rerunning the same command
skips finished runs (summary.json says done) and resumes the others,
since the trainer resumes from the checkpoints in its workdir.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import pathlib
import queue
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import NamedTuple

from etils import epath

from resnet_jax import cli, config, experiments
from resnet_jax import workdir as files

ROOT = experiments.ROOT
TRAINER = (sys.executable, "-m", "resnet_jax.main")
MODES = ("local", "print", "slurm", "tpu")


class Job(NamedTuple):
    """One training process of the sweep: a point at one seed, or at `num_seeds` seeds from `seed` packed
    into one program (sweep --pack)."""

    name: str
    config: str
    overrides: dict
    seed: int
    num_seeds: int = 1


def load_sweep(spec: str) -> list[dict]:
    """get_sweep(arg) of the sweep file in "path/to/sweep.py[:arg]"."""
    path, _, arg = spec.partition(":")
    try:
        module = experiments.load_file(path)
        if not hasattr(module, "get_sweep"):
            raise ValueError(f"the sweep file {path} defines no get_sweep(arg=None)")
        points = module.get_sweep(arg or None)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - the sweep file is the user's code: any error is bad input
        raise ValueError(f"cannot load the sweep {spec}: {cli.loading_error(e)}") from None
    for i, p in enumerate(points if isinstance(points, list) else [None]):
        if (
            not isinstance(p, dict)
            or not isinstance(p.get("name"), str)
            or not isinstance(p.get("config"), str)
        ):
            raise ValueError(f"point {i} of {spec} is not a dict with a 'name' and a 'config' (see sweep.py)")
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep point names are not unique: {names}")
    return points


def expand(
    points: list[dict], seeds: int | None = None, only: Sequence[str] = (), pack: bool = False
) -> list[Job]:
    """One Job per point and seed (`pack`: one per point, its seeds in one program); `seeds` overrides the
    points' own, `only` keeps the points named."""
    unknown = set(only) - {p["name"] for p in points}
    if unknown:
        raise ValueError(f"--only names no point: {sorted(unknown)}")
    jobs = []
    for p in points:
        if only and p["name"] not in only:
            continue
        n = seeds or p.get("seeds", 1)
        args = (p["name"], p["config"], dict(p.get("overrides", {})))
        jobs += [Job(*args, 0, n)] if pack and n > 1 else [Job(*args, seed) for seed in range(n)]
    return jobs


def check_runs(runs: Sequence[Job], extra: dict[str, str]) -> None:
    """Every run's config loads, with its overrides, and passes config.check: a bad point fails the sweep
    before any run starts, not when its turn comes hours later. The device count is not known here (each
    run finds its own): the rules that depend on it (the batch a multiple of the devices, BN groups
    dividing the per-device batch) are checked for one device here and again when each run starts."""
    for run in runs:
        try:
            cfg = experiments.load_config(run.config)
        except Exception as e:  # noqa: BLE001 - a config file is the user's code: any error is bad input
            raise ValueError(
                f"sweep point {run.name}: cannot load {run.config}: {cli.loading_error(e)}"
            ) from None
        try:
            overrides = {"seed": run.seed, **run.overrides, **extra, "num_seeds": run.num_seeds}
            for key, value in overrides.items():
                cli.override(cfg, key, value if isinstance(value, str) else format_value(value))
            config.check(cfg, 1)  # check_pack too
            if cfg.num_train_steps > 0:  # the run's length is known without the dataset
                config.check_run_length(cfg, int(cfg.num_train_steps))
        except config.ConfigError as e:
            raise ValueError(f"sweep point {run.name}: {e}") from None


def check_sweep_workdir(workdir: str) -> None:
    """A local sweep workdir must be a directory or creatable as one (URLs are checked when read)."""
    if "://" in workdir:
        return
    path = pathlib.Path(workdir).expanduser().absolute()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"--workdir {workdir}: {p} is a file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ValueError(f"--workdir {workdir}: {p} is not writable")
            return


def run_name(run: Job) -> str:
    """The run's directory name inside the sweep workdir (a pack's: its seeds', "<name>-seeds0-4")."""
    if run.num_seeds > 1:
        return f"{run.name}-seeds{run.seed}-{run.seed + run.num_seeds - 1}"
    return f"{run.name}-seed{run.seed}"


def seed_names(run: Job) -> list[str]:
    """The workdir names of the job's seeds: <name>-seed<k> (the names of a pack's seeds, too)."""
    return [f"{run.name}-seed{k}" for k in range(run.seed, run.seed + run.num_seeds)]


def format_value(value: object) -> str:
    """A config value as `--config.key=value` expects it (tuples without spaces)."""
    if isinstance(value, tuple | list):
        return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def train_flags(run: Job, workdir: str, extra: dict[str, str]) -> list[str]:
    """The trainer's flags for this run: config, workdir, seed, the point's then the sweep's overrides."""
    overrides = {"seed": run.seed, **({"num_seeds": run.num_seeds} if run.num_seeds > 1 else {}),
                 **run.overrides, **extra}  # fmt: skip
    return [f"--config={run.config}", f"--workdir={workdir}"] + [
        f"--config.{k}={format_value(v)}" for k, v in overrides.items()
    ]


def run_dir(workdir: str, run: Job) -> str:
    """The trainer's --workdir: <workdir>/<run name>, a pack's <workdir>/<point> (its seeds train in
    <point>-seed<k>); local paths are made absolute, URLs (gs://) kept as they are."""
    return sweep_path(workdir, run.name if run.num_seeds > 1 else run_name(run))


def seed_dirs(workdir: str, run: Job) -> list[str]:
    """The workdirs of the job's seeds (one for an unpacked run)."""
    return [sweep_path(workdir, name) for name in seed_names(run)]


def sweep_path(workdir: str, name: str) -> str:
    if "://" in workdir:
        return f"{workdir.rstrip('/')}/{name}"
    return str(pathlib.Path(workdir).resolve() / name)


def is_done(run_workdir: str) -> bool:
    """True when the trainer finished this run (summary.json with "done": true). An unreadable workdir
    (no network, no credentials for gs://) is an OSError of one sentence."""
    try:
        return bool((files.read_summary(run_workdir) or {}).get("done"))  # local or an object store (gs://)
    except files.DamagedFile as e:  # rerun: the trainer resumes at the run's end and writes it again
        print(f"warning: {e}", file=sys.stderr)
        return False
    except AttributeError:
        return False
    except Exception as e:  # noqa: BLE001 - TensorFlow's and etils' storage errors have no common base
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(
            f"cannot read {run_workdir} ({first}); check the path, network and credentials"
        ) from None


def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES, else from nvidia-smi; [] without GPUs."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return out.split()


def run_one(cmd: list[str], run_workdirs: str | Sequence[str], env: dict[str, str]) -> int:
    """Run one training command, appending its output to <run workdir>/train.log (a pack's: to every
    seed's).

    In an object store (gs://), which cannot append, the log is written locally and appended to the
    stored one when the run ends.
    """
    dirs = [run_workdirs] if isinstance(run_workdirs, str) else list(run_workdirs)
    print(f"[sweep] start {', '.join(dirs)}  (log: train.log)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = [pathlib.Path(tmp, str(i) if "://" in d else d, "train.log") for i, d in enumerate(dirs)]
        with contextlib.ExitStack() as stack:
            for path in local:
                path.parent.mkdir(parents=True, exist_ok=True)
            logs = [stack.enter_context(open(path, "a")) for path in local]
            proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
            for line in proc.stdout:
                for log in logs:
                    log.write(line.decode(errors="replace"))
                    log.flush()
            rc = proc.wait()
        for d, path in zip(dirs, local, strict=True):
            if "://" in d:
                stored = epath.Path(d) / "train.log"
                stored.parent.mkdir(parents=True, exist_ok=True)
                before = stored.read_text() if stored.exists() else ""
                files.write_whole(stored, before + path.read_text())
    print(f"[sweep] {'done' if rc == 0 else f'FAILED (exit {rc})'} {', '.join(dirs)}", flush=True)
    return rc


def run_local(
    runs: list[Job],
    workdir: str,
    extra: dict[str, str],
    trainer: Sequence[str] = TRAINER,
    gpus: Sequence[str] = (),
) -> list[str]:
    """Run the unfinished runs here, one at a time or one per GPU in `gpus`; return the failed runs' names."""
    todo = []
    for run in runs:
        path, seeds = run_dir(workdir, run), seed_dirs(workdir, run)
        if all(is_done(d) for d in seeds):
            print(f"[sweep] skip (done) {', '.join(seeds)}", flush=True)
        else:
            todo.append((run, seeds, [*trainer, *train_flags(run, path, extra)]))
    if len(gpus) <= 1:
        return [run_name(r) for r, seeds, cmd in todo if run_one(cmd, seeds, {})]
    free: queue.Queue[str] = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def on_free_gpu(seeds: list[str], cmd: list[str]) -> int:
        gpu = free.get()
        try:
            return run_one(cmd, seeds, {"CUDA_VISIBLE_DEVICES": gpu})
        finally:
            free.put(gpu)

    with concurrent.futures.ThreadPoolExecutor(len(gpus)) as pool:
        codes = list(pool.map(lambda t: on_free_gpu(t[1], t[2]), todo))
    return [run_name(r) for (r, _, _), rc in zip(todo, codes, strict=True) if rc]


def tpu_name(run: Job) -> str:
    """A valid TPU VM name for the run (lower case letters, digits, hyphens)."""
    return re.sub(r"[^a-z0-9-]", "-", f"resnet-{run_name(run)}".lower())[:60]


def launch_command(mode: str, run: Job, workdir: str, extra: dict[str, str]) -> list[str]:
    """The command of one run in print, slurm or tpu mode."""
    flags = train_flags(run, run_dir(workdir, run), extra)
    if mode == "print":
        return ["python", "-m", "resnet_jax.main", *flags]
    if mode == "slurm":
        return [
            "sbatch",
            f"--job-name={run_name(run)}",
            f"--output={seed_dirs(workdir, run)[0]}/slurm-%j.log",
            "launch/slurm_gpu.sbatch",
            *flags[:2],
            "--",
            *flags[2:],
        ]
    return ["launch/tpu_vm.sh", f"--name={tpu_name(run)}", *flags[:2], "--", *flags[2:]]


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """["num_train_steps=4", "model.remat=True"] -> {"num_train_steps": "4", ...}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override wants key=value, got {item!r}")
        out[key.removeprefix("config.")] = value
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; see the module docstring."""
    p = cli.Parser(prog="python -m resnet_jax.sweep", description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="path/to/sweep.py[:arg]")
    p.add_argument("--workdir", required=True, help="sweep directory: one sub-directory per run")
    p.add_argument("--mode", choices=MODES, default="local")
    p.add_argument(
        "--seeds", type=cli.integer(1), default=None, help="runs per point (default: each point's own)"
    )
    p.add_argument("--only", default="", help="comma-separated point names to keep")
    p.add_argument("--override", action="append", default=[], help="key=value for every run (repeatable)")
    p.add_argument("--pack", action="store_true", help="each point's seeds side by side in one program")
    p.add_argument("--per_gpu", action="store_true", help="local mode: one run per visible GPU at a time")
    p.add_argument("--submit", action="store_true", help="slurm/tpu modes: run the commands, not print them")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Expand the sweep and run, print or submit its runs; exit status 1 if any run failed, 2 for bad
    input (one sentence on stderr)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return sweep(args)
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2


def sweep(args: argparse.Namespace) -> int:
    only = [n for n in args.only.split(",") if n]
    runs = expand(load_sweep(args.sweep), args.seeds, only, args.pack)
    extra = parse_overrides(args.override)
    check_sweep_workdir(args.workdir)
    check_runs(runs, extra)
    if args.mode == "local":
        failed = run_local(runs, args.workdir, extra, gpus=visible_gpus() if args.per_gpu else ())
        print(f"[sweep] {len(runs) - len(failed)} of {len(runs)} runs finished; failed: {failed or 'none'}")
        return 1 if failed else 0
    failed = []
    for run in runs:
        seeds = seed_dirs(args.workdir, run)
        cmd = launch_command(args.mode, run, args.workdir, extra)
        if all(is_done(d) for d in seeds):
            print(f"# done: {', '.join(seeds)}")
        elif args.mode == "slurm" and not args.submit:  # Slurm does not create the --output directory
            print(f"mkdir -p {shlex.quote(seeds[0])} && {shlex.join(cmd)}")
        elif not args.submit or args.mode == "print":
            print(shlex.join(cmd))
        else:
            if args.mode == "slurm":
                pathlib.Path(seeds[0]).mkdir(parents=True, exist_ok=True)
            if subprocess.run(cmd, cwd=ROOT, check=False).returncode:
                failed.append(run_name(run))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
