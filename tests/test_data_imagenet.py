"""The TFDS / tf.data pipeline through its real JPEG decode path, on tiny upscaled CIFAR JPEGs."""

import pathlib

import numpy as np
import pytest
from helpers import TINY_TFDS_TRAIN, TINY_TFDS_VAL, data_cfg

from resnet_jax import config, data
from resnet_jax.data import device_held, streamed, tfds_meta

pytest.importorskip("tensorflow_datasets")
ROOT = pathlib.Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL = TINY_TFDS_TRAIN, TINY_TFDS_VAL


@pytest.fixture
def tiny(tiny_tfds):
    return data_cfg(tiny_tfds)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_dataset_info(tiny):
    assert data.dataset_info(tiny) == {
        "num_train": 24,
        "num_eval": 11,
        "num_classes": 3,
        "image_shape": (224, 224, 3),
    }
    assert data.dataset_info(data_cfg(tiny, val_split=4))["num_eval"] == 4
    assert not config.is_device_held(tiny)


@pytest.mark.parametrize("augment", ["paper", "inception"])
def test_train_batches(tiny, augment):
    (batch,) = take(streamed.train_iterator(data_cfg(tiny, augment=augment), 8, seed=0, start_step=0), 1)
    assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert np.isfinite(batch["image"]).all() and set(batch["label"].tolist()) <= {0, 1, 2}
    assert -130 < batch["image"].min() and batch["image"].max() < 160  # mean-subtracted 0..255 pixels


