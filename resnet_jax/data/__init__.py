"""Input pipelines: device-resident CIFAR / image folders / synthetic data, and TFDS streaming (ImageNet).

Importing this package is cheap: NumPy only. JAX comes with the in-memory helpers, TensorFlow and TFDS
only with the TFDS functions. See docs/data.md.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np

from resnet_jax.data.common import CIFAR_CLASSES, DataError, InMemoryData, get, is_in_memory

__all__ = [
    "DataError",
    "InMemoryData",
    "augment_cifar",
    "dataset_info",
    "epoch_permutation",
    "eval_steps",
    "is_in_memory",
    "load_in_memory",
    "normalize",
    "steps_per_epoch",
    "synthetic_batch",
    "tfds_eval_iterator",
    "tfds_train_iterator",
    "train_batch",
    "train_batch_indices",
    "validate",
]

_CHOICES = {
    "mean": ("pixel", "channel"),
    "augment": ("paper", "inception"),
    "eval_crop": ("center", "ten"),
}


def _check_choices(cfg_data: Any) -> None:
    for key, allowed in _CHOICES.items():
        value = get(cfg_data, key, allowed[0])
        if value not in allowed:
            raise DataError(f"data.{key} must be one of {', '.join(allowed)}, not {value!r}.")
    if int(get(cfg_data, "val_split", 0)) < 0:
        raise DataError(f"data.val_split must be >= 0, not {get(cfg_data, 'val_split', 0)}.")


def _validate_folder(cfg_data: Any, name: str, path: str) -> None:
    from resnet_jax.data import image_folder
    from resnet_jax.data.common import cache_dir

    meta = image_folder.cached_meta(path, cache_dir(cfg_data))  # a cache means the layout was checked
    classes = meta["num_classes"] if meta else len(image_folder.index_folder(path).class_names)
    want = CIFAR_CLASSES.get(name)
    if want and classes != want:
        raise DataError(f"{name} needs {want} classes but data.path {path!r} has {classes}.")


def validate(cfg_data: Any) -> None:
    """Cheap checks before anything compiles: a known name, valid options, an existing, well-laid-out path."""
    name, path = get(cfg_data, "name", ""), get(cfg_data, "path", "")
    if not name or not isinstance(name, str):
        raise DataError(f"data.name must name a dataset, not {name!r}.")
    _check_choices(cfg_data)
    if path:
        if name not in ("cifar10", "cifar100", "image_folder"):
            raise DataError(
                f"data.path is read only for cifar10, cifar100 or image_folder, not for {name!r}."
            )
        _validate_folder(cfg_data, name, path)
    elif name == "image_folder":
        raise DataError("data.name 'image_folder' needs data.path, a directory or .tar/.tar.gz archive.")
    elif name != "synthetic":
        if importlib.util.find_spec("tensorflow_datasets") is None:
            raise DataError(
                f"{name} is read with tensorflow-datasets, which is not installed (or set data.path)."
            )
        from resnet_jax.data import imagenet

        imagenet.tfds_builder(name, get(cfg_data, "tfds_dir", ""))  # unknown or unprepared-manual: DataError


def load_in_memory(cfg_data: Any, seed: int, *, batch_size: int = 128) -> InMemoryData:
    """A device-resident dataset (cifar10/cifar100 from data.path or TFDS, image_folder, synthetic).

    `seed` draws the synthetic images; `batch_size` sizes the synthetic split when
    data.synthetic_examples is 0 (10 batches). The val split (data.val_split) does not depend on seed.
    """
    validate(cfg_data)
    name = get(cfg_data, "name", "")
    if name == "synthetic":
        from resnet_jax.data import synthetic

        return synthetic.load(cfg_data, seed, batch_size)
    if not is_in_memory(cfg_data):
        raise DataError(
            f"{name} is streamed, not held in memory: use tfds_train_iterator / tfds_eval_iterator."
        )
    from resnet_jax.data import cifar

    return cifar.load(cfg_data)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """int32 order of n training examples in epoch `epoch`, a pure function of (seed, epoch, n)."""
    from resnet_jax.data import cifar

    return cifar.epoch_permutation(seed, epoch, n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """n // batch_size: each epoch drops the last n % batch_size examples of its permutation."""
    from resnet_jax.data import cifar

    return cifar.steps_per_epoch(n, batch_size)


def train_batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """int32 [batch_size] indices of global step `step`: slice step % S of epoch step // S's permutation."""
    from resnet_jax.data import cifar

    return cifar.train_batch_indices(seed, step, batch_size, n)


