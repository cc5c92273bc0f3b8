"""A TFDS dataset built from an image folder <split>/<class>/<image> (.jpg, .JPEG, .png: any case), the
bytes stored unchanged.

It lets the ImageNet pipeline (tf.data, fused decode-and-crop) run on real JPEG files anywhere: the
tests and benchmarks/input_pipeline.py build one from CIFAR images upscaled to ImageNet-like sizes.
Once built, it reads like any prepared TFDS dataset: data.name = "jpeg_folder", data.tfds_dir = DIR.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from resnet_jax.data.common import is_image

NAME = "jpeg_folder"
SPLIT_DIRS = ("train", "validation", "test")


class JpegFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """<root>/<split>/<class>/<image>; read back without this code (TFDS reads its files)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, root: str | pathlib.Path, **kwargs):
        self._root = pathlib.Path(root)
        super().__init__(**kwargs)

    def _classes(self) -> list[str]:
        return sorted(d.name for d in (self._root / "train").iterdir() if d.is_dir())

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=self._classes()),
            }
        )
        return self.dataset_info_from_configs(features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        dirs = [d for d in SPLIT_DIRS if (self._root / d).is_dir()]
        return {d: self._generate_examples(self._root / d) for d in dirs}

    def _generate_examples(self, split_dir: pathlib.Path):
        for label, name in enumerate(self._classes()):
            for f in sorted(f for f in (split_dir / name).iterdir() if is_image(f.name)):
                yield f"{name}/{f.name}", {"image": f.read_bytes(), "label": label}


def build(root: str | pathlib.Path, data_dir: str | pathlib.Path) -> None:
    """Build the dataset of the JPEG folder `root` into the TFDS directory `data_dir`."""
    JpegFolder(root=root, data_dir=str(data_dir)).download_and_prepare()


def write_upscaled(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    out_dir: str | pathlib.Path,
    sizes: Sequence[tuple[int, int]],
    quality: int = 90,
) -> None:
    """Write images (uint8 [N, h, w, 3]) as JPEGs under out_dir/<class>/, resized in turn to each (W, H)."""
    from PIL import Image

    out = pathlib.Path(out_dir)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image).resize(sizes[i % len(sizes)], Image.Resampling.BICUBIC)
        big.save(folder / f"{i:06d}.jpg", quality=quality)
