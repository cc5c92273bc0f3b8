"""Encoded images read one at a time by index: the files of a JPEG folder or the records of TFRecord shards
(TFDS's image datasets, parsed without TensorFlow), and image sizes read from their headers. No decoding.

NumPy only (etils.epath for gs:// files); the DALI feeds (dali.py) read through these.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import struct

import numpy as np

from resnet_jax.data import jpeg_folder
from resnet_jax.data.common import DataError


def read_bytes(path: str) -> bytes:
    """A local file's bytes, or a remote one's (gs://...) through etils.epath."""
    if "://" in path:
        from etils import epath

        return epath.Path(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


@dataclasses.dataclass(frozen=True)
class Source:
    """Encoded images of a split: files (labels from the sorted class folders) or TFRecord records."""

    paths: tuple[str, ...]  # one per example (files), or one per shard (records)
    labels: np.ndarray | None  # int32 [n] for files; None: read from each record
    records: np.ndarray | None = None  # int64 [n, 3] (shard, offset, length) of each record
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records) if self.records is not None else len(self.paths)

    def span(self, start: int, stop: int) -> Source:
        """Examples [start, stop) (a TFDS span such as train[:-5000]); records keep their shard paths."""
        if self.records is None:
            return Source(self.paths[start:stop], self.labels[start:stop], None, self.class_names)
        return Source(self.paths, None, self.records[start:stop], self.class_names)

    def read(self, i: int) -> tuple[bytes, int]:
        """Example i's encoded image and label."""
        if self.records is None:
            return read_bytes(self.paths[i]), int(self.labels[i])
        shard, offset, length = (int(v) for v in self.records[i])
        with open(self.paths[shard], "rb") as f:
            f.seek(offset)
            return example_image_label(f.read(length))


def folder_source(root: str, split: str = "train") -> Source:
    """The examples of an ImageNet-style folder's `split` ("train" or "eval"), as jpeg_folder lists them."""
    split_listing = jpeg_folder.listing(root, split)
    return Source(split_listing.paths, split_listing.labels, class_names=split_listing.class_names)


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


def tfds_split_source(data_dir: str, name: str, split: str) -> Source:
    """A prepared TFDS split's TFRecord shards, <data_dir>/<name>-<split>.tfrecord-*, in TFDS's order."""
    return tfrecord_source(os.path.join(data_dir, f"{name}-{split}.tfrecord-*"))


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
