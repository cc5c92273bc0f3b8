"""NVIDIA DALI input pipelines for ImageNet-style data (JPEG folders, TFDS TFRecords) as global jax.Arrays.

The host feeds DALI the encoded images (sources.py) with the order and every random draw of sampling.py,
pure functions of (seed, epoch, position in the epoch), so a resume at any step rebuilds exactly the stream
of an uninterrupted run whatever the device count; DALI decodes only the crop window (ROI decode: device
"mixed" on a GPU, "cpu" without one), resizes, flips and (float outputs) lights and normalises. It must not
import DALI (an optional dependency) before a pipeline is built.

Training ("paper"): shorter side to a random L in [256, 480], random 224 crop, flip, PCA lighting;
("inception"): TensorFlow's sample_distorted_bounding_box rule, flip; the windows follow data/streamed.py's
tf.data pipeline, so the two pipelines draw crops from the same distribution. uint8 outputs stop before the
lighting and normalisation and hand over the lighting offset ("rgb") for the step to apply. Evaluation:
"center" or "ten", every example once, the last global batch padded (mask False).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from resnet_jax.data import sampling
from resnet_jax.data.common import DataError
from resnet_jax.data.sampling import center_windows, device_rows, process_rows, ten_crop_geometry, train_draws
from resnet_jax.data.sources import Source, image_hw
from resnet_jax.data.streamed import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, is_uint8

PIP = "pip install nvidia-dali-cuda120==2.4.0"


COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"


def xla_flags(flags: str) -> str:
    """XLA_FLAGS for a run fed by DALI: XLA's command buffers (CUDA graphs) off, as DALI's JAX plugin
    documents (its thread synchronises the device, which invalidates the captured graphs), unless `flags`
    already choose them; the cost of that default is unmeasured (BENCHMARKS.md, benchmarks/gpu_session.sh)."""
    if COMMAND_BUFFER_FLAG in flags:
        return flags
    return f"{flags} {COMMAND_BUFFER_FLAG}=".strip()


def require_dali():
    """The nvidia.dali module, or a DataError naming the pip command."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.jax  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"data.pipeline 'dali' needs NVIDIA DALI, which is not installed: run `{PIP}`."
        ) from e
    return nvidia.dali


# ---- Feeds: DALI external sources, one per pipeline, each its rows of every global batch. ----


def _encoded(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


class TrainFeed:
    """Rows [lo, hi) of the global batch of each step from `start_step` on (never ends). Its last output is
    the per-image normalisation mean with the lighting folded in, or (`lighting_out`) the lighting offset."""

    def __init__(
        self,
        source: Source,
        seed: int,
        start_step: int,
        global_batch: int,
        rows: tuple[int, int],
        augment: str,
        size: int,
        mode: str,
        lighting_out: bool = False,
    ):
        self.source, self.seed, self.start, self.batch = source, seed, start_step, global_batch
        self.rows = rows
        self.augment, self.size, self.mode, self.lighting_out = augment, size, mode, lighting_out
        self.steps_per_epoch = len(source) // global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"batch size {global_batch} exceeds the {len(source)} training examples.")
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, sampling.epoch_order(self.seed, epoch, len(self.source)))
        return self._order[1]

    def positions(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, positions in that epoch's order) of this feed's rows at global step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, k * self.batch + np.arange(*self.rows)

    def __call__(self, info) -> tuple:
        epoch, positions = self.positions(self.start + info.iteration)
        reads = [self.source.read(int(i)) for i in self.order(epoch)[positions]]
        hw = np.asarray([image_hw(d) for d, _ in reads], np.int64)
        windows, flips, rgb = train_draws(self.seed, epoch, positions, hw, self.augment, self.size)
        mean = np.asarray(IMAGENET_MEAN_RGB, np.float32) - rgb  # (x + rgb - mean) / std
        return (
            [_encoded(d) for d, _ in reads],
            np.asarray([label for _, label in reads], np.int32),
            windows[:, :2].astype(np.int32),
            windows[:, 2:].astype(np.int32),
            flips,
            rgb if self.lighting_out else mean,
        )


class EvalFeed:
    """Rows [lo, hi) of every global evaluation batch: each example once, padded with mask False."""

    def __init__(self, source: Source, global_batch: int, rows: tuple[int, int], crop: str, size: int):
        self.source, self.batch, self.rows, self.crop, self.size = source, global_batch, rows, crop, size
        self.steps = math.ceil(len(source) / global_batch)

    def __call__(self, info) -> tuple:
        if info.iteration >= self.steps:
            raise StopIteration
        positions = info.iteration * self.batch + np.arange(*self.rows)
        mask = positions < len(self.source)
        reads = [self.source.read(int(i)) for i in np.minimum(positions, len(self.source) - 1)]
        hw = np.asarray([image_hw(d) for d, _ in reads], np.int64)
        labels = np.asarray([label for _, label in reads], np.int32)
        if self.crop == "center":
            w = center_windows(hw, self.size)
            geometry = (w[:, :2].astype(np.int32), w[:, 2:].astype(np.int32))
        else:
            new, anchors = ten_crop_geometry(hw, self.size)
            geometry = (new.astype(np.float32), anchors.astype(np.int32))
        return ([_encoded(d) for d, _ in reads], labels, mask, *geometry)


# ---- Pipelines and iterators. ----


def _std(mode: str, dtype: Any) -> list[float]:
    """The normalisation's divisor: none for "pixel" (mean subtraction only) or for uint8 outputs."""
    return list(IMAGENET_STD_RGB) if mode == "channel" and not is_uint8(dtype) else [1.0, 1.0, 1.0]


def _out_dtype(dtype: Any):
    from nvidia.dali import types

    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    table = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT, "uint8": types.UINT8}
    if name not in table:
        raise DataError(f"the DALI pipeline outputs float32, float16 or uint8, not {name}.")
    return table[name]


