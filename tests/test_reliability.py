"""Faults: kill -9 anywhere, preemption signals, damaged checkpoints, changed configs, failed writes.

Each faulty run must end where an uninterrupted run ends, to the bit (float32, CPU).
"""

import os
import random
import shutil
import signal
import subprocess
import time

import jax
import pytest
from helpers import (
    ROOT,
    assert_trees_equal,
    checkpoint_steps,
    damage_checkpoint,
    popen_as_in_a_terminal,
    read_metrics,
    restore_state,
    tiny_config,
    trainer_command,
)

from resnet_jax import checkpoints, config, train

STEPS = 24
OVERRIDES = dict(num_train_steps=STEPS, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=8)
DETERMINISTIC = ("step", "epoch", "train/loss", "train/top1_error", "lr", "eval/loss", "eval/top1_error")


def cli(workdir, *extra) -> list[str]:
    return trainer_command(workdir, OVERRIDES, *extra)


def start(workdir, *extra) -> subprocess.Popen:
    return popen_as_in_a_terminal(
        cli(workdir, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def start_and_wait_for_a_checkpoint(workdir) -> subprocess.Popen:
    """`start`, then wait (up to 5 minutes) until the run has written its first checkpoint."""
    proc = start(workdir)
    deadline = time.time() + 300
    while not checkpoint_steps(workdir) and time.time() < deadline:
        time.sleep(0.05)
    return proc


def finish(workdir, capsys) -> str:
    """Rerun the interrupted run to its end, in this process (the CLI's config); what it printed.

    In-process to save a process start per test: the CLI itself is what `start` runs, and main.py
    only parses flags and calls train_and_evaluate.
    """
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(**OVERRIDES), str(workdir))
    captured = capsys.readouterr()
    return captured.out + captured.err


def deterministic_metrics(workdir) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every faulty run must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(tiny_config(**OVERRIDES), str(workdir))
    return workdir


def assert_same_run(a, b) -> None:
    assert_trees_equal(restore_state(a, STEPS), restore_state(b, STEPS))
    assert deterministic_metrics(a) == deterministic_metrics(b)


def test_kill_9_three_times_then_resume_is_bit_identical(straight, tmp_path, capsys):
    rng = random.Random(0)
    kills = 0
    while kills < 3:
        proc = start(tmp_path)
        before = max(checkpoint_steps(tmp_path), default=0)
        # Wait for training to make progress past the last checkpoint, then kill at a random moment
        # (often while an asynchronous checkpoint is being written).
        deadline = time.time() + 300
        while max(checkpoint_steps(tmp_path), default=0) <= before and time.time() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:  # finished before we could kill it: start over in a fresh dir
            shutil.rmtree(tmp_path)
            tmp_path.mkdir()
            kills = 0
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    out = finish(tmp_path, capsys)
    assert "resuming from step" in out
    assert_same_run(straight, tmp_path)


def test_sigterm_checkpoints_exits_0_and_resumes(straight, tmp_path, capsys):
    for _ in range(3):
        proc = start_and_wait_for_a_checkpoint(tmp_path)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        if "preempted at step" in out:
            break
        shutil.rmtree(tmp_path)  # it finished before the signal arrived: start over
        tmp_path.mkdir()
    assert "preempted at step" in out, out[-3000:]  # (a run that ignores SIGTERM also exits 0)
    step = int(out.split("preempted at step ")[1].split(";")[0])
    assert "checkpoint saved; rerun the same command to resume" in out
    assert step < STEPS and max(checkpoint_steps(tmp_path)) == step
    assert f"resuming from step {step}" in finish(tmp_path, capsys)
    assert_same_run(straight, tmp_path)


def test_a_second_sigint_aborts_at_once_and_the_run_still_resumes(straight, tmp_path, capsys):
    """Ctrl-C twice: the second kills the process at once, without the stopping checkpoint.

    The second signal is sent only once the trainer has said it got the first (two signals that
    arrive before Python runs the handler count as one), and before it stops by itself.
    """
    for _ in range(3):
        proc = start_and_wait_for_a_checkpoint(tmp_path)
        proc.send_signal(signal.SIGINT)
        out = ""
        for line in proc.stdout:
            out += line
            if "SIGINT: finishing this step, then a checkpoint; Ctrl-C again aborts at once" in line:
                break
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        rest, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            break
        shutil.rmtree(tmp_path)  # it stopped (or finished) before the second signal: start over
        tmp_path.mkdir()
    assert proc.returncode == -signal.SIGINT, (out + rest)[-3000:]
    assert time.time() - sent < 10, "the second SIGINT did not end the process at once"
    assert "Traceback" not in out + rest
    complete = max(checkpoint_steps(tmp_path))
    resumed = finish(tmp_path, capsys)
    assert f"resuming from step {complete}" in resumed
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if not p.name.isdigit()]  # tmp cleaned
    assert_same_run(straight, tmp_path)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path, capsys):
    train.train_and_evaluate(tiny_config(**{**OVERRIDES, "num_train_steps": 8}), str(tmp_path))
    damage_checkpoint(tmp_path, 8)
    out = finish(tmp_path, capsys)
    assert f"checkpoint {tmp_path / 'checkpoints' / '8'} is unreadable" in out
    assert "resuming from step 6" in out
    assert list((tmp_path / "checkpoints").glob("8.damaged-*"))  # set aside, not deleted
    assert_same_run(straight, tmp_path)


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    train.train_and_evaluate(
        tiny_config(**{**OVERRIDES, "num_train_steps": 4, "eval_every_steps": 4}), str(tmp_path)
    )
    for f in (tmp_path / "checkpoints").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(
        config.TrainingError, match="no usable checkpoint in .*; move the directory away to start afresh"
    ):
        train.train_and_evaluate(tiny_config(**OVERRIDES), str(tmp_path))


