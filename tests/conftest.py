"""Test set-up: 8 fake CPU devices and a persistent compilation cache, set before jax is imported."""

import os
import pathlib
from collections.abc import Iterator

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

# Through the environment, so that the CLI subprocesses of the tests share the cache too. It lives
# outside the checkout so fresh clones on the same machine (CI) reuse it; entries are keyed by the
# compiled program, so a code change can never hit a stale one.
JAX_CACHE = pathlib.Path.home() / ".cache" / "resnet_jax" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def cifar_tar() -> pathlib.Path:
    """The shared CIFAR-10 JPEG archive that lies beside every checkout."""
    assert CIFAR_TAR.exists(), f"{CIFAR_TAR} is missing: it lies in ../shared/datasets beside the checkout"
    return CIFAR_TAR


@pytest.fixture
def gs_bucket(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """gs:// served from a local directory: gs://b/x is <returned dir>/b/x.

    No GCS is reachable here, so three pieces are stood in for: the store behind etils.epath (an fsspec
    filesystem registered for gs://, used once epath is kept from TensorFlow's gfile), tensorstore's
    GCS driver under orbax (its kvstore spec points at the file driver on the same directory) and orbax's
    query of the bucket's namespace type. Everything above them runs as it would on GCS: the URL goes
    through epath and orbax's GCS code paths (commit-file checkpoints, no renames), while code that used
    pathlib, open() or os.path on the URL would look for a local directory named "gs:" and fail.
    """
    from etils import epath
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.registry import _registry
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()

    class LocalBucket(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(path=str(root), fs=LocalFileSystem())

    def file_kvstore(path: str) -> dict:
        bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / bucket / key)}

    for protocol in LocalBucket.protocol:
        monkeypatch.setitem(_registry, protocol, LocalBucket)
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)  # (EPATH_USE_TF=0, but cached)
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    filesystems = type(epath.backend.fsspec_backend)._get_filesystem  # epath caches one per protocol
    filesystems.cache_clear()
    yield root
    filesystems.cache_clear()


@pytest.fixture(scope="session")
def tiny_tfds(cifar_tar: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A TFDS dataset of real JPEGs (upscaled CIFAR images, 3 classes) and the data config to read it."""
    import numpy as np
    from helpers import TINY_TFDS_SIZES, TINY_TFDS_TRAIN, TINY_TFDS_VAL

    from resnet_jax import schema
    from resnet_jax.data import device_held, folder_tfds

    cifar_data = schema.data_config(name="cifar10", path=str(cifar_tar))
    cifar = device_held.load(cifar_data, seed=0, batch_size=128)  # the user cache
    tmp = tmp_path_factory.mktemp("tiny_jpegs")
    names = cifar.class_names[:3]
    n, v = TINY_TFDS_TRAIN, TINY_TFDS_VAL
    folder_tfds.write_upscaled(
        cifar.train_images[:n], np.arange(n) % 3, names, tmp / "src/train", TINY_TFDS_SIZES
    )
    folder_tfds.write_upscaled(
        cifar.eval_images[:v], np.arange(v) % 3, names, tmp / "src/validation", TINY_TFDS_SIZES
    )
    folder_tfds.build(tmp / "src", tmp / "tfds")
    return {"name": "jpeg_folder", "tfds_dir": str(tmp / "tfds"), "shuffle_buffer": 16, "image_size": 224}
