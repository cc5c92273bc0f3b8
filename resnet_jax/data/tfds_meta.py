"""TFDS metadata: the prepared builder of a dataset, its splits and counts, and each process's part.

Reads no examples (data/streamed.py streams them, data/device_held.py loads small ones); TensorFlow and
TFDS are imported on first use only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import ml_collections

from resnet_jax.data.common import DataError

_tf_module = None
PROBE_TIMEOUT_S = 5.0  # a reachable host answers a TCP connect in well under a second; DNS gets the same


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


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """TFDS's absl warnings off for a moment: what matters reaches the user as a DataError."""
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def default_dir() -> str:
    """Where TFDS keeps datasets when data.tfds_dir is empty."""
    return os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"


def _manual_error(name: str, data_dir: str) -> DataError:
    d = data_dir or default_dir()
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

    # quiet: a download cut short leaves an empty folder that TFDS warns about at every look
    with quiet_absl():
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
    try:  # check() said before anything was built whether the download hosts can be reached
        builder.download_and_prepare()
    except Exception as e:  # the source is gone, or the network went away during the download
        raise _offline_error(name, tfds_dir, f"could not be downloaded ({type(e).__name__})") from e
    return builder


def _offline_error(name: str, tfds_dir: str, why: str) -> DataError:
    d = tfds_dir or default_dir()
    return DataError(
        f"{name} is not in {d} and {why}: point --config.data.path at a local copy laid out "
        "<split>/<class>/<image> (a folder or a .tar/.tar.gz; analyze: --override=data.path=...), "
        f"or run `tfds build {name} --data_dir={d}` on a machine with internet access."
    )


def _endpoint(url: str) -> tuple[str, int] | None:
    """The (host, port) a download of `url` connects to first: its proxy's, when one applies."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def unreachable(endpoints: set[tuple[str, int]], timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """The "host:port"s that neither resolve nor accept a TCP connection within `timeout` seconds, probed
    in parallel (in threads: name resolution has no timeout of its own and may hang for far longer)."""
    answered: dict[tuple[str, int], bool] = {}

    def probe(endpoint: tuple[str, int]) -> None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
            answered[endpoint] = True
        except OSError:
            answered[endpoint] = False

    threads = [threading.Thread(target=probe, args=(e,), daemon=True) for e in sorted(endpoints)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))  # all together: `timeout` at most, however many
    return [f"{h}:{p}" for h, p in sorted(endpoints) if not answered.get((h, p), False)]


def check_download_route(builder, tfds_dir: str = "") -> None:
    """A DataError at once when a host the builder downloads from cannot be reached (offline), instead of
    TFDS retrying the download for minutes. Builders that list no URLs are left to try. Called by check
    (data.validate, once a run, before anything is built), not before each download: a mocked download
    (tfds.testing.mock_data) reaches no host."""
    urls = list(getattr(builder, "url_infos", None) or ())
    endpoints = {e for e in map(_endpoint, urls) if e is not None}
    down = unreachable(endpoints) if endpoints else []
    if down:
        why = f"{down[0]}, where its download goes, cannot be reached (offline?)"
        raise _offline_error(builder.name, tfds_dir, why)


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
    builder = tfds_builder(cfg_data.name, cfg_data.tfds_dir)  # unknown or unprepared-manual: DataError
    with quiet_absl():
        prepared = builder.is_prepared()
    if not prepared:  # its first load downloads it: say now when that cannot work
        check_download_route(builder, cfg_data.tfds_dir)


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
