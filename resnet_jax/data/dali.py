"""NVIDIA DALI input pipeline for ImageNet-style data (JPEG folders, TFDS TFRecords) as global jax.Arrays.

The host (numpy) owns the data order and every random draw, each a pure function of (seed, epoch, position
in the epoch), so a resume at any step rebuilds exactly the stream of an uninterrupted run whatever the
device count; DALI decodes only the crop window (ROI decode: device "mixed" on a GPU, "cpu" without one),
resizes, flips and normalises. It must not import DALI (an optional dependency) before a pipeline is built.

Training ("paper"): shorter side to a random L in [256, 480], random 224 crop, flip, PCA lighting;
("inception"): TensorFlow's sample_distorted_bounding_box rule (aspect ~ U[3/4, 4/3], height uniform
between the heights of areas 0.08 and 1, ten attempts, else the whole image), flip. The windows follow
data/streamed.py's tf.data pipeline, so the two pipelines draw crops from the same distribution.
Evaluation: "center" (shorter side 256, centre 224) or "ten" (corners + centre, and their flips), every
example once, the last global batch padded (mask False).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from resnet_jax.data.common import DataError
from resnet_jax.data.streamed import (
    EVAL_RESIZE,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    PAPER_SCALES,
    PCA_EIGVAL,
    PCA_EIGVEC,
    PCA_STD,
)

PIP = "pip install nvidia-dali-cuda120==2.4.0"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
EVAL_SPLIT_DIRS = ("val", "validation")
INCEPTION_ATTEMPTS = 10
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)


def require_dali():
    """The nvidia.dali module, or a DataError naming the pip command."""
    try:
        import nvidia.dali
        import nvidia.dali.plugin.jax  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"data.pipeline 'dali' needs NVIDIA DALI, which is not installed: run `{PIP}`."
        ) from e
    return nvidia.dali


# ---- Sources: the examples in a fixed order, read one at a time by index. ----


@dataclasses.dataclass(frozen=True)
class Source:
    """Encoded images of a split: files (labels from the sorted class folders) or TFRecord records."""

    paths: tuple[str, ...]  # one per example (files), or one per shard (records)
    labels: np.ndarray | None  # int32 [n] for files; None: read from each record
    records: np.ndarray | None = None  # int64 [n, 3] (shard, offset, length) of each record
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records) if self.records is not None else len(self.paths)

    def read(self, i: int) -> tuple[bytes, int]:
        """Example i's encoded image and label."""
        if self.records is None:
            with open(self.paths[i], "rb") as f:
                return f.read(), int(self.labels[i])
        shard, offset, length = (int(v) for v in self.records[i])
        with open(self.paths[shard], "rb") as f:
            f.seek(offset)
            return example_image_label(f.read(length))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def folder_source(root: str, split: str = "train") -> Source:
    """<root>/train/<class>/*.JPEG (or .jpg, .png ...); split "eval" reads <root>/val or <root>/validation.

    Labels are the positions of the class folders of <root>/train in sorted order (as torchvision's
    ImageFolder), for both splits.
    """
    if not os.path.isdir(os.path.join(root, "train")):
        raise DataError(
            f"{root!r} has no train/ folder: lay it out as train/<class>/*.JPEG, val/<class>/*.JPEG."
        )
    classes = sorted(
        d for d in os.listdir(os.path.join(root, "train")) if os.path.isdir(os.path.join(root, "train", d))
    )
    if split == "train":
        split_dir = os.path.join(root, "train")
    else:
        found = [os.path.join(root, d) for d in EVAL_SPLIT_DIRS if os.path.isdir(os.path.join(root, d))]
        if not found:
            raise DataError(
                f"{root!r} has neither val/ nor validation/: add one laid out as val/<class>/*.JPEG."
            )
        split_dir = found[0]
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue
        files = sorted(f for f in os.listdir(folder) if _is_image(f))
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    extra = sorted(set(os.listdir(split_dir)) - set(classes))
    extra = [d for d in extra if os.path.isdir(os.path.join(split_dir, d))]
    if extra:
        raise DataError(
            f"{split_dir!r} has class folders that train/ lacks ({', '.join(extra[:3])}): fix the layout."
        )
    if not paths:
        raise DataError(f"{split_dir!r} holds no images (*.JPEG, *.jpg, *.png) in class folders.")
    return Source(tuple(paths), np.asarray(labels, np.int32), class_names=tuple(classes))


