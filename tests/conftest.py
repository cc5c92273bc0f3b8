"""Test set-up: 8 fake CPU devices and a persistent compilation cache, set before jax is imported."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CACHE = ROOT / ".cache"

jax.config.update("jax_compilation_cache_dir", str(CACHE / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def cifar_tar() -> pathlib.Path:
    """The shared CIFAR-10 JPEG archive that lies beside every checkout."""
    assert CIFAR_TAR.exists(), f"{CIFAR_TAR} is missing: it lies in ../shared/datasets beside the checkout"
    return CIFAR_TAR