def test_a_cut_config_write_leaves_the_previous_config_whole(tmp_path, monkeypatch):
    """A kill while config.json is written must not leave a cut file that the next start cannot read."""
    cfg = tiny_config()
    checkpoints.write_config(cfg, str(tmp_path))
    whole = (tmp_path / "config.json").read_text()

    def cut(fd):  # the new text is written out (not yet renamed), then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.write_config(tiny_config(num_train_steps=7), str(tmp_path))
    assert (tmp_path / "config.json").read_text() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary left behind
    checkpoints.check_workdir_config(cfg, str(tmp_path))  # the next start reads it


def test_data_path_spelled_another_way_for_the_same_file_resumes(tmp_path, monkeypatch):
    """A relative and an absolute spelling (or a symlink) of one dataset are the same data."""
    data = tmp_path / "cifar.tar"
    data.write_bytes(b"")
    (tmp_path / "link.tar").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    checkpoints.write_config(tiny_config(**{"data.path": "cifar.tar"}), str(tmp_path / "run"))
    for same in (str(data), "link.tar", "./cifar.tar"):
        checkpoints.check_workdir_config(tiny_config(**{"data.path": same}), str(tmp_path / "run"))
    (tmp_path / "other.tar").write_bytes(b"")
    with pytest.raises(config.ConfigError, match=r"different config \(data.path\)"):
        checkpoints.check_workdir_config(tiny_config(**{"data.path": "other.tar"}), str(tmp_path / "run"))


def test_a_workdir_with_another_model_is_refused(tmp_path):
    train.train_and_evaluate(tiny_config(**{"num_train_steps": 2, "eval_every_steps": 2}), str(tmp_path))
    changed = tiny_config(**{"model.depth": 14, "model.shortcut": "B"})
    with pytest.raises(config.ConfigError, match=r"different config \(model.depth, model.shortcut\)"):
        train.train_and_evaluate(changed, str(tmp_path))
    # The batch order and the step size too: another seed, batch or learning rate would change the run.
    other = tiny_config(**{"seed": 5, "batch_size": 32, "schedule.base_lr": 0.2, "optimizer.momentum": 0.8})
    with pytest.raises(
        config.ConfigError,
        match=r"different config \(seed, batch_size, optimizer.momentum, schedule.base_lr\)",
    ):
        train.train_and_evaluate(other, str(tmp_path))
    # An explicit override resumes with a compatible change (here: per-device BN, another data size).
    compatible = tiny_config(
        **{"model.bn": "per_device", "data.synthetic_examples": 96, "num_train_steps": 4}
    )
    with pytest.raises(config.ConfigError, match=r"\(model.bn, data.synthetic_examples\)"):  # deny by default
        train.train_and_evaluate(compatible, str(tmp_path))
    compatible.allow_config_change = True
    assert train.train_and_evaluate(compatible, str(tmp_path))["done"]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step >= 4:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(
        config.TrainingError, match=r"writing checkpoint 4 .* failed .*No space left.* \(step 2\) is intact"
    ):
        train.train_and_evaluate(tiny_config(**OVERRIDES), str(tmp_path))
    assert checkpoint_steps(tmp_path) == [2]
    assert restore_state(tmp_path, 2)["step"] == 2


def test_an_unwritable_workdir_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(config.ConfigError, match="cannot write to --workdir .*; choose a writable directory"):
        train.train_and_evaluate(tiny_config(), str(blocker / "run"))


def test_devices_are_eight():
    assert jax.device_count() == 8  # the subprocesses inherit the same XLA_FLAGS
    assert "device_count=8" in os.environ["XLA_FLAGS"]


def test_object_store_workdirs_resume_identically(straight, gs_bucket):
    """A gs:// workdir cannot append: metrics are rewritten whole and TensorBoard events copied over.

    The run goes through epath and orbax's GCS code paths against a local stand-in for the bucket
    (tests/conftest.py::gs_bucket), through a resume.
    """
    train.train_and_evaluate(tiny_config(**{**OVERRIDES, "num_train_steps": 8}), "gs://b/run")
    summary = train.train_and_evaluate(tiny_config(**OVERRIDES), "gs://b/run")
    stored = gs_bucket / "b" / "run"
    assert summary["done"] and (stored / "summary.json").exists()
    assert list((stored / "tensorboard").glob("events.out.tfevents.*"))
    assert_same_run(straight, stored)
