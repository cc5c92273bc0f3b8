"""Image folders laid out <split>/<class>/<image> (.jpg, .jpeg, .png in any case), as a directory or a
.tar/.tar.gz: decoded with Pillow.

Host-side listing, decoding and caching only (no JAX, no TensorFlow). Decoded uint8 arrays are cached as
.npz under the cache directory, keyed by a hash of the source (the archive's sha256, or a directory's file
names, sizes and mtimes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import tarfile
import time
import zipfile

import numpy as np

from resnet_jax.data.common import DataError, is_image
from resnet_jax.workdir import write_whole

SPLITS = ("train", "test")
CACHE_VERSION = 1


@dataclasses.dataclass
class FolderIndex:
    """The files of an image folder: for each split, (member name, label) pairs; and the class names."""

    source: pathlib.Path
    is_tar: bool
    class_names: list[str]
    files: dict[str, list[tuple[str, int]]]


@dataclasses.dataclass
class FolderArrays:
    """Decoded splits of an image folder."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def _is_tar(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def check_source(path: str | os.PathLike) -> pathlib.Path:
    """The folder or archive at `path`, or a DataError when it is missing or neither."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.path {str(p)!r} does not exist.")
    if not (p.is_dir() or _is_tar(p)):
        raise DataError(f"data.path {str(p)!r} is neither a directory nor a .tar/.tar.gz archive.")
    return p


def _tar_names(path: pathlib.Path) -> list[str]:
    st = path.stat()
    return _tar_names_memo(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _tar_names_memo(path: str, size: int, mtime_ns: int) -> list[str]:
    """Member names of a tar (listing a .tar.gz reads it whole, so validate + load list it once)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            return [m.name for m in tar if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"data.path {str(path)!r} is not a readable tar archive ({type(e).__name__}).") from e


def _dir_names(path: pathlib.Path) -> list[str]:
    names = []
    for split in SPLITS:
        split_dir = path / split
        if not split_dir.is_dir():
            continue
        for class_dir in split_dir.iterdir():
            if class_dir.is_dir():
                names += [f"{split}/{class_dir.name}/{f.name}" for f in class_dir.iterdir() if f.is_file()]
    return names


def _strip_root(names: list[str]) -> tuple[str, list[str]]:
    """Remove a leading './' and a single wrapping directory (e.g. cifar10/train/...) from member names."""
    names = [n[2:] if n.startswith("./") else n for n in names]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and not tops & set(SPLITS) and all("/" in n for n in names):
        (top,) = tops
        return top + "/", [n.split("/", 1)[1] for n in names]
    return "", names


def index_folder(path: str | os.PathLike) -> FolderIndex:
    """List and check the <split>/<class>/<image> layout: both splits present, the same classes in each."""
    p = check_source(path)
    is_tar = _is_tar(p)
    raw = _tar_names(p) if is_tar else _dir_names(p)
    prefix, names = _strip_root(raw) if is_tar else ("", raw)
    by_split: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for name in names:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] in by_split and is_image(parts[2]):
            by_split[parts[0]].setdefault(parts[1], []).append(prefix + name)
    for split in SPLITS:
        if not by_split[split]:
            raise DataError(
                f"data.path {str(p)!r} has no images under '{split}/' (expected <split>/<class>/<image> "
                "with splits 'train' and 'test')."
            )
    train_classes, test_classes = set(by_split["train"]), set(by_split["test"])
    if train_classes != test_classes:
        missing = sorted(train_classes ^ test_classes)[0]
        absent = "test" if missing in train_classes else "train"
        raise DataError(f"class {missing!r} of data.path {str(p)!r} has no images in the '{absent}' split.")
    classes = sorted(train_classes)
    files = {
        s: [(f, label) for label, c in enumerate(classes) for f in sorted(by_split[s][c])] for s in SPLITS
    }
    return FolderIndex(p, is_tar, classes, files)


