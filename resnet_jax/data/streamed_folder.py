"""An ImageNet-style JPEG folder (jpeg_folder.py's listing, local or gs://) streamed through tf.data with
streamed.py's preprocessing, each process reading its rows of every global batch. Host batches only.

Order: epoch e visits sampling.epoch_order(seed, e, n), the DALI pipeline's order, in consecutive global
batches of B (the last n % B examples dropped); a process reads its rows [lo, hi) of each, and an example's
augmentation seed is (a seed derived from (seed, e), its position in the epoch). So the stream is a pure
function of (seed, step) whatever the number of processes or devices, and a resume at step s starts at its
position directly (nothing is read to skip). This differs from the TFDS path (streamed.py), whose records
are read sequentially per process through a shuffle buffer: a file list allows random access, TFRecord
shards do not. Evaluation: the listing's order, ceil(n / B) global batches, the last padded (mask False).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from resnet_jax import config
from resnet_jax.data import jpeg_folder, sampling, streamed
from resnet_jax.data.jpeg_folder import Listing
from resnet_jax.data.tfds_meta import tf_module


def info(cfg_data: ml_collections.ConfigDict) -> dict:
    """{"num_train", "num_eval", "num_classes", "image_shape"} of the folder at data.path (files listed)."""
    train, evaluation = (jpeg_folder.listing(cfg_data.path, split) for split in ("train", "eval"))
    size = int(cfg_data.image_size)
    return {
        "num_train": len(train),
        "num_eval": len(evaluation),
        "num_classes": int(cfg_data.num_classes) or len(train.class_names),
        "image_shape": (size, size, 3),
    }


def _read(tf):
    return lambda path, *rest: (tf.io.read_file(path), *rest)


def train_epoch_positions(n: int, global_batch: int, rows: tuple[int, int], first_step: int) -> np.ndarray:
    """The positions in the epoch's order of this process's rows of the steps [first_step, n // B)."""
    steps = n // global_batch
    return (np.arange(first_step, steps)[:, None] * global_batch + np.arange(*rows)[None, :]).ravel()


def train_iterator(
    listing: Listing,
    cfg_data: ml_collections.ConfigDict,
    global_batch: int,
    seed: int,
    start_step: int,
    rows: tuple[int, int],
    dtype: Any = "uint8",
) -> Iterator[dict[str, np.ndarray]]:
    """Rows [lo, hi) of the global training batches from step `start_step` on, forever: {"image", "label"},
    and "rgb" (the lighting offsets) when `dtype` is uint8."""
    tf = tf_module()
    n = len(listing)
    steps = config.steps_per_epoch(n, global_batch)
    epoch, first = divmod(int(start_step), steps)
    paths = np.asarray(listing.paths, dtype=object)
    crop = streamed.train_example(tf, cfg_data, dtype)
    while True:
        positions = train_epoch_positions(n, global_batch, rows, first)
        examples = sampling.epoch_order(seed, epoch, n)[positions]
        aug_seed = streamed.derived_seeds(seed, epoch)[0]

        def prepare(data, label, position, aug_seed=aug_seed):
            seed_pair = tf.stack([tf.constant(aug_seed, tf.int64), position])
            return {**crop(seed_pair, data), "label": label}

        ds = tf.data.Dataset.from_tensor_slices((paths[examples], listing.labels[examples], positions))
        ds = ds.map(_read(tf), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(rows[1] - rows[0], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        yield from ds.as_numpy_iterator()
        epoch, first = epoch + 1, 0


def eval_iterator(
    listing: Listing,
    cfg_data: ml_collections.ConfigDict,
    global_batch: int,
    rows: tuple[int, int],
    dtype: Any = "uint8",
) -> Iterator[dict[str, np.ndarray]]:
    """Rows [lo, hi) of ceil(n / B) global evaluation batches: {"image", "label", "mask"}, each example once
    (padding rows repeat the last example, masked out)."""
    tf = tf_module()
    n = len(listing)
    steps = math.ceil(n / global_batch)
    positions = (np.arange(steps)[:, None] * global_batch + np.arange(*rows)[None, :]).ravel()
    examples = np.minimum(positions, n - 1)
    paths = np.asarray(listing.paths, dtype=object)
    crop, _ = streamed.eval_example(tf, cfg_data, dtype)

    def prepare(data, label, mask):
        return {"image": crop(data), "label": label, "mask": mask}

    ds = tf.data.Dataset.from_tensor_slices((paths[examples], listing.labels[examples], positions < n))
    ds = ds.map(_read(tf), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(rows[1] - rows[0]).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
