"""ImageNet input pipelines side by side: host CPU time per image on a generated ImageNet-like JPEG folder.

The folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) holds CIFAR-10 images upscaled to photo sizes
(500x375 to 800x600) plus 1/f ("pink") noise, whose amplitude is calibrated so the JPEGs (quality 90)
average --target_kb (ImageNet's ~110 KB): the decoder sees a photo's entropy-coded volume and pixel count.
The script prints how close it came (mean KB, bits per pixel, the luminance power spectrum's slope, which
is about -2 for natural images).

Pipelines, all reading the same files, each measured in the same process, interleaved A B C A B C over
--repeats rounds (median reported): ours (resnet_jax.data.streamed's train_preprocess for "inception" and
"paper", center and ten-crop eval; float32 normalised as the trainer gets them today, and the uint8
variants whose normalisation moves into the jitted step), a minimal tf.data pipeline written in the style
of google/flax examples/imagenet (decode_and_crop_jpeg + bicubic resize, no antialiasing), and the DALI
pipeline (resnet_jax.data.dali) on the CPU. The figure is process CPU time per image (every thread of the
process, user + system) in steady state: each pipeline runs --warmup batches, then --batches batches are
timed. --compare_with=OLD/streamed.py adds "before" rows from another version of the preprocessing code.

    python benchmarks/input_pipeline.py --workdir /tmp/ipbench --json out.json
    python benchmarks/input_pipeline.py --quick                       # a few seconds' smoke run
    python benchmarks/input_pipeline.py --e2e --config configs/imagenet_r50.py  # ResNet-50 fed by each
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pathlib
import platform
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (W, H): the common ImageNet photo shapes between 500x375 and 800x600.
SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (480, 640), (800, 600), (600, 800), (500, 500)]
H200_IMAGES_PER_S = 7_000  # the trainer's ResNet-50 step on one H200 (BENCHMARKS.md, 6,933-7,225 img/s)


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---- The generated folder. ----


def cifar_images(tar_path: str, n: int) -> tuple[list[np.ndarray], list[str]]:
    """The first n training images of the CIFAR-10 JPEG archive, round-robin over its classes."""
    from PIL import Image

    by_class: dict[str, list[np.ndarray]] = {}
    per_class = -(-n // 10)
    with tarfile.open(tar_path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == "train":
                images = by_class.setdefault(parts[1], [])
                if len(images) < per_class:
                    images.append(np.asarray(Image.open(tar.extractfile(m)).convert("RGB")))
    classes = sorted(by_class)
    out = [(by_class[c][i], c) for i in range(per_class) for c in classes if i < len(by_class[c])]
    return [x for x, _ in out[:n]], [c for _, c in out[:n]]


def pink_noise(rng: np.random.Generator, h: int, w: int, exponent: float = 1.0) -> np.ndarray:
    """Unit-variance noise with an amplitude spectrum 1 / f**exponent (natural images: ~1)."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f**exponent
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=(h, w))
    return noise / noise.std()


