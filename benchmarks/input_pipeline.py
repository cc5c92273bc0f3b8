"""Input pipeline throughput: the ImageNet tf.data path on real JPEGs, and the device-resident CIFAR path.

ImageNet: CIFAR-10 training images upscaled to ImageNet-like sizes (about 400 px) and written as JPEGs
are built into a TFDS dataset (resnet_jax.data.folder_tfds), then read through data.streamed's
train_iterator ("paper" and "inception") and eval_iterator ("center", "ten"): images/s, per host core.
CIFAR: the trainer's own device-held input path (resnet_jax.inputs) on one device: each step's indices
computed on the host and sharded, then gathered, padded, cropped, flipped and normalised inside one
jitted call: steps/s at the given batch size.

    python benchmarks/input_pipeline.py --json /tmp/input_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_jax import data, schema  # noqa: E402
from resnet_jax.data import device_held, streamed  # noqa: E402
from resnet_jax.data.common import DeviceHeldData  # noqa: E402

SIZES = [(500, 375), (375, 500), (400, 400), (480, 360)]  # (W, H), like typical ImageNet photos


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cifar_data(args):
    """The data section of the CIFAR part: the archive, else CIFAR-shaped random images."""
    if args.cifar_tar and pathlib.Path(args.cifar_tar).exists():
        return schema.data_config(name="cifar10", path=args.cifar_tar, cache_dir=args.cache_dir)
    print(f"no archive at {args.cifar_tar!r}: random uint8 CIFAR-shaped arrays instead", file=sys.stderr)
    return schema.data_config(name="synthetic", image_size=32, synthetic_examples=50_000)


def build_jpegs(args, cifar: DeviceHeldData) -> dict:
    from resnet_jax.data import folder_tfds

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="input_pipeline_"))
    tfds_dir = work / "tfds"
    if not (tfds_dir / folder_tfds.NAME).exists():
        n, m = args.jpeg_train, args.jpeg_eval
        folder_tfds.write_upscaled(
            cifar.train_images[:n], cifar.train_labels[:n], cifar.class_names, work / "src/train", SIZES
        )
        folder_tfds.write_upscaled(
            cifar.eval_images[:m], cifar.eval_labels[:m], cifar.class_names, work / "src/validation", SIZES
        )
        folder_tfds.build(work / "src", tfds_dir)
    jpegs = list((work / "src/train").rglob("*.jpg"))
    mean_kb = np.mean([p.stat().st_size for p in jpegs]) / 1024 if jpegs else float("nan")
    return {
        "name": folder_tfds.NAME,
        "tfds_dir": str(tfds_dir),
        "shuffle_buffer": args.shuffle_buffer,
        "image_size": 224,
        "jpeg_kb": mean_kb,
    }


def time_iterator(make, batches: int, warmup: int) -> tuple[float, int]:
    """Images/s over `batches` batches after `warmup` batches (pipeline start-up excluded)."""
    it = make()
    for _ in range(warmup):
        next(it)
    t0, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        images += len(batch["label"])
    return images / (time.perf_counter() - t0), images


def bench_imagenet(args, cfg: dict) -> list[dict]:
    jpeg_kb = cfg.pop("jpeg_kb")
    rows, b = [], args.imagenet_batch
    for augment in ("paper", "inception"):
        make = lambda a=augment: streamed.train_iterator(schema.data_config(**cfg, augment=a), b, 0, 0)
        rate, n = time_iterator(make, args.imagenet_batches, warmup=2)
        rows.append({"pipeline": f"imagenet train {augment}", "batch": b, "images": n, "images_per_s": rate})
    for crop in ("center", "ten"):
        make = lambda c=crop: streamed.eval_iterator(schema.data_config(**cfg, eval_crop=c), b)
        n_eval = data.dataset_info(schema.data_config(**cfg))["num_eval"]
        steps = min(args.imagenet_batches, streamed.eval_batches(n_eval, b, 1) - 1)
        rate, n = time_iterator(make, steps, warmup=1)
        rows.append({"pipeline": f"imagenet eval {crop}", "batch": b, "images": n, "images_per_s": rate})
    for r in rows:
        r["images_per_s_per_core"] = r["images_per_s"] / host_cores()
        r["jpeg_kb"] = jpeg_kb
    return rows


def bench_cifar(args, cifar_cfg) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resnet_jax import inputs

    device = jax.devices()[0]
    cfg = schema.base_config()
    cfg.data, cfg.batch_size = cifar_cfg, args.cifar_batch
    mesh = jax.sharding.Mesh(np.array([device]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    feed = inputs.device_held_inputs(cfg, mesh, jnp.float32)  # the trainer's own input path
    b = args.cifar_batch
    step = jax.jit(feed.train_images)
    key = jax.random.key(0)
    out = None
    batches = feed.train_batches(0)
    for s in range(args.cifar_steps + 5):
        if s == 5:
            jax.block_until_ready(out)
            t0 = time.perf_counter()
        out = step(jax.random.fold_in(key, s), next(batches))
    jax.block_until_ready(out)
    rate = args.cifar_steps / (time.perf_counter() - t0)
    return {
        "pipeline": "cifar device gather+augment",
        "batch": b,
        "device": device.device_kind,
        "steps_per_s": rate,
        "images_per_s": rate * b,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar_tar", default=str(ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--cache_dir", default=str(ROOT / ".cache/data"))
    p.add_argument("--workdir", default="", help="keeps the built JPEG dataset between runs")
    p.add_argument("--jpeg_train", type=int, default=1024)
    p.add_argument("--jpeg_eval", type=int, default=256)
    p.add_argument("--shuffle_buffer", type=int, default=1024)
    p.add_argument("--imagenet_batch", type=int, default=64)
    p.add_argument("--imagenet_batches", type=int, default=12)
    p.add_argument("--cifar_batch", type=int, default=128)
    p.add_argument("--cifar_steps", type=int, default=200)
    p.add_argument("--skip", default="", help="comma list of parts to skip: imagenet, cifar")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    cifar_cfg = cifar_data(args)
    rows = []
    if "cifar" not in skip:
        rows.append(bench_cifar(args, cifar_cfg))
    if "imagenet" not in skip:
        rows += bench_imagenet(args, build_jpegs(args, device_held.load(cifar_cfg, seed=0, batch_size=128)))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host_cores": host_cores(),
        "cpu": platform.processor() or platform.machine(),
        "command": " ".join(sys.argv),
    }
    print(f"{'pipeline':32s} {'batch':>5s} {'images/s':>10s} {'img/s/core':>10s} {'steps/s':>8s}")
    for r in rows:
        per_core = r.get("images_per_s_per_core")
        steps = r.get("steps_per_s")
        print(
            f"{r['pipeline']:32s} {r['batch']:5d} {r['images_per_s']:10.1f} "
            f"{per_core if per_core is not None else float('nan'):10.1f} "
            f"{steps if steps is not None else float('nan'):8.1f}"
        )
    result = {"meta": meta, "results": rows}
    print(json.dumps(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
