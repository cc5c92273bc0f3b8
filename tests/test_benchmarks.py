"""benchmarks/train_step.py end to end on a tiny config: the JSON it writes has every field."""

import importlib.util
import json
import math

from conftest import ROOT


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_writes_its_fields(tmp_path):
    bench = load_benchmark("train_step")
    out = tmp_path / "ts.json"
    argv = [
        "--config=tests/configs/tiny.py",
        "--steps=2",
        "--warmup=1",
        "--repeats=1",
        "--batch_size=8",
        "--set=data.image_size=16",
        "--compilation_cache",
        f"--json={out}",
    ]
    result = bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    env = result["environment"]
    for key in ("jax", "devices", "backend", "date_utc", "load_average"):
        assert key in env
    (row,) = result["rows"]
    assert row["depth"] == 8 and row["batch_size"] == 8 and row["data"] == "synthetic"
    assert row["timed_steps"] == 2 and row["steps_per_call"] == 1
    for key in ("lower_s", "compile_s", "first_run_s", "step_ms", "images_per_s", "loop_images_per_s"):
        assert row[key] > 0, key
    assert math.isclose(row["images_per_s"], 8 / (row["step_ms"] / 1e3))
    assert math.isfinite(row["final_loss"])
    assert row["analytic_macs_per_image"] > 0 and row["loops_hide_flops"] is False
    assert 0.5 < row["xla_over_analytic"] < 1.5  # XLA's count of the step against 6 x multiply-adds
    assert row["device_count"] == 8 and row["mfu_xla"] is None  # CPU: no peak, no MFU


def test_peak_table_matches_device_kinds():
    bench = load_benchmark("train_step")
    assert bench.peak_bf16("NVIDIA H200", "gpu") == 989e12
    assert bench.peak_bf16("NVIDIA H100 80GB HBM3", "gpu") == 989e12
    assert bench.peak_bf16("NVIDIA H100 PCIe", "gpu") == 756e12
    assert bench.peak_bf16("NVIDIA A100-SXM4-80GB", "gpu") == 312e12
    assert bench.peak_bf16("TPU v5 lite", "tpu") == 197e12
    assert bench.peak_bf16("cpu", "cpu") is None