def photo_like(
    image: np.ndarray, size: tuple[int, int], sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """A CIFAR image upscaled (bicubic) to size (W, H) with sigma-scaled pink luminance and chroma detail."""
    from PIL import Image

    w, h = size
    base = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    lum, chroma = pink_noise(rng, h, w), pink_noise(rng, h, w, 1.3)
    detail = sigma * lum[..., None] + 0.3 * sigma * np.stack([chroma, -chroma, 0.5 * chroma], -1)
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def calibrate_sigma(images: list[np.ndarray], target_kb: float, quality: int) -> float:
    """The noise amplitude whose JPEGs average target_kb over a sample (bisection; size grows with sigma)."""
    lo, hi = 0.0, 80.0
    sample = images[:12]
    for _ in range(9):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(1)
        kb = [
            len(jpeg_bytes(photo_like(x, SIZES[i % len(SIZES)], mid, rng), quality)) / 1024
            for i, x in enumerate(sample)
        ]
        lo, hi = (mid, hi) if np.mean(kb) < target_kb else (lo, mid)
    return (lo + hi) / 2


def make_folder(
    root: pathlib.Path, tar_path: str, n_train: int, n_val: int, target_kb: float, quality: int
) -> float:
    """Write root/{train,val}/<wnid>/<n>.JPEG (CIFAR-10's classes as made-up WordNet ids); returns sigma."""
    images, classes = cifar_images(tar_path, n_train + n_val)
    if len(images) < n_train + n_val:
        raise SystemExit(f"{tar_path} holds only {len(images)} training images, fewer than asked for.")
    wnid = {c: f"n{9_000_000 + i:08d}" for i, c in enumerate(sorted(set(classes)))}
    sigma = calibrate_sigma(images, target_kb, quality)
    rng = np.random.default_rng(0)
    for i, (image, c) in enumerate(zip(images, classes, strict=True)):
        split = "train" if i < n_train else "val"
        folder = root / split / wnid[c]
        folder.mkdir(parents=True, exist_ok=True)
        data = jpeg_bytes(photo_like(image, SIZES[i % len(SIZES)], sigma, rng), quality)
        (folder / f"{wnid[c]}_{i:06d}.JPEG").write_bytes(data)
    (root / "GENERATED.json").write_text(
        json.dumps({"sigma": sigma, "quality": quality, "target_kb": target_kb})
    )
    return sigma


def spectrum_slope(gray: np.ndarray) -> float:
    """Slope of log radially averaged power against log frequency, between 1/64 and 1/4 cycles/pixel."""
    g = gray - gray.mean()
    power = np.abs(np.fft.rfft2(g)) ** 2
    fy, fx = np.fft.fftfreq(g.shape[0])[:, None], np.fft.rfftfreq(g.shape[1])[None, :]
    f = np.hypot(fy, fx)
    edges = np.geomspace(1 / 64, 1 / 4, 13)
    idx = np.digitize(f.ravel(), edges)
    centers, means = [], []
    for k in range(1, len(edges)):
        sel = idx == k
        if sel.any():
            centers.append(np.sqrt(edges[k - 1] * edges[k]))
            means.append(power.ravel()[sel].mean())
    return float(np.polyfit(np.log(centers), np.log(means), 1)[0])


def folder_stats(files: list[str], sample: int = 16) -> dict:
    from PIL import Image

    sizes = np.array([os.path.getsize(f) for f in files]) / 1024
    pixels, slopes = [], []
    for f in files:
        with Image.open(f) as im:
            pixels.append(im.width * im.height)
    for f in files[:sample]:
        with Image.open(f) as im:
            slopes.append(spectrum_slope(np.asarray(im.convert("L"), np.float64)))
    return {
        "images": len(files),
        "mean_kb": float(sizes.mean()),
        "min_kb": float(sizes.min()),
        "max_kb": float(sizes.max()),
        "bits_per_pixel": float((sizes * 1024 * 8).sum() / np.sum(pixels)),
        "mean_megapixels": float(np.mean(pixels) / 1e6),
        "spectrum_slope": float(np.median(slopes)),
    }


# ---- Pipelines: each a factory of an endless iterator of batches (dicts with "image"). ----


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tf_files(tf, files: list[str]):
    """Endless (index, bytes) of the files in order (the same files every pipeline reads)."""
    ds = tf.data.Dataset.from_tensor_slices(files).repeat().enumerate()
    return ds.map(lambda i, f: (i, tf.io.read_file(f)), num_parallel_calls=tf.data.AUTOTUNE)


def tf_pipeline(tf, files: list[str], fn: Callable, batch: int) -> Callable[[], Iterator]:
    ds = tf_files(tf, files).map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator


def ours(module, tf, files, batch: int, what: str, mode: str = "channel") -> Callable[[], Iterator]:
    """resnet_jax.data.streamed's preprocessing as the trainer maps it (float32) or its uint8 variant."""
    size, f32 = 224, tf.float32

    def seed(i):
        return tf.stack([tf.constant(17, tf.int64), i])

    fns = {
        "inception": lambda i, d: {
            "image": module.train_preprocess(tf, d, seed(i), "inception", size, mode, f32)
        },
        "paper": lambda i, d: {"image": module.train_preprocess(tf, d, seed(i), "paper", size, mode, f32)},
        "center": lambda i, d: {"image": module.center_preprocess(tf, d, size, mode, f32)},
        "ten": lambda i, d: {"image": module.ten_crop_preprocess(tf, d, size, mode, f32)},
    }
    if hasattr(module, "train_preprocess_uint8"):

        def train_u8(augment):
            def fn(i, d):
                image, rgb = module.train_preprocess_uint8(tf, d, seed(i), augment, size)
                return {"image": image, "rgb": rgb}

            return fn

        fns["inception_uint8"], fns["paper_uint8"] = train_u8("inception"), train_u8("paper")
        fns["center_uint8"] = lambda i, d: {"image": module.center_preprocess_uint8(tf, d, size)}
        fns["ten_uint8"] = lambda i, d: {"image": module.ten_crop_preprocess_uint8(tf, d, size)}
    return tf_pipeline(tf, files, fns[what], batch)


# A minimal pipeline in the style of google/flax examples/imagenet (input_pipeline.py there), written here.
FLAX_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
FLAX_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def flax_style(tf, files, batch: int, train: bool, dtype: str = "float32") -> Callable[[], Iterator]:
    size, padding = 224, 32

    def center(data):
        shape = tf.image.extract_jpeg_shape(data)
        side = tf.cast(
            size / (size + padding) * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32
        )
        window = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])
        return tf.image.resize(
            tf.image.decode_and_crop_jpeg(data, window, channels=3), [size, size], "bicubic"
        )

    def random_crop(data):
        shape = tf.image.extract_jpeg_shape(data)
        begin, extent, _ = tf.image.sample_distorted_bounding_box(
            shape,
            tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], extent[0], extent[1]])
        crop = tf.image.decode_and_crop_jpeg(data, window, channels=3)
        whole = tf.reduce_sum(tf.cast(tf.equal(shape, tf.shape(crop)), tf.int32)) >= 3
        return tf.cond(whole, lambda: center(data), lambda: tf.image.resize(crop, [size, size], "bicubic"))

    def fn(i, data):
        image = tf.reshape(random_crop(data) if train else center(data), [size, size, 3])
        if train:
            image = tf.image.random_flip_left_right(image)
        if dtype == "uint8":
            return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)}
        return {"image": (image - FLAX_MEAN) / FLAX_STD}

    return tf_pipeline(tf, files, fn, batch)