def source_hash(index: FolderIndex) -> str:
    """sha256 of the archive, or of a directory's (name, size, mtime) list."""
    h = hashlib.sha256()
    if index.is_tar:
        with open(index.source, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    else:
        for split in SPLITS:
            for name, _ in index.files[split]:
                st = (index.source / name).stat()
                h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_bytes(index: FolderIndex) -> dict[str, bytes]:
    wanted = {name for s in SPLITS for name, _ in index.files[s]}
    if not index.is_tar:
        return {name: (index.source / name).read_bytes() for name in wanted}
    blobs = {}
    with tarfile.open(index.source, "r:*") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in wanted:
                blobs[name] = tar.extractfile(member).read()
    return blobs


def _decode(name: str, blob: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {name!r} cannot be decoded ({type(e).__name__}).") from e


def _decode_all(names: list[str], blobs: dict[str, bytes]) -> np.ndarray:
    images = [_decode(n, blobs[n]) for n in names]  # ~0.25 ms each; pools lose to pickling and the GIL
    first = images[0].shape
    odd = next((n for n, im in zip(names, images, strict=True) if im.shape != first), None)
    if odd is not None:
        raise DataError(f"image {odd!r} is not {first[0]}x{first[1]} like the others: resize the folder.")
    return np.stack(images)


def decode_folder(index: FolderIndex) -> FolderArrays:
    """Decode every image of both splits with Pillow into uint8 arrays."""
    blobs = _read_bytes(index)
    arrays = {}
    for split in SPLITS:
        names = [n for n, _ in index.files[split]]
        arrays[split] = (
            _decode_all(names, blobs),
            np.array([label for _, label in index.files[split]], np.int32),
        )
    return FolderArrays(*arrays["train"], *arrays["test"], index.class_names)


def cache_path(cache_dir: pathlib.Path, digest: str) -> pathlib.Path:
    return cache_dir / f"image_folder-v{CACHE_VERSION}-{digest[:24]}.npz"


def _save(path: pathlib.Path, arrays: FolderArrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        train_images=arrays.train_images,
        train_labels=arrays.train_labels,
        test_images=arrays.test_images,
        test_labels=arrays.test_labels,
        class_names=np.array(arrays.class_names),
    )
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    meta = {
        "num_train": len(arrays.train_labels),
        "num_test": len(arrays.test_labels),
        "num_classes": len(arrays.class_names),
        "image_shape": list(arrays.train_images.shape[1:]),
    }
    write_whole(path.with_suffix(".json"), json.dumps(meta))


# What a damaged cache raises in np.load: a cut or overwritten zip, a flipped byte (zip's CRC-32), a
# missing member, a cut .npy header.
DAMAGED = (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError)


def _load(path: pathlib.Path) -> FolderArrays:
    with np.load(path) as z:
        arrays = FolderArrays(
            z["train_images"],
            z["train_labels"],
            z["test_images"],
            z["test_labels"],
            [str(c) for c in z["class_names"]],
        )
    if len(arrays.train_images) != len(arrays.train_labels) or len(arrays.test_images) != len(
        arrays.test_labels
    ):
        raise ValueError("images and labels differ in number")
    return arrays


def _discard(cached: pathlib.Path, e: Exception, log) -> None:
    """A damaged cache: one warning line, and the files removed, so that it is decoded and written again."""
    log(f"warning: the cache {cached} is damaged ({type(e).__name__}: {e}); decoding the images again")
    for f in (cached, cached.with_suffix(".json")):
        f.unlink(missing_ok=True)


def cached_source_hash(path: str | os.PathLike) -> str | None:
    """The cache key of an archive without listing it (hash only); None for a directory (needs a listing)."""
    p = check_source(path)
    return source_hash(FolderIndex(p, True, [], {})) if _is_tar(p) else None


def find_cache(path: str | os.PathLike, cache_dir: pathlib.Path) -> pathlib.Path | None:
    """The cache file of this source when one exists (its layout was checked when it was written)."""
    p = check_source(path)
    digest = cached_source_hash(p) if _is_tar(p) else source_hash(index_folder(p))
    c = cache_path(cache_dir, digest)
    return c if c.exists() else None


def load_folder(path: str | os.PathLike, cache_dir: pathlib.Path, log=print) -> FolderArrays:
    """Both splits of the image folder, from the cache when it holds them, else decoded (and cached)."""
    p = check_source(path)
    index = None if _is_tar(p) else index_folder(p)
    digest = cached_source_hash(p) if index is None else source_hash(index)
    cached = cache_path(cache_dir, digest)
    if cached.exists():
        try:
            return _load(cached)
        except DAMAGED as e:
            _discard(cached, e, log)
    t0 = time.time()
    arrays = decode_folder(index or index_folder(p))
    try:
        _save(cached, arrays)
    except OSError as e:  # a read-only cache only costs time
        log(f"resnet_jax.data: could not write the cache {cached} ({e})")
    log(f"resnet_jax.data: decoded {p} in {time.time() - t0:.1f} s; cached at {cached}")
    return arrays


def cached_meta(path: str | os.PathLike, cache_dir: pathlib.Path) -> dict | None:
    """Counts and shape saved beside the cache, when the cache exists."""
    cached = find_cache(path, cache_dir)
    meta = cached.with_suffix(".json") if cached else None
    if not (meta and meta.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
        if set(record) != {"num_train", "num_test", "num_classes", "image_shape"}:
            raise ValueError("not the cache's record")
        return record
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        _discard(cached, e, print)
        return None


def meta(path: str | os.PathLike, cache_dir: pathlib.Path) -> dict:
    """{"num_train", "num_test", "num_classes", "image_shape"}: from the cache's record, else from a listing
    and one decoded image."""
    cached = cached_meta(path, cache_dir)
    if cached is not None:
        return cached
    index = index_folder(path)
    return {
        "num_train": len(index.files["train"]),
        "num_test": len(index.files["test"]),
        "num_classes": len(index.class_names),
        "image_shape": decode_folder_image(index, index.files["train"][0][0]).shape,
    }


def decode_folder_image(index: FolderIndex, name: str) -> np.ndarray:
    """One image of the folder (for its shape), decoded."""
    if not index.is_tar:
        return _decode(name, (index.source / name).read_bytes())
    with tarfile.open(index.source, "r:*") as tar:
        for member in tar:
            if member.name.removeprefix("./") == name:
                return _decode(name, tar.extractfile(member).read())
    raise DataError(f"image {name!r} vanished from {str(index.source)!r}.")
