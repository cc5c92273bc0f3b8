"""Bad input stops before anything compiles, in one sentence; the CLI exits 2 without a traceback."""

import subprocess
import sys

import pytest
from helpers import CIFAR_TAR, ROOT, tiny_config
from PIL import Image

from resnet_jax import config, data, train


def layout(root, splits=("train", "test"), classes=("cat", "dog"), skip=()) -> str:
    for split in splits:
        for c in classes:
            if (split, c) in skip:
                continue
            d = root / split / c
            d.mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(d / "0.jpg")
    return str(root)


BAD_CONFIGS = {
    "cifar depth": ({"model.depth": 21}, config.ConfigError, r"CIFAR depth must be 6n\+2 .*; got 21"),
    "imagenet depth": (
        {"model.family": "imagenet", "model.depth": 42},
        config.ConfigError,
        "ImageNet depth must be one of 18, 34, 50, 101, 152; got 42",
    ),
    "shortcut": (
        {"model.shortcut": "D"},
        config.ConfigError,
        "shortcut must be one of A, B, C, none; got 'D'",
    ),
    "family": ({"model.family": "vgg"}, config.ConfigError, "model family must be one of cifar, imagenet"),
    "batch vs devices": (
        {"batch_size": 12},
        config.ConfigError,
        "batch_size 12 must be a positive multiple of the 8",
    ),
    "bn group": (
        {"model.bn": "ghost", "model.bn_group_size": 3},
        config.ConfigError,
        "model.bn_group_size 3 must divide the per-device batch of 2",
    ),
    "ghost bn without groups": (
        {"model.bn": "ghost"},
        config.ConfigError,
        "model.bn='ghost' needs model.bn_group_size, the examples per BN group",
    ),
    "warm-up of two lengths": (  # warmup_steps would silently win
        {"schedule.warmup": "linear", "schedule.warmup_steps": 100, "schedule.warmup_epochs": 5.0},
        config.ConfigError,
        r"schedule.warmup_steps \(100\) and schedule.warmup_epochs \(5.0\) are both set",
    ),
    "warm-up of no length": (  # would silently train without a warm-up
        {"schedule.warmup": "linear"},
        config.ConfigError,
        "schedule.warmup='linear' needs its length: set schedule.warmup_steps or schedule.warmup_epochs",
    ),
    "bn mode": (
        {"model.bn": "sync"},
        config.ConfigError,
        "model.bn must be 'global', 'per_device' or 'ghost'",
    ),
    "dataset name": ({"data.name": "not_a_dataset"}, data.DataError, "not_a_dataset"),
    "eval interval": (
        {"eval_every_steps": 100},
        config.ConfigError,
        "eval_every_steps is 100 but the run has 4 steps",
    ),
    "all intervals too long": (  # named together, not one per try
        {"log_every_steps": 10, "eval_every_steps": 100, "checkpoint_every_steps": 5},
        config.ConfigError,
        "log_every_steps is 10, eval_every_steps is 100 and checkpoint_every_steps is 5 but the run has 4 "
        r"steps; use 1\.\.4",
    ),
    "checkpoint interval": (
        {"checkpoint_every_steps": 5},
        config.ConfigError,
        "checkpoint_every_steps is 5 but the run has 4 steps",
    ),
    "run length vs steps_per_call": (  # would run 6 steps of a 5-step run
        {"num_train_steps": 5, "steps_per_call": 2},
        config.ConfigError,
        r"the run's 5 steps must be a multiple of steps_per_call \(2\)",
    ),
    "empty profile range": (  # its trace would start and never stop
        {"profile_steps": "3:3"},
        config.ConfigError,
        "profile_steps must be 'first:end' with 0 <= first < end",
    ),
    "stem channels": (
        {"model.stem_channels": 2},
        config.ConfigError,
        "model.stem_channels must be 0 .off. or at least 4, e.g. 4 or 8; got 2",
    ),
    "dtype": ({"model.dtype": "int8"}, config.ConfigError, "model.dtype must be 'auto' or one of"),
    "missing path": (
        {"data.name": "image_folder", "data.path": "/nonexistent/cifar"},
        data.DataError,
        "nonexistent",
    ),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_configs_fail_in_setup_with_one_sentence(name):
    overrides, error, message = BAD_CONFIGS[name]
    with pytest.raises(error, match=message) as info:
        train.setup(tiny_config(**overrides))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "case,message",
    [
        ("not a folder", "neither a directory nor a .tar/.tar.gz archive"),
        ("wrong layout", "train"),
        ("class missing from a split", "dog"),
        ("unreadable image", "0.jpg"),
    ],
)
def test_bad_image_folders_fail_in_setup_naming_the_problem(tmp_path, case, message):
    if case == "not a folder":
        path = tmp_path / "file.txt"
        path.write_text("x")
    elif case == "wrong layout":
        path = layout(tmp_path, splits=("training",))
    elif case == "class missing from a split":
        path = layout(tmp_path, skip=(("test", "dog"),))
    else:
        path = layout(tmp_path)
        (tmp_path / "train" / "cat" / "0.jpg").write_bytes(b"not a jpeg")
    cfg = tiny_config(
        **{"data.name": "image_folder", "data.path": str(path), "data.cache_dir": str(tmp_path / "c")}
    )
    with pytest.raises(data.DataError, match=message) as info:
        train.setup(cfg)
    assert "\n" not in str(info.value)