def dali_pipeline(files, labels, batch: int, what: str) -> Callable[[], Iterator]:
    from resnet_jax.data import dali, sources

    def make():
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        # One device: the host's work does not depend on how the batch is later spread.
        one = NamedSharding(Mesh(np.asarray(jax.devices()[:1]), ("data",)), PartitionSpec("data"))
        reps = 1_000  # an endless evaluation split for steady-state timing
        if what in ("center", "ten"):
            src = sources.Source(tuple(files) * reps, np.tile(labels, reps))
            return dali.eval_iterator(src, batch, crop=what, mode="channel", device="cpu", sharding=one)
        src = sources.Source(tuple(files), labels)
        return dali.train_iterator(src, batch, 17, augment=what, mode="channel", device="cpu", sharding=one)

    return make


def measure(make: Callable[[], Iterator], warmup: int, batches: int) -> tuple[float, float]:
    """(process CPU ms per image, wall images/s) over `batches` batches after `warmup` batches."""
    it = make()
    for _ in range(warmup):
        next(it)
    c0, w0, n = time.process_time(), time.perf_counter(), 0
    for _ in range(batches):
        out = next(it)
        n += len(out["image"])
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    del it
    return cpu * 1e3 / n, n / wall


# ---- Resize quality: each pipeline's resize against a careful reference. ----


