"""The one definition of an ImageNet-style JPEG folder: <root>/train/<class>/*.JPEG and <root>/val/ (or
validation/), local or gs://; its files and labels. Lists files only (never decodes); NumPy and etils.epath.

Classes are the sorted subfolders of train/; a label is its class's index, in every split (as torchvision's
ImageFolder). Files are sorted by name within a class; extensions are matched case-insensitively.
Both input pipelines (tf.data in streamed_folder.py, DALI in dali.py) read the same listing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
from etils import epath

from resnet_jax.data.common import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
EVAL_SPLIT_DIRS = ("val", "validation")
LIST_THREADS = 16  # class folders listed at once (a gs:// listing is a round trip per folder)


@dataclasses.dataclass(frozen=True)
class Listing:
    """One split of a folder: a path and a label per example, in the folder's fixed order."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int32 [n]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: epath.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def _root(root: str) -> epath.Path:
    path = epath.Path(root).expanduser() if "://" not in root else epath.Path(root)
    try:
        exists = path.is_dir()
    except Exception as e:  # noqa: BLE001 - an unreachable store: say so in one sentence
        raise DataError(f"data.path {root!r} cannot be read ({type(e).__name__}: {e}).") from e
    if not exists:
        raise DataError(f"data.path {root!r} is not a directory (an ImageNet-style folder: train/, val/).")
    if not (path / "train").is_dir():
        raise DataError(
            f"{root!r} has no train/ folder: lay it out as train/<class>/*.JPEG, val/<class>/*.JPEG."
        )
    return path


def classes(root: str) -> tuple[str, ...]:
    """The sorted class folders of <root>/train."""
    names = _subdirs(_root(root) / "train")
    if not names:
        raise DataError(f"{root!r}'s train/ has no class folders: lay it out as train/<class>/*.JPEG.")
    return tuple(names)


def split_dir(root: str, split: str) -> epath.Path:
    """<root>/train for "train"; <root>/val or <root>/validation for "eval"."""
    path = _root(root)
    if split == "train":
        return path / "train"
    found = [path / d for d in EVAL_SPLIT_DIRS if (path / d).is_dir()]
    if not found:
        raise DataError(f"{root!r} has neither val/ nor validation/: add one laid out as val/<class>/*.JPEG.")
    return found[0]


def check_layout(root: str) -> None:
    """The cheap checks (no file listed): train/ with class folders, an evaluation folder whose class
    folders are among train/'s."""
    names = classes(root)
    folder = split_dir(root, "eval")
    extra = sorted(set(_subdirs(folder)) - set(names))
    if extra:
        raise DataError(
            f"{str(folder)!r} has class folders that train/ lacks ({', '.join(extra[:3])}): fix the layout."
        )


def listing(root: str, split: str = "train") -> Listing:
    """The examples of `split` ("train" or "eval"), listed (LIST_THREADS class folders at a time)."""
    names = classes(root)
    folder = split_dir(root, split)
    if split != "train":
        check_layout(root)

    def files(name: str) -> list[str]:
        d = folder / name
        return sorted(p.name for p in d.iterdir() if is_image(p.name)) if d.is_dir() else []

    with concurrent.futures.ThreadPoolExecutor(LIST_THREADS) as pool:
        per_class = list(pool.map(files, names))
    paths = [str(folder / name / f) for name, fs in zip(names, per_class, strict=True) for f in fs]
    labels = np.repeat(np.arange(len(names), dtype=np.int32), [len(fs) for fs in per_class])
    if not paths:
        raise DataError(f"{str(folder)!r} holds no images (*.JPEG, *.jpg, *.png) in class folders.")
    return Listing(tuple(paths), labels, names)