def augment_cifar(rng, images_uint8):
    """jit-able: 4-pixel zero pad, random crop back to HxW, random horizontal flip; uint8 in and out."""
    from resnet_jax.data import cifar

    return cifar.augment_cifar(rng, images_uint8)


def normalize(images, mean, std, dtype=None):
    """jit-able: (images - mean) / std computed in float32, returned in dtype (default float32)."""
    from resnet_jax.data import cifar

    return cifar.normalize(images, mean, std, dtype or np.float32)


def train_batch(rng, images, labels, indices, mean, std, dtype=None, augment: bool = True):
    """jit-able: gather `indices` from device-resident uint8 images/labels, augment, normalise."""
    from resnet_jax.data import cifar

    return cifar.train_batch(rng, images, labels, indices, mean, std, dtype or np.float32, augment)


def synthetic_batch(rng, batch_size: int, image_size: int, num_classes: int) -> dict:
    """jit-able: random uint8 images and int32 labels generated on the device."""
    from resnet_jax.data import synthetic

    return synthetic.device_batch(rng, batch_size, image_size, num_classes)


def tfds_train_iterator(
    cfg_data: Any, global_batch_size: int, seed: int, start_step: int = 0, *, dtype: Any = "float32"
) -> Iterator[dict]:
    """This process's batches {"image": [b, s, s, 3] normalised, "label": int32 [b]} from `start_step` on."""
    validate(cfg_data)
    from resnet_jax.data import imagenet

    return imagenet.train_iterator(cfg_data, global_batch_size, seed, start_step, dtype)


def tfds_eval_iterator(cfg_data: Any, global_batch_size: int, *, dtype: Any = "float32") -> Iterator[dict]:
    """This process's part of the eval split, each example once: {"image", "label", "mask"}; padded tail."""
    validate(cfg_data)
    from resnet_jax.data import imagenet

    return imagenet.eval_iterator(cfg_data, global_batch_size, dtype)


def eval_steps(cfg_data: Any, global_batch_size: int) -> int:
    """Number of batches tfds_eval_iterator yields (the same on every process)."""
    import jax

    from resnet_jax.data import imagenet

    n = dataset_info(cfg_data)["num_eval"]
    return imagenet.eval_batches(n, global_batch_size, jax.process_count())


def _folder_info(cfg_data: Any) -> dict:
    from resnet_jax.data import image_folder
    from resnet_jax.data.common import cache_dir

    path = get(cfg_data, "path", "")
    meta = image_folder.cached_meta(path, cache_dir(cfg_data))
    if meta is None:
        index = image_folder.index_folder(path)
        first = index.files["train"][0][0]
        shape = image_folder.decode_folder_image(index, first).shape
        meta = {
            "num_train": len(index.files["train"]),
            "num_test": len(index.files["test"]),
            "num_classes": len(index.class_names),
            "image_shape": shape,
        }
    return meta


def dataset_info(cfg_data: Any, *, batch_size: int = 128) -> dict:
    """{"num_train", "num_eval", "num_classes", "image_shape"}, without decoding the dataset when possible."""
    validate(cfg_data)
    name = get(cfg_data, "name", "")
    if name == "synthetic":
        from resnet_jax.data import synthetic

        n, size, classes = synthetic.shape_and_classes(cfg_data, batch_size)
        return {"num_train": n, "num_eval": n, "num_classes": classes, "image_shape": (size, size, 3)}
    if not is_in_memory(cfg_data):
        from resnet_jax.data import imagenet

        return imagenet.info(cfg_data)
    if get(cfg_data, "path", ""):
        meta = _folder_info(cfg_data)
    else:
        from resnet_jax.data import imagenet

        builder = imagenet.tfds_builder(name, get(cfg_data, "tfds_dir", ""))
        splits = imagenet.prepared_splits(builder)
        meta = {
            "num_train": splits["train"].num_examples,
            "num_test": splits["test"].num_examples,
            "num_classes": builder.info.features["label"].num_classes,
            "image_shape": builder.info.features["image"].shape,
        }
    val = int(get(cfg_data, "val_split", 0))
    if val >= meta["num_train"]:  # as load_in_memory would say, not a negative training-set size
        n = meta["num_train"]
        raise DataError(f"data.val_split must be in [0, {n}) for {n} training images, not {val}.")
    num_train, num_eval = (meta["num_train"] - val, val) if val else (meta["num_train"], meta["num_test"])
    classes = int(get(cfg_data, "num_classes", 0)) or meta["num_classes"]
    return {
        "num_train": num_train,
        "num_eval": num_eval,
        "num_classes": classes,
        "image_shape": tuple(meta["image_shape"]),
    }
