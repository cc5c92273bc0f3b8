"""CIFAR-10 from the shared JPEG archive: counts, the val split, on-device augmentation, resumption."""

import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import data_cfg

from resnet_jax import config, data, inputs
from resnet_jax.data import common, device_held
from resnet_jax.data.common import cache_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_CACHE = cache_dir(data_cfg())  # the package default (~/.cache/resnet_jax): decoded once per machine


def cifar_cfg(tar, **kw):
    return data_cfg(name="cifar10", path=str(tar), cache_dir=str(DATA_CACHE), **kw)


@pytest.fixture(scope="module")
def full(cifar_tar):
    return device_held.load(cifar_cfg(cifar_tar), seed=0, batch_size=128)


@pytest.fixture(scope="module")
def held_out(cifar_tar):
    return device_held.load(cifar_cfg(cifar_tar, val_split=5000), seed=0, batch_size=128)


def test_counts_and_classes(full):
    assert full.train_images.shape == (50_000, 32, 32, 3) and full.train_images.dtype == np.uint8
    assert full.eval_images.shape == (10_000, 32, 32, 3) and full.eval_images.dtype == np.uint8
    assert full.train_labels.dtype == np.int32 and full.eval_labels.dtype == np.int32
    assert np.bincount(full.train_labels).tolist() == [5000] * 10
    assert np.bincount(full.eval_labels).tolist() == [1000] * 10
    assert full.class_names[:3] == ["airplane", "automobile", "bird"] and full.num_classes == 10
    assert full.eval_split == "test" and full.name == "cifar10"
    # float64 means stored as float32 against numpy's float64 mean: the float32 rounding, u = 6e-8 (1e-5)
    np.testing.assert_allclose(full.mean, full.train_images.mean(0), rtol=1e-5)
    assert full.mean.shape == (32, 32, 3) and float(full.std) == 1.0


def test_cache_makes_the_second_load_fast(cifar_tar, full):
    t0 = time.perf_counter()
    again = device_held.load(cifar_cfg(cifar_tar), seed=1, batch_size=128)
    assert time.perf_counter() - t0 < 10  # a cache hit reads ~180 MB; decoding 60k JPEGs takes > 15 s
    np.testing.assert_array_equal(again.eval_images, full.eval_images)
    assert list(DATA_CACHE.glob("image_folder-*.npz"))


def test_val_split_is_disjoint_fixed_and_5000(full, held_out):
    keep, held = device_held.validation_split(50_000, 5000)
    assert len(held) == 5000 and len(keep) == 45_000 and not set(keep) & set(held)
    assert held_out.train_images.shape[0] == 45_000 and held_out.eval_images.shape[0] == 5000
    np.testing.assert_array_equal(held_out.eval_images, full.train_images[held])
    np.testing.assert_array_equal(held_out.train_labels, full.train_labels[keep])
    assert held_out.eval_split == "val"
    np.testing.assert_allclose(held_out.mean, held_out.train_images.mean(0), rtol=1e-5)  # training part only


def test_channel_mean_std(full):
    mean, std = common.mean_std(full.train_images[:1000], "channel")
    x = full.train_images[:1000].reshape(-1, 3).astype(np.float64)
    # float64 statistics returned as float32: their rounding, u = 6e-8 relative (rtol 1e-5)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)


def test_each_crop_is_a_window_of_the_zero_padded_image(full):
    images = full.train_images[:48]
    out = np.asarray(jax.jit(device_held.augment_cifar)(jax.random.key(3), images))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    found = set()
    for i, crop in enumerate(out):
        match = [
            (y, x, flip)
            for y in range(9)
            for x in range(9)
            for flip in (False, True)
            if np.array_equal(
                crop,
                padded[i, y : y + 32, x : x + 32][:, ::-1] if flip else padded[i, y : y + 32, x : x + 32],
            )
        ]
        assert match, f"crop {i} is no window of its padded image"
        found.add(match[0])
    assert {f for _, _, f in found} == {False, True} and len(found) > 20  # per-example randomness


def test_epochs_visit_each_example_once_and_differ():
    n, b = 1000, 64
    spe = config.steps_per_epoch(n, b)
    epoch0 = np.concatenate([device_held.train_batch_indices(7, s, b, n) for s in range(spe)])
    assert len(set(epoch0.tolist())) == spe * b and epoch0.dtype == np.int32
    np.testing.assert_array_equal(epoch0, device_held.epoch_permutation(7, 0, n)[: spe * b])
    np.testing.assert_array_equal(
        device_held.train_batch_indices(7, spe, b, n), device_held.epoch_permutation(7, 1, n)[:b]
    )
    assert not np.array_equal(device_held.epoch_permutation(7, 0, n), device_held.epoch_permutation(7, 1, n))
    assert not np.array_equal(device_held.epoch_permutation(7, 0, n), device_held.epoch_permutation(8, 0, n))