def cli(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resnet_jax.main", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_cli_exits_2_with_one_sentence_and_no_traceback(tmp_path):
    tiny = ["--config=tests/configs/tiny.py", f"--workdir={tmp_path / 'w'}"]
    cases = {
        "typo in an override": ([*tiny, "--config.modle.depth=3"], "unknown config key 'modle'"),
        "typo in a top-level key": ([*tiny, "--config.lerning_rate=3"], "unknown config key 'lerning_rate'"),
        "typo in a nested key": (
            [*tiny, "--config.model.detph=3"],
            "unknown config key 'model.detph' in a --config override (did you mean 'model.depth'?)",
        ),
        "bad config argument": (["--config=configs/cifar10.py:resnet21", f"--workdir={tmp_path}"], "6n+2"),
        "missing config file": (["--config=configs/nope.py", f"--workdir={tmp_path}"], "configs/nope.py"),
        "model error": ([*tiny, "--config.model.shortcut=D"], "shortcut must be one of"),
        "config error": ([*tiny, "--config.batch_size=12"], "must be a positive multiple of the 8 devices"),
        "data error": (
            [*tiny, "--config.data.name=image_folder", "--config.data.path=/nonexistent"],
            "nonexist",
        ),
        "no workdir": (["--config=tests/configs/tiny.py"], "--workdir"),
        "process flags without a coordinator": (  # not a silent single-process run in a shared workdir
            [*tiny, "--num_processes=2", "--process_id=1"],
            "cannot start a multi-process run without --coordinator_address outside a cluster jax recognises",
        ),
    }
    procs = {name: cli(*argv) for name, (argv, _) in cases.items()}  # all at once: they only import
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, out, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert "Traceback" not in err


def test_a_run_that_fails_before_its_first_metric_exits_1_without_a_traceback(tmp_path):
    """Non-finite loss at the first log: one sentence, exit 1, and no traceback at interpreter exit (the
    TensorBoard writer is closed on the error path; Python 3.12 cannot start its thread from atexit)."""
    proc = cli("--config=tests/configs/tiny.py", f"--workdir={tmp_path}", "--config.schedule.base_lr=1e30")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert err.strip().startswith("error: non-finite loss at step"), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_trains_with_tensorflow_unavailable(tmp_path):
    """Image folders and synthetic data need neither tensorflow nor tensorflow_datasets."""
    block = (
        "import importlib.util, sys\n"
        "ABSENT = ('tensorflow', 'tensorflow_datasets')\n"
        "find_spec = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, package=None: (\n"
        "    None if name.split('.')[0] in ABSENT else find_spec(name, package))\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ABSENT:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from resnet_jax import main\n"  # config_flags reads its overrides from sys.argv
        f"sys.argv = ['main', '--config=tests/configs/tiny.py:cifar', '--workdir={tmp_path}',"
        f" '--config.data.path={CIFAR_TAR}']\n"
        "main.run()\n"
    )
    out = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "done: step 4, held-out validation top-1 error" in out.stdout  # the tiny config holds out 200


@pytest.mark.parametrize(
    "overrides,where",
    [
        ({"data.name": "cifar10", "data.path": "x.tar"}, "test"),
        ({"data.name": "cifar10", "data.path": "x.tar", "data.val_split": 5000}, "held-out validation"),
        ({"data.name": "imagenet2012"}, "validation"),
    ],
)
def test_the_final_line_names_the_set_the_error_is_on(overrides, where):
    """`val` runs (the paper's 45k/5k split) must not call their held-out error a test error."""
    from resnet_jax import main

    assert main.eval_set_name(tiny_config(**overrides).data) == where
