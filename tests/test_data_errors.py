"""Every data mistake is a one-sentence DataError, raised before anything compiles."""

import io
import tarfile

import pytest
from helpers import data_cfg
from PIL import Image

from resnet_jax import data
from resnet_jax.data import device_held, streamed


def one_sentence(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in msg and msg.endswith("."), msg
    return msg


def make_folder(root, classes=("cat", "dog"), splits=("train", "test"), n=2):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i, i, i)).save(root / split / c / f"{i}.jpg")
    return root


def cfg(path, name="image_folder", **kw):
    return data_cfg(name=name, path=str(path), cache_dir=str(path) + "-cache", **kw)


def test_unknown_dataset_name():
    with pytest.raises(data.DataError) as e:
        data.validate(data_cfg(name="cifar11"))
    assert "unknown dataset 'cifar11'" in one_sentence(e)


def test_missing_path(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(tmp_path / "nowhere", name="cifar10"))
    assert "does not exist" in one_sentence(e)


def test_path_neither_directory_nor_tar(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(tmp_path / "x.zip"))
    assert "neither a directory nor a .tar" in one_sentence(e)


def test_corrupt_tar(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar at all" * 10)
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(tmp_path / "x.tar.gz"))
    assert "not a readable tar" in one_sentence(e)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_missing_split(tmp_path, missing):
    root = make_folder(tmp_path / "f", splits=[s for s in ("train", "test") if s != missing])
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(root))
    assert f"no images under '{missing}/'" in one_sentence(e)


def test_class_missing_from_one_split(tmp_path):
    root = make_folder(tmp_path / "f")
    make_folder(tmp_path / "g", classes=("emu",), splits=("train",))
    (tmp_path / "g" / "train" / "emu").rename(root / "train" / "emu")
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(root))
    assert "class 'emu'" in one_sentence(e) and "'test' split" in str(e.value)


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "test" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    data.validate(cfg(root))  # the layout is fine; decoding finds the bad file
    with pytest.raises(data.DataError) as e:
        device_held.load(cfg(root), seed=0, batch_size=128)
    assert "test/dog/broken.jpg" in one_sentence(e)


def test_unreadable_image_in_tar_is_named(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"GIF89a junk")
    with tarfile.open(tmp_path / "f.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="f")  # a wrapping top directory is allowed
    with pytest.raises(data.DataError) as e:
        device_held.load(cfg(tmp_path / "f.tar.gz"), seed=0, batch_size=128)
    assert "f/train/cat/bad.jpg" in one_sentence(e)


def test_cifar10_needs_ten_classes(tmp_path):
    root = make_folder(tmp_path / "f")
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(root, name="cifar10"))
    assert "needs 10 classes" in one_sentence(e)


def test_mixed_image_sizes(tmp_path):
    root = make_folder(tmp_path / "f")
    buf = io.BytesIO()
    Image.new("RGB", (9, 8)).save(buf, format="PNG")
    (root / "train" / "cat" / "wide.jpg").write_bytes(buf.getvalue())
    with pytest.raises(data.DataError) as e:
        device_held.load(cfg(root), seed=0, batch_size=128)
    assert "wide.jpg" in one_sentence(e)


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "image_folder"},
        {"name": "synthetic", "mean": "median"},
        {"name": "synthetic", "augment": "autoaugment"},
        {"name": "synthetic", "eval_crop": "five"},
        {"name": "synthetic", "val_split": -1},
        {"name": ""},
    ],
)
def test_bad_options(bad):
    with pytest.raises(data.DataError) as e:
        data.validate(data_cfg(bad))
    one_sentence(e)


def test_val_split_too_large(tmp_path):
    root = make_folder(tmp_path / "f")
    with pytest.raises(data.DataError) as e:
        device_held.load(cfg(root, val_split=4), seed=0, batch_size=128)
    assert "val_split" in one_sentence(e)
    with pytest.raises(data.DataError) as e:  # not num_train = -2
        data.dataset_info(cfg(root, val_split=6))
    assert "val_split" in one_sentence(e)


def test_path_with_a_streamed_dataset(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.validate(cfg(make_folder(tmp_path / "f"), name="imagenet2012"))
    one_sentence(e)


def test_imagenet_not_prepared_says_how_to_build_it(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.validate(data_cfg(name="imagenet2012", tfds_dir=str(tmp_path)))
    msg = one_sentence(e)
    for part in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "tfds build imagenet2012",
        "--manual_dir",
    ):
        assert part in msg
    with pytest.raises(data.DataError):
        next(streamed.train_iterator(data_cfg(name="imagenet2012", tfds_dir=str(tmp_path)), 8, 0, 0))


def test_dataset_info_of_an_unprepared_tfds_cifar(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError) as e:  # not TFDS's KeyError on the empty splits
        data.dataset_info(data_cfg(name="cifar10", tfds_dir=str(tmp_path)))
    assert "not prepared" in one_sentence(e)
