"""The google/flax ImageNet example's own training step, timed as train_step.py times ours.

    python3 benchmarks/peer_flax_imagenet.py --peer_dir .peer/flax/examples/imagenet --json out.json

The peer's code is never part of this repository: copy google/flax `examples/imagenet` into the
ignored `.peer/` folder (e.g. `git archive <commit> examples/imagenet | tar -x -C .peer/flax`) and
record the commit. This script imports the example's unmodified `train.py` and `models.py`; the
modules they import only for their input pipeline and logging (tensorflow, tensorflow_datasets,
clu, the example's input_pipeline) are replaced by empty stand-ins when they are not installed,
since no function used here touches them. What runs is the example's `create_train_state` and its
`train_step`, under the `jax.pmap` its `train_and_evaluate` builds (state unreplicated,
`in_axes=(None, 0)`), on one synthetic device-resident batch, with the example's model class.

`--dtype bfloat16` (default) builds the model in bfloat16 with float32 parameters and no loss
scaling, the setting the issue's peer figure (6,879 img/s on one H200) was measured in; the example
as shipped uses float16 with dynamic loss scaling on GPUs (`--dtype float16 --dynamic_scale`).

Timing is train_step.py's: the step compiled ahead of time, `--warmup` steps, then `--repeats` x
`--steps` steps to `jax.block_until_ready`; the median repeat is reported.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import pathlib
import statistics
import sys
import time
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

STAND_INS = ("tensorflow", "tensorflow_datasets", "clu", "clu.metric_writers", "clu.periodic_actions")


def import_peer(peer_dir: pathlib.Path) -> tuple[types.ModuleType, types.ModuleType, list[str]]:
    """The example's `train` and `models` modules; returns them and the modules stood in for."""
    if not (peer_dir / "train.py").exists():
        raise SystemExit(
            f"no train.py in {peer_dir}: copy google/flax examples/imagenet there (see this file's docstring)"
        )
    # flax.io probes for TensorFlow with find_spec at import: let it see what is really installed.
    importlib.import_module("flax.training.checkpoints")
    stood_in = []
    for name in STAND_INS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            stood_in.append(name)
    if "clu" in stood_in:
        sys.modules["clu"].metric_writers = sys.modules["clu.metric_writers"]
        sys.modules["clu"].periodic_actions = sys.modules["clu.periodic_actions"]
    sys.path.insert(0, str(peer_dir))
    if "tensorflow" in stood_in:  # the example's input pipeline needs the real TensorFlow at import
        sys.modules["input_pipeline"] = types.ModuleType("input_pipeline")
        stood_in.append("input_pipeline")
    return importlib.import_module("train"), importlib.import_module("models"), stood_in


def measure(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    train, models, stood_in = import_peer(pathlib.Path(args.peer_dir))
    train.NUM_CLASSES = args.num_classes
    n_dev = jax.local_device_count()
    if args.batch_size % n_dev:
        raise SystemExit(f"--batch_size {args.batch_size} is not divisible by {n_dev} devices")
    dtype = jnp.dtype(args.dtype)
    model = getattr(models, args.model)(num_classes=args.num_classes, dtype=dtype)
    config = ml_collections.ConfigDict({"momentum": 0.9, "half_precision": args.dynamic_scale})
    lr_fn = functools.partial(lambda step, lr: lr, lr=0.1)
    state = train.create_train_state(jax.random.key(0), config, model, args.image_size, lr_fn)
    if (state.dynamic_scale is not None) != args.dynamic_scale:
        raise SystemExit("--dynamic_scale: the example enables loss scaling only on GPUs (half_precision)")
    p_train_step = jax.pmap(
        functools.partial(train.train_step, learning_rate_fn=lr_fn),
        in_axes=(None, 0),
        out_axes=(None, 0),
        axis_name="batch",
    )
    rng = np.random.default_rng(0)
    shape = (n_dev, args.batch_size // n_dev, args.image_size, args.image_size, 3)
    batch = {
        "image": jnp.asarray(rng.standard_normal(shape, np.float32), dtype),
        "label": jnp.asarray(rng.integers(0, args.num_classes, shape[:2]), jnp.int32),
    }
    t = time.perf_counter()
    lowered = p_train_step.lower(state, batch)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, batch))
    first_run_s = time.perf_counter() - t
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times) / args.steps
    device = jax.devices()[0]
    return {
        "peer": f"google/flax examples/imagenet {args.model}",
        "peer_dir": args.peer_dir,
        "peer_source": _source(pathlib.Path(args.peer_dir)),
        "stood_in": stood_in,
        "dtype": dtype.name,
        "dynamic_scale": args.dynamic_scale,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": n_dev,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "first_run_s": first_run_s,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "step_ms": 1e3 * step_s,
        "step_ms_repeats": [1e3 * x / args.steps for x in times],
        "images_per_s": args.batch_size / step_s,
        "final_loss": float(np.asarray(metrics["loss"]).ravel()[0]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "jax": jax.__version__,
    }


def _source(peer_dir: pathlib.Path) -> str | None:
    """The provenance line (`<repo> <commit>`) left in a SOURCE file at or above the peer folder."""
    for d in (peer_dir, *peer_dir.resolve().parents):
        if (d / "SOURCE").exists():
            return (d / "SOURCE").read_text().strip()
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer_dir", default=".peer/flax/examples/imagenet", help="the example's folder")
    p.add_argument("--model", default="ResNet50", help="a model class of the example's models.py")
    p.add_argument("--batch_size", type=int, default=256, help="global batch over the local devices")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--dtype", default="bfloat16", help="the model's compute dtype")
    p.add_argument("--dynamic_scale", action="store_true", help="the example's float16 loss scaling (GPU)")
    p.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", help="write the result here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    row = measure(args)
    print(
        f"{row['peer']} {row['dtype']} batch {row['batch_size']} on {row['device_count']} x "
        f"{row['device_kind']}: compile {row['lower_s'] + row['compile_s']:.1f} s, "
        f"{row['step_ms']:.2f} ms/step, {row['images_per_s']:,.0f} img/s"
    )
    if args.json:
        write_json(args.json, {"peer": row})
    return row


if __name__ == "__main__":
    main()