def tfrecord_source(pattern: str) -> Source:
    """TFRecord shards (a glob, e.g. <tfds_dir>/imagenet2012/5.1.0/imagenet2012-train.tfrecord-*) of
    tf.train.Examples with an encoded "image" and an int64 "label" (TFDS's image datasets)."""
    paths = tuple(sorted(glob.glob(pattern)))
    if not paths:
        raise DataError(f"no TFRecord shards match {pattern!r}: point at a prepared TFDS split's files.")
    records = []
    for shard, path in enumerate(paths):
        size, offset = os.path.getsize(path), 0
        with open(path, "rb") as f:
            while offset < size:
                (length,) = struct.unpack("<Q", f.read(8))
                records.append((shard, offset + 12, length))  # 8 length + 4 length CRC, then the data
                offset += 12 + length + 4
                f.seek(offset)
    return Source(paths, None, np.asarray(records, np.int64))


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; value is bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise DataError(f"a TFRecord example has an unsupported protobuf wire type {wire}.")
        yield number, wire, value


def example_image_label(
    record: bytes, image_key: str = "image", label_key: str = "label"
) -> tuple[bytes, int]:
    """The encoded image and the label of a serialized tf.train.Example (no TensorFlow needed)."""
    features = {}
    for number, _, features_msg in _fields(record):  # Example.features = 1
        if number != 1:
            continue
        for n, _, entry in _fields(features_msg):  # Features.feature = 1: map<string, Feature>
            if n != 1:
                continue
            key, value = "", b""
            for k, _, v in _fields(entry):
                key, value = (v.decode(), value) if k == 1 else (key, v)
            features[key] = value
    if image_key not in features or label_key not in features:
        raise DataError(f"a TFRecord example lacks {image_key!r} or {label_key!r}: not a TFDS image dataset.")
    image = next(
        v for n, _, lst in _fields(features[image_key]) if n == 1 for m, _, v in _fields(lst) if m == 1
    )
    label = None
    for n, _, lst in _fields(features[label_key]):
        if n == 3:  # int64_list
            for m, wire, v in _fields(lst):
                if m == 1:
                    label = _varint(v, 0)[0] if wire == 2 else v
    if label is None:
        raise DataError(f"a TFRecord example's {label_key!r} is not an int64 list.")
    return bytes(image), int(label)


def image_hw(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header (other formats: Pillow), without decoding."""
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 < len(data):
            if data[pos] != 0xFF:
                pos += 1
                continue
            marker = data[pos + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                pos += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return h, w
            pos += 2 + length
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as e:  # noqa: BLE001 - any undecodable file
        raise DataError(f"an image could not be read ({type(e).__name__}): remove or replace it.") from e


# ---- Order and random draws: pure functions of (seed, epoch, position). ----


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


# ---- Feeds: DALI external sources, one per pipeline, each its rows of every global batch. ----


def _encoded(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


class TrainFeed:
    """Rows [lo, hi) of the global batch of each step from `start_step` on (never ends)."""

    def __init__(
        self,
        source: Source,
        seed: int,
        start_step: int,
        global_batch: int,
        rows: tuple[int, int],
        augment: str,
        size: int,
        mode: str,
    ):
        self.source, self.seed, self.start, self.batch, self.rows = (
            source,
            seed,
            start_step,
            global_batch,
            rows,
        )
        self.augment, self.size, self.mode = augment, size, mode
        self.steps_per_epoch = len(source) // global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"batch size {global_batch} exceeds the {len(source)} training examples.")
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, len(self.source)))
        return self._order[1]

    def positions(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, positions in that epoch's order) of this feed's rows at global step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, k * self.batch + np.arange(*self.rows)

    def __call__(self, info) -> tuple:
        epoch, positions = self.positions(self.start + info.iteration)
        reads = [self.source.read(int(i)) for i in self.order(epoch)[positions]]
        hw = np.asarray([image_hw(d) for d, _ in reads], np.int64)
        windows, flips, rgb = train_draws(self.seed, epoch, positions, hw, self.augment, self.size)
        mean = np.asarray(IMAGENET_MEAN_RGB, np.float32) - rgb  # (x + rgb - mean) / std
        return (
            [_encoded(d) for d, _ in reads],
            np.asarray([label for _, label in reads], np.int32),
            windows[:, :2].astype(np.int32),
            windows[:, 2:].astype(np.int32),
            flips,
            mean,
        )


class EvalFeed:
    """Rows [lo, hi) of every global evaluation batch: each example once, padded with mask False."""

    def __init__(self, source: Source, global_batch: int, rows: tuple[int, int], crop: str, size: int):
        self.source, self.batch, self.rows, self.crop, self.size = source, global_batch, rows, crop, size
        self.steps = math.ceil(len(source) / global_batch)

    def __call__(self, info) -> tuple:
        if info.iteration >= self.steps:
            raise StopIteration
        positions = info.iteration * self.batch + np.arange(*self.rows)
        mask = positions < len(self.source)
        reads = [self.source.read(int(i)) for i in np.minimum(positions, len(self.source) - 1)]
        hw = np.asarray([image_hw(d) for d, _ in reads], np.int64)
        labels = np.asarray([label for _, label in reads], np.int32)
        if self.crop == "center":
            w = center_windows(hw, self.size)
            geometry = (w[:, :2].astype(np.int32), w[:, 2:].astype(np.int32))
        else:
            new, anchors = ten_crop_geometry(hw, self.size)
            geometry = (new.astype(np.float32), anchors.astype(np.int32))
        return ([_encoded(d) for d, _ in reads], labels, mask, *geometry)


# ---- Pipelines and iterators. ----


def _std(mode: str, dtype: Any) -> list[float]:
    """The normalisation's divisor: none for "pixel" (mean subtraction only) or for uint8 outputs."""
    return list(IMAGENET_STD_RGB) if mode == "channel" and not _is_uint8(dtype) else [1.0, 1.0, 1.0]


def _is_uint8(dtype: Any) -> bool:
    return (dtype if isinstance(dtype, str) else np.dtype(dtype).name) == "uint8"


def _out_dtype(dtype: Any):
    from nvidia.dali import types

    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    table = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT, "uint8": types.UINT8}
    if name not in table:
        raise DataError(f"the DALI pipeline outputs float32, float16 or uint8, not {name}.")
    return table[name]


