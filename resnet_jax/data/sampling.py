"""The data order and every random draw of the host-fed pipelines, pure NumPy functions of (seed, epoch,
position in the epoch); the crop windows they give; which rows of a global batch each device holds.

A resume at any step and any device count recomputes exactly the same values. Nothing here reads data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_jax.data.common import DataError
from resnet_jax.data.streamed import EVAL_RESIZE, PAPER_SCALES, PCA_EIGVAL, PCA_EIGVEC, PCA_STD

INCEPTION_ATTEMPTS = 10
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n examples in epoch `epoch`."""
    return np.random.default_rng([int(seed) % (1 << 63), int(epoch)]).permutation(n)


def uniforms(seed: int, epoch: int, positions: np.ndarray, k: int) -> np.ndarray:
    """float64 [len(positions), k] in [0, 1): a splitmix64 hash of (seed, epoch, position, j)."""
    with np.errstate(over="ignore"):
        base = np.uint64(int(seed) % (1 << 64)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(int(epoch) << 40)
        x = (np.asarray(positions, np.uint64)[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)) + base
        for mul, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(shift))) * np.uint64(mul)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)  # lrintf in the default rounding mode


def inception_windows(hw: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[n, 4] (y, x, h, w) windows by TensorFlow's sample_distorted_bounding_box rule; u is [n, 4 * 10]."""
    hw = np.asarray(hw, np.int64)
    n = len(hw)
    out = np.stack([np.zeros(n, np.int64), np.zeros(n, np.int64), hw[:, 0], hw[:, 1]], 1)  # the fallback
    done = np.zeros(n, bool)
    H, W = hw[:, 0], hw[:, 1]
    lo, hi = INCEPTION_AREA[0] * H * W, INCEPTION_AREA[1] * H * W
    for a in range(INCEPTION_ATTEMPTS):
        ua, uh, uy, ux = (u[:, 4 * a + j] for j in range(4))
        ar = (ua * (INCEPTION_ASPECT[1] - INCEPTION_ASPECT[0]) + INCEPTION_ASPECT[0]).astype(np.float32)
        h = _round_half_even(np.sqrt(lo / ar))
        max_h = _round_half_even(np.sqrt(hi / ar))
        too_wide = _round_half_even(max_h * ar) > W
        fit = ((W + 0.5 - 1e-7) / ar).astype(np.int64)
        fit = np.where(_round_half_even(fit * ar) > W, fit - 1, fit)
        max_h = np.minimum(np.where(too_wide, fit, max_h), H)
        h = np.minimum(h, max_h)
        h = h + np.floor(uh * (max_h - h + 1)).astype(np.int64)
        w = _round_half_even(h * ar)
        area = w * h
        grow = area < lo
        h, w = np.where(grow, h + 1, h), np.where(grow, _round_half_even((h + 1) * ar), w)
        area = w * h
        shrink = area > hi
        h, w = np.where(shrink, h - 1, h), np.where(shrink, _round_half_even((h - 1) * ar), w)
        area = w * h
        ok = (area >= lo) & (area <= hi) & (w <= W) & (h <= H) & (w > 0) & (h > 0) & ~done
        y = np.where(h < H, np.floor(uy * (H - h)).astype(np.int64), 0)  # [0, H - h): as TF's Uniform(H - h)
        x = np.where(w < W, np.floor(ux * (W - w)).astype(np.int64), 0)
        out[ok] = np.stack([y, x, h, w], 1)[ok]
        done |= ok
    return out


def paper_windows(hw: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
    """[n, 4] windows of the scale augmentation: a size/L square, L uniform in the scaled [256, 480]."""
    hw = np.asarray(hw, np.int64)
    low, high = round(PAPER_SCALES[0] * size / 224), round(PAPER_SCALES[1] * size / 224)
    short = hw.min(1)
    length = low + np.floor(u[:, 0] * (high - low + 1)).astype(np.int64)
    side = np.clip(np.rint(size * short / length).astype(np.int64), 1, short)
    y = np.floor(u[:, 1] * (hw[:, 0] - side + 1)).astype(np.int64)
    x = np.floor(u[:, 2] * (hw[:, 1] - side + 1)).astype(np.int64)
    return np.stack([y, x, side, side], 1)


def _normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    return np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)  # Box-Muller; 1 - u1 in (0, 1]


def pca_rgb(u: np.ndarray) -> np.ndarray:
    """[n, 3] AlexNet PCA lighting offsets (0-255 scale) from u [n, 6]."""
    alpha = _normal(u[:, :3], u[:, 3:6]) * PCA_STD
    return (alpha * np.asarray(PCA_EIGVAL)) @ np.asarray(PCA_EIGVEC).T


TRAIN_DRAWS = 4 * INCEPTION_ATTEMPTS + 1 + 6  # window, flip, lighting


def train_draws(seed: int, epoch: int, positions: np.ndarray, hw: np.ndarray, augment: str, size: int):
    """(windows [n, 4], flips [n] int32, PCA offsets [n, 3] float32) of the examples at `positions`."""
    u = uniforms(seed, epoch, positions, TRAIN_DRAWS)
    if augment == "paper":
        windows, rgb = paper_windows(hw, u, size), pca_rgb(u[:, -6:])
    elif augment == "inception":
        windows, rgb = inception_windows(hw, u), np.zeros((len(hw), 3))
    else:
        raise DataError(f"data.augment must be 'paper' or 'inception', not {augment!r}.")
    flips = (u[:, 4 * INCEPTION_ATTEMPTS] < 0.5).astype(np.int32)
    return windows, flips, rgb.astype(np.float32)


def center_windows(hw: np.ndarray, size: int) -> np.ndarray:
    """[n, 4] centre windows: the part of the image that becomes the centre crop at shorter side 256."""
    hw = np.asarray(hw, np.int64)
    side = np.rint(hw.min(1) * size / round(size * EVAL_RESIZE / 224)).astype(np.int64)
    return np.stack([(hw[:, 0] - side) // 2, (hw[:, 1] - side) // 2, side, side], 1)


def ten_crop_geometry(hw: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(resized [n, 2] (h, w), anchors [n, 5, 2] (y, x) of the four corners and the centre)."""
    hw = np.asarray(hw, np.float64)
    scale = round(size * EVAL_RESIZE / 224) / hw.min(1, keepdims=True)
    new = np.maximum(np.rint(hw * scale).astype(np.int64), size)
    h, w = new[:, 0] - size, new[:, 1] - size
    z = np.zeros_like(h)
    anchors = np.stack([np.stack(p, 1) for p in ((z, z), (z, w), (h, z), (h, w), (h // 2, w // 2))], 1)
    return new, anchors


def device_rows(sharding: Any, global_batch: int) -> list[tuple[Any, tuple[int, int]]]:
    """(local device, rows [lo, hi) of the global batch it holds) of a batch-sharded array's addressable
    devices, in row order."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    out = []
    for device, index in index_map.items():
        s = index[0]
        out.append((device, (s.start or 0, global_batch if s.stop is None else s.stop)))
    return sorted(out, key=lambda item: item[1])


def process_rows(sharding: Any, global_batch: int) -> tuple[int, int]:
    """The rows [lo, hi) of the global batch that this process's devices hold, which must be contiguous."""
    rows = device_rows(sharding, global_batch)
    lo, hi = rows[0][1][0], rows[-1][1][1]
    if sum(b - a for _, (a, b) in rows) != hi - lo:
        raise DataError("this process's devices must hold contiguous rows of the batch (a 1-D data mesh).")
    return lo, hi
