"""The report builds its table and plots from a fabricated sweep workdir (it only reads files)."""

from __future__ import annotations

import csv
import json
import pathlib
import statistics

import pytest

from resnet_jax import experiments, report


def fabricate_run(
    path: pathlib.Path,
    config: str,
    final: float,
    done: bool = True,
    steps: int = 2_000,
    params: int = 1_000,
) -> None:
    """A run directory as the trainer leaves it: config.json, metrics.jsonl and (when done) summary.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(experiments.load_config(config).to_json())
    rows = []
    for step in range(100, steps + 1, 100):
        progress = step / steps
        row = {
            "step": step,
            "epoch": step / 390,
            "train/loss": 2.0 - progress,
            "lr": 0.1,
            "train/top1_error": 80.0 * (1 - progress) + final - 2.0,
            "images_per_sec": 1e4,
            "wall_time_s": step / 10,
        }
        if step % 500 == 0:
            row |= {
                "eval/loss": 1.0,
                "eval/top1_error": 80.0 * (1 - progress) + final,
                "eval/top5_error": final / 3,
            }
        rows.append(row)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 21')  # torn line
    if done:
        summary = {
            "done": True,
            "step": steps,
            "final_eval_top1_error": final,
            "best_eval_top1_error": final - 0.1,
            "final_eval_top5_error": final / 3,
            "final_train_top1_error": final - 2.0,
            "params": params,
            "wall_time_s": steps / 10,
            "device_hours": 0.5,
            "device_kind": "cpu",
            "num_devices": 8,
        }
        (path / "summary.json").write_text(json.dumps(summary))


def test_report_from_fabricated_sweep(tmp_path):
    sweep = tmp_path / "cifar_depth"
    fabricate_run(sweep / "plain20-seed0", "configs/cifar10.py:plain20", 10.0)
    fabricate_run(sweep / "plain56-seed0", "configs/cifar10.py:plain56", 14.0)
    fabricate_run(sweep / "resnet20-seed0", "configs/cifar10.py:resnet20", 9.0, params=269_722)
    fabricate_run(sweep / "resnet20-seed1", "configs/cifar10.py:resnet20", 11.0, params=269_722)
    fabricate_run(sweep / "resnet56-seed0", "configs/cifar10.py:resnet56", 7.0)
    fabricate_run(sweep / "resnet110-seed0", "configs/cifar10.py:resnet110", 6.5, done=False, steps=1_000)
    (sweep / "notes").mkdir()  # a directory that is not a run is ignored

    rows = report.report(sweep)
    assert [r["point"] for r in rows] == ["plain20", "plain56", "resnet20", "resnet56", "resnet110"]
    md = (sweep / "results.md").read_text()
    # the paper's form for the two seeds: best (mean ± std), then n
    assert "| resnet20 | cifar10 resnet20-A | 8.75 | 9.00 (10.00 ± 1.41) | 2 | 9.90 ± 1.41 |" in md
    assert "| 269,722 | 2000 | 0.06 | 1.00 | 2/2 |" in md
    resnet110 = next(line for line in md.splitlines() if line.startswith("| resnet110 "))
    assert "| 6.43 (6.61 ± 0.16), best of 5 | 6.50 | 1 |" in resnet110 and resnet110.endswith(
        "| 1000 | 0.03 | – | 0/1 |"
    )
    assert "| plain56 | cifar10 plain56 | – |" in md and "![curves](curves.png)" in md

    with open(sweep / "results.csv") as f:
        table = {r["point"]: r for r in csv.DictReader(f)}
    assert float(table["resnet20"]["final_top1_mean"]) == 10.0 and table["resnet20"]["runs"] == "2"
    assert float(table["resnet110"]["final_top1_mean"]) == 6.5  # last evaluation of the unfinished run
    assert table["plain20"]["paper_top1"] == ""
    for png in ("curves.png", "depth.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_held_out_validation_run_is_not_set_beside_the_papers_test_error(tmp_path):
    """configs/cifar10.py:resnet20,val evaluates on 5k training images: not the test set of Table 6."""
    sweep = tmp_path / "cifar_depth_val"
    fabricate_run(sweep / "resnet20-seed0", "configs/cifar10.py:resnet20,val", 9.0)
    (row,) = report.report(sweep)
    assert row["paper_top1"] is None and row["eval_set"] == "val (5,000 held-out training images)"
    md = (sweep / "results.md").read_text()
    assert "| resnet20 | cifar10 resnet20-A, val (5,000 held-out training images) | – | 9.00 |" in md


def test_a_v15_run_is_named_so_and_not_set_beside_the_papers_v1_number(tmp_path):
    """configs/imagenet_r50.py:v1.5 strides on the 3x3 (torchvision): the paper's 22.85% is for v1."""
    sweep = tmp_path / "r50"
    fabricate_run(sweep / "resnet50-seed0", "configs/imagenet_r50.py", 23.0)
    fabricate_run(sweep / "resnet50-v15-seed0", "configs/imagenet_r50.py:v1.5", 22.5)
    rows = {r["point"]: r for r in report.report(sweep)}
    assert (rows["resnet50"]["arch"], rows["resnet50"]["paper_top1"]) == ("resnet50-B", 22.85)
    assert (rows["resnet50-v15"]["arch"], rows["resnet50-v15"]["paper_top1"]) == ("resnet50-B-v1.5", None)
    assert "| resnet50-v15 | imagenet2012 resnet50-B-v1.5 | – | 22.50 |" in (sweep / "results.md").read_text()


