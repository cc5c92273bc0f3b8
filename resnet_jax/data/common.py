"""What every data source shares: the error class, the device-held dataset record, the decoded-array cache.

NumPy only: importing this (and the data package) never pulls in JAX or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import ml_collections
import numpy as np

from resnet_jax.config import DataError

# Image files wherever a folder is listed, in any case (ImageNet's are *.JPEG): Pillow, TensorFlow's
# decode_image and DALI all decode these.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def is_image(name: str) -> bool:
    """An image file by its name: one of IMAGE_EXTENSIONS in any case, and not hidden (e.g. ._x.jpg)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclasses.dataclass
class DeviceHeldData:
    """A small dataset held whole in host memory, to be put on the devices once as uint8."""

    train_images: np.ndarray  # uint8 [N, H, W, 3]
    train_labels: np.ndarray  # int32 [N]
    eval_images: np.ndarray  # uint8 [M, H, W, 3]
    eval_labels: np.ndarray  # int32 [M]
    num_classes: int
    class_names: list[str]
    mean: np.ndarray  # float32 [H, W, 3] ("pixel") or [3] ("channel")
    std: np.ndarray  # float32 scalar 1.0 ("pixel") or [3] ("channel")
    name: str
    eval_split: str = "test"  # "test", or "val" when data.val_split holds out training images


def cache_dir(cfg_data: ml_collections.ConfigDict) -> pathlib.Path:
    """Where decoded arrays are cached: data.cache_dir, else $RESNET_JAX_CACHE, else ~/.cache/resnet_jax."""
    d = cfg_data.cache_dir or os.environ.get("RESNET_JAX_CACHE", "")
    return pathlib.Path(d).expanduser() if d else pathlib.Path.home() / ".cache" / "resnet_jax"


def mean_std(images: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation statistics of uint8 training images: the mean image ("pixel") or per-channel mean/std."""
    if mode == "pixel":
        return images.mean(axis=0, dtype=np.float64).astype(np.float32), np.float32(1.0)
    if mode == "channel":
        flat = images.reshape(-1, images.shape[-1])
        mean = flat.mean(axis=0, dtype=np.float64)
        sq = np.zeros_like(mean)
        for chunk in np.array_split(flat, max(1, len(flat) // 1_000_000)):  # bounded float64 temporaries
            sq += ((chunk.astype(np.float64) - mean) ** 2).sum(axis=0)
        return mean.astype(np.float32), np.sqrt(sq / len(flat)).astype(np.float32)
    raise DataError(f"data.mean must be 'pixel' or 'channel', not {mode!r}.")