def _pipeline(batch: int, device_id: int | None, num_threads: int, seed: int):
    from nvidia.dali import Pipeline

    return Pipeline(
        batch_size=batch,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )


def _decoder_device(device_id: int | None) -> str:
    return "cpu" if device_id is None else "mixed"


def train_pipeline(feed: TrainFeed, device_id: int | None, num_threads: int, dtype: Any = "float32"):
    """DALI graph: ROI decode of each window, resize to size x size, flip, lighting + normalisation
    (uint8 outputs: the flipped crop before lighting and normalisation)."""
    from nvidia.dali import fn, types

    size, rows = feed.size, feed.rows
    pipe = _pipeline(rows[1] - rows[0], device_id, num_threads, feed.seed)
    with pipe:
        enc, labels, anchor, shape, flip, mean = fn.external_source(
            source=feed,
            num_outputs=6,
            batch=True,
            batch_info=True,
            dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32, types.FLOAT],
        )
        images = fn.decoders.image_slice(
            enc, anchor, shape, axis_names="HW", device=_decoder_device(device_id), output_type=types.RGB
        )
        images = fn.resize(
            images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True
        )
        images = fn.crop_mirror_normalize(
            images,
            mirror=flip,
            mean=0.0 if _is_uint8(dtype) else mean,
            std=_std(feed.mode, dtype),
            dtype=_out_dtype(dtype),
            output_layout="HWC",
        )
        pipe.set_outputs(images, labels if device_id is None else labels.gpu())
    return pipe


def eval_pipeline(feed: EvalFeed, device_id: int | None, num_threads: int, mode: str, dtype: Any = "float32"):
    """DALI graph of the centre crop (ROI decode) or the ten crops (decode, resize, five slices + flips)."""
    from nvidia.dali import fn, types

    size, rows = feed.size, feed.rows
    pipe = _pipeline(rows[1] - rows[0], device_id, num_threads, 0)
    mean = [0.0, 0.0, 0.0] if _is_uint8(dtype) else list(IMAGENET_MEAN_RGB)
    norm = dict(mean=mean, std=_std(mode, dtype), dtype=_out_dtype(dtype), output_layout="HWC")
    decoder = _decoder_device(device_id)
    with pipe:
        enc, labels, mask, g1, g2 = fn.external_source(
            source=feed,
            num_outputs=5,
            batch=True,
            batch_info=True,
            dtype=[
                types.UINT8,
                types.INT32,
                types.BOOL,
                types.INT32 if feed.crop == "center" else types.FLOAT,
                types.INT32,
            ],
        )
        if feed.crop == "center":
            images = fn.decoders.image_slice(
                enc, g1, g2, axis_names="HW", device=decoder, output_type=types.RGB
            )
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            images = fn.crop_mirror_normalize(images, **norm)
        else:
            image = fn.decoders.image(enc, device=decoder, output_type=types.RGB)
            image = fn.resize(image, resize_x=g1[1], resize_y=g1[0], antialias=True)
            crops = [fn.slice(image, g2[k], [size, size], axis_names="HW") for k in range(5)]
            images = fn.stack(*[fn.crop_mirror_normalize(c, mirror=m, **norm) for m in (0, 1) for c in crops])
        if device_id is not None:
            labels, mask = labels.gpu(), mask.gpu()
        pipe.set_outputs(images, labels, mask)
    return pipe