def resize_quality(files: list[str], n: int = 48) -> list[dict]:
    """PSNR of 224x224 crops against Lanczos-3 (Pillow, in float) of the same decoded window, for training
    windows (inception: mostly mild down- or upscales) and the eval centre window (1.5-2.3x downscales,
    where aliasing shows)."""
    from PIL import Image

    from resnet_jax.data import sampling, sources, streamed

    tf = streamed.tf_module()
    size, rows = 224, {}
    hw = np.array([sources.image_hw(open(f, "rb").read()) for f in files[:n]])
    windows = {
        "train": sampling.inception_windows(hw, sampling.uniforms(5, 0, np.arange(n), 40)),
        "eval": sampling.center_windows(hw, size),
    }
    methods = {
        "bilinear, antialiased (ours: tf.image.resize antialias=True)": lambda x: streamed._resize(
            tf, x, [size, size]
        ),
        "bilinear, Pillow (torchvision's Resize/RandomResizedCrop)": None,
        "bicubic, no antialiasing (flax examples/imagenet)": lambda x: tf.image.resize(
            x, [size, size], "bicubic"
        ),
        "bilinear, no antialiasing": lambda x: tf.image.resize(x, [size, size], "bilinear"),
    }
    for kind, wins in windows.items():
        for f, (y, x, h, w) in zip(files[:n], wins, strict=True):
            with Image.open(f) as im:
                crop = np.asarray(im.convert("RGB"))[y : y + h, x : x + w]
            channels = [Image.fromarray(crop[..., c]).convert("F") for c in range(3)]
            ref = np.stack(
                [np.asarray(c.resize((size, size), Image.Resampling.LANCZOS)) for c in channels], -1
            )
            for name, fn in methods.items():
                if fn is None:
                    out = np.asarray(
                        Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR), np.float64
                    )
                else:
                    out = np.clip(np.round(fn(tf.constant(crop)).numpy()), 0, 255)
                mse = np.mean((out - ref) ** 2)
                rows.setdefault((kind, name), []).append(10 * np.log10(255**2 / mse))
    return [
        {"windows": k, "resize": m, "psnr_db": float(np.mean(v)), "crops": n} for (k, m), v in rows.items()
    ]


# ---- Through the trainer's own iterators (what a run reads: files, order, batching, uint8 or float). ----


def folder_iterators(root: str, batch: int, what: str, dtype: str) -> Callable[[], Iterator]:
    """resnet_jax.data.streamed_folder's iterator over the folder, as the trainer builds it, one process."""
    from resnet_jax import schema
    from resnet_jax.data import jpeg_folder, streamed_folder

    crop = {"center": {"eval_crop": "center"}, "ten": {"eval_crop": "ten"}}.get(what, {"augment": what})
    cfg_data = schema.data_config(path=root, mean="channel", image_size=224, **crop)

    def make():
        if what in ("center", "ten"):
            listing = jpeg_folder.listing(root, "eval")
            reps = 1_000  # an endless evaluation split for steady-state timing
            endless = jpeg_folder.Listing(
                listing.paths * reps, np.tile(listing.labels, reps), listing.class_names
            )
            return streamed_folder.eval_iterator(endless, cfg_data, batch, (0, batch), dtype)
        listing = jpeg_folder.listing(root, "train")
        return streamed_folder.train_iterator(listing, cfg_data, batch, 17, 0, (0, batch), dtype)

    return make


# ---- End to end: the trainer's step fed by each pipeline through train.setup (the run's own path). ----

E2E_FEEDS = ("tfdata", "tfdata_no_prefetch", "tfdata_float32", "dali")


def float32_feed(run, root: str):
    """(run, jitted update) whose host crops are normalised to the run's dtype on the host, as before."""
    import dataclasses
    import functools

    import jax

    from resnet_jax import train
    from resnet_jax.data import jpeg_folder, streamed_folder

    cfg, listing, dtype = run.cfg, jpeg_folder.listing(root, "train"), jax.numpy.dtype(run.dtype).name

    def host_train(start: int):
        rows = (0, cfg.batch_size)  # one process
        return streamed_folder.train_iterator(listing, cfg.data, cfg.batch_size, cfg.seed, start, rows, dtype)

    floats = dataclasses.replace(
        run.inputs, host_train=host_train, train_images=lambda rng, b: (b["image"], b["label"])
    )
    step = functools.partial(
        train.train_step, model=run.model, tx=run.tx, inputs=floats, skip_nonfinite=False
    )
    return dataclasses.replace(run, inputs=floats), jax.jit(step, donate_argnums=(0,))


