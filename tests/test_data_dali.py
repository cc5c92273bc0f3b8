"""data/sources.py (folder and TFRecord sources), data/sampling.py (the host-side crop sampler against
TensorFlow's) and data/dali.py (the DALI pipeline on the CPU against the tf.data one: crop distributions,
eval crops, exact resume)."""

import io
import math

import jax
import numpy as np
import pytest
from helpers import without_dali
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax.data import dali, sampling, sources, streamed
from resnet_jax.data.common import DataError

# Two-sample Kolmogorov-Smirnov critical value at alpha = 1e-3: D > c * sqrt((n + m) / (n m)), c = 1.949.
KS_C = math.sqrt(-0.5 * math.log(1e-3 / 2))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def ks_limit(n: int, m: int) -> float:
    return KS_C * math.sqrt((n + m) / (n * m))


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def ramp(h: int, w: int) -> np.ndarray:
    """R = x and G = y as fractions of the width / height (0..255), B = 128: any crop reveals its window."""
    x = np.broadcast_to(np.linspace(0, 255, w)[None, :], (h, w))
    y = np.broadcast_to(np.linspace(0, 255, h)[:, None], (h, w))
    return np.stack([x, y, np.full((h, w), 128.0)], -1).round().astype(np.uint8)


def write_folder(root, images: dict[str, list[np.ndarray]], split: str = "train", ext: str = ".JPEG"):
    for cls, arrays in images.items():
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            (d / f"{cls}_{i}{ext}").write_bytes(jpeg(a))


def tf_windows(shapes: np.ndarray, augment: str, size: int = 224) -> np.ndarray:
    """[n, 4] windows from data/streamed.py's TensorFlow samplers, one seed per row."""
    tf = streamed.tf_module()

    def window(i, hw):
        seed = tf.stack([tf.constant(11, tf.int64), i])
        if augment == "paper":
            return streamed._paper_window(tf, hw, seed, size)
        return streamed._inception_window(tf, hw, seed)

    ds = tf.data.Dataset.from_tensor_slices(shapes.astype(np.int32)).enumerate().map(window)
    return np.stack(list(ds.batch(len(shapes)).as_numpy_iterator())[0])


# ---- Without DALI: sources, headers, the samplers. ----


def test_missing_dali_names_the_pip_command(monkeypatch):
    without_dali(monkeypatch)
    with pytest.raises(DataError, match=r"pip install nvidia-dali-cuda120"):
        dali.require_dali()
    with pytest.raises(DataError, match=r"pip install nvidia-dali-cuda120"):
        dali.train_iterator(sources.Source(("x",), np.zeros(1, np.int32)), 1, 0)


def test_folder_source_labels_from_sorted_class_folders(tmp_path):
    img = ramp(8, 10)
    write_folder(tmp_path, {"n02": [img, img], "n01": [img]})
    (tmp_path / "train" / "n01" / "extra.jpg").write_bytes(jpeg(img))  # mixed extensions are read
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    write_folder(tmp_path, {"n02": [img]}, split="validation")
    train, val = sources.folder_source(str(tmp_path)), sources.folder_source(str(tmp_path), "eval")
    assert train.class_names == ("n01", "n02")
    assert [p.split("/")[-1] for p in train.paths] == ["extra.jpg", "n01_0.JPEG", "n02_0.JPEG", "n02_1.JPEG"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert val.labels.tolist() == [1]  # labels index train/'s classes, whatever val/ holds
    assert train.read(2) == ((tmp_path / "train/n02/n02_0.JPEG").read_bytes(), 1)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"val/n01": 1}, "no train/ folder"),
        ({"train/n01": 1}, "neither val/ nor validation/"),
        ({"train/n01": 1, "val/n09": 1}, "class folders that train/ lacks"),
        ({"train/n01": 0, "val/n01": 1}, "holds no images"),
    ],
)
def test_folder_source_refuses_bad_layouts(tmp_path, layout, message):
    for folder, count in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            (tmp_path / folder / f"{i}.JPEG").write_bytes(jpeg(ramp(8, 8)))
    with pytest.raises(DataError, match=message):
        split = "eval" if "val" in message or "lacks" in message else "train"
        sources.folder_source(str(tmp_path), split)