def test_resume_matches_an_uninterrupted_run_across_an_epoch_boundary(tiny):
    run = take(streamed.train_iterator(tiny, 8, seed=5, start_step=0), 5)  # 3 steps per epoch
    resumed = take(streamed.train_iterator(tiny, 8, seed=5, start_step=2), 3)
    for a, b in zip(run[2:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    epoch0 = np.concatenate([b["label"] for b in run[:3]])
    assert np.bincount(epoch0).tolist() == [8, 8, 8]  # every training example once per epoch
    other = take(streamed.train_iterator(tiny, 8, seed=6, start_step=0), 1)[0]
    assert not np.array_equal(other["image"], run[0]["image"])


def _window_sides(fn, shape, n=300):
    tf = tfds_meta.tf_module()
    return np.array([fn(tf, tf.constant(shape), tf.constant([1, i], tf.int64)).numpy() for i in range(n)])


@pytest.mark.parametrize("size", [224, 112])
def test_paper_crop_sizes_follow_scale_augmentation(size):
    h, w = 300, 400  # shorter side resized to L in [256, 480]; a 224 crop spans 224 * 300 / L pixels
    # At another image_size the range scales with it (as the eval resize does): the same window sides.
    win = _window_sides(lambda tf, s, seed: streamed._paper_window(tf, s, seed, size), [h, w])
    side = win[:, 2]
    assert (
        (win[:, 2] == win[:, 3]).all()
        and side.min() >= round(224 * 300 / 480)
        and side.max() <= round(224 * 300 / 256)
    )
    assert side.max() - side.min() > 100  # the whole range is used
    assert (win[:, 0] + side <= h).all() and (win[:, 1] + side <= w).all() and (win[:, :2] >= 0).all()


def test_inception_crop_area_and_aspect():
    h, w = 300, 400
    win = _window_sides(lambda tf, s, seed: streamed._inception_window(tf, s, seed), [h, w])
    area = win[:, 2] * win[:, 3] / (h * w)
    aspect = win[:, 3] / win[:, 2]
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.min() < 0.3
    assert aspect.min() >= 0.72 and aspect.max() <= 1.36
    assert (win[:, 0] + win[:, 2] <= h).all() and (win[:, 1] + win[:, 3] <= w).all()


def test_center_eval_counts_every_example_once_with_a_mask(tiny):
    batches = list(streamed.eval_iterator(tiny, 4))
    assert len(batches) == streamed.eval_batches(data.dataset_info(tiny)["num_eval"], 4, 1) == 3
    assert all(b["image"].shape == (4, 224, 224, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.dtype == bool and mask.sum() == N_VAL and mask.tolist() == [True] * N_VAL + [False]
    np.testing.assert_array_equal(np.sort(labels[mask]), np.sort(np.arange(N_VAL) % 3))
    assert (batches[-1]["image"][-1] == 0).all()


def test_ten_crops(tiny):
    center = np.concatenate([b["image"] for b in streamed.eval_iterator(tiny, 4)])
    batches = list(streamed.eval_iterator(data_cfg(tiny, eval_crop="ten"), 4))
    assert all(b["image"].shape == (4, 10, 224, 224, 3) for b in batches)
    crops = np.concatenate([b["image"] for b in batches])[:N_VAL]
    np.testing.assert_array_equal(crops[:, 5:], crops[:, :5, :, ::-1])  # crops 5-9 flip crops 0-4
    assert not np.array_equal(crops[:, 0], crops[:, 3])  # corners differ
    # The centre crop (index 4) matches the fused decode-and-crop centre view up to resampling: the two
    # paths resize differently (decode-then-crop vs crop-in-decode, then bicubic), which moves an edge
    # pixel by up to its neighbour difference; the mean over smooth upscaled CIFAR images stays within a
    # few grey levels (6.0 of 0..255), while a shifted or wrong crop differs by ~30.
    assert np.abs(crops[:, 4] - center[:N_VAL]).mean() < 6.0


def test_bfloat16_and_channel_normalisation(tiny):
    (batch,) = take(streamed.train_iterator(data_cfg(tiny, mean="channel"), 8, 0, 0, dtype="bfloat16"), 1)
    assert batch["image"].dtype.name == "bfloat16" and np.abs(batch["image"].astype(np.float32)).max() < 3.5


@pytest.mark.parametrize("processes", [1, 2, 3, 8])
def test_process_parts_cover_the_split(processes):
    span = tfds_meta.Span("validation", 0, 50_001)
    parts = [span.part(p, processes, equal=False) for p in range(processes)]
    bounds = [tuple(map(int, s[len("validation[") : -1].split(":"))) for s in parts]
    assert bounds[0][0] == 0 and bounds[-1][1] == 50_001
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    local = 64 // processes if 64 % processes == 0 else 1
    batches = streamed.eval_batches(50_001, local * processes, processes)
    assert all(batches * local >= b - a for a, b in bounds)
    train = [tfds_meta.Span("train", 0, 1001).part(p, processes, equal=True) for p in range(processes)]
    assert len({s.count(":") for s in train}) == 1


def test_tfds_cifar_in_memory_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        ds = device_held.load(
            data_cfg(name="cifar10", tfds_dir=str(tmp_path), val_split=5), seed=0, batch_size=128
        )
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.eval_images.shape == (5, 32, 32, 3)
    assert ds.train_images.dtype == np.uint8 and ds.num_classes == 10 and len(ds.class_names) == 10


def test_the_trainer_streams_a_tfds_dataset_end_to_end(tiny_tfds, tmp_path):
    """ImageNet ResNet-18 on real JPEGs through tf.data, the paper's augmentation and 10-crop testing."""
    from helpers import read_metrics, tiny_config

    from resnet_jax import train

    overrides = {f"data.{k}": v for k, v in tiny_tfds.items()}
    overrides.update(
        {
            "data.image_size": 32,
            "data.eval_crop": "ten",
            "data.augment": "paper",
            "data.eval_batch_size": 8,
            "model.family": "imagenet",
            "model.depth": 18,
            "model.shortcut": "B",
            "batch_size": 8,
            "num_train_steps": 4,
        }
    )
    summary = train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
    assert (
        summary["done"] and summary["step"] == 4 and summary["params"] == 11_689_512 - 513_000 + 1_539
    )  # 3 classes
    evals = [r for r in read_metrics(tmp_path) if "eval/count" in r]
    assert evals[-1]["eval/count"] == N_VAL  # 10-crop, padded last batch: every image once


def image_folder_of_every_case(root: pathlib.Path) -> dict[str, list[str]]:
    """train/ and validation/ with one class each of *.JPEG (ImageNet's), *.jpg, *.jpeg, *.png and *.PNG,
    plus files that are not images; returns the image names per split."""
    from PIL import Image

    names = {"train": ["a.JPEG", "b.jpg", "c.jpeg", "d.png", "e.PNG"], "validation": ["f.JPEG", "g.Jpg"]}
    for split, files in names.items():
        for cls in ("n01440764", "n01443537"):
            d = root / split / cls
            d.mkdir(parents=True)
            for name in files:
                fmt = "PNG" if name.lower().endswith("png") else "JPEG"
                Image.new("RGB", (40, 30), (200, 10, 10)).save(d / name, format=fmt)
            (d / "readme.txt").write_text("not an image")
            (d / ".hidden.JPEG").write_bytes(b"")  # e.g. macOS's ._ files
    return names


def test_jpeg_folders_take_image_files_of_any_case(tmp_path):
    """ImageNet's files are *.JPEG: a folder of them (and of .jpg/.jpeg/.png in any case) builds whole."""
    from resnet_jax.data import folder_tfds

    names = image_folder_of_every_case(tmp_path / "src")
    folder_tfds.build(tmp_path / "src", tmp_path / "tfds")
    cfg_data = data_cfg(name=folder_tfds.NAME, tfds_dir=str(tmp_path / "tfds"), image_size=24)
    info = data.dataset_info(cfg_data)
    assert (info["num_train"], info["num_eval"]) == (2 * len(names["train"]), 2 * len(names["validation"]))
