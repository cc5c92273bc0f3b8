"""A packed run's files and faults, seed by seed: each seed's workdir is an ordinary run's, kill -9 and
SIGTERM resume bit for bit, a non-finite loss stops (or skips) only its seed, bad input is refused early."""

import math
import pathlib
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import pytest
from helpers import (
    ROOT,
    assert_trees_equal,
    checkpoint_steps,
    read_metrics,
    restore_state,
    tiny_config,
    trainer_command,
)

from resnet_jax import config, pack, train
from resnet_jax import workdir as files

STEPS = 8
RUN = {"num_train_steps": STEPS, "checkpoint_every_steps": 2, "log_every_steps": 2, "eval_every_steps": 4}
SMALL = {"data.mean": "channel", "data.image_size": 16, "num_seeds": 2}  # as tests/test_pack.py
DETERMINISTIC = ("step", "epoch", "train/loss", "train/top1_error", "lr", "eval/loss", "eval/top1_error")


def cfg_of(**overrides):
    return tiny_config(**{**RUN, **SMALL, **overrides})


def seed_dirs(workdir) -> list:
    return [f"{workdir}-seed{s}" for s in (0, 1)]


def cli(workdir) -> list[str]:
    return trainer_command(workdir, {**RUN, **SMALL})


def deterministic_metrics(workdir) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in read_metrics(workdir)]


