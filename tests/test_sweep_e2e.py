"""A real tiny sweep: two CIFAR points of a few steps through resnet_jax.sweep, the trainer and the report."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from resnet_jax import report, workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
POINTS = ("plain20-seed0", "resnet20-seed0")
METRIC_KEYS = {"step", "epoch", "train/loss", "train/top1_error", "lr", "images_per_sec", "wall_time_s"}
SUMMARY_KEYS = {
    "done",
    "step",
    "final_eval_top1_error",
    "best_eval_top1_error",
    "final_eval_top5_error",
    "final_train_top1_error",
    "params",
    "wall_time_s",
    "device_hours",
    "device_kind",
    "num_devices",
}


def run_sweep(workdir: pathlib.Path) -> subprocess.CompletedProcess:
    """The tiny sweep: the resnet20 and plain20 points of cifar_depth as smoke runs, cut to depth 8 (to
    compile fast), 4 steps, evaluation and checkpoint at steps 2 and 4."""
    cmd = [
        sys.executable,
        "-m",
        "resnet_jax.sweep",
        "configs/sweeps/cifar_depth.py:smoke",
        f"--workdir={workdir}",
        "--only=resnet20,plain20",
        "--override=model.depth=8",
        "--override=num_train_steps=4",
        "--override=eval_every_steps=2",
        "--override=checkpoint_every_steps=2",
        # On the real JPEG archive beside the checkout, evaluating on a 256-image held-out split.
        "--override=data.name=cifar10",
        f"--override=data.path={ROOT.parent / 'shared' / 'datasets' / 'cifar10-jpeg.tar.gz'}",
        "--override=data.val_split=256",
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.needs_trainer
def test_tiny_cifar_sweep_end_to_end(tmp_path):
    work = tmp_path / "sweep"
    result = run_sweep(work)
    logs = "\n".join(
        (work / p / "train.log").read_text()[-3000:] for p in POINTS if (work / p / "train.log").exists()
    )
    assert result.returncode == 0, result.stdout + result.stderr + logs

    for point in POINTS:
        summary = json.loads((work / point / "summary.json").read_text())
        assert SUMMARY_KEYS <= set(summary) and summary["done"] and summary["step"] == 4
        rows = workdir.read_metrics(work / point)
        assert all(METRIC_KEYS <= set(r) for r in rows if "train/loss" in r)
        assert [r["step"] for r in rows if "eval/top1_error" in r][-1] == 4
        assert json.loads((work / point / "config.json").read_text())["model"]["depth"] == 8

    again = run_sweep(work)
    assert again.returncode == 0 and again.stdout.count("skip (done)") == 2, again.stdout

    rows = {r["point"]: r for r in report.report(work)}
    assert rows["resnet20"]["arch"] == "resnet8-A" and rows["resnet20"]["done"] == 1
    assert rows["resnet20"]["paper_top1"] is None  # a ResNet-8 on a held-out split: no paper number
    assert rows["plain20"]["params"] == rows["resnet20"]["params"] == 75_290  # option A adds no parameters
    assert (work / "results.md").exists() and (work / "curves.png").exists()
