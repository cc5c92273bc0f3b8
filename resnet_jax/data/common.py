"""What every data source shares: the error class, the in-memory dataset record, config lookups."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

IN_MEMORY_NAMES = ("cifar10", "cifar100", "image_folder", "synthetic")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


class DataError(ValueError):
    """A data mistake (unknown name, missing or malformed dataset), stated in one sentence."""


@dataclasses.dataclass
class InMemoryData:
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


def get(cfg: Any, key: str, default: Any) -> Any:
    """cfg.key for a ConfigDict, a dict or any object, else `default`."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def is_in_memory(cfg_data: Any) -> bool:
    """True when the dataset is held whole on the devices (CIFAR, image folders, synthetic)."""
    return bool(get(cfg_data, "path", "")) or get(cfg_data, "name", "") in IN_MEMORY_NAMES


def cache_dir(cfg_data: Any) -> pathlib.Path:
    """Where decoded arrays are cached: data.cache_dir, else $RESNET_JAX_CACHE, else ~/.cache/resnet_jax."""
    d = get(cfg_data, "cache_dir", "") or os.environ.get("RESNET_JAX_CACHE", "")
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
