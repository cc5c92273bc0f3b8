"""Sweeps expand into loadable configs; the runner builds, skips, resumes and spreads runs correctly."""

from __future__ import annotations

import json
import pathlib
import re
import sys

import pytest

from resnet_jax import config, experiments, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = {
    "cifar_depth": [None, "smoke", "val"],
    "cifar_shortcuts": [None, "56", "20,110,smoke"],
    "imagenet_shortcuts": [None, "smoke", "batch=4096"],
    "imagenet_depth": [None, "smoke", "batch=4096"],
}
CASES = [(name, arg) for name, args in SWEEPS.items() for arg in args]
FAKE_TRAINER = """
import json, os, pathlib, sys
flags = dict(a.split("=", 1) for a in sys.argv[1:])
workdir = pathlib.Path(flags["--workdir"])
record = {"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
(workdir / "argv.json").write_text(json.dumps(record))
print("training", flags["--config"])
if "plain" in flags["--config"]:
    sys.exit(3)
(workdir / "summary.json").write_text(json.dumps({"done": True}))
"""


def test_every_sweep_file_is_listed():
    assert {p.stem for p in (ROOT / "configs" / "sweeps").glob("*.py")} == set(SWEEPS)


@pytest.mark.parametrize("name,arg", CASES)
def test_sweep_expands_to_loadable_configs(name, arg):
    spec = f"configs/sweeps/{name}.py" + (f":{arg}" if arg else "")
    runs = sweep.expand(sweep.load_sweep(spec))
    assert runs and len({sweep.run_name(r) for r in runs}) == len(runs)
    for run in runs:
        c = experiments.load_config(run.config)
        for key, value in run.overrides.items():
            c.update_from_flattened_dict({key: value})
        if arg and "smoke" in arg:
            assert c.data.name == "synthetic"


def test_cifar_depth_has_the_papers_points():
    points = sweep.load_sweep(str(ROOT / "configs/sweeps/cifar_depth.py"))
    names = [p["name"] for p in points]
    assert names == [f"{k}{d}" for k in ("plain", "resnet") for d in (20, 32, 44, 56, 110)] + ["resnet1202"]
    runs = sweep.expand(points)
    assert len(runs) == 15 and [r.seed for r in runs if r.name == "resnet110"] == [0, 1, 2, 3, 4]
    assert len(sweep.expand(points, seeds=2)) == 22
    assert [sweep.run_name(r) for r in sweep.expand(points, only=["resnet20"])] == ["resnet20-seed0"]
    with pytest.raises(ValueError):
        sweep.expand(points, only=["resnet21"])


@pytest.mark.parametrize(
    "name,expected",
    [
        # Table 2 and Fig. 4: plain-18/34 against ResNet-18/34 (A); Table 3: ResNet-50/101/152 (B).
        (
            "imagenet_depth",
            {
                "plain18": (18, "none"),
                "plain34": (34, "none"),
                "resnet18": (18, "A"),
                "resnet34": (34, "A"),
                "resnet50": (50, "B"),
                "resnet101": (101, "B"),
                "resnet152": (152, "B"),
            },
        ),
        # Table 3: plain-34 and ResNet-34 with options A, B, C.
        (
            "imagenet_shortcuts",
            {
                "plain34": (34, "none"),
                "resnet34-A": (34, "A"),
                "resnet34-B": (34, "B"),
                "resnet34-C": (34, "C"),
            },
        ),
    ],
)
def test_imagenet_sweeps_have_the_papers_nets(name, expected):
    points = sweep.load_sweep(f"configs/sweeps/{name}.py")
    nets = {}
    for p in points:
        c = experiments.load_config(p["config"])
        nets[p["name"]] = (c.model.depth, c.model.shortcut)
    assert nets == expected


@pytest.mark.parametrize("spec", ["cifar_depth.py", "cifar_depth.py:val", "cifar_shortcuts.py"])
def test_cifar_sweeps_take_the_documented_gpu_override_steps_per_call_50(spec):
    for run in sweep.expand(sweep.load_sweep(f"configs/sweeps/{spec}")):
        c = experiments.load_config(run.config)
        c.steps_per_call = 50
        config.check_run_length(c, c.num_train_steps)


