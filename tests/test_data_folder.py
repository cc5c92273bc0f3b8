"""ImageNet-style JPEG folders (data.path with the ImageNet configs): the layout, the tf.data folder reader
(order, per-process rows, resume, padded eval), uint8 crops normalised in the step, prefetching to the
devices, and the trainer end to end through `python -m resnet_jax.main` with both pipelines."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, assert_trees_equal, data_cfg, read_metrics, restore_state, without_dali
from test_data_dali import jpeg, ks_limit, ks_statistic, ramp

from resnet_jax import cli, config, data, experiments, inputs, train
from resnet_jax.data import jpeg_folder, sources, streamed, streamed_folder

SIZES = [(60, 80), (80, 60), (72, 72), (64, 90)]  # (H, W): landscape, portrait, square
N_TRAIN, N_VAL = 24, 11  # 3 classes; batch 8 leaves a padded last eval batch


def blocks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colour blocks plus noise: texture for the decoders, distinct images."""
    base = np.kron(rng.uniform(0, 255, (4, 4, 3)), np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def write(root, split: str, cls: str, images, ext: str = ".JPEG") -> None:
    d = root / split / cls
    d.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (d / f"{cls}_{i}{ext}").write_bytes(jpeg(image))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/<wnid>/*.JPEG (8 per class) and val/<wnid>/*.JPEG (4, 4, 3)."""
    root, rng = tmp_path_factory.mktemp("imagenet_like"), np.random.default_rng(0)
    for c, cls in enumerate(("n01440764", "n01443537", "n01484850")):
        write(root, "train", cls, [blocks(rng, *SIZES[i % 4]) for i in range(8)])
        write(root, "val", cls, [blocks(rng, *SIZES[i % 4]) for i in range(4 if c < 2 else 3)])
    return root


def folder_cfg(root, **overrides):
    base = dict(name="imagenet2012", path=str(root), image_size=32, eval_crop="center")
    return data_cfg({**base, **overrides})


# ---- The layout and its checks. ----


def test_listing_labels_follow_the_sorted_train_classes(folder):
    train, val = jpeg_folder.listing(str(folder)), jpeg_folder.listing(str(folder), "eval")
    assert train.class_names == ("n01440764", "n01443537", "n01484850") and len(train) == N_TRAIN
    assert train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert val.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    assert data.dataset_info(folder_cfg(folder)) == {
        "num_train": 24,
        "num_eval": 11,
        "num_classes": 3,
        "image_shape": (32, 32, 3),
    }


def test_validation_folder_and_case_insensitive_extensions(tmp_path):
    img = ramp(20, 24)
    write(tmp_path, "train", "b", [img], ext=".jpeg")
    write(tmp_path, "train", "a", [img, img], ext=".JPG")
    write(tmp_path, "validation", "b", [img], ext=".Jpeg")
    (tmp_path / "train" / "a" / "README.txt").write_text("not an image")
    train, val = jpeg_folder.listing(str(tmp_path)), jpeg_folder.listing(str(tmp_path), "eval")
    assert [p.rsplit("/", 2)[-2:] for p in train.paths] == [
        ["a", "a_0.JPG"],
        ["a", "a_1.JPG"],
        ["b", "b_0.jpeg"],
    ]
    assert val.labels.tolist() == [1] and val.paths[0].endswith("validation/b/b_0.Jpeg")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"pipeline": "dali", "name": "cifar10", "path": ""},
            "data.pipeline 'dali' streams ImageNet-style data",
        ),
        ({"name": "synthetic", "path": "x"}, "data.path is not read for synthetic data"),
        ({"pipeline": "gpu"}, "data.pipeline must be one of tfdata, dali"),
        ({"path": "/nonexistent/imagenet"}, "is not a directory"),
        ({"num_classes": 2}, "data.num_classes=2 is below the 3 class folders"),
    ],
)
def test_bad_folder_configs_fail_in_one_sentence(folder, overrides, message):
    with pytest.raises(config.DataError, match=message) as e:
        data.validate(folder_cfg(folder, **overrides))
    assert "\n" not in str(e.value)


def test_bad_layouts_fail_in_one_sentence(tmp_path):
    (tmp_path / "train" / "n0").mkdir(parents=True)
    with pytest.raises(config.DataError, match="neither val/ nor validation/"):
        data.validate(folder_cfg(tmp_path))
    (tmp_path / "val" / "n9").mkdir(parents=True)
    with pytest.raises(config.DataError, match=r"class folders that train/ lacks \(n9\)"):
        data.validate(folder_cfg(tmp_path))
    (tmp_path / "val" / "n9").rmdir()
    with pytest.raises(config.DataError, match="holds no images"):
        jpeg_folder.listing(str(tmp_path))


def test_missing_dali_fails_in_one_sentence(folder, monkeypatch):
    without_dali(monkeypatch)
    with pytest.raises(
        config.DataError, match=r"needs NVIDIA DALI, which is not installed: run `pip install"
    ):
        data.validate(folder_cfg(folder, pipeline="dali"))
    data.validate(folder_cfg(folder))  # tf.data needs no DALI


def test_a_gs_folder_is_listed_and_read_through_epath(folder, gs_bucket):
    shutil.copytree(folder, gs_bucket / "bucket" / "imagenet")
    root = "gs://bucket/imagenet"
    train = jpeg_folder.listing(root)
    assert train.paths[0].startswith("gs://bucket/imagenet/train/n01440764/") and len(train) == N_TRAIN
    data.validate(folder_cfg(root))
    source = sources.folder_source(root, "eval")
    assert source.read(10) == ((folder / "val" / "n01484850" / "n01484850_2.JPEG").read_bytes(), 2)


def test_steps_per_call_is_refused_for_a_streamed_folder(folder):
    cfg = experiments.load_config("configs/imagenet_r50.py")
    cfg.data.path, cfg.steps_per_call, cfg.batch_size = str(folder), 2, 8
    with pytest.raises(config.ConfigError, match="steps_per_call > 1 needs device-held data"):
        config.check(cfg, 8)


# ---- The tf.data folder reader. ----


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def test_train_order_rows_and_resume_are_pure_functions_of_seed_and_step(folder):
    """The global batch of step s is the same whether read whole or as two processes' rows, and from a
    resume at s; every example once per epoch, in the (seed, epoch) order DALI uses."""
    d, listing = folder_cfg(folder, augment="paper"), jpeg_folder.listing(str(folder))
    whole = take(streamed_folder.train_iterator(listing, d, 8, 3, 0, (0, 8)), 5)  # 3 steps an epoch
    halves = [take(streamed_folder.train_iterator(listing, d, 8, 3, 0, rows), 5) for rows in ((0, 4), (4, 8))]
    resumed = take(streamed_folder.train_iterator(listing, d, 8, 3, 4, (0, 8)), 1)[0]
    for k in ("image", "rgb", "label"):
        for s in range(5):
            np.testing.assert_array_equal(np.concatenate([halves[0][s][k], halves[1][s][k]]), whole[s][k])
        np.testing.assert_array_equal(resumed[k], whole[4][k])
    assert whole[0]["image"].dtype == np.uint8 and whole[0]["image"].shape == (8, 32, 32, 3)
    from resnet_jax.data import sampling

    order = sampling.epoch_order(3, 0, N_TRAIN)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in whole[:3]]), listing.labels[order])
    assert not np.array_equal(whole[0]["label"], whole[3]["label"]) or not np.array_equal(
        whole[0]["image"], whole[3]["image"]
    )  # epochs reshuffle and redraw


def test_eval_covers_every_example_once_across_process_rows(folder):
    d, val = folder_cfg(folder), jpeg_folder.listing(str(folder), "eval")
    parts = [list(streamed_folder.eval_iterator(val, d, 8, rows)) for rows in ((0, 4), (4, 8))]
    assert [len(p) for p in parts] == [2, 2]  # ceil(11 / 8) batches on every process
    labels = np.concatenate([np.concatenate([a["label"], b["label"]]) for a, b in zip(*parts, strict=True)])
    mask = np.concatenate([np.concatenate([a["mask"], b["mask"]]) for a, b in zip(*parts, strict=True)])
    assert mask.tolist() == [True] * 11 + [False] * 5 and labels[:11].tolist() == val.labels.tolist()
    tf = streamed.tf_module()
    first = streamed.center_preprocess_uint8(tf, open(val.paths[0], "rb").read(), 32).numpy()
    np.testing.assert_array_equal(parts[0][0]["image"][0], first)


@pytest.mark.parametrize("augment", ["paper", "inception"])
def test_folder_and_tfds_crops_have_the_same_distribution(tmp_path, augment):
    """The same ramp images (R = x, G = y reveal each crop's window and flip) read from a folder and from a
    TFDS build of it: KS tests (alpha 1e-3) on the crops' area and aspect, flip rates within 4 binomial sigma
    of 1/2, and crops that vary (no repeated seed)."""
    from resnet_jax.data import folder_tfds

    shapes = [(150, 200), (200, 150), (160, 160)]
    for split, copies in (("train", 32), ("validation", 1)):
        for k, (h, w) in enumerate(shapes):
            write(tmp_path / "src", split, f"n{k}", [ramp(h, w)] * copies, ext=".jpg")
    folder_tfds.build(tmp_path / "src", tmp_path / "tfds")
    common = dict(augment=augment, image_size=32, shuffle_buffer=96)
    steps, batch = 20, 24  # 480 crops: 5 epochs of the 96 images
    listing = jpeg_folder.listing(str(tmp_path / "src"))
    ours = take(
        streamed_folder.train_iterator(listing, data_cfg(path="x", **common), batch, 1, 0, (0, batch)), steps
    )
    tfds_cfg = data_cfg(name=folder_tfds.NAME, tfds_dir=str(tmp_path / "tfds"), **common)
    theirs = take(streamed.train_iterator(tfds_cfg, batch, 1, 0, dtype="uint8"), steps)

    def observed(batches):
        images = np.concatenate([b["image"] for b in batches]).astype(np.float64) / 255
        x, y = images[..., 0], images[..., 1]
        left, right = x[:, :, :2].mean((1, 2)), x[:, :, -2:].mean((1, 2))
        top, bottom = y[:, :2, :].mean((1, 2)), y[:, -2:, :].mean((1, 2))
        return (
            left > right,
            np.abs(right - left) * (bottom - top),
            np.concatenate([b["label"] for b in batches]),
        )

    (fa, aa, la), (fb, ab, lb) = observed(ours), observed(theirs)
    n = len(fa)
    for flips in (fa, fb):
        assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert ks_statistic(aa, ab) < ks_limit(n, len(ab))
    # The aspect in pixels of each crop (relative extents times the image's own shape, known by label).
    hw = np.array(shapes, np.float64)
    aspect = [observed_aspect(b, hw[labels]) for b, labels in ((ours, la), (theirs, lb))]
    assert ks_statistic(*aspect) < ks_limit(n, len(ab))
    assert len(np.unique(aa.round(3))) > 50  # crops vary


def observed_aspect(batches, hw: np.ndarray) -> np.ndarray:
    images = np.concatenate([b["image"] for b in batches]).astype(np.float64) / 255
    x, y = images[..., 0], images[..., 1]
    width = np.abs(x[:, :, -2:].mean((1, 2)) - x[:, :, :2].mean((1, 2)))
    height = y[:, -2:, :].mean((1, 2)) - y[:, :2, :].mean((1, 2))
    return width * hw[:, 1] / np.maximum(height * hw[:, 0], 1e-6)


# ---- uint8 to the devices, normalised in the step; prefetching. ----


@pytest.mark.parametrize("mode", ["channel", "pixel"])
def test_uint8_crops_normalised_in_the_step_equal_the_host_float_path(folder, mode):
    """(uint8 crop + rgb - mean) / std on the device equals the host's float32 crop, lit and normalised,
    up to the uint8 rounding: half a grey level, divided by the smallest std ("pixel": 1)."""
    import jax.numpy as jnp

    d, listing = folder_cfg(folder, augment="paper", mean=mode), jpeg_folder.listing(str(folder))
    floats = next(streamed_folder.train_iterator(listing, d, 8, 2, 0, (0, 8), "float32"))
    ints = next(streamed_folder.train_iterator(listing, d, 8, 2, 0, (0, 8), "uint8"))
    ours = np.asarray(
        inputs.normalize_streamed({k: jnp.asarray(v) for k, v in ints.items()}, mode, jnp.float32)
    )
    std = min(streamed.IMAGENET_STD_RGB) if mode == "channel" else 1.0
    assert np.abs(ours - floats["image"]).max() <= 0.5 / std + 1e-4
    assert np.abs(ints["rgb"]).max() > 0  # the paper's lighting is drawn and carried along


def test_prefetch_thread_keeps_order_raises_errors_and_stops_when_closed():
    import threading

    assert list(inputs.prefetch_thread(iter(range(7)), 2)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("unreadable batch")

    it = inputs.prefetch_thread(broken(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="unreadable batch"):
        next(it)
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    it = inputs.prefetch_thread(endless(), 2)
    assert next(it) == 0
    it.close()
    for _ in range(100):  # the thread notices within its 0.1 s put timeout
        if not any(t.name == "prefetch_to_device" for t in threading.enumerate()):
            break
        threading.Event().wait(0.05)
    assert not any(t.name == "prefetch_to_device" for t in threading.enumerate())
    assert len(produced) <= 2 + 2  # depth 2, one in the consumer's hand, one blocked in put


# ---- The trainer end to end. ----

TINY = {  # the ImageNet recipe with the data path under test; a CIFAR ResNet-8 compiles in seconds
    "model.family": "cifar",
    "model.depth": 8,
    "model.shortcut": "A",
    "data.image_size": 32,
    "data.eval_crop": "center",
    "data.num_classes": 0,
    "batch_size": 8,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
}


@pytest.mark.parametrize("pipeline", ["tfdata", "dali"])
def test_main_trains_an_imagenet_folder(folder, tmp_path, pipeline):
    """python -m resnet_jax.main --config=configs/imagenet_r50.py --config.data.path=<folder> (tiny)."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is optional: pip install nvidia-dali-cuda120==2.4.0")
    flags = {**TINY, "num_train_steps": 2, "data.path": str(folder), "data.pipeline": pipeline}
    argv = ["--config=configs/imagenet_r50.py", f"--workdir={tmp_path}"]
    argv += [f"--config.{k}={v}" for k, v in flags.items()]
    out = subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "done: step 2, validation top-1 error" in out.stdout
    assert "24 train / 11 eval images" in out.stderr + out.stdout
    evals = [r for r in read_metrics(tmp_path) if "eval/count" in r]
    assert evals[-1]["eval/count"] == N_VAL
    assert json.loads((tmp_path / "config.json").read_text())["data"]["pipeline"] == pipeline


def folder_run(folder, steps: int, pipeline: str):
    cfg = experiments.load_config("configs/imagenet_r50.py")
    for key, value in {
        **TINY,
        "num_train_steps": steps,
        "data.path": str(folder),
        "data.pipeline": pipeline,
    }.items():
        cli.override(cfg, key, value)
    return cfg


@pytest.mark.parametrize("pipeline", ["tfdata", "dali"])
def test_a_resumed_folder_run_is_bit_identical_to_a_straight_one(folder, tmp_path, pipeline):
    """Run 4 steps; resume a copy of its step-2 checkpoint to step 4: the same state, bit for bit (the
    data position is the step: the order, the crops and the lighting are functions of (seed, step))."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is optional: pip install nvidia-dali-cuda120==2.4.0")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_and_evaluate(folder_run(folder, 4, pipeline), str(straight))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    shutil.copy(straight / "config.json", resumed / "config.json")
    summary = train.train_and_evaluate(folder_run(folder, 4, pipeline), str(resumed))
    assert summary["step"] == 4
    assert_trees_equal(restore_state(straight, 4), restore_state(resumed, 4))
    other = "dali" if pipeline == "tfdata" else "tfdata"
    with pytest.raises(config.ConfigError, match=r"different config \(data.pipeline\)"):
        train.train_and_evaluate(folder_run(folder, 6, other), str(resumed))


def test_a_run_from_before_data_pipeline_resumes_as_tfdata(tmp_path):
    from helpers import tiny_config

    from resnet_jax import checkpoints

    cfg = tiny_config()
    checkpoints.write_config(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data"]["pipeline"]  # config.json of a run that started before the key existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    checkpoints.check_workdir_config(cfg, str(tmp_path))
    cfg.data.pipeline = "dali"
    with pytest.raises(config.ConfigError, match=r"data.pipeline"):
        checkpoints.check_workdir_config(cfg, str(tmp_path))


def test_dali_reads_a_tfds_builds_shards_in_tfds_order(tiny_tfds):
    """data.pipeline='dali' with a TFDS dataset reads its TFRecord shards in TFDS's own example order
    (data.val_split holds out the same last examples), and the feed covers the split."""
    pytest.importorskip("nvidia.dali", reason="DALI is optional: pip install nvidia-dali-cuda120==2.4.0")
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from resnet_jax.data import tfds_meta

    d = data_cfg(tiny_tfds, image_size=32, eval_crop="center", pipeline="dali", val_split=4)
    train, val, classes = inputs.dali_sources(d)
    assert (len(train), len(val), classes) == (20, 4, 3)
    builder = tfds_meta.tfds_builder(d.name, d.tfds_dir)
    ds = builder.as_dataset(
        split="train", decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    theirs = [(e["image"].numpy(), int(e["label"])) for e in ds]
    assert [train.read(i) for i in range(20)] + [val.read(i) for i in range(4)] == theirs
    cfg = experiments.load_config("configs/imagenet_r50.py")
    cfg.data = d
    cfg.batch_size = 8
    feed = inputs.create(cfg, inputs.create_mesh(), jnp.float32)
    batch = next(feed.train_batches(0))
    assert batch["image"].dtype == jnp.uint8 and batch["image"].shape == (8, 32, 32, 3)
    assert batch["rgb"].shape == (8, 3) and feed.global_batches
    masks = [np.asarray(b["mask"]) for b in feed.eval_batches()]
    assert [m.sum() for m in masks] == [4]
