"""The GPU-session tools: the prepared session script, its summary and the peer harness's import."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "h200-2026-11-27"


def summary(folder: pathlib.Path) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "session_summary.py"), str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_summary_of_the_committed_h200_results_gives_the_figures_in_benchmarks_md():
    text = summary(RESULTS)
    benchmarks_md = (ROOT / "BENCHMARKS.md").read_text()
    r20 = next(line for line in text.splitlines() if line.startswith("| r20_synth |") and "| 20 |" in line)
    assert "| 1.701 | 75,231 |" in r20
    assert "75,231" in benchmarks_md and "1.70 ms/step" in benchmarks_md
    r1202 = next(line for line in text.splitlines() if line.startswith("| r1202_synth |"))
    assert "| 144.217 | 888 |" in r1202
    assert "144 ms/step (888 img/s)" in benchmarks_md


def test_summary_lists_peer_rows_and_skipped_items(tmp_path):
    peer = {
        "peer": "google/flax examples/imagenet ResNet50",
        "peer_source": "google/flax abc123",
        "dtype": "bfloat16",
        "dynamic_scale": False,
        "batch_size": 256,
        "device_count": 1,
        "device_kind": "NVIDIA H200",
        "lower_s": 1.0,
        "compile_s": 20.5,
        "step_ms": 37.21,
        "images_per_s": 6880.0,
    }
    (tmp_path / "peer_r50.json").write_text(json.dumps({"peer": peer}))
    (tmp_path / "skipped.txt").write_text("r50_v1: skipped, needs ~60 s, 12 s left\n")
    text = summary(tmp_path)
    row = "| peer_r50 | google/flax examples/imagenet ResNet50 (google/flax abc123) | 256 | bfloat16 |"
    assert row in text
    assert "| 21.5 | 37.210 | 6,880 |" in text
    assert "r50_v1: skipped, needs ~60 s, 12 s left" in text


def test_summary_shows_where_a_profiled_step_spends_its_time(tmp_path):
    profile = {
        "model": "cifar-20",
        "batch_size": 128,
        "dtype": "bfloat16",
        "steps_per_call": 20,
        "device_kind": "NVIDIA H200",
        "step_ms_unprofiled": 1.7,
        "step_ms_profiled": 2.1,
        "profile": {
            "device_ms_per_step": 1.5,
            "busy_fraction": 0.75,
            "kernels_per_step": 301.0,
            "categories": [
                {"category": "convolution", "ms_per_step": 1.0, "share": 2 / 3},
                {"category": "fusion", "ms_per_step": 0.5, "share": 1 / 3},
                {"category": "other", "ms_per_step": 0.0, "share": 0.0},
            ],
            "ops": [
                {
                    "op": "cudnn-conv.3",
                    "category": "convolution",
                    "count_per_step": 1.0,
                    "mean_us": 42.5,
                    "ms_per_step": 0.0425,
                    "share": 0.0283,
                    "kernel": "sm90_xmma_fprop_implicit_gemm_bf16",
                }
            ],
        },
    }
    (tmp_path / "profile_r20.json").write_text(json.dumps(profile))
    text = summary(tmp_path)
    assert (
        "device busy 1.500 ms/step (75% of the span), 301 kernels/step; convolution 67%, fusion 33%" in text
    )
    assert "other 0%" not in text
    assert (
        "| cudnn-conv.3 | convolution | 1.0 | 42.5 | 0.043 | 2.8% | sm90_xmma_fprop_implicit_gemm_bf16 |"
        in text
    )


def test_session_script_runs_named_items_skips_what_the_budget_cannot_hold(tmp_path):
    """Unknown items are reported, items longer than the budget are skipped, the summary still runs."""
    out_dir, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "OUT": str(out_dir),
        "WORK": str(work),
        "BUDGET_S": "20",
        "ITEMS": "no_such_item r50_v15",
    }
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    skipped = (work / "skipped.txt").read_text()
    assert "no_such_item: unknown item" in skipped
    assert "r50_v15: skipped, needs ~60 s" in skipped
    assert "r50_v15: skipped" in (out_dir / "summary.md").read_text()
    with tarfile.open(out_dir / "session.tar.gz") as tar:
        assert "./skipped.txt" in tar.getnames()
    assert sorted(p.name for p in out_dir.iterdir()) == ["session.tar.gz", "summary.md"]


def test_peer_harness_stands_in_for_missing_tensorflow_and_clu(tmp_path):
    """The flax example imports TF, TFDS and clu at the top; the GPU image has none of them."""
    peer = tmp_path / "imagenet"
    peer.mkdir()
    (peer / "train.py").write_text(
        textwrap.dedent(
            """
            from clu import metric_writers, periodic_actions
            import tensorflow as tf
            import tensorflow_datasets as tfds
            import input_pipeline
            import models
            NUM_CLASSES = 1000
            """
        )
    )
    (peer / "models.py").write_text("ResNet50 = object\n")
    (peer / "input_pipeline.py").write_text("import tensorflow as tf\nDTYPE = tf.float32\n")
    code = textwrap.dedent(
        f"""
        import json, sys, pathlib
        for name in ("tensorflow", "tensorflow_datasets", "clu"):
            sys.modules[name] = None  # as if not installed
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import peer_flax_imagenet as p
        train, models, stood_in = p.import_peer(pathlib.Path({str(peer)!r}))
        print(json.dumps([sorted(stood_in), train.NUM_CLASSES, models.ResNet50 is object]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stood_in, num_classes, models_found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"tensorflow", "tensorflow_datasets", "clu", "input_pipeline"} <= set(stood_in)
    assert num_classes == 1000 and models_found


def test_peer_harness_says_where_to_put_the_peer_code(tmp_path):
    script = ROOT / "benchmarks" / "peer_flax_imagenet.py"
    out = subprocess.run(
        [sys.executable, str(script), "--peer_dir", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "copy google/flax examples/imagenet there" in out.stderr


def test_torch_peer_harness_times_a_training_step(tmp_path):
    """The smoke mode (a small conv net, no torchvision) runs the same timed step on the CPU."""
    script = ROOT / "benchmarks" / "peer_torchvision.py"
    argv = ["--model=tiny", "--device=cpu", "--batch_size=4", "--image_size=16", "--modes=eager"]
    argv += ["--steps=2", "--warmup=1", "--repeats=2", f"--json={tmp_path / 'peer_torch.json'}"]
    subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, check=True)
    row = json.loads((tmp_path / "peer_torch_eager.json").read_text())["peer"]
    assert row["mode"] == "eager" and row["batch_size"] == 4 and len(row["step_ms_repeats"]) == 2
    assert (
        row["step_ms"] > 0
        and abs(row["images_per_s"] - 4 / (row["step_ms"] / 1e3)) < 1e-6 * row["images_per_s"]
    )
    assert "| peer_torch_eager | torchvision tiny, channels_last, bf16 autocast, eager" in summary(tmp_path)


def test_summary_counts_the_launches_of_gpu_aot_rows(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_aot.py"),
         f"--from_dump={ROOT / 'tests' / 'data' / 'gpu_aot' / 'default'}", f"--json={tmp_path / 'aot.json'}"],
        check=True, capture_output=True,
    )  # fmt: skip
    text = summary(tmp_path)
    assert "| aot | module_0001.jit_multi_step | 3 | 21 | 7.0 | 2 kCommandBuffer, 1 kWhile | 2 | 6 |" in text


def test_the_full_run_takes_the_flags_of_the_fastest_resnet20_step(tmp_path):
    """r20_full_best reads the session's r20_* step times; a tiny budget skips the run itself."""
    work = tmp_path / "work"
    work.mkdir()
    for name, ms in (("default", 1.7), ("conv_fusion", 1.2), ("conv_fusion_while", 1.3)):
        (work / f"r20_{name}.json").write_text(json.dumps({"rows": [{"step_ms": ms}]}))
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(work), "BUDGET_S": "1"}
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh")],
        env={**env, "ITEMS": "r20_full_best"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "fastest ResNet-20 step: conv_fusion {'default': 1.7, 'conv_fusion': 1.2" in out.stderr
    assert "r20_full_best: skipped" in (work / "skipped.txt").read_text()
    # these made-up results lack most fields: their table says so, the rest of the summary is kept
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "(could not summarise r20_" in text
    assert "r20_conv_fusion_while.json: KeyError 'environment')" in text
    assert "r20_full_best: skipped" in text


def test_summary_marks_rows_compiled_with_the_layout_and_donation_experiments(tmp_path):
    result = json.loads((RESULTS / "r20_synth.json").read_text())
    for row in result["rows"]:
        row.update(state_layout="auto", donate=False)
    (tmp_path / "r20_layouts.json").write_text(json.dumps(result))
    rows = [line for line in summary(tmp_path).splitlines() if line.startswith("| r20_layouts")]
    assert rows and all("| r20_layouts `--state_layout auto` `--no_donate` |" in line for line in rows)


def test_summary_tables_the_input_pipelines_end_to_end(tmp_path):
    """input_pipeline.py --e2e rows (e2e_tfdata.json, e2e_dali_nocmdbuf.json) become one table."""
    row = {
        "pipeline": "dali", "model": "imagenet ResNet-50", "image_size": 224, "batch": 256,
        "dtype": "bfloat16",
        "images_per_s": 6543.2, "images_per_s_min_max": [6400.0, 6600.0], "host_cpu_ms_per_image": 0.41,
        "xla_flags": "--xla_gpu_enable_command_buffer=",
    }  # fmt: skip
    (tmp_path / "e2e_dali_nocmdbuf.json").write_text(json.dumps({"meta": {}, "e2e": [row]}))
    tf_row = {**row, "pipeline": "tfdata", "xla_flags": "", "images_per_s": 3210.0}
    (tmp_path / "e2e_tfdata.json").write_text(json.dumps({"meta": {}, "e2e": [tf_row]}))
    text = summary(tmp_path)
    assert (
        "| e2e_dali_nocmdbuf | dali | imagenet ResNet-50 224px | 256 | bfloat16 | 6,543 (6,400-6,600) | 0.41 "
        "| `--xla_gpu_enable_command_buffer=` |" in text
    )
    assert (
        "| e2e_tfdata | tfdata | imagenet ResNet-50 224px | 256 | bfloat16 | 3,210" in text
        and "(none)" in text
    )