def _default_sharding():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))


def _device_rows(sharding, global_batch: int) -> list[tuple[Any, tuple[int, int]]]:
    """(local device, rows [lo, hi) of the global batch it holds), for the addressable devices."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    out = []
    for device, index in index_map.items():
        s = index[0]
        out.append((device, (s.start or 0, global_batch if s.stop is None else s.stop)))
    return sorted(out, key=lambda item: item[1])


def _process_rows(rows: list) -> list[tuple[None, tuple[int, int]]]:
    """One CPU pipeline for all of this process's rows, which must be contiguous."""
    lo, hi = rows[0][1][0], rows[-1][1][1]
    if sum(b - a for _, (a, b) in rows) != hi - lo:
        raise DataError("the CPU DALI pipeline needs this process's devices to hold contiguous batch rows.")
    return [(None, (lo, hi))]


def _num_threads(pipelines: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // pipelines)


class _Batches:
    """An iterator of dicts of global jax.Arrays from the DALI JAX plugin, one pipeline per GPU (or one
    on the CPU, its process-local batch placed with make_array_from_process_local_data)."""

    def __init__(self, pipes: Sequence, names: Sequence[str], sharding, gpu: bool, global_batch: int):
        from nvidia.dali.plugin.jax import DALIGenericIterator

        self.names, self.sharding, self.gpu, self.global_batch = list(names), sharding, gpu, global_batch
        kwargs = {"sharding": sharding} if gpu else {}
        self.it = DALIGenericIterator(list(pipes), self.names, **kwargs)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax

        out = next(self.it)
        if self.gpu:
            return out
        result = {}
        for k, v in out.items():
            local = np.asarray(v)
            shape = (self.global_batch, *local.shape[1:])
            result[k] = jax.make_array_from_process_local_data(self.sharding, local, shape)
        return result


def _gpu(device_id: str | int | None) -> bool:
    import jax

    if device_id == "cpu":
        return False
    return jax.default_backend() == "gpu"


def train_iterator(
    source: Source,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    *,
    augment: str = "paper",
    size: int = 224,
    mode: str = "pixel",
    dtype: Any = "float32",
    sharding=None,
    device: str = "auto",
    num_threads: int = 0,
) -> Iterator[dict]:
    """{"image": [B, size, size, 3], "label": [B]} global arrays for the steps from `start_step` on, forever.

    `device` "auto" decodes on the GPUs when JAX runs on them, else on the CPU ("cpu" forces it).
    """
    require_dali()
    sharding = sharding or _default_sharding()
    gpu = device != "cpu" and _gpu(device)
    rows = _device_rows(sharding, global_batch)
    if not gpu:
        rows = _process_rows(rows)
    threads = num_threads or _num_threads(len(rows))
    pipes = []
    for dev, r in rows:
        feed = TrainFeed(source, seed, start_step, global_batch, r, augment, size, mode)
        pipes.append(train_pipeline(feed, dev.local_hardware_id if gpu else None, threads, dtype))
    return _Batches(pipes, ["image", "label"], sharding, gpu, global_batch)


def eval_iterator(
    source: Source,
    global_batch: int,
    *,
    crop: str = "center",
    size: int = 224,
    mode: str = "pixel",
    dtype: Any = "float32",
    sharding=None,
    device: str = "auto",
    num_threads: int = 0,
) -> Iterator[dict]:
    """{"image", "label", "mask"} global arrays: every example once, ceil(n / B) batches, the last padded."""
    require_dali()
    if crop not in ("center", "ten"):
        raise DataError(f"data.eval_crop must be 'center' or 'ten', not {crop!r}.")
    sharding = sharding or _default_sharding()
    gpu = device != "cpu" and _gpu(device)
    rows = _device_rows(sharding, global_batch)
    if not gpu:
        rows = _process_rows(rows)
    threads = num_threads or _num_threads(len(rows))
    pipes = [
        eval_pipeline(
            EvalFeed(source, global_batch, r, crop, size),
            dev.local_hardware_id if gpu else None,
            threads,
            mode,
            dtype,
        )
        for dev, r in rows
    ]
    return _Batches(pipes, ["image", "label", "mask"], sharding, gpu, global_batch)
