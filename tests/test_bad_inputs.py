"""Bad input through every command line: exit status 2, exactly one line on stderr starting "error: ", no
traceback, and nothing started (no checkpoint, no config.json, no sweep run, no report written).

Most inputs run in this one process through each CLI's own entry point (main.run with absl's flags reset,
the others' main(argv)); a few go through `python -m ...` and the launch scripts as a user types them.
"""

from __future__ import annotations

import gzip
import pathlib
import subprocess
import sys
import tarfile

import pytest
from absl import flags
from helpers import ROOT
from PIL import Image

from resnet_jax import analyze, report, summary, sweep
from resnet_jax import main as trainer

TINY = "tests/configs/tiny.py"


def image(path: pathlib.Path, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 20, 200)).save(path, format="JPEG")


def folder(
    root: pathlib.Path, classes=("cat", "dog"), splits=("train", "test"), size=(32, 32)
) -> pathlib.Path:
    for split in splits:
        for c in classes:
            image(root / split / c / "0.jpg", size)
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, str]:
    """Every bad file and directory the cases name, made once: {placeholder: path}."""
    t = tmp_path_factory.mktemp("bad")
    (t / "file.txt").write_text("not a folder")
    folder(t / "no_test", splits=("train",))
    folder(t / "missing_class")
    (t / "missing_class/test/dog/0.jpg").unlink()
    folder(t / "broken_image")
    (t / "broken_image/train/cat/0.jpg").write_bytes(b"not a jpeg")
    folder(t / "odd_size")
    image(t / "odd_size/train/cat/1.jpg", size=(20, 24))
    folder(t / "three_classes", classes=("a", "b", "c"))
    folder(t / "empty_classes")
    for f in (t / "empty_classes").rglob("*.jpg"):
        f.rename(f.with_suffix(".txt"))  # class folders without images
    good = folder(t / "good")
    with tarfile.open(t / "good.tar.gz", "w:gz") as tar:
        tar.add(good, arcname="good")
    data = (t / "good.tar.gz").read_bytes()
    (t / "cut.tar.gz").write_bytes(data[: len(data) // 2])  # a download cut short
    (t / "not_gzip.tar.gz").write_bytes(gzip.compress(b"x" * 100)[:10])
    (t / "a_file").write_text("x")
    (t / "bad_config.py").write_text("def get_config(:\n")  # a syntax error
    (t / "no_get.py").write_text("X = 1\n")
    (t / "raises.py").write_text("def get_config(arg=None):\n    raise RuntimeError('boom')\n")
    (t / "sweep_dup.py").write_text(
        "def get_sweep(arg=None):\n    p = {'name': 'a', 'config': 'configs/cifar10.py:resnet20'}\n"
        "    return [p, dict(p)]\n"
    )
    (t / "sweep_bad_point.py").write_text(
        "def get_sweep(arg=None):\n    return [{'name': 'a', 'config': 'configs/cifar10.py:resnet21'}]\n"
    )
    (t / "sweep_no_name.py").write_text(
        "def get_sweep(arg=None):\n    return [{'config': 'configs/cifar10.py:resnet20'}]\n"
    )
    (t / "sweep_bad_value.py").write_text(
        "def get_sweep(arg=None):\n    return [{'name': 'a', 'config': 'configs/cifar10.py:resnet20',"
        " 'overrides': {'model.bn': 'sync'}}]\n"
    )
    (t / "no_config_run").mkdir()
    (t / "no_config_run/metrics.jsonl").write_text("")
    return {"{t}": str(t)}


# name: (command, argv, what the sentence must contain). {t} is the fixture's directory, {w} a fresh workdir.
W = ["--config=" + TINY, "--workdir={w}"]
G = ["gradients", "--config=" + TINY]  # analyze gradients at initialisation
SW = ["configs/sweeps/cifar_depth.py:smoke", "--workdir={w}"]


def folder_run(path: str, *extra: str) -> list[str]:
    """The tiny run on the image folder {t}/<path>."""
    return [*W, "--config.data.name=image_folder", f"--config.data.path={{t}}/{path}", *extra]


# fmt: off
CASES: dict[str, tuple[str, list[str], str]] = {
    # the trainer: flags and config files
    "no flags": ("main", [], "--workdir"),
    "no workdir": ("main", ["--config=" + TINY], "--workdir"),
    "empty workdir": ("main", ["--config=" + TINY, "--workdir="], "--workdir"),
    "unknown flag": ("main", [*W, "--wrokdir=x"], "wrokdir"),
    "stray argument": ("main", [*W, "train"], "unexpected arguments"),
    "missing config file": ("main", ["--config=configs/nope.py", "--workdir={w}"], "configs/nope.py"),
    "config file syntax error": ("main", ["--config={t}/bad_config.py", "--workdir={w}"], "SyntaxError"),
    "config file without get_config": ("main", ["--config={t}/no_get.py", "--workdir={w}"], "defines no"),
    "config file that raises": ("main", ["--config={t}/raises.py", "--workdir={w}"], "RuntimeError: boom"),
    "bad config argument": ("main", ["--config=configs/cifar10.py:resnet21", "--workdir={w}"], "6n+2"),
    "unknown config token": ("main", ["--config=configs/cifar10.py:plain20,B", "--workdir={w}"], "shortcut"),
    "typo in a key": ("main", [*W, "--config.model.detph=20"], "did you mean 'model.depth'"),
    "not a number": ("main", [*W, "--config.num_train_steps=many"], "num_train_steps"),
    "not a bool": ("main", [*W, "--config.model.remat=maybe"], "model.remat"),
    # the trainer: config values
    "depth": ("main", [*W, "--config.model.depth=21"], "6n+2"),
    "shortcut": ("main", [*W, "--config.model.shortcut=D"], "shortcut"),
    "family": ("main", [*W, "--config.model.family=vgg"], "family"),
    "dtype": ("main", [*W, "--config.model.dtype=int8"], "model.dtype"),
    "bn mode": ("main", [*W, "--config.model.bn=sync"], "model.bn"),
    "batch vs devices": ("main", [*W, "--config.batch_size=12"], "multiple of the 8 devices"),
    "negative batch": ("main", [*W, "--config.batch_size=-16"], "batch_size"),
    "nan lr": ("main", [*W, "--config.schedule.base_lr=nan"], "base_lr"),
    "negative lr": ("main", [*W, "--config.schedule.base_lr=-0.1"], "base_lr"),
    "momentum above 1": ("main", [*W, "--config.optimizer.momentum=1.5"], "momentum"),
    "decreasing boundaries": ("main", [*W, "--config.schedule.boundaries=(3,2)"], "boundaries"),
    "eval interval longer than the run": ("main", [*W, "--config.eval_every_steps=100"], "eval_every_steps"),
    "empty profile range": ("main", [*W, "--config.profile_steps=3:3"], "profile_steps"),
    "steps_per_call 0": ("main", [*W, "--config.steps_per_call=0"], "steps_per_call"),
    "ghost bn without groups": ("main", [*W, "--config.model.bn=ghost"], "bn_group_size"),
    "val_split of synthetic data": ("main", [*W, "--config.data.val_split=8"], "val_split"),
    "unknown dataset": ("main", [*W, "--config.data.name=not_a_dataset"], "not_a_dataset"),
    # the trainer: data
    "missing data path": ("main", folder_run("nope"), "nope"),
    "data path a file": ("main", folder_run("file.txt"), "neither"),
    "no test split": ("main", folder_run("no_test"), "'test/'"),
    "class missing from a split": ("main", folder_run("missing_class"), "'dog'"),
    "undecodable image": ("main", folder_run("broken_image"), "0.jpg"),
    "images of another size": ("main", folder_run("odd_size"), "1.jpg"),
    "class folders without images": ("main", folder_run("empty_classes"), "no images"),
    "a cut .tar.gz": ("main", folder_run("cut.tar.gz"), "cut.tar.gz"),
    "not a gzip": ("main", folder_run("not_gzip.tar.gz"), "not_gzip"),
    "val_split of every example": ("main", folder_run("good", "--config.data.val_split=2"), "val_split"),
    "fewer classes than the data": ("main", folder_run("three_classes", "--config.data.num_classes=2"), "2"),
    "cifar10 of 3 classes": (
        "main", [*W, "--config.data.name=cifar10", "--config.data.path={t}/three_classes"], "10 classes"
    ),
    # the trainer: workdirs
    "workdir under a file": ("main", ["--config=" + TINY, "--workdir={t}/a_file/run"], "a_file"),
    "workdir is a file": ("main", ["--config=" + TINY, "--workdir={t}/a_file"], "a_file"),
    # sweeps (in print mode unless the case sets a mode: the checks are the same, and nothing can run)
    "sweep file missing": ("sweep", ["configs/sweeps/nope.py", "--workdir={w}"], "nope.py"),
    "sweep argument": ("sweep", ["configs/sweeps/cifar_depth.py:bogus", "--workdir={w}"], "bogus"),
    "sweep without workdir": ("sweep", ["configs/sweeps/cifar_depth.py"], "--workdir"),
    "sweep mode": ("sweep", [*SW, "--mode=cloud"], "cloud"),
    "sweep seeds": ("sweep", [*SW, "--seeds=0"], "--seeds"),
    "sweep seeds not a number": ("sweep", [*SW, "--seeds=x"], "--seeds"),
    "sweep --only": ("sweep", [*SW, "--only=resnet21"], "resnet21"),
    "sweep override without =": ("sweep", [*SW, "--override=seed"], "key=value"),
    "sweep override key": ("sweep", [*SW, "--override=model.detph=8"], "model.detph"),
    "sweep override value": ("sweep", [*SW, "--override=model.depth=21"], "6n+2"),
    "sweep override range": ("sweep", [*SW, "--override=batch_size=-1"], "batch_size"),
    "sweep override interval": ("sweep", [*SW, "--override=eval_every_steps=100"], "eval_every_steps"),
    "sweep override in local mode": ("sweep", [*SW, "--mode=local", "--override=model.bn=sync"], "model.bn"),
    "sweep duplicate names": ("sweep", ["{t}/sweep_dup.py", "--workdir={w}"], "not unique"),
    "sweep bad point": ("sweep", ["{t}/sweep_bad_point.py", "--workdir={w}"], "6n+2"),
    "sweep point without a name": ("sweep", ["{t}/sweep_no_name.py", "--workdir={w}"], "'name'"),
    "sweep point value": ("sweep", ["{t}/sweep_bad_value.py", "--workdir={w}"], "model.bn"),
    "sweep file that raises": ("sweep", ["{t}/raises.py", "--workdir={w}"], "get_sweep"),
    "sweep workdir under a file": ("sweep", [SW[0], "--workdir={t}/a_file/s"], "a_file"),
    # report
    "report missing workdir": ("report", ["{t}/nope"], "nope"),
    "report no runs": ("report", ["{t}/no_test"], "no run directories"),
    "report workdir a file": ("report", ["{t}/a_file"], "a_file"),
    "report no workdir": ("report", [], "workdir"),
    "report unknown flag": ("report", ["{t}/nope", "--bogus"], "--bogus"),
    # analyze
    "analyze no command": ("analyze", [], "responses, gradients"),
    "analyze bad command": ("analyze", ["respones", "--workdir=x"], "respones"),
    "analyze missing workdir": ("analyze", ["responses", "--workdir={t}/nope"], "nope"),
    "analyze workdir without config": ("analyze", ["responses", "--workdir={t}/no_config_run"], "no config"),
    "analyze nothing to analyse": ("analyze", ["gradients"], "--workdir"),
    "analyze config file missing": ("analyze", ["gradients", "--config=configs/nope.py"], "nope.py"),
    "analyze bad override": ("analyze", [*G, "--override=model.depth=21"], "6n+2"),
    "analyze override key": ("analyze", [*G, "--override=model.detph=8"], "detph"),
    "analyze batches 0": ("analyze", [*G, "--batches=0"], "--batches"),
    "analyze max_examples": ("analyze", ["responses", "--workdir=x", "--max_examples=-1"], "--max_examples"),
    "analyze step not a number": ("analyze", [*G, "--step=last"], "--step"),
    "analyze step without workdir": ("analyze", [*G, "--step=3"], "--step"),
    "analyze labels": ("analyze", [*G, "--labels=a,b"], "--labels"),
    "analyze statistic": ("analyze", ["responses", "--workdir=x", "--statistic=median"], "median"),
    "analyze out under a file": ("analyze", [*G, "--out={t}/a_file/o"], "a_file"),
    # summary
    "summary depth": ("summary", ["--family=cifar", "--depth=21"], "6n+2"),
    "summary family": ("summary", ["--family=vgg"], "vgg"),
    "summary depth not a number": ("summary", ["--depth=deep"], "--depth"),
    "summary classes": ("summary", ["--num_classes=-1"], "num_classes"),
    "summary image size": ("summary", ["--image_size=-5"], "image_size"),
    "summary stride": ("summary", ["--family=imagenet", "--depth=50", "--stride_on=5x5"], "5x5"),
}
# fmt: on


def reset_flags() -> None:
    """absl's flags as before any parse: the trainer's CLI runs many times in this process."""
    names = [n for n in flags.FLAGS if n.startswith("config.")]  # config_flags defines one per override
    for name in names:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    sys.modules.pop("config_config", None)  # config_flags loads every config file under this one name


def call(command: str, argv: list[str]) -> int:
    if command == "main":
        reset_flags()
        saved, sys.argv = sys.argv, ["main", *argv]  # config_flags reads its overrides from sys.argv
        try:
            trainer.run(["main", *argv])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        finally:
            sys.argv = saved
        return 0
    if command == "sweep" and not any(a.startswith("--mode") for a in argv):
        argv = [*argv, "--mode=print"]  # the same checks as local mode; a case let through runs nothing
    entry = {"sweep": sweep.main, "report": report.main, "analyze": analyze.main, "summary": summary.main}
    try:
        return entry[command](argv)
    except SystemExit as e:  # argparse
        return e.code if isinstance(e.code, int) else 1


def one_sentence(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_sentence_exit_2_and_starts_nothing(name, bad, tmp_path, capfd, monkeypatch):
    command, argv, needle = CASES[name]
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    argv = [a.replace("{t}", bad["{t}"]).replace("{w}", str(workdir)) for a in argv]
    code = call(command, argv)
    out, err = capfd.readouterr()
    line = one_sentence(err)
    assert code == 2, (code, err)
    assert needle in line, line
    started = [p for p in (workdir, pathlib.Path(bad["{t}"])) if p.exists() for p in p.rglob("*")]
    assert not [p for p in started if p.name in ("config.json", "checkpoints", "train.log", "results.md")]


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_real_command_lines_exit_2_with_one_sentence(tmp_path):
    """The same, as a user types them: the `python -m` entry points and the launch scripts."""
    py = [sys.executable, "-m"]
    run = ["--config=" + TINY, f"--workdir={tmp_path}"]
    smoke = ["configs/sweeps/cifar_depth.py:smoke", f"--workdir={tmp_path}"]
    cases = {
        "main": ([*py, "resnet_jax.main", *run, "--config.model.depth=21"], "6n+2"),
        "sweep": ([*py, "resnet_jax.sweep", *smoke, "--override=model.depth=21"], "6n+2"),
        "report": ([*py, "resnet_jax.report", str(tmp_path / "nope")], "nope"),
        "analyze": ([*py, "resnet_jax.analyze", "gradients", "--batches=0", "--config=" + TINY], "--batches"),
        "summary": ([*py, "resnet_jax.summary", "--depth=deep"], "--depth"),
    }  # fmt: skip
    for name, (argv, needle) in cases.items():
        proc = cli(*argv)
        assert proc.returncode == 2, (name, proc.stderr)
        assert needle in one_sentence(proc.stderr), name
    for script in ("launch/tpu_vm.sh", "launch/local_gpus.sh", "launch/slurm_gpu.sbatch"):
        proc = cli("bash", script, "--bogus")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "--bogus" in lines[0], (script, proc.stderr)