def test_imagenet_rows_name_their_crops_and_only_10_crop_gets_the_papers_number(tmp_path):
    """The paper's ImageNet errors are 10-crop on the validation set, not the test set."""
    sweep = tmp_path / "r34"
    fabricate_run(sweep / "ten-seed0", "configs/imagenet_r34.py", 25.0)
    fabricate_run(sweep / "center-seed0", "configs/imagenet_r34.py:smoke", 26.0)  # smoke: centre crop
    rows = {r["point"]: r for r in report.report(sweep)}
    assert (rows["ten"]["eval_set"], rows["ten"]["paper_top1"]) == ("validation, 10-crop", 25.03)
    assert (rows["center"]["eval_set"], rows["center"]["paper_top1"]) == ("validation, center crop", None)


def test_report_imagenet_shows_top5_and_cli(tmp_path, capsys):
    sweep = tmp_path / "imagenet_shortcuts"
    fabricate_run(sweep / "resnet34-C-seed0", "configs/imagenet_r34.py:C", 24.0)
    fabricate_run(sweep / "plain34-seed0", "configs/imagenet_plain34.py", 28.0)
    assert report.main([str(sweep), f"--out={tmp_path / 'out'}"]) == 0
    assert "2 points, 2/2 runs finished" in capsys.readouterr().out
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| resnet34-C | imagenet2012 resnet34-C | 24.19 / 7.40 | 24.00 |" in md
    assert "| plain34 | imagenet2012 plain34 | 28.54 / 10.02 | 28.00 |" in md


def test_report_reads_and_writes_gs_urls(gs_bucket, capsys):
    """A sweep in a gs:// bucket (the local stand-in of conftest.gs_bucket), reported to another gs:// URL."""
    sweep = gs_bucket / "b" / "sweep"
    fabricate_run(sweep / "resnet20-seed0", "configs/cifar10.py:resnet20", 9.0)
    fabricate_run(sweep / "resnet56-seed0", "configs/cifar10.py:resnet56", 7.0, done=False)
    assert report.main(["gs://b/sweep", "--out=gs://b/report"]) == 0
    assert "2 points, 1/2 runs finished: gs://b/report/results.md" in capsys.readouterr().out
    out = gs_bucket / "b" / "report"
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "depth.png", "results.csv", "results.md"]
    md = (out / "results.md").read_text()
    assert md.startswith("# Results of gs://b/sweep\n")
    assert "| resnet56 | cifar10 resnet56-A | 6.97 | 7.00 |" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_one_runs_workdir_and_of_nothing(tmp_path, capsys):
    """A run's own workdir is reported as a sweep of one; a folder without runs is one sentence, status 2."""
    run = tmp_path / "r20"
    fabricate_run(run, "configs/cifar10.py:resnet20", 9.0)
    assert report.main([str(run)]) == 0
    assert "1 points, 1/1 runs finished" in capsys.readouterr().out
    assert "| r20 | cifar10 resnet20-A | 8.75 | 9.00 |" in (run / "results.md").read_text()

    (tmp_path / "empty").mkdir()
    for missing in (tmp_path / "empty", tmp_path / "nowhere"):
        assert report.main([str(missing)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: no run directories") and err.count("\n") == 1


def test_a_point_of_five_seeds_reads_as_the_paper_best_mean_std_and_n(tmp_path):
    """Five ResNet-110 seeds (as `sweep --pack` writes them: <point>-seed<k>), one still running."""
    sweep = tmp_path / "cifar_depth"
    finals = [6.9, 6.5, 7.3, 6.7, 7.1]
    for k, final in enumerate(finals):
        fabricate_run(sweep / f"resnet110-seed{k}", "configs/cifar10.py:resnet110", final, done=k < 4)
    (row,) = report.report(sweep)
    assert (row["n"], row["runs"], row["done"], row["min_final_top1"]) == (5, 5, 4, 6.5)
    assert row["final_top1_mean"] == pytest.approx(statistics.fmean(finals))
    assert row["final_top1_std"] == pytest.approx(statistics.stdev(finals))  # sample std, as the paper's
    md = (sweep / "results.md").read_text()
    assert (
        "| resnet110 | cifar10 resnet110-A | 6.43 (6.61 ± 0.16), best of 5 | 6.50 (6.90 ± 0.32) | 5 |" in md
    )
    assert md.count("| 4/5 |") == 1
    # the mean test curve over the seeds, at the evaluations all of them reached
    steps, mean, std = report.seed_curve(report.read_runs(sweep), "eval/top1_error")
    assert steps == [500, 1000, 1500, 2000] and mean[-1] == pytest.approx(row["final_top1_mean"])
    assert std[-1] == pytest.approx(row["final_top1_std"])