def assert_same_seed_runs(a, b, step: int = STEPS) -> None:
    for x, y in zip(seed_dirs(a), seed_dirs(b), strict=True):
        assert_trees_equal(restore_state(x, step), restore_state(y, step))
        assert deterministic_metrics(x) == deterministic_metrics(y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted packed run every faulty one must reproduce, seed by seed."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    summaries = pack.train_and_evaluate(cfg_of(), str(workdir))
    assert [s["done"] for s in summaries] == [True, True]
    return workdir


def test_each_seed_writes_an_ordinary_run_that_resumes_alone(straight, tmp_path, capsys):
    for seed, d in enumerate(seed_dirs(straight)):
        cfg = files.read_config(d)
        assert cfg["seed"] == seed and cfg["num_seeds"] == 1
        assert checkpoint_steps(d) == [4, 6, 8]  # keep_checkpoints 3 (the best of 4 and 8 among them)
        assert (files.read_summary(d) or {})["done"] and files.read_summary(d)["pack_size"] == 2
        assert list(pathlib.Path(d).glob("tensorboard/events.out.tfevents.*"))
        assert [r["step"] for r in read_metrics(d) if "eval/loss" in r] == [4, 8]
    # The two seeds are two runs, not one run twice.
    assert deterministic_metrics(seed_dirs(straight)[0]) != deterministic_metrics(seed_dirs(straight)[1])
    # Seed 1's workdir resumes as an ordinary run (what `python -m resnet_jax.main` on it does).
    alone = tmp_path / "alone"
    shutil.copytree(seed_dirs(straight)[1], alone)
    capsys.readouterr()
    summary = train.train_and_evaluate(cfg_of(seed=1, num_seeds=1, num_train_steps=10), str(alone))
    assert "resuming from step 8" in capsys.readouterr().out and summary["step"] == 10


def test_a_pack_resumes_from_its_seeds_checkpoints_even_one_checkpoint_apart(straight, tmp_path):
    """A kill between the seeds' writes of one checkpoint leaves seed 1 a checkpoint behind seed 0: the pack
    resumes both at seed 1's step, deletes seed 0's later checkpoint, and ends as the straight run."""
    workdir = tmp_path / "run"
    pack.train_and_evaluate(cfg_of(num_train_steps=4, eval_every_steps=4), str(workdir))
    shutil.rmtree(f"{seed_dirs(workdir)[1]}/checkpoints/4")
    (tmp_path / "run-seed1" / "summary.json").unlink()
    pack.train_and_evaluate(cfg_of(), str(workdir))
    assert_same_seed_runs(straight, workdir)


def wait_for_checkpoint(proc: subprocess.Popen, workdir, after: int = 0) -> None:
    deadline = time.time() + 300
    while max(checkpoint_steps(seed_dirs(workdir)[1]), default=0) <= after and time.time() < deadline:
        if proc.poll() is not None:
            return
        time.sleep(0.05)


def test_kill_9_then_sigterm_then_resume_is_bit_identical(straight, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        cli(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_checkpoint(proc, workdir)
    proc.send_signal(signal.SIGKILL)  # often while the second seed's checkpoint is being written
    proc.wait()
    proc = subprocess.Popen(
        cli(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_checkpoint(proc, workdir, after=max(checkpoint_steps(seed_dirs(workdir)[1]), default=0))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    if "preempted at step" in out:
        assert out.count("checkpoint saved; rerun the same command to resume") == 2
    assert "resuming from step" in out or "first step" in out
    pack.train_and_evaluate(cfg_of(), str(workdir))
    assert_same_seed_runs(straight, workdir)


@pytest.fixture
def nan_in_seed_1(monkeypatch):
    """Seed 1 starts from NaN weights (every loss of it is non-finite); seed 0 is untouched."""
    fresh = train.fresh_state

    def poisoned(seed, **kwargs):
        state = fresh(seed, **kwargs)
        return state.replace(params=jax.tree.map(lambda p: jnp.where(seed == 1, jnp.nan, p), state.params))

    monkeypatch.setattr(train, "fresh_state", poisoned)


@pytest.mark.usefixtures("nan_in_seed_1")
def test_a_nonfinite_seed_stops_alone_and_the_others_finish_as_they_would(straight, tmp_path):
    workdir = tmp_path / "run"
    zero, one = pack.train_and_evaluate(cfg_of(), str(workdir))
    assert zero["done"] and not one["done"]
    assert one["error"] == "non-finite loss at step 0; last good checkpoint: step none"
    assert files.read_summary(seed_dirs(workdir)[1]) == one  # the seed's workdir records why it stopped
    assert checkpoint_steps(seed_dirs(workdir)[1]) == []
    # Seed 0 computed in the same program as a NaN seed, bit for bit what it computed beside a finite one.
    assert_trees_equal(
        restore_state(seed_dirs(straight)[0], STEPS), restore_state(seed_dirs(workdir)[0], STEPS)
    )
    # Rerunning leaves both out: one is done, the other stopped (rerun alone to retry).
    assert [s.get("done") for s in pack.train_and_evaluate(cfg_of(), str(workdir))] == [True, False]


@pytest.mark.usefixtures("nan_in_seed_1")
def test_skip_policy_skips_the_nonfinite_seeds_steps_only(tmp_path):
    workdir = tmp_path / "run"
    zero, one = pack.train_and_evaluate(cfg_of(nan_policy="skip"), str(workdir))
    assert zero["done"] and one["done"] and one["final_train_top1_error"] is None
    skipped = [r["train/skipped_steps"] for r in read_metrics(seed_dirs(workdir)[1]) if "lr" in r]
    assert skipped == [2, 2, 2, 2]
    # Seed 0 trains on (skipping adds a select to the step: another program than the straight run's).
    losses = [r["train/loss"] for r in read_metrics(seed_dirs(workdir)[0]) if "lr" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert not any("train/skipped_steps" in r for r in read_metrics(seed_dirs(workdir)[0]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"data.name": "imagenet2012"},
            "num_seeds=2 packs the seeds into one program, which needs device-held",
        ),
        ({"keep_checkpoints": 1}, "num_seeds=2 needs keep_checkpoints >= 2"),
        ({"seed": 2**31 - 2}, "num_seeds=2 from seed 2147483646 passes the largest seed"),
        ({"num_seeds": 0}, r"num_seeds must be in \[1, inf\)"),
    ],
)
def test_bad_input_is_refused_before_anything_compiles(overrides, message, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(config.ConfigError, match=message):
        pack.train_and_evaluate(cfg_of(**overrides), str(tmp_path / "run"))
    assert not list(tmp_path.glob("run-seed*/checkpoints"))


def test_the_command_line_refuses_streamed_data_in_one_sentence(tmp_path):
    run = subprocess.run(
        [*cli(tmp_path / "run"), "--config.data.name=imagenet2012"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: num_seeds=2 packs the seeds into one program")
    assert len(run.stderr.strip().splitlines()) == 1
