"""Input feeding: the device mesh, and every batch as arrays sharded over it, from either kind of source.

Device-held data (CIFAR, image folders, synthetic) lives replicated on the devices: each step sends only
its batch's indices, and the images are gathered, augmented and normalised inside the jitted step.
Streamed data (TFDS or a JPEG folder, through tf.data or DALI) sends uint8 crops, normalised inside the
step; a thread puts tf.data's batches on the devices ahead of it, DALI's arrive there. `Inputs` hides the
difference from the steps and the loop; it knows nothing of the model, the optimizer or checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import config
from resnet_jax.data import device_held, jpeg_folder, sampling, sources, streamed, streamed_folder, tfds_meta

PREFETCH = 2  # device batches a streamed run keeps ready (BENCHMARKS.md, "prefetch to device")


def create_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis `data` (Auto axis types)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def augment_key(seed: int) -> jax.Array:
    """The run's augmentation key as raw key data (uint32[2]): step s augments with fold_in(key, s)."""
    return jax.random.key_data(jax.random.key(seed + 1))


def eval_batch_size(cfg: ml_collections.ConfigDict, num_devices: int) -> int:
    """The evaluation batch, rounded up to a multiple of the device count."""
    b = cfg.data.eval_batch_size or cfg.batch_size
    return -(-b // num_devices) * num_devices


def to_global(
    batch: dict, mesh: Mesh, device_held: bool, batch_axis: int = 0, pack_axis: bool = False
) -> dict:
    """Host batch -> arrays sharded over `data` along `batch_axis` (`pack_axis`: a packed run's batch, its
    leading axis the seeds, sharded over the mesh's `pack` axis; `batch_axis` counts from after it).

    Device-held inputs: every process computes the same global index batch and each device takes its
    own slice of it, wherever the mesh puts the process's devices (a TPU mesh may interleave hosts).
    Streamed inputs: each process already holds only its own examples.
    """
    sharding = NamedSharding(mesh, P(*(["pack"] if pack_axis else []), *([None] * batch_axis), "data"))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if device_held and jax.process_count() > 1:
            out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


@dataclasses.dataclass
class Inputs:
    """Where batches come from, and the jit-side functions that turn a device batch into images.

    A device batch is a dict of arrays sharded over the mesh; for device-held data it also carries the
    held arrays under "held" (replicated, never copied), so a step needs nothing besides its batch.
    """

    num_train: int
    num_eval: int
    num_classes: int
    image_shape: tuple[int, int, int]
    device_held: bool
    mesh: Mesh
    held: dict  # replicated device arrays the steps read (empty for streamed data)
    host_train: Callable[[int], Iterator[dict]]  # start step -> host batches, one per step
    host_eval: Callable[[], Iterator[dict]]  # host batches covering the eval split once, with a mask
    train_images: Callable  # (rng, device batch) -> (images, labels), inside jit
    eval_images: Callable  # (device batch) -> (images, labels, mask), inside jit
    global_batches: bool = False  # host_train/host_eval already yield global arrays (DALI)
    prefetch: int = PREFETCH  # streamed host batches put on the devices ahead of the step, by a thread

    def device_batch(self, host: dict, batch_axis: int = 0) -> dict:
        """A host batch as the steps take it: sharded over `data`, plus the held arrays."""
        if self.global_batches:
            return host
        batch = to_global(host, self.mesh, self.device_held, batch_axis)
        return {**batch, "held": self.held} if self.device_held else batch

    def train_batches(self, start_step: int, steps_per_call: int = 1) -> Iterator[dict]:
        """Device batches for the calls from `start_step` on; steps_per_call > 1 stacks that many
        steps' batches along a leading axis (the batch axis is sharded)."""
        host = self.host_train(start_step)
        if steps_per_call == 1:
            batches = map(self.device_batch, host)
            ahead = self.prefetch and not self.device_held and not self.global_batches
            yield from prefetch_thread(batches, self.prefetch) if ahead else batches
            return
        while True:
            group = [next(host) for _ in range(steps_per_call)]
            yield self.device_batch({key: np.stack([b[key] for b in group]) for key in group[0]}, 1)

    def eval_batches(self) -> Iterator[dict]:
        """Device batches covering the evaluation split once (padding masked out)."""
        for host in self.host_eval():
            yield self.device_batch(host)


def prefetch_thread(batches: Iterator[dict], depth: int) -> Iterator[dict]:
    """`batches`, produced by a background thread up to `depth` ahead, so that reading the next host batch
    and its transfer to the devices overlap the step; the thread's exception is raised here, and it stops
    when this generator is closed."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            put(e)

    threading.Thread(target=work, name="prefetch_to_device", daemon=True).start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def create(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any) -> Inputs:
    """The run's inputs; the dataset was checked (data.validate) before."""
    return (device_held_inputs if config.is_device_held(cfg.data) else streamed_inputs)(cfg, mesh, dtype)


# ---------------------------------------------------------------------------------------------
# Device-held data: a whole small dataset on the devices (uint8, replicated), augmented inside the step.


def held_train_images(
    rng: jax.Array, batch: dict, *, augment: bool, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """Gather the batch's examples from the held uint8 images, pad-crop-flip (real data only), normalise."""
    held = batch["held"]
    images = held["train_images"][batch["index"]]
    if augment:
        images = device_held.augment_cifar(rng, images)
    return device_held.normalize(images, held["mean"], held["std"], dtype), held["train_labels"][
        batch["index"]
    ]


def held_eval_images(batch: dict, *, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    held = batch["held"]
    images = device_held.normalize(held["eval_images"][batch["index"]], held["mean"], held["std"], dtype)
    return images, held["eval_labels"][batch["index"]], batch["mask"]


def device_held_inputs(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any) -> Inputs:
    """Put a whole small dataset on the devices; each step's host batch is its example indices."""
    ds = device_held.load(cfg.data, cfg.seed, cfg.batch_size)
    replicated = NamedSharding(mesh, P())
    held = {
        "train_images": ds.train_images,
        "train_labels": ds.train_labels.astype(np.int32),
        "eval_images": ds.eval_images,
        "eval_labels": ds.eval_labels.astype(np.int32),
        "mean": np.asarray(ds.mean, np.float32),
        "std": np.asarray(ds.std, np.float32),
    }
    held = {key: jax.device_put(value, replicated) for key, value in held.items()}
    n, m = len(ds.train_labels), len(ds.eval_labels)
    eval_batch = eval_batch_size(cfg, mesh.devices.size)

    def host_eval() -> Iterator[dict]:
        for lo in range(0, m, eval_batch):
            idx = np.arange(lo, lo + eval_batch)
            yield {"index": np.minimum(idx, m - 1).astype(np.int32), "mask": idx < m}

    return Inputs(
        n, m, ds.num_classes, tuple(ds.train_images.shape[1:]), True, mesh, held,
        functools.partial(held_train_order, cfg.seed, cfg.batch_size, n), host_eval,
        functools.partial(held_train_images, augment=ds.name != "synthetic", dtype=dtype),
        functools.partial(held_eval_images, dtype=dtype),
    )  # fmt: skip


def held_train_order(seed: int, batch: int, n: int, start: int) -> Iterator[dict]:
    """Host batches of example indices from step `start` on: a pure function of (seed, step)."""
    for step in range(start, 2**62):
        yield {"index": device_held.train_batch_indices(seed, step, batch, n)}


def for_seed(feed: Inputs, cfg: ml_collections.ConfigDict, dtype: Any) -> Inputs:
    """`feed` (device-held) as the run of `cfg.seed` sees it: its own example order; synthetic images are
    drawn from the seed, so they are made anew, while a real dataset's held arrays are shared."""
    if cfg.data.name == "synthetic":
        return device_held_inputs(cfg, feed.mesh, dtype)
    order = functools.partial(held_train_order, cfg.seed, cfg.batch_size, feed.num_train)
    return dataclasses.replace(feed, host_train=order)


# ---------------------------------------------------------------------------------------------
# Streamed data: uint8 crops (and each crop's lighting offset) from tf.data on the host or from DALI,
# normalised inside the step.

HOST_DTYPE = "uint8"  # what the host pipelines send: a quarter of float32's bytes and less host time


def normalize_streamed(batch: dict, mode: str, dtype: Any) -> jax.Array:
    """(image + rgb - mean) / std ("channel"; "pixel": std 1) in float32, cast to `dtype`: the host's
    uint8 crop [b, h, w, 3] (or ten crops [b, 10, h, w, 3]) with its lighting offset "rgb" [b, 3], if any."""
    std = np.asarray(streamed.IMAGENET_STD_RGB, np.float32) if mode == "channel" else np.ones(3, np.float32)
    scale = 1 / std
    bias = jnp.asarray(-np.asarray(streamed.IMAGENET_MEAN_RGB, np.float32) * scale)
    image = batch["image"].astype(jnp.float32)
    if "rgb" in batch:
        bias = bias + batch["rgb"].reshape((-1,) + (1,) * (image.ndim - 2) + (3,)) * scale
    return (image * scale + bias).astype(dtype)


def streamed_train_images(rng, batch: dict, *, mode: str, dtype: Any) -> tuple[jax.Array, jax.Array]:
    del rng  # the host drew the crops
    return normalize_streamed(batch, mode, dtype), batch["label"]


def streamed_eval_images(batch: dict, *, mode: str, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    return normalize_streamed(batch, mode, dtype), batch["label"], batch["mask"]


def streamed_inputs(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any) -> Inputs:
    """ImageNet-style data: TFDS or a JPEG folder (data.path) through tf.data on each process's host, or
    through DALI (data.pipeline), whose batches are already global arrays."""
    d, batch = cfg.data, cfg.batch_size
    eval_batch = eval_batch_size(cfg, mesh.devices.size)
    sharding = NamedSharding(mesh, P("data"))
    if d.pipeline == "dali":
        return dali_inputs(cfg, mesh, dtype, sharding, eval_batch)
    if d.path:
        train, val = jpeg_folder.listing(d.path, "train"), jpeg_folder.listing(d.path, "eval")
        rows, eval_rows = sampling.process_rows(sharding, batch), sampling.process_rows(sharding, eval_batch)
        sizes = len(train), len(val), int(d.num_classes) or len(train.class_names)

        def host_train(start: int) -> Iterator[dict]:
            return streamed_folder.train_iterator(train, d, batch, cfg.seed, start, rows, HOST_DTYPE)

        def host_eval() -> Iterator[dict]:
            return streamed_folder.eval_iterator(val, d, eval_batch, eval_rows, HOST_DTYPE)

    else:
        info = tfds_meta.info(d)
        sizes = info["num_train"], info["num_eval"], info["num_classes"]

        def host_train(start: int) -> Iterator[dict]:
            return streamed.train_iterator(d, batch, cfg.seed, start, dtype=HOST_DTYPE)

        def host_eval() -> Iterator[dict]:
            return streamed.eval_iterator(d, eval_batch, dtype=HOST_DTYPE)

    size = int(d.image_size)
    return Inputs(
        *sizes, (size, size, 3), False, mesh, {}, host_train, host_eval,
        functools.partial(streamed_train_images, mode=d.mean, dtype=dtype),
        functools.partial(streamed_eval_images, mode=d.mean, dtype=dtype),
    )  # fmt: skip


def dali_sources(cfg_data: ml_collections.ConfigDict) -> tuple[Any, Any, int]:
    """(train, eval) DALI sources and the class count: the folder at data.path, or a TFDS build's TFRecord
    shards (spans as tfds_meta.spans: data.val_split holds out the last training examples)."""
    if cfg_data.path:
        train = sources.folder_source(cfg_data.path, "train")
        return train, sources.folder_source(cfg_data.path, "eval"), len(train.class_names)
    builder = tfds_meta.tfds_builder(cfg_data.name, cfg_data.tfds_dir)
    tfds_meta.prepared_splits(builder)
    spans = tfds_meta.spans(builder, cfg_data)
    data_dir = str(builder.data_dir)
    split_sources = {s.split: sources.tfds_split_source(data_dir, builder.name, s.split) for s in spans}
    train, val = (split_sources[s.split].span(s.start, s.stop) for s in spans)
    return train, val, builder.info.features["label"].num_classes


def dali_inputs(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any, sharding, eval_batch: int) -> Inputs:
    """DALI's pipelines (one per local GPU; one on the CPU without GPUs) hand over global arrays."""
    from resnet_jax.data import dali

    d, size = cfg.data, int(cfg.data.image_size)
    train, val, classes = dali_sources(d)
    common = dict(size=size, mode=d.mean, dtype=HOST_DTYPE, sharding=sharding)

    def host_train(start: int) -> Iterator[dict]:
        return dali.train_iterator(train, cfg.batch_size, cfg.seed, start, augment=d.augment, **common)

    def host_eval() -> Iterator[dict]:
        return dali.eval_iterator(val, eval_batch, crop=d.eval_crop, **common)

    return Inputs(
        len(train), len(val), int(d.num_classes) or classes, (size, size, 3), False, mesh, {}, host_train,
        host_eval, functools.partial(streamed_train_images, mode=d.mean, dtype=dtype),
        functools.partial(streamed_eval_images, mode=d.mean, dtype=dtype), global_batches=True,
    )  # fmt: skip
