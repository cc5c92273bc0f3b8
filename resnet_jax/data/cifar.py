"""CIFAR-10/100 and other small image sets held whole on the devices (paper, section 4.2).

The host supplies only batch indices; gathering, the 4-pixel pad + random 32x32 crop + horizontal
flip, and mean subtraction run inside the jitted training step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import image_folder
from resnet_jax.data.common import CIFAR_CLASSES, DataError, InMemoryData, cache_dir, get, mean_std

VAL_SPLIT_SEED = 0  # the held-out set is the same for every run seed


def _load_tfds(name: str, tfds_dir: str) -> image_folder.FolderArrays:
    """The TFDS train and test splits as uint8 arrays (downloads the dataset when it is not prepared)."""
    from resnet_jax.data import imagenet

    builder = imagenet.tfds_builder(name, tfds_dir, allow_download=True)
    splits = {}
    for split in ("train", "test"):
        ds = imagenet.tfds_numpy(builder, split)
        splits[split] = (np.asarray(ds["image"], np.uint8), np.asarray(ds["label"], np.int32))
    names = list(builder.info.features["label"].names)
    return image_folder.FolderArrays(*splits["train"], *splits["test"], names)


def load_arrays(cfg_data: Any) -> image_folder.FolderArrays:
    """Train and test arrays of an in-memory dataset, from data.path (Pillow) or TFDS."""
    name = get(cfg_data, "name", "")
    path = get(cfg_data, "path", "")
    if path:
        arrays = image_folder.load_folder(path, cache_dir(cfg_data))
        want = CIFAR_CLASSES.get(name)
        if want and len(arrays.class_names) != want:
            raise DataError(f"{name} needs {want} classes but data.path has {len(arrays.class_names)}.")
        return arrays
    return _load_tfds(name, get(cfg_data, "tfds_dir", ""))


def validation_split(n: int, val_split: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) of a fixed permutation of n training images: the last val_split held out."""
    if not 0 <= val_split < n:
        raise DataError(f"data.val_split must be in [0, {n}) for {n} training images, not {val_split}.")
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    return np.sort(perm[: n - val_split]), np.sort(perm[n - val_split :])


def load(cfg_data: Any) -> InMemoryData:
    """The training and evaluation splits, with the normalisation statistics of the training images used."""
    arrays = load_arrays(cfg_data)
    train_x, train_y = arrays.train_images, arrays.train_labels
    eval_x, eval_y, eval_split = arrays.test_images, arrays.test_labels, "test"
    val_split = int(get(cfg_data, "val_split", 0))
    if val_split:
        keep, held = validation_split(len(train_y), val_split)
        eval_x, eval_y, eval_split = train_x[held], train_y[held], "val"
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = mean_std(train_x, get(cfg_data, "mean", "pixel"))
    num_classes = int(get(cfg_data, "num_classes", 0)) or len(arrays.class_names)
    if num_classes < len(arrays.class_names):
        raise DataError(
            f"data.num_classes={num_classes} is below the {len(arrays.class_names)} classes found."
        )
    return InMemoryData(
        train_x,
        train_y,
        eval_x,
        eval_y,
        num_classes,
        arrays.class_names,
        mean,
        std,
        get(cfg_data, "name", ""),
        eval_split,
    )


# ---- Which examples each step sees: a pure function of (seed, step). ----


def _seed_words(*values: int) -> list[int]:
    return [int(v) % (1 << 63) for v in values]


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.Generator(np.random.PCG64(_seed_words(seed, epoch))).permutation(n).astype(np.int32)
    perm.setflags(write=False)
    return perm


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training examples in epoch `epoch`: a pure function of (seed, epoch, n)."""
    return _cached_permutation(int(seed), int(epoch), int(n))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch; the last n % batch_size examples of each epoch's permutation are skipped."""
    if batch_size <= 0 or batch_size > n:
        raise DataError(f"batch size {batch_size} must be in [1, {n}] for {n} training examples.")
    return n // batch_size


def train_batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Example indices of global step `step` (from 0): slice `step % S` of epoch `step // S` (S = n // batch).

    Each epoch visits a fresh permutation in consecutive slices and drops its remainder, so an epoch
    sees each example at most once and all but n % batch_size of them exactly once.
    """
    epoch, i = divmod(int(step), steps_per_epoch(n, batch_size))
    return epoch_permutation(seed, epoch, n)[i * batch_size : (i + 1) * batch_size]


# ---- On-device augmentation and normalisation (jit-able). ----


def augment_cifar(rng: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pad each side by `pad`, take a random HxW window and flip it with probability 1/2 (per image)."""
    n, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(rng)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    window = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
    crops = jax.vmap(window)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def normalize(images: jax.Array, mean: Any, std: Any, dtype: Any = jnp.float32) -> jax.Array:
    """(images - mean) / std in float32, returned in `dtype`."""
    x = (jnp.asarray(images, jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def train_batch(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    mean: Any,
    std: Any,
    dtype: Any = jnp.float32,
    augment: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Gather a batch from device-resident uint8 images, augment and normalise it (call inside jit)."""
    x = jnp.take(images, indices, axis=0)
    if augment:
        x = augment_cifar(rng, x)
    return normalize(x, mean, std, dtype), jnp.take(labels, indices, axis=0)
