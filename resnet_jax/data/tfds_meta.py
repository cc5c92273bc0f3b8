"""TFDS metadata: the prepared builder of a dataset, its splits and counts, and each process's part.

Reads no examples (data/streamed.py streams them, data/device_held.py loads small ones); TensorFlow and
TFDS are imported on first use only.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import ml_collections

from resnet_jax.data.common import DataError

_tf_module = None


def tf_module():
    """TensorFlow, imported on first use and kept off the GPUs (they belong to JAX)."""
    global _tf_module
    if _tf_module is None:
        import tensorflow as tf

        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):  # already initialised: nothing more to hide
            pass
        _tf_module = tf
    return _tf_module


def _manual_error(name: str, data_dir: str) -> DataError:
    d = data_dir or "~/tensorflow_datasets"
    if name == "imagenet2012":
        return DataError(
            f"imagenet2012 is not prepared in {d}: download ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar from https://image-net.org into a directory MANUAL and run "
            f"`tfds build imagenet2012 --data_dir={d} --manual_dir=MANUAL` (see docs/data.md)."
        )
    return DataError(
        f"{name} is not prepared in {d} and needs a manual download: put its files in a directory "
        f"MANUAL and run `tfds build {name} --data_dir={d} --manual_dir=MANUAL`."
    )


def tfds_builder(name: str, tfds_dir: str = "", allow_download: bool = False):
    """The TFDS builder of `name`, prepared (downloading it only when allowed and possible)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=tfds_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"unknown dataset {name!r}: use cifar10, cifar100, image_folder, synthetic or a TFDS name."
        ) from e
    if builder.is_prepared():
        return builder
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        raise _manual_error(name, tfds_dir)
    if not allow_download:
        return builder
    try:
        builder.download_and_prepare()
    except Exception as e:  # offline, or the source is gone
        d = tfds_dir or "~/tensorflow_datasets"
        raise DataError(
            f"{name} is not in {d} and could not be downloaded ({type(e).__name__}): "
            f"run `tfds build {name} --data_dir={d}` on a machine with internet access, "
            "or point --config.data.path at a local <split>/<class>/<image> folder or tar."
        ) from e
    return builder


@dataclasses.dataclass(frozen=True)
class Span:
    """Examples [start, stop) of a TFDS split."""

    split: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def part(self, index: int, count: int, equal: bool) -> str:
        """Process `index` of `count`'s slice: equal sizes (dropping the rest) or covering every example."""
        if equal:
            m = len(self) // count
            a, b = index * m, (index + 1) * m
        else:
            a, b = index * len(self) // count, (index + 1) * len(self) // count
        return f"{self.split}[{self.start + a}:{self.start + b}]"


def spans(builder, cfg_data: ml_collections.ConfigDict) -> tuple[Span, Span]:
    """(train, eval) spans: data.val_split > 0 holds out the last val_split training examples."""
    splits = builder.info.splits
    if "train" not in splits:
        raise DataError(f"{builder.name} has no 'train' split.")
    n_train = splits["train"].num_examples
    val = int(cfg_data.val_split)
    if val:
        if not 0 < val < n_train:
            raise DataError(f"data.val_split must be in [0, {n_train}) for {builder.name}, not {val}.")
        return Span("train", 0, n_train - val), Span("train", n_train - val, n_train)
    eval_split = next((s for s in ("validation", "test") if s in splits), None)
    if eval_split is None:
        raise DataError(f"{builder.name} has neither a 'validation' nor a 'test' split: set data.val_split.")
    return Span("train", 0, n_train), Span(eval_split, 0, splits[eval_split].num_examples)


def check(cfg_data: ml_collections.ConfigDict) -> None:
    """TFDS is installed and knows data.name, and a dataset that needs a manual download is prepared."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise DataError(
            f"{cfg_data.name} is read with tensorflow-datasets, which is not installed (or set data.path)."
        )
    tfds_builder(cfg_data.name, cfg_data.tfds_dir)  # unknown or unprepared-manual: DataError


def prepared_splits(builder):
    """The builder's splits, or a DataError when the dataset is not built yet."""
    if not builder.info.splits:
        raise DataError(
            f"{builder.name} is not prepared yet: its first load downloads it, or run `tfds build`."
        )
    return builder.info.splits


def info(cfg_data: ml_collections.ConfigDict) -> dict:
    """{"num_train", "num_eval", "num_classes", "image_shape"} from the TFDS metadata (no examples read)."""
    builder = tfds_builder(cfg_data.name, cfg_data.tfds_dir)
    prepared_splits(builder)
    train, evaluation = spans(builder, cfg_data)
    size = int(cfg_data.image_size)
    classes = int(cfg_data.num_classes) or builder.info.features["label"].num_classes
    return {
        "num_train": len(train),
        "num_eval": len(evaluation),
        "num_classes": classes,
        "image_shape": (size, size, 3),
    }
