"""Test set-up: 8 fake CPU devices and a persistent compilation cache, set before jax is imported."""

import os
import pathlib

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