def _pipeline(batch: int, device_id: int | None, num_threads: int, seed: int):
    from nvidia.dali import Pipeline

    return Pipeline(
        batch_size=batch,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )


def _decoder_device(device_id: int | None) -> str:
    return "cpu" if device_id is None else "mixed"


def train_pipeline(feed: TrainFeed, device_id: int | None, num_threads: int, dtype: Any = "float32"):
    """DALI graph: ROI decode of each window, resize to size x size, flip, lighting + normalisation; outputs
    (image, label), or for uint8 (the flipped crop before lighting and normalisation, label, rgb offset)."""
    from nvidia.dali import fn, types

    size, rows = feed.size, feed.rows
    pipe = _pipeline(rows[1] - rows[0], device_id, num_threads, feed.seed)
    with pipe:
        enc, labels, anchor, shape, flip, light = fn.external_source(
            source=feed,
            num_outputs=6,
            batch=True,
            batch_info=True,
            dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32, types.FLOAT],
        )
        images = fn.decoders.image_slice(
            enc, anchor, shape, axis_names="HW", device=_decoder_device(device_id), output_type=types.RGB
        )
        images = fn.resize(
            images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True
        )
        images = fn.crop_mirror_normalize(
            images,
            mirror=flip,
            mean=0.0 if feed.lighting_out else light,
            std=_std(feed.mode, dtype),
            dtype=_out_dtype(dtype),
            output_layout="HWC",
        )
        outputs = [labels, light] if feed.lighting_out else [labels]
        pipe.set_outputs(images, *(outputs if device_id is None else [x.gpu() for x in outputs]))
    return pipe


def eval_pipeline(feed: EvalFeed, device_id: int | None, num_threads: int, mode: str, dtype: Any = "float32"):
    """DALI graph of the centre crop (ROI decode) or the ten crops (decode, resize, five slices + flips)."""
    from nvidia.dali import fn, types

    size, rows = feed.size, feed.rows
    pipe = _pipeline(rows[1] - rows[0], device_id, num_threads, 0)
    mean = [0.0, 0.0, 0.0] if is_uint8(dtype) else list(IMAGENET_MEAN_RGB)
    norm = dict(mean=mean, std=_std(mode, dtype), dtype=_out_dtype(dtype), output_layout="HWC")
    decoder = _decoder_device(device_id)
    with pipe:
        enc, labels, mask, g1, g2 = fn.external_source(
            source=feed,
            num_outputs=5,
            batch=True,
            batch_info=True,
            dtype=[
                types.UINT8,
                types.INT32,
                types.BOOL,
                types.INT32 if feed.crop == "center" else types.FLOAT,
                types.INT32,
            ],
        )
        if feed.crop == "center":
            images = fn.decoders.image_slice(
                enc, g1, g2, axis_names="HW", device=decoder, output_type=types.RGB
            )
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            images = fn.crop_mirror_normalize(images, **norm)
        else:
            image = fn.decoders.image(enc, device=decoder, output_type=types.RGB)
            image = fn.resize(image, resize_x=g1[1], resize_y=g1[0], antialias=True)
            crops = [fn.slice(image, g2[k], [size, size], axis_names="HW") for k in range(5)]
            images = fn.stack(*[fn.crop_mirror_normalize(c, mirror=m, **norm) for m in (0, 1) for c in crops])
        if device_id is not None:
            labels, mask = labels.gpu(), mask.gpu()
        pipe.set_outputs(images, labels, mask)
    return pipe