def test_print_mode_prints_commands_and_marks_finished_runs(tmp_path, capsys):
    done = tmp_path / "resnet20-seed0"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"done": True}))
    rc = sweep.main(
        [
            "configs/sweeps/cifar_depth.py:smoke",
            f"--workdir={tmp_path}",
            "--mode=print",
            "--only=resnet20,resnet56",
            "--seeds=2",
            "--override=num_train_steps=4",
            "--override=config.schedule.boundaries=(2,3)",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and lines[0] == f"# done: {done}"
    assert lines[1] == (
        "python -m resnet_jax.main --config=configs/cifar10.py:resnet20,smoke "
        f"--workdir={tmp_path}/resnet20-seed1 --config.seed=1 --config.num_train_steps=4 "
        "'--config.schedule.boundaries=(2,3)'"
    )
    assert len(lines) == 4 and "resnet56-seed1" in lines[3]


@pytest.mark.parametrize(
    "mode,head", [("slurm", "mkdir -p "), ("tpu", "launch/tpu_vm.sh --name=resnet-resnet34-a-seed0 ")]
)
def test_cluster_modes_print_launch_commands(mode, head, tmp_path, capsys):
    sweep.main(["configs/sweeps/imagenet_shortcuts.py", f"--workdir={tmp_path}", f"--mode={mode}"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(
        re.fullmatch(r"[a-z0-9-]+", sweep.tpu_name(r))
        for r in sweep.expand(sweep.load_sweep("configs/sweeps/imagenet_shortcuts.py"))
    )
    assert any(line.startswith(head) for line in lines)
    if mode == "slurm":
        assert (
            "launch/slurm_gpu.sbatch --config=configs/imagenet_r34.py:C "
            f"--workdir={tmp_path}/resnet34-C-seed0 -- --config.seed=0"
        ) in lines[3]


def test_local_mode_runs_skips_and_reports_failures(tmp_path):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    runs = sweep.expand(sweep.load_sweep("configs/sweeps/cifar_depth.py"), only=["resnet20", "plain20"])
    work = tmp_path / "sweep"
    fake = (sys.executable, str(trainer))
    failed = sweep.run_local(runs, str(work), {"num_train_steps": "4"}, trainer=fake)
    assert failed == ["plain20-seed0"]
    record = json.loads((work / "resnet20-seed0" / "argv.json").read_text())
    assert record["argv"][-1] == "--config.num_train_steps=4" and record["gpu"] is None
    assert "training configs/cifar10.py:resnet20" in (work / "resnet20-seed0" / "train.log").read_text()
    (work / "resnet20-seed0" / "argv.json").unlink()
    assert sweep.run_local(runs, str(work), {}, trainer=fake) == ["plain20-seed0"]
    assert not (work / "resnet20-seed0" / "argv.json").exists(), "a finished run must be skipped"
    assert (work / "plain20-seed0" / "train.log").read_text().count("training") == 2, "a failed run reruns"


def test_a_gs_sweep_skips_finished_runs_and_stores_logs_in_the_bucket(tmp_path, gs_bucket, monkeypatch):
    """gs:// sweep workdirs: finished runs are found through epath and train.log lands in the bucket."""
    trainer = tmp_path / "fake_trainer.py"  # the trainer's own gs:// support is tested in test_reliability
    trainer.write_text(
        "import os, sys\n"
        "url = next(a for a in sys.argv if a.startswith('--workdir=')).split('=', 1)[1]\n"
        "path = os.path.join(os.environ['FAKE_GCS_ROOT'], url.removeprefix('gs://'))\n"
        "os.makedirs(path, exist_ok=True)\n"
        "open(os.path.join(path, 'summary.json'), 'w').write('{\"done\": true}')\n"
        "print('training', url)\n"
    )
    runs = sweep.expand(sweep.load_sweep("configs/sweeps/cifar_depth.py"), only=["resnet20", "resnet32"])
    finished = gs_bucket / "b" / "sweep" / "resnet20-seed0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"done": True}))
    monkeypatch.setenv("FAKE_GCS_ROOT", str(gs_bucket))
    failed = sweep.run_local(runs, "gs://b/sweep", {}, trainer=(sys.executable, str(trainer)))
    assert failed == []
    assert not (finished / "train.log").exists(), "a finished run must be skipped"
    log = gs_bucket / "b" / "sweep" / "resnet32-seed0" / "train.log"
    assert log.read_text() == "training gs://b/sweep/resnet32-seed0\n"
    assert not (ROOT / "gs:").exists() and not pathlib.Path("gs:").exists()


def test_local_mode_spreads_runs_over_gpus(tmp_path):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    runs = sweep.expand(sweep.load_sweep("configs/sweeps/cifar_shortcuts.py:20"))
    fake = (sys.executable, str(trainer))
    assert sweep.run_local(runs, str(tmp_path), {}, trainer=fake, gpus=["0", "1"]) == []
    gpus = {json.loads((tmp_path / sweep.run_name(r) / "argv.json").read_text())["gpu"] for r in runs}
    assert len(runs) >= 2 and gpus == {"0", "1"}  # the free queue is FIFO: the second run gets GPU 1


def test_overrides_and_values():
    assert sweep.parse_overrides(["num_train_steps=4", "config.model.remat=True"]) == {
        "num_train_steps": "4",
        "model.remat": "True",
    }
    assert sweep.format_value((32000, 48000)) == "(32000,48000)" and sweep.format_value((3,)) == "(3,)"
    with pytest.raises(ValueError):
        sweep.parse_overrides(["num_train_steps"])


def test_point_overrides_reach_the_trainer_before_the_sweeps_own():
    point = experiments.sweep_point(
        "r",
        "configs/cifar10.py:resnet20",
        "smoke",
        overrides={"model.remat": True, "schedule.boundaries": (2, 4)},
    )
    (run,) = sweep.expand([point])
    assert run.config == "configs/cifar10.py:resnet20,smoke"
    assert sweep.train_flags(run, "/w", {"model.remat": "False"}) == [
        "--config=configs/cifar10.py:resnet20,smoke",
        "--workdir=/w",
        "--config.seed=0",
        "--config.model.remat=False",
        "--config.schedule.boundaries=(2,4)",
    ]


def test_bad_sweep_input_is_one_sentence_and_exit_2_before_any_run(tmp_path, capsys, monkeypatch):
    """A bad point, override or unreadable workdir stops the sweep at once, not when its turn comes."""
    base = ["configs/sweeps/cifar_depth.py:smoke", f"--workdir={tmp_path}", "--mode=local"]
    cases = [
        (
            ["configs/sweeps/cifar_depth.py:bogus", f"--workdir={tmp_path}"],
            "sweep point plain20: cannot load",
        ),
        ([*base, "--override=modle.depth=3"], "'modle.depth' is not a config key"),
        ([*base, "--only=nosuch"], "--only names no point"),
        (["configs/sweeps/nope.py", f"--workdir={tmp_path}"], "no such file"),
    ]
    for argv, words in cases:
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.startswith("error: ") and len(err.splitlines()) == 1, (argv, err)
    assert not list(tmp_path.iterdir())  # no run was started

    class Unreachable:  # an object store that cannot be reached
        def __init__(self, path):
            pass

        def __truediv__(self, name):
            return self

        def exists(self):
            raise RuntimeError("Could not resolve host: www.googleapis.com\nmore detail")

    monkeypatch.setattr(sweep.epath, "Path", Unreachable)
    assert sweep.main(["configs/sweeps/cifar_depth.py:smoke", "--workdir=gs://b/s", "--mode=print"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: cannot read gs://b/s/plain20-seed0 (Could not resolve host: www.googleapis.com); "
        "check the path, network and credentials"
    )


PACK_TRAINER = """
import json, pathlib, sys
flags = dict(a.split("=", 1) for a in sys.argv[1:])
prefix, n = flags["--workdir"], int(flags.get("--config.num_seeds", 1))
for k in range(n):
    d = pathlib.Path(f"{prefix}-seed{k}" if n > 1 else prefix)
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps({"done": True, "argv": sys.argv[1:]}))
print("trained", n, "seeds")
"""


def test_pack_mode_runs_each_points_seeds_as_one_trainer_in_the_same_workdirs(tmp_path, capsys):
    points = sweep.load_sweep("configs/sweeps/cifar_depth.py")
    runs = sweep.expand(points, only=["resnet20", "resnet110"], pack=True)
    # A point of one seed stays an ordinary run; resnet110's 5 seeds are one job.
    assert [(r.name, r.seed, r.num_seeds) for r in runs] == [("resnet20", 0, 1), ("resnet110", 0, 5)]
    assert sweep.seed_names(runs[1]) == [f"resnet110-seed{k}" for k in range(5)]
    assert sweep.train_flags(runs[1], "/w/resnet110", {})[:4] == [
        "--config=configs/cifar10.py:resnet110", "--workdir=/w/resnet110", "--config.seed=0",
        "--config.num_seeds=5",
    ]  # fmt: skip
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(PACK_TRAINER)
    work = tmp_path / "sweep"
    assert sweep.run_local(runs, str(work), {}, trainer=(sys.executable, str(trainer))) == []
    for k in range(5):  # every seed's workdir, and the pack's output in each seed's train.log
        assert (work / f"resnet110-seed{k}" / "train.log").read_text() == "trained 5 seeds\n"
    assert "trained 1 seeds" in (work / "resnet20-seed0" / "train.log").read_text()
    capsys.readouterr()
    assert sweep.run_local(runs, str(work), {}, trainer=(sys.executable, str(trainer))) == []
    assert capsys.readouterr().out.count("skip (done)") == 2


def test_pack_mode_prints_one_command_per_point_and_refuses_streamed_data(tmp_path, capsys):
    base = ["configs/sweeps/cifar_depth.py:smoke", f"--workdir={tmp_path}", "--mode=print", "--pack"]
    assert sweep.main([*base, "--only=resnet56", "--seeds=3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        "python -m resnet_jax.main --config=configs/cifar10.py:resnet56,smoke "
        f"--workdir={tmp_path}/resnet56 --config.seed=0 --config.num_seeds=3"
    )
    assert (
        sweep.main(["configs/sweeps/imagenet_shortcuts.py", f"--workdir={tmp_path}", "--pack", "--seeds=2"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep point plain34: num_seeds=2 packs the seeds into one program")
    assert len(err.splitlines()) == 1