@jax.jit
def _train_batch(rng, images, labels, idx, mean, std):  # the trainer's own device-held input path
    held = {"train_images": images, "train_labels": labels, "mean": mean, "std": std}
    return inputs.held_train_images(rng, {"index": idx, "held": held}, augment=True, dtype=jnp.float32)


def _batch(ds, seed, step, mean, std):
    idx = device_held.train_batch_indices(seed, step, 32, len(ds.train_labels))
    rng = jax.random.fold_in(jax.random.key(seed), step)
    return _train_batch(rng, ds.train_images, ds.train_labels, idx, mean, std)


def test_same_seed_and_step_give_the_same_batch_after_a_restart(full):
    small = common.DeviceHeldData(
        full.train_images[:5000],
        full.train_labels[:5000],
        full.eval_images[:10],
        full.eval_labels[:10],
        10,
        full.class_names,
        full.mean,
        full.std,
        "cifar10",
    )
    x1, y1 = _batch(small, 0, 1234, full.mean, full.std)
    device_held._cached_permutation.cache_clear()  # a "restart": recompute everything from scratch
    x2, y2 = _batch(small, 0, 1234, full.mean, full.std)
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    x3, _ = _batch(small, 0, 1235, full.mean, full.std)
    assert not np.array_equal(np.asarray(x1), np.asarray(x3))
    assert x1.shape == (32, 32, 32, 3) and x1.dtype == jnp.float32


def test_normalize_dtype_and_values():
    x = jnp.full((2, 4, 4, 3), 130, jnp.uint8)
    out = jax.jit(lambda v: device_held.normalize(v, jnp.full(3, 120.0), jnp.full(3, 2.0), jnp.bfloat16))(x)
    assert out.dtype == jnp.bfloat16 and float(out[0, 0, 0, 0]) == 5.0


def test_image_folder_works_without_tensorflow(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("test", 2)):
        for c in ("b_cls", "a_cls"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, 50, 200)).save(tmp_path / "f" / split / c / f"{i}.png")
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
from resnet_jax import data, schema
from resnet_jax.data.common import cache_dir
assert "jax" not in sys.modules  # importing the package is cheap
from resnet_jax.data import device_held
cfg = schema.data_config(name="image_folder", path={str(tmp_path / "f")!r}, cache_dir={str(tmp_path / "c")!r},
                         mean="channel")
ds = device_held.load(cfg, seed=0, batch_size=128)
assert ds.train_images.shape == (6, 8, 8, 3) and ds.class_names == ["a_cls", "b_cls"], ds.class_names
assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.std.shape == (3,)
assert not any(m.startswith("tensorflow") for m in sys.modules)
print("ok")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.stdout.strip().endswith("ok"), res.stderr[-2000:]
    assert list((tmp_path / "c").glob("*.npz"))


def test_directory_cache_key_follows_content(tmp_path):
    from PIL import Image

    from resnet_jax.data import image_folder

    for split in ("train", "test"):
        (tmp_path / split / "k").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / split / "k" / "0.png")
    before = image_folder.source_hash(image_folder.index_folder(tmp_path))
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "test" / "k" / "1.png")
    assert image_folder.source_hash(image_folder.index_folder(tmp_path)) != before


def test_synthetic_data():
    cfg = data_cfg(name="synthetic", image_size=32, synthetic_examples=256)
    ds = device_held.load(cfg, seed=0, batch_size=128)
    assert ds.train_images.shape == (256, 32, 32, 3) and ds.num_classes == 10
    assert data.dataset_info(cfg) == {
        "num_train": 256,
        "num_eval": 256,
        "num_classes": 10,
        "image_shape": (32, 32, 3),
    }


def test_dataset_info_without_decoding(cifar_tar, full):
    info = data.dataset_info(cifar_cfg(cifar_tar, val_split=5000))
    assert info == {"num_train": 45_000, "num_eval": 5000, "num_classes": 10, "image_shape": (32, 32, 3)}


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folders_take_image_files_of_any_case_and_skip_other_files(tmp_path, as_tar):
    import tarfile

    from PIL import Image

    from resnet_jax.data import image_folder

    names = ["a.JPEG", "b.jpg", "c.jpeg", "d.png", "e.PNG"]
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "src" / split / cls
            d.mkdir(parents=True)
            for name in names:
                fmt = "PNG" if name.lower().endswith("png") else "JPEG"
                Image.new("RGB", (8, 8), (10, 200, 10)).save(d / name, format=fmt)
            (d / "notes.txt").write_text("not an image")  # was decoded, and failed the whole folder
    source = tmp_path / "src"
    if as_tar:
        source = tmp_path / "src.tar"
        with tarfile.open(source, "w") as tar:
            tar.add(tmp_path / "src", arcname="imagenet_like")
    index = image_folder.index_folder(source)
    assert [len(index.files[s]) for s in ("train", "test")] == [2 * len(names)] * 2
    arrays = image_folder.decode_folder(index)
    assert arrays.train_images.shape == (2 * len(names), 8, 8, 3)
