"""Random images and labels, for throughput benchmarks without input cost."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.common import DataError, InMemoryData, get

UNIFORM_STD = 255.0 / np.sqrt(12.0)  # std of uniform bytes


def shape_and_classes(cfg_data: Any, batch_size: int) -> tuple[int, int, int]:
    """(examples, image side, classes): synthetic_examples (0 = 10 batches), image_size, num_classes.

    Without data.num_classes: 10 classes for images up to 64 px (CIFAR-like), else 1000.
    """
    size = int(get(cfg_data, "image_size", 224))
    n = int(get(cfg_data, "synthetic_examples", 0)) or 10 * int(batch_size)
    classes = int(get(cfg_data, "num_classes", 0)) or (10 if size <= 64 else 1000)
    if n <= 0 or size <= 0:
        raise DataError(f"synthetic data needs positive sizes, not {n} examples of {size} px.")
    return n, size, classes


def load(cfg_data: Any, seed: int, batch_size: int = 128) -> InMemoryData:
    """A random uint8 split (used for both training and evaluation), drawn on the host from `seed`."""
    n, size, classes = shape_and_classes(cfg_data, batch_size)
    rng = np.random.default_rng(int(seed) % (1 << 63))
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, (n,), dtype=np.int32)
    std = (
        np.float32(1.0) if get(cfg_data, "mean", "pixel") == "pixel" else np.full(3, UNIFORM_STD, np.float32)
    )
    return InMemoryData(
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


def device_batch(rng: jax.Array, batch_size: int, image_size: int, num_classes: int) -> dict[str, jax.Array]:
    """A random batch generated on the device (jit-able): uint8 images [b, s, s, 3] and int32 labels."""
    k_img, k_lab = jax.random.split(rng)
    images = jax.random.randint(k_img, (batch_size, image_size, image_size, 3), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(k_lab, (batch_size,), 0, num_classes, dtype=jnp.int32)
    return {"image": images, "label": labels}
