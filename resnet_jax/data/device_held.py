"""Small image sets held whole on the devices: CIFAR-10/100 (paper, section 4.2), image folders, synthetic.

Loading (image folder, TFDS or synthetic), the (seed, step) -> example order, and the jit-side 4-pixel pad
+ random crop + flip and normalisation that run inside the training step; no sharding (inputs.py's).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import config
from resnet_jax.data import image_folder
from resnet_jax.data.common import DataError, DeviceHeldData, cache_dir, mean_std

VAL_SPLIT_SEED = 0  # the held-out set is the same for every run seed


def validate(cfg_data: ml_collections.ConfigDict) -> None:
    """Cheap checks of a device-held set before anything is built: an existing, well-laid-out data.path
    with the dataset's class count (from the cache's record when there is one), or a known TFDS name."""
    name, path = cfg_data.name, cfg_data.path
    if name == "synthetic":
        from resnet_jax.data import synthetic

        synthetic.shape_and_classes(cfg_data, 1)
    elif path:
        meta = image_folder.cached_meta(path, cache_dir(cfg_data))  # a cache means the layout was checked
        classes = meta["num_classes"] if meta else len(image_folder.index_folder(path).class_names)
        want = config.DATASET_CLASSES.get(name)
        if want and classes != want:
            raise DataError(f"{name} needs {want} classes but data.path {path!r} has {classes}.")
    else:
        from resnet_jax.data import tfds_meta

        tfds_meta.check(cfg_data)


def load(cfg_data: ml_collections.ConfigDict, seed: int, batch_size: int) -> DeviceHeldData:
    """The training and evaluation splits, with the normalisation statistics of the training images used.

    `seed` draws the synthetic images and `batch_size` sizes them (data.synthetic_examples = 0: 10 batches);
    the held-out split (data.val_split) does not depend on seed.
    """
    if cfg_data.name == "synthetic":
        from resnet_jax.data import synthetic

        return synthetic.load(cfg_data, seed, batch_size)
    arrays = load_arrays(cfg_data)
    train_x, train_y = arrays.train_images, arrays.train_labels
    eval_x, eval_y, eval_split = arrays.test_images, arrays.test_labels, "test"
    val_split = int(cfg_data.val_split)
    if val_split:
        keep, held = validation_split(len(train_y), val_split)
        eval_x, eval_y, eval_split = train_x[held], train_y[held], "val"
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = mean_std(train_x, cfg_data.mean)
    num_classes = int(cfg_data.num_classes) or len(arrays.class_names)
    if num_classes < len(arrays.class_names):
        raise DataError(
            f"data.num_classes={num_classes} is below the {len(arrays.class_names)} classes found."
        )
    names = arrays.class_names
    return DeviceHeldData(
        train_x, train_y, eval_x, eval_y, num_classes, names, mean, std, cfg_data.name, eval_split
    )


def load_arrays(cfg_data: ml_collections.ConfigDict) -> image_folder.FolderArrays:
    """Train and test arrays of a device-held dataset, from data.path (Pillow) or TFDS."""
    if not cfg_data.path:
        return _load_tfds(cfg_data.name, cfg_data.tfds_dir)
    arrays = image_folder.load_folder(cfg_data.path, cache_dir(cfg_data))
    want = config.DATASET_CLASSES.get(cfg_data.name)
    if want and len(arrays.class_names) != want:
        raise DataError(f"{cfg_data.name} needs {want} classes but data.path has {len(arrays.class_names)}.")
    return arrays


def _load_tfds(name: str, tfds_dir: str) -> image_folder.FolderArrays:
    """The TFDS train and test splits as uint8 arrays (downloads the dataset when it is not prepared)."""
    import tensorflow_datasets as tfds

    from resnet_jax.data import tfds_meta

    builder = tfds_meta.tfds_builder(name, tfds_dir, allow_download=True)
    tfds_meta.tf_module()
    splits = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split).map(lambda ex: {"image": ex["image"], "label": ex["label"]})
        chunks = list(tfds.as_numpy(ds.batch(10_000)))
        images, labels = (np.concatenate([c[k] for c in chunks]) for k in ("image", "label"))
        splits[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
    names = list(builder.info.features["label"].names)
    return image_folder.FolderArrays(*splits["train"], *splits["test"], names)


def info(cfg_data: ml_collections.ConfigDict, batch_size: int) -> dict:
    """{"num_train", "num_eval", "num_classes", "image_shape"} without decoding the dataset when possible."""
    if cfg_data.name == "synthetic":
        from resnet_jax.data import synthetic

        n, size, classes = synthetic.shape_and_classes(cfg_data, batch_size)
        return {"num_train": n, "num_eval": n, "num_classes": classes, "image_shape": (size, size, 3)}
    if cfg_data.path:
        meta = image_folder.meta(cfg_data.path, cache_dir(cfg_data))
    else:
        from resnet_jax.data import tfds_meta

        builder = tfds_meta.tfds_builder(cfg_data.name, cfg_data.tfds_dir)
        splits = tfds_meta.prepared_splits(builder)
        meta = {
            "num_train": splits["train"].num_examples,
            "num_test": splits["test"].num_examples,
            "num_classes": builder.info.features["label"].num_classes,
            "image_shape": builder.info.features["image"].shape,
        }
    val = int(cfg_data.val_split)
    if val >= meta["num_train"]:  # as load would say, not a negative training-set size
        n = meta["num_train"]
        raise DataError(f"data.val_split must be in [0, {n}) for {n} training images, not {val}.")
    num_train, num_eval = (meta["num_train"] - val, val) if val else (meta["num_train"], meta["num_test"])
    return {
        "num_train": num_train,
        "num_eval": num_eval,
        "num_classes": int(cfg_data.num_classes) or meta["num_classes"],
        "image_shape": tuple(meta["image_shape"]),
    }


def validation_split(n: int, val_split: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) of a fixed permutation of n training images: the last val_split held out."""
    if not 0 <= val_split < n:
        raise DataError(f"data.val_split must be in [0, {n}) for {n} training images, not {val_split}.")
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    return np.sort(perm[: n - val_split]), np.sort(perm[n - val_split :])


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


def train_batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Example indices of global step `step` (from 0): slice `step % S` of epoch `step // S` (S = n // batch).

    Each epoch visits a fresh permutation in consecutive slices and drops its remainder, so an epoch
    sees each example at most once and all but n % batch_size of them exactly once.
    """
    epoch, i = divmod(int(step), config.steps_per_epoch(n, batch_size))
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
