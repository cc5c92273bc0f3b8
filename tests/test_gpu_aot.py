"""benchmarks/gpu_aot.py's reading of XLA:GPU dumps.

The fixtures in tests/data/gpu_aot are real compile-only dumps for an H100 target (jax 0.11.2 with
jax-cuda13-plugin, no GPU) of one small jitted function named like the trainer's update: three
SGD steps of a 3x3 bf16 convolution in a `fori_loop` (`--xla_gpu_graph_min_graph_size=1`, so that
even this small program gets command buffers). `default` has XLA's default flags; `fused` adds
`--xla_gpu_experimental_enable_conv_fusion=true --xla_gpu_enable_command_buffer=+WHILE`.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "gpu_aot"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_aot  # noqa: E402


def test_cudnn_calls_split_the_graphs_and_the_loop_is_run_by_the_host():
    r = gpu_aot.read_dump(DATA / "default")
    t, h = r["thunks"], r["hlo"]
    assert r["module"] == "module_0001.jit_multi_step"
    assert t["top_level"] == {"kCommandBuffer": 2, "kWhile": 1}
    (loop,) = t["while_loops"]
    assert loop == {
        "condition": {"kCustomKernel": 1},
        "body": {"kCommandBuffer": 3, "kConvolution": 2},
        "in_command_buffer": False,
    }
    assert h["while_trip_counts"] == [3]
    # 3 top-level launches, then per iteration the condition's kernel and the body's 5 thunks
    assert t["host_issued_per_call"] == 3 + 3 * (1 + 5)
    assert t["in_command_buffers"] == {"kCustomKernel": 5, "kCopy": 1}
    assert h["custom_calls"] == {"__cudnn$convForward": 1, "__cudnn$convBackwardFilter": 1}
    assert h["cudnn_calls"] == 2 and h["library_gemm_calls"] == 0
    assert h["fusion_kinds"] == {"kLoop": 6} and h["fusion_backend_kinds"] == {}
    # before the thunk passes there were no command buffers at all
    assert "kCommandBuffer" not in r["thunks_before_thunk_passes"]["all"]


def test_xla_convolution_kernels_let_the_whole_loop_be_one_graph_launch():
    r = gpu_aot.read_dump(DATA / "fused")
    t, h = r["thunks"], r["hlo"]
    assert t["top_level"] == {"kCommandBuffer": 1}
    (loop,) = t["while_loops"]
    assert loop["in_command_buffer"] and loop["body"] == {"kCustomKernel": 5}
    assert t["host_issued_per_call"] == 1
    assert "kConvolution" not in t["all"] and h["custom_calls"] == {} and h["cudnn_calls"] == 0
    assert h["fusion_backend_kinds"] == {"conv_fprop_fusion_comp": 1, "conv_wgrad_fusion_comp": 1}


def test_from_dump_prints_the_counts_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_aot.py"), "--from_dump", str(DATA / "fused"),
         f"--json={out}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "(3 steps per call, from its loop's trip count)" in run.stdout
    assert "host-issued per call 1, per step 0.3" in run.stdout
    assert "while x3 (in a command buffer)" in run.stdout
    (row,) = json.loads(out.read_text())
    assert row["thunks"]["host_issued_per_call"] == 1


def test_a_folder_without_a_training_step_dump_is_one_clear_error(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_aot.py"), "--from_dump", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"no optimized HLO of jit_train_step or jit_multi_step in {tmp_path} (XLA_FLAGS=--xla_dump_to=...)"
    )