def test_tfrecord_source_reads_tfds_style_examples(tmp_path):
    tf = streamed.tf_module()
    images = [jpeg(ramp(12 + i, 9)) for i in range(5)]
    paths = [tmp_path / f"ds-train.tfrecord-0000{k}-of-00002" for k in range(2)]
    for k, path in enumerate(paths):
        with tf.io.TFRecordWriter(str(path)) as w:
            for i in range(k * 3, min(5, k * 3 + 3)):
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[i]])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1000 + i])),
                    "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"f.JPEG"])),
                }
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    source = sources.tfrecord_source(str(tmp_path / "ds-train.tfrecord-*"))
    assert len(source) == 5
    assert [source.read(i) for i in range(5)] == [(images[i], 1000 + i) for i in range(5)]
    with pytest.raises(DataError, match="no TFRecord shards"):
        sources.tfrecord_source(str(tmp_path / "missing-*"))


def test_image_hw_reads_headers():
    from PIL import Image

    assert sources.image_hw(jpeg(ramp(37, 53))) == (37, 53)
    buf = io.BytesIO()
    Image.fromarray(ramp(21, 34)).save(buf, "PNG")
    assert sources.image_hw(buf.getvalue()) == (21, 34)
    with pytest.raises(DataError, match="could not be read"):
        sources.image_hw(b"not an image at all")


def test_order_and_draws_are_pure_functions_of_seed_epoch_position():
    a = sampling.uniforms(3, 1, np.arange(100, 200), 5)
    b = sampling.uniforms(3, 1, np.arange(150, 200), 5)
    assert np.array_equal(a[50:], b)  # a position's draws do not depend on which others are drawn
    assert not np.array_equal(a, sampling.uniforms(3, 2, np.arange(100, 200), 5))
    assert a.min() >= 0 and a.max() < 1
    # Uniformity: the mean of n U(0,1) has std 1/sqrt(12 n); 5 sigma.
    u = sampling.uniforms(0, 0, np.arange(20_000), 3)
    assert abs(u.mean() - 0.5) < 5 / math.sqrt(12 * u.size)
    assert np.array_equal(sampling.epoch_order(1, 4, 50), sampling.epoch_order(1, 4, 50))
    assert sorted(sampling.epoch_order(1, 4, 50)) == list(range(50))


@pytest.mark.parametrize("augment", ["inception", "paper"])
def test_host_windows_follow_tensorflows_distribution(augment):
    """The numpy sampler DALI is fed with draws crops like data/streamed.py's TensorFlow samplers:
    two-sample KS tests (alpha 1e-3) on the area fraction, aspect ratio and relative position."""
    n = 3000
    shapes = np.array([(375, 500), (500, 375), (333, 500), (600, 800)])[np.arange(n) % 4]
    ours = (
        sampling.inception_windows(shapes, sampling.uniforms(1, 0, np.arange(n), 40))
        if augment == "inception"
        else sampling.paper_windows(shapes, sampling.uniforms(1, 0, np.arange(n), 3), 224)
    )
    theirs = tf_windows(shapes, augment)
    for w in (ours, theirs):  # every window inside its image
        assert (w[:, :2] >= 0).all() and (w[:, 0] + w[:, 2] <= shapes[:, 0]).all()
        assert (w[:, 1] + w[:, 3] <= shapes[:, 1]).all()

    def stats(w):
        area = w[:, 2] * w[:, 3] / (shapes[:, 0] * shapes[:, 1])
        return {
            "area": area,
            "aspect": w[:, 3] / w[:, 2],
            "y": (w[:, 0] + w[:, 2] / 2) / shapes[:, 0],
            "x": (w[:, 1] + w[:, 3] / 2) / shapes[:, 1],
        }

    a, b = stats(ours), stats(theirs)
    for key in a:
        assert ks_statistic(a[key], b[key]) < ks_limit(n, n), key
    if augment == "inception":  # the range itself: area in [0.08, 1], aspect in [3/4, 4/3] up to rounding
        assert a["area"].min() >= 0.08 - 0.01 and a["aspect"].min() > 0.74 and a["aspect"].max() < 1.35


