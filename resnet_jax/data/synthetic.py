"""Random images and labels, held on the devices like CIFAR: throughput benchmarks without input cost.

Drawn on the host from the run's seed (NumPy only); nothing here runs on a device.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from resnet_jax.data.common import DataError, DeviceHeldData

UNIFORM_STD = 255.0 / np.sqrt(12.0)  # std of uniform bytes


def shape_and_classes(cfg_data: ml_collections.ConfigDict, batch_size: int) -> tuple[int, int, int]:
    """(examples, image side, classes): synthetic_examples (0 = 10 batches), image_size, num_classes.

    Without data.num_classes: 10 classes for images up to 64 px (CIFAR-like), else 1000.
    """
    size = int(cfg_data.image_size)
    n = int(cfg_data.synthetic_examples) or 10 * int(batch_size)
    classes = int(cfg_data.num_classes) or (10 if size <= 64 else 1000)
    if n <= 0 or size <= 0:
        raise DataError(f"synthetic data needs positive sizes, not {n} examples of {size} px.")
    return n, size, classes


def load(cfg_data: ml_collections.ConfigDict, seed: int, batch_size: int = 128) -> DeviceHeldData:
    """A random uint8 split (used for both training and evaluation), drawn on the host from `seed`."""
    n, size, classes = shape_and_classes(cfg_data, batch_size)
    rng = np.random.default_rng(int(seed) % (1 << 63))
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, (n,), dtype=np.int32)
    std = np.float32(1.0) if cfg_data.mean == "pixel" else np.full(3, UNIFORM_STD, np.float32)
    return DeviceHeldData(
        images,
        labels,
        images,
        labels,
        classes,
        [str(i) for i in range(classes)],
        np.full(3, 127.5, np.float32),
        std,
        "synthetic",
        "train",
    )