def _default_sharding():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))


def _num_threads(pipelines: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // pipelines)


class _Batches:
    """An iterator of dicts of global jax.Arrays from the DALI JAX plugin, one pipeline per GPU (or one
    on the CPU, its process-local batch placed with make_array_from_process_local_data)."""

    def __init__(self, pipes: Sequence, names: Sequence[str], sharding, gpu: bool, global_batch: int):
        from nvidia.dali.plugin.jax import DALIGenericIterator

        self.names, self.sharding, self.gpu, self.global_batch = list(names), sharding, gpu, global_batch
        kwargs = {"sharding": sharding} if gpu else {}
        self.it = DALIGenericIterator(list(pipes), self.names, **kwargs)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax

        out = next(self.it)
        if self.gpu:
            return out
        result = {}
        for k, v in out.items():
            local = np.asarray(v)
            shape = (self.global_batch, *local.shape[1:])
            result[k] = jax.make_array_from_process_local_data(self.sharding, local, shape)
        return result


def _gpu(device_id: str | int | None) -> bool:
    import jax

    if device_id == "cpu":
        return False
    return jax.default_backend() == "gpu"


def train_iterator(
    source: Source,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    *,
    augment: str = "paper",
    size: int = 224,
    mode: str = "pixel",
    dtype: Any = "float32",
    sharding=None,
    device: str = "auto",
    num_threads: int = 0,
) -> Iterator[dict]:
    """{"image": [B, size, size, 3], "label": [B]} global arrays for the steps from `start_step` on, forever;
    uint8 images come with "rgb" [B, 3], the PCA lighting offset the step adds before normalising.

    `device` "auto" decodes on the GPUs when JAX runs on them, else on the CPU ("cpu" forces it).
    """
    require_dali()
    sharding = sharding or _default_sharding()
    gpu = device != "cpu" and _gpu(device)
    rows = device_rows(sharding, global_batch) if gpu else [(None, process_rows(sharding, global_batch))]
    threads = num_threads or _num_threads(len(rows))
    pipes = []
    for dev, r in rows:
        feed = TrainFeed(source, seed, start_step, global_batch, r, augment, size, mode, is_uint8(dtype))
        pipes.append(train_pipeline(feed, dev.local_hardware_id if gpu else None, threads, dtype))
    names = ["image", "label", "rgb"] if is_uint8(dtype) else ["image", "label"]
    return _Batches(pipes, names, sharding, gpu, global_batch)


def eval_iterator(
    source: Source,
    global_batch: int,
    *,
    crop: str = "center",
    size: int = 224,
    mode: str = "pixel",
    dtype: Any = "float32",
    sharding=None,
    device: str = "auto",
    num_threads: int = 0,
) -> Iterator[dict]:
    """{"image", "label", "mask"} global arrays: every example once, ceil(n / B) batches, the last padded."""
    require_dali()
    if crop not in ("center", "ten"):
        raise DataError(f"data.eval_crop must be 'center' or 'ten', not {crop!r}.")
    sharding = sharding or _default_sharding()
    gpu = device != "cpu" and _gpu(device)
    rows = device_rows(sharding, global_batch) if gpu else [(None, process_rows(sharding, global_batch))]
    threads = num_threads or _num_threads(len(rows))
    pipes = [
        eval_pipeline(
            EvalFeed(source, global_batch, r, crop, size),
            dev.local_hardware_id if gpu else None,
            threads,
            mode,
            dtype,
        )
        for dev, r in rows
    ]
    return _Batches(pipes, ["image", "label", "mask"], sharding, gpu, global_batch)