def test_an_area_uniform_sampler_fails_the_same_test():
    """The KS test above can fail: torchvision's / DALI's own rule (area uniform, log-uniform aspect)
    differs from TensorFlow's (height uniform), and the test sees it."""
    n, rng = 3000, np.random.default_rng(0)
    shapes = np.array([(375, 500), (500, 375)])[np.arange(n) % 2]
    area = rng.uniform(0.08, 1.0, n) * shapes.prod(1)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
    h, w = np.sqrt(area / aspect), np.sqrt(area * aspect)
    ok = (h <= shapes[:, 0]) & (w <= shapes[:, 1])
    theirs = tf_windows(shapes, "inception")
    ref = theirs[:, 2] * theirs[:, 3] / shapes.prod(1)
    assert ks_statistic((h * w / shapes.prod(1))[ok], ref) > ks_limit(ok.sum(), n)


# ---- With DALI (CPU pipelines). ----


@pytest.fixture(scope="module")
def dali_installed():
    return pytest.importorskip(
        "nvidia.dali", reason="DALI is optional: pip install nvidia-dali-cuda120==2.4.0"
    )


def _tf_train(paths, augment: str, uint8: bool, mode: str = "channel") -> np.ndarray:
    tf = streamed.tf_module()

    def fn(i, data):
        seed = tf.stack([tf.constant(23, tf.int64), i])
        if uint8:
            return streamed.train_preprocess_uint8(tf, data, seed, augment, 224)[0]
        return streamed.train_preprocess(tf, data, seed, augment, 224, mode, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(tf.io.read_file).enumerate().map(fn)
    return np.concatenate(list(ds.batch(64).as_numpy_iterator()))


def _dali_train(source, batch: int, steps: int, augment: str, dtype: str, start: int = 0, **kw) -> dict:
    it = dali.train_iterator(
        source, batch, 5, start, augment=augment, mode="channel", dtype=dtype, device="cpu", **kw
    )
    out = [next(it) for _ in range(steps)]
    return {k: np.concatenate([np.asarray(o[k]) for o in out]) for k in out[0]}


@pytest.mark.parametrize("augment", ["inception", "paper"])
def test_dali_and_tfdata_crops_have_the_same_distribution(tmp_path, dali_installed, augment):
    """Ramp images (R = x, G = y) reveal each output's window and flip; KS tests (alpha 1e-3) on the
    area fraction and aspect, and the flip rate within 4 binomial sigma of 1/2 for both pipelines."""
    shapes = [(300, 400), (400, 300), (320, 320)]
    write_folder(tmp_path, {f"n{k}": [ramp(*s)] for k, s in enumerate(shapes)})
    base = sources.folder_source(str(tmp_path))
    reps, batch = 160, 40  # 480 crops each
    paths, labels = base.paths * reps, np.tile(base.labels, reps)
    hw = np.array([sources.image_hw(open(p, "rb").read()) for p in paths])
    d = _dali_train(sources.Source(paths, labels), batch, len(paths) // batch, augment, "uint8")["image"]
    t = _tf_train(paths, augment, uint8=True)

    def observed(images):
        x = images[..., 0].astype(np.float64) / 255  # fraction of the width at each output pixel
        y = images[..., 1].astype(np.float64) / 255
        left, right = x[:, :, :4].mean((1, 2)), x[:, :, -4:].mean((1, 2))
        top, bottom = y[:, :4, :].mean((1, 2)), y[:, -4:, :].mean((1, 2))
        flipped = left > right
        width, height = np.abs(right - left), bottom - top
        return flipped, width * height, width / np.maximum(height, 1e-6)

    fd, ad, rd = observed(d)
    ft, at, rt = observed(t)
    n = len(fd)
    for flips in (fd, ft):
        assert abs(flips.mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert ks_statistic(ad, at) < ks_limit(n, len(ft))
    # The pixel aspect ratio (width / height in pixels) from the relative extents and each image's shape:
    # the sample order differs between the pipelines, so compare the marginal over the mixed shapes.
    dali_order = np.concatenate([hw[p] for p in _dali_positions(len(paths), batch, len(paths) // batch)])
    pix_d = rd * dali_order[:, 1] / dali_order[:, 0]
    pix_t = rt * hw[:, 1] / hw[:, 0]
    assert ks_statistic(pix_d, pix_t) < ks_limit(n, len(ft))


def _dali_positions(n: int, batch: int, steps: int) -> list[np.ndarray]:
    order = sampling.epoch_order(5, 0, n)
    return [order[s * batch : (s + 1) * batch] for s in range(steps)]


def test_dali_and_tfdata_outputs_have_the_same_mean_and_std(tmp_path, dali_installed):
    """Normalised outputs of "paper" crops of photo-like images (noise over smooth colour fields):
    per-image channel means and stds averaged over N crops agree within 4 standard errors of the
    difference (from the per-image spread), plus one grey level (the two JPEG decoders' difference)."""
    rng = np.random.default_rng(0)
    images = {}
    for k in range(4):
        base = rng.uniform(40, 215, (4, 4, 3))
        smooth = np.kron(base, np.ones((80, 100, 1)))
        images[f"n{k}"] = [np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)]
    write_folder(tmp_path, images)
    base = sources.folder_source(str(tmp_path))
    reps, batch = 80, 40
    paths, labels = base.paths * reps, np.tile(base.labels, reps)
    d = _dali_train(sources.Source(paths, labels), batch, len(paths) // batch, "paper", "float32")["image"]
    t = _tf_train(paths, "paper", uint8=False)
    level = 1 / min(streamed.IMAGENET_STD_RGB)
    for stat in (lambda x: x.mean((1, 2)), lambda x: x.std((1, 2))):
        sd, st = stat(d), stat(t)  # [N, 3]
        se = np.sqrt(sd.var(0) / len(sd) + st.var(0) / len(st))
        assert (np.abs(sd.mean(0) - st.mean(0)) < 4 * se + level).all(), (sd.mean(0), st.mean(0), se)


def _dali_run(pipeline_fn):
    from nvidia.dali import pipeline_def

    pipe = pipeline_def(pipeline_fn, batch_size=1, num_threads=1, device_id=None)()
    pipe.build()
    return np.asarray(pipe.run()[0].as_tensor())[0]


def test_dali_eval_crops_equal_tfdatas_within_the_decoder_and_resize_bound(tmp_path, dali_installed):
    """|DALI - tf.data| <= max|DALI's - TF's decode of the same window| + max|DALI's - TF's resize of the
    same pixels| + 1 (each output's rounding, 1/2 each): both resizes are averages with non-negative
    weights summing to 1, so they do not enlarge a difference of their inputs."""
    from nvidia.dali import fn, types

    rng = np.random.default_rng(1)
    shapes = [(375, 500), (480, 360), (300, 300)]
    pics = []
    for h, w in shapes:  # 5x5 colour blocks plus noise: edges and texture for both decoders
        blocks = np.kron(rng.uniform(0, 255, (5, 5, 3)), np.ones((h // 5 + 1, w // 5 + 1, 1)))[:h, :w]
        pics.append(np.clip(blocks + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    write_folder(tmp_path, {"n0": pics}, split="train")
    write_folder(tmp_path, {"n0": pics}, split="val")
    source = sources.folder_source(str(tmp_path), "eval")
    tf = streamed.tf_module()
    out = next(iter(dali.eval_iterator(source, 8, crop="center", dtype="uint8", device="cpu")))
    center = np.asarray(out["image"]).astype(np.int32)
    ten = np.asarray(
        next(iter(dali.eval_iterator(source, 8, crop="ten", dtype="uint8", device="cpu")))["image"]
    )
    assert np.asarray(out["mask"]).tolist() == [True] * 3 + [False] * 5  # 3 examples in a batch of 8
    assert np.asarray(out["label"])[:3].tolist() == [0, 0, 0]

    def check(i):
        data = source.read(i)[0]
        enc = np.frombuffer(data, np.uint8)
        hw = np.array([sources.image_hw(data)])
        y, x, h, w = (int(v) for v in sampling.center_windows(hw, 224)[0])
        tf_window = tf.image.decode_and_crop_jpeg(data, [y, x, h, w], channels=3).numpy().astype(np.int32)

        def decode_window():
            e = fn.external_source(source=lambda: [enc], batch=True)
            a, s = np.array([y, x], np.int32), np.array([h, w], np.int32)
            return fn.decoders.image_slice(e, a, s, axis_names="HW", device="cpu", output_type=types.RGB)

        def resize_tf_pixels():
            px = fn.external_source(source=lambda: [tf_window.astype(np.uint8)], batch=True, layout="HWC")
            return fn.resize(px, resize_x=224, resize_y=224, antialias=True)

        e_decode = np.abs(_dali_run(decode_window).astype(np.int32) - tf_window).max()
        tf_resized = streamed._to_uint8(
            tf, streamed._resize(tf, tf.constant(tf_window, tf.float32), [224, 224])
        )
        e_resize = np.abs(_dali_run(resize_tf_pixels).astype(np.int32) - tf_resized.numpy()).max()
        ours = streamed.center_preprocess_uint8(tf, data, 224).numpy().astype(np.int32)
        bound = e_decode + e_resize + 1
        assert np.abs(center[i] - ours).max() <= bound, (np.abs(center[i] - ours).max(), e_decode, e_resize)
        # Ten crops decode the whole image and resize it to shorter side 256: the same bound, for those steps.
        whole = tf.io.decode_jpeg(data, channels=3).numpy()
        new_h, new_w = (int(v) for v in sampling.ten_crop_geometry(hw, 224)[0][0])
        e_whole = np.abs(
            _dali_run(
                lambda: fn.decoders.image(fn.external_source(source=lambda: [enc], batch=True), device="cpu")
            ).astype(np.int32)
            - whole
        ).max()

        def resize_whole():
            px = fn.external_source(source=lambda: [whole], batch=True, layout="HWC")
            return fn.resize(px, resize_x=new_w, resize_y=new_h, antialias=True)

        tf_whole = streamed._to_uint8(
            tf, streamed._resize(tf, tf.constant(whole, tf.float32), [new_h, new_w])
        )
        e_resize_whole = np.abs(_dali_run(resize_whole).astype(np.int32) - tf_whole.numpy()).max()
        tens = streamed.ten_crop_preprocess_uint8(tf, data, 224).numpy().astype(np.int32)
        assert np.abs(ten[i].astype(np.int32) - tens).max() <= e_whole + e_resize_whole + 1

    for i in range(3):
        check(i)


def test_dali_training_resumes_exactly_at_any_device_count(tmp_path, dali_installed):
    """Batches from start_step s equal step s of a run from 0; the global batch is the same on one
    device and sharded over eight; epochs reshuffle."""
    rng = np.random.default_rng(2)
    write_folder(
        tmp_path, {f"n{k}": [rng.integers(0, 255, (60, 80, 3), np.uint8) for _ in range(3)] for k in range(4)}
    )
    source = sources.folder_source(str(tmp_path))  # 12 images, batch 8: one step per epoch, 4 dropped
    devices = jax.devices()
    one = NamedSharding(Mesh(np.asarray(devices[:1]), ("data",)), PartitionSpec("data"))
    eight = NamedSharding(Mesh(np.asarray(devices[:8]), ("data",)), PartitionSpec("data"))
    full = _dali_train(source, 8, 3, "paper", "float32", sharding=one, size=32)
    resumed = _dali_train(source, 8, 1, "paper", "float32", start=2, sharding=eight, size=32)
    np.testing.assert_array_equal(resumed["image"], full["image"][16:])
    np.testing.assert_array_equal(resumed["label"], full["label"][16:])
    assert not np.array_equal(full["label"][:8], full["label"][8:16]) or not np.array_equal(
        full["image"][:8], full["image"][8:16]
    )
    it = dali.train_iterator(source, 8, 5, augment="paper", size=32, sharding=eight, device="cpu")
    batch = next(it)
    assert batch["image"].sharding == eight and batch["image"].shape == (8, 32, 32, 3)


def test_dali_eval_covers_every_example_once_with_a_padded_tail(tmp_path, dali_installed):
    rng = np.random.default_rng(3)
    write_folder(tmp_path, {"n0": [rng.integers(0, 255, (40, 50, 3), np.uint8)], "n1": []})
    write_folder(
        tmp_path,
        {
            "n0": [rng.integers(0, 255, (40, 50, 3), np.uint8) for _ in range(2)],
            "n1": [rng.integers(0, 255, (40, 50, 3), np.uint8) for _ in range(4)],
        },
        "val",
    )
    source = sources.folder_source(str(tmp_path), "eval")  # 6 examples, batch 4: 2 batches, 2 padded rows
    four = NamedSharding(Mesh(np.asarray(jax.devices()[:4]), ("data",)), PartitionSpec("data"))
    batches = list(dali.eval_iterator(source, 4, size=16, device="cpu", sharding=four))
    assert len(batches) == 2
    masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])
    assert masks.tolist() == [True] * 6 + [False] * 2
    assert labels[:6].tolist() == [0, 0, 1, 1, 1, 1]


def test_a_dali_run_turns_command_buffers_off_unless_the_flags_choose():
    off = "--xla_gpu_enable_command_buffer="
    assert dali.xla_flags("") == off
    assert (
        dali.xla_flags("--xla_force_host_platform_device_count=8")
        == f"--xla_force_host_platform_device_count=8 {off}"
    )
    chosen = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS"
    assert dali.xla_flags(chosen) == chosen


def test_dali_uint8_crops_and_lighting_normalised_in_the_step_equal_dalis_float_output(
    tmp_path, dali_installed
):
    """The trainer takes DALI's uint8 crop and its lighting offset and normalises in the step
    (inputs.normalize_streamed); that equals DALI's own float32 output of the same draws (the same resized
    uint8 pixels, normalised in float32), up to float32 rounding of values below 3 in magnitude."""
    import jax.numpy as jnp

    from resnet_jax import inputs

    rng = np.random.default_rng(4)
    write_folder(
        tmp_path, {f"n{k}": [rng.integers(0, 255, (60, 80, 3), np.uint8) for _ in range(4)] for k in range(2)}
    )
    source = sources.folder_source(str(tmp_path))
    one = NamedSharding(Mesh(np.asarray(jax.devices()[:1]), ("data",)), PartitionSpec("data"))
    kw = dict(augment="paper", size=32, mode="channel", sharding=one, device="cpu")
    floats = next(dali.train_iterator(source, 8, 5, dtype="float32", **kw))
    ints = next(dali.train_iterator(source, 8, 5, dtype="uint8", **kw))
    assert set(ints) == {"image", "label", "rgb"} and np.abs(np.asarray(ints["rgb"])).max() > 0
    ours = inputs.normalize_streamed({k: jnp.asarray(v) for k, v in ints.items()}, "channel", jnp.float32)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(floats["image"]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ints["label"]), np.asarray(floats["label"]))
