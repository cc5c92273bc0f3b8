"""What the step benchmarks share: the benchmark's config, the trainer's own step compiled ahead of time on
the run's first batch, the environment record and JSON output.

train_step.py, profile_step.py, gpu_aot.py and compile_time.py time or compile exactly what
`python -m resnet_jax.main` runs (`train.setup(cfg)`); nothing here changes the step. jax-free at import.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def add_config_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The flags every step benchmark takes to name its config."""
    p.add_argument(
        "--config", required=required, default="",
        help="configs/<file>.py[:arg], e.g. configs/cifar10.py:resnet56",
    )  # fmt: skip
    p.add_argument("--batch_size", type=int, default=0, help="global batch (default: the config's)")
    p.add_argument("--dtype", default="", help="model.dtype: float32, bfloat16 (default: the config's)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--real_data", action="store_true", help="the config's data instead of synthetic")


def build_config(args: argparse.Namespace, steps_per_call: int):
    """The experiment's config with the benchmark's overrides: synthetic data, never-due intervals."""
    from resnet_jax import cli, experiments

    cfg = experiments.load_config(args.config)
    if not args.real_data:
        cfg.data.name = "synthetic"
        cfg.data.path = ""
        if cfg.model.family == "cifar":
            cfg.data.image_size = 32
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.dtype:
        cfg.model.dtype = args.dtype
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set wants key=value, got {item!r}")
        cli.override(cfg, key.strip(), value.strip())
    cfg.steps_per_call = steps_per_call
    # The run's length and intervals only matter to the loop: make them valid for any config.
    k = steps_per_call
    cfg.num_train_steps = k * 1_000_000
    cfg.log_every_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = k * 1_000
    return cfg


def compile_update(update: Any, spec: Any, batch: dict, **compile_options: Any) -> tuple[Any, float, float]:
    """(compiled, lower seconds, compile seconds) of the trainer's update on `spec` (a state or its abstract
    tree) and one device batch, ahead of time."""
    t = time.perf_counter()
    lowered = update.lower(spec, batch)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile(compiler_options=compile_options) if compile_options else lowered.compile()
    return compiled, lower_s, time.perf_counter() - t


def staged_batches(batches: Any, steps: int, steps_per_call: int) -> list[dict]:
    """The device batches of `steps` steps (whole calls), fetched before timing starts."""
    import jax

    staged = [next(batches) for _ in range(max(1, -(-steps // steps_per_call)))]
    jax.block_until_ready(staged)
    return staged


def run_calls(compiled: Any, state: Any, batches: list[dict], calls: int) -> Any:
    """`calls` calls of the compiled step over `batches` in turn; returns the state once it is ready."""
    import jax

    for i in range(calls):
        state, _ = compiled(state, batches[i % len(batches)])
    return jax.block_until_ready(state)


def environment() -> dict:
    import flax
    import jax

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "host_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(path: str | pathlib.Path, obj: dict | list) -> None:
    """Write a benchmark's result as indented JSON, creating the parent folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from resnet_jax.workdir import write_whole  # a kill mid-write leaves the previous result whole

    write_whole(path, json.dumps(obj, indent=2))


@contextlib.contextmanager
def compilation_cache(enabled: bool):
    """Compile times are only real without the persistent cache; restore the caller's setting."""
    import jax

    try:
        old = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", enabled)
    except AttributeError:  # a jax without the option: nothing to switch
        yield
        return
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", old)