def end_to_end(args, root: str) -> list[dict]:
    """The trainer's update (train.setup from --config with data.path = the folder) fed by each feed:
    tfdata (uint8 crops normalised in the step, batches put on the devices by a thread 2 ahead), the same
    without the thread, the same with float32 crops normalised on the host (before this change), and dali.
    Feeds run in turn over --repeats rounds of --e2e_steps timed steps (median), each after --warmup steps;
    img/s is wall time, host CPU ms per image is this process's CPU time (every thread)."""
    import jax

    from resnet_jax import cli, experiments, train

    feeds = [f for f in (args.e2e_pipelines.split(",") if args.e2e_pipelines else E2E_FEEDS) if f]
    unknown = sorted(set(feeds) - set(E2E_FEEDS))
    if unknown:
        raise SystemExit(f"unknown --e2e_pipelines {unknown}: choose from {', '.join(E2E_FEEDS)}")
    runs = {}
    for name in feeds:
        cfg = experiments.load_config(args.config)
        cfg.data.path, cfg.data.pipeline = root, "dali" if name == "dali" else "tfdata"
        cfg.batch_size, cfg.num_train_steps = args.e2e_batch, 1_000_000
        cfg.log_every_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = 1_000
        if args.dtype:
            cfg.model.dtype = args.dtype
        for item in args.set:
            key, _, value = item.partition("=")
            cli.override(cfg, key, value)
        run = train.setup(cfg)
        update = run.update
        if name == "tfdata_no_prefetch":
            run.inputs.prefetch = 0
        if name == "tfdata_float32":
            run, update = float32_feed(run, root)
        runs[name] = (run, update, [run.init()])
    rows = {name: [] for name in feeds}
    for r in range(args.repeats):
        for name, (run, update, holder) in runs.items():
            batches, state = run.batches(0), holder[0]
            for _ in range(args.warmup):
                state, metrics = update(state, next(batches))
            jax.block_until_ready(state)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.e2e_steps):
                state, metrics = update(state, next(batches))
            jax.block_until_ready(state)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            holder[0] = state
            batches.close()
            n = args.e2e_steps * run.cfg.batch_size
            rows[name].append((n / wall, cpu * 1e3 / n, float(metrics["loss"] / metrics["count"])))
            print(
                f"round {r + 1} {name}: {n / wall:.1f} img/s, {cpu * 1e3 / n:.2f} host CPU ms/img", flush=True
            )
    out = []
    for name, samples in rows.items():
        run = runs[name][0]
        ips, cpu = [x[0] for x in samples], [x[1] for x in samples]
        out.append(
            {
                "pipeline": name,
                "model": f"{run.cfg.model.family} ResNet-{run.cfg.model.depth}",
                "image_size": run.cfg.data.image_size,
                "batch": run.cfg.batch_size,
                "dtype": jax.numpy.dtype(run.dtype).name,
                "images_per_s": float(np.median(ips)),
                "images_per_s_min_max": [min(ips), max(ips)],
                "host_cpu_ms_per_image": float(np.median(cpu)),
                "host_cpu_ms_min_max": [min(cpu), max(cpu)],
                "rounds": len(samples),
                "last_loss": samples[-1][2],
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


# ---- The side-by-side run. ----


def pipelines(args, root, files, labels, before) -> dict[str, tuple[str, Callable]]:
    """name -> (kind "train"/"eval", factory)."""
    from resnet_jax.data import streamed

    tf = streamed.tf_module()
    b, b10 = args.batch, max(1, args.batch // 8)
    out = {
        "flax-style train (float32)": ("train", flax_style(tf, files, b, True)),
        "flax-style eval (float32)": ("eval", flax_style(tf, files, b, False)),
        "flax-style train (uint8)": ("train", flax_style(tf, files, b, True, "uint8")),
        "flax-style eval (uint8)": ("eval", flax_style(tf, files, b, False, "uint8")),
    }
    for what in ("inception", "paper", "center", "ten"):
        kind, batch = (
            ("train", b) if what in ("inception", "paper") else ("eval", b10 if what == "ten" else b)
        )
        if before is not None:
            out[f"before: ours {what} (float32)"] = (kind, ours(before, tf, files, batch, what))
        out[f"ours {what} (float32)"] = (kind, ours(streamed, tf, files, batch, what))
        out[f"ours {what} (uint8)"] = (kind, ours(streamed, tf, files, batch, f"{what}_uint8"))
        for t in ("float32", "uint8"):
            out[f"ours {what} through the folder iterator ({t})"] = (
                kind,
                folder_iterators(str(root), batch, what, t),
            )
        if "dali" not in args.skip:
            out[f"dali cpu {what} (float32)"] = (kind, dali_pipeline(files, labels, batch, what))
    if args.only:
        out = {k: v for k, v in out.items() if any(s in k for s in args.only.split(","))}
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| pipeline | CPU ms/img (median) | min-max | img/s per core | vs flax-style | cores for 7,000 img/s "
        "| wall img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pipeline']} | {r['cpu_ms_per_image']:.2f} | {r['cpu_ms_min']:.2f}-{r['cpu_ms_max']:.2f} "
            "| "
            f"{r['images_per_s_per_core']:.0f} | {r['speed_vs_flax']:.2f}x | {r['cores_for_h200']:.1f} | "
            f"{r['wall_images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--cifar_tar", default=str(ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--workdir", default="", help="where the folder is generated (kept between runs)")
    p.add_argument(
        "--folder", default="", help="measure this ImageNet-style folder instead of generating one"
    )
    p.add_argument("--train_images", type=int, default=640)
    p.add_argument("--val_images", type=int, default=64)
    p.add_argument("--target_kb", type=float, default=110.0)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before each measurement")
    p.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds over all pipelines")
    p.add_argument("--compare_with", default="", help="another version of resnet_jax/data/streamed.py")
    p.add_argument("--only", default="", help="comma list of substrings of the pipeline names to keep")
    p.add_argument("--skip", default="", help="comma list: dali, quality")
    p.add_argument("--quick", action="store_true", help="tiny folder and counts (a smoke test)")
    p.add_argument("--e2e", action="store_true", help="time the trainer's step fed by each pipeline instead")
    p.add_argument("--config", default=str(ROOT / "configs/imagenet_r50.py"), help="--e2e: the experiment")
    p.add_argument("--e2e_batch", type=int, default=256)
    p.add_argument("--e2e_steps", type=int, default=30)
    p.add_argument("--e2e_pipelines", default="", help=f"--e2e: comma list of {', '.join(E2E_FEEDS)}")
    p.add_argument("--set", action="append", default=[], help="--e2e: KEY=VALUE config override (repeatable)")
    p.add_argument("--dtype", default="", help="--e2e: model.dtype (e.g. bfloat16)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.train_images, args.val_images, args.batch = 24, 8, 4
        args.warmup, args.batches, args.repeats = 1, 2, 1
        args.skip += ",quality"
    skip = set(filter(None, args.skip.split(",")))
    args.skip = skip

    if args.folder:
        root = pathlib.Path(args.folder)
    else:
        root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="input_pipeline_")) / "imagenet_like"
        if not (root / "GENERATED.json").exists():
            t0 = time.perf_counter()
            make_folder(
                root, args.cifar_tar, args.train_images, args.val_images, args.target_kb, args.quality
            )
            print(f"generated {root} in {time.perf_counter() - t0:.0f} s", flush=True)
    from resnet_jax.data import sources

    source = sources.folder_source(str(root), "train")
    files, labels = list(source.paths), source.labels
    stats = folder_stats(files)
    print("folder:", json.dumps(stats), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host_cores": host_cores(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "command": " ".join([pathlib.Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "folder": stats,
    }
    if args.e2e:
        result = {"meta": meta, "e2e": end_to_end(args, str(root))}
    elif args.repeats == 0:  # only the folder (and its statistics)
        result = {"meta": meta}
    else:
        before = load_module(args.compare_with, "imagenet_before") if args.compare_with else None
        named = pipelines(args, root, files, labels, before)
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in named}
        for r in range(args.repeats):
            for name, (_, make) in named.items():
                samples[name].append(measure(make, args.warmup, args.batches))
            print(f"round {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        base = {
            k: np.median([c for c, _ in samples[f"flax-style {k} (float32)"]])
            for k in ("train", "eval")
            if f"flax-style {k} (float32)" in samples
        }
        for name, (kind, _) in named.items():
            cpu = [c for c, _ in samples[name]]
            ms = float(np.median(cpu))
            rows.append(
                {
                    "pipeline": name,
                    "kind": kind,
                    "cpu_ms_per_image": ms,
                    "cpu_ms_min": min(cpu),
                    "cpu_ms_max": max(cpu),
                    "images_per_s_per_core": 1e3 / ms,
                    "speed_vs_flax": float(base.get(kind, np.nan) / ms),
                    "cores_for_h200": H200_IMAGES_PER_S * ms / 1e3,
                    "wall_images_per_s": float(np.median([w for _, w in samples[name]])),
                    "repeats": len(cpu),
                }
            )
        meta["load_average_end"] = os.getloadavg()
        result = {"meta": meta, "results": rows}
        print(table(rows))
        if "quality" not in skip:
            result["resize_quality"] = resize_quality(files)
            for q in result["resize_quality"]:
                print(f"| {q['windows']} | {q['resize']} | {q['psnr_db']:.2f} dB |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
