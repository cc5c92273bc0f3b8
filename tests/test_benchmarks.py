"""benchmarks/train_step.py and profile_step.py on a tiny config; the trace reader on made-up traces."""

import importlib.util
import json
import logging
import math

import jax
import pytest
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


def test_train_step_pack_measures_the_aggregate_images_of_the_packed_step(tmp_path):
    bench = load_benchmark("train_step")
    argv = ["--config=tests/configs/tiny.py", "--steps=2", "--warmup=1", "--repeats=1", "--batch_size=16",
            "--set=data.image_size=16", "--set=data.mean=channel", "--compilation_cache", "--no_loop",
            "--pack=2"]  # fmt: skip
    (row,) = bench.main(argv)["rows"]
    assert row["pack"] == 2 and row["timed_steps"] == 2
    assert math.isclose(row["images_per_s"], 2 * 16 / (row["step_ms"] / 1e3))  # both seeds' batches
    assert row["analytic_flops_per_step"] == 6 * row["analytic_macs_per_image"] * 2 * 16
    assert 0.5 < row["xla_over_analytic"] < 1.5 and math.isfinite(row["final_loss"])


def test_train_step_compiles_nothing_inside_its_timed_loops(monkeypatch, caplog):
    """Warm-up covers both timed loops: the "loop" repeats must not compile `accumulate`'s eager ops."""
    bench = load_benchmark("train_step")
    original, compiled_in = bench.timed_repeats, {}

    def timed_repeats(fn, repeats):
        start = len(caplog.records)
        with jax.log_compiles():
            out = original(fn, repeats)
        messages = [r.getMessage() for r in caplog.records[start:]]
        compiled_in[fn.__name__] = [m for m in messages if m.startswith("Compiling")]
        return out

    monkeypatch.setattr(bench, "timed_repeats", timed_repeats)
    jax.clear_caches()  # as in a fresh process: no eager op compiled yet
    argv = ["--config=tests/configs/tiny.py", "--steps=2", "--warmup=1", "--repeats=1", "--batch_size=8"]
    with caplog.at_level(logging.WARNING, logger="jax"):
        bench.main([*argv, "--set=data.image_size=16", "--compilation_cache"])
    assert compiled_in == {"step_loop": [], "trainer_loop": []}


def test_train_step_layout_and_donation_experiments_train_the_same_step():
    """--state_layout auto / --no_donate re-jit the trainer's own step function: same losses."""
    bench = load_benchmark("train_step")
    argv = ["--config=tests/configs/tiny.py", "--steps=2", "--warmup=1", "--repeats=1", "--batch_size=8"]
    argv += ["--set=data.image_size=16", "--compilation_cache", "--no_loop"]
    (default,) = bench.main(argv)["rows"]
    (changed,) = bench.main([*argv, "--state_layout=auto", "--no_donate"])["rows"]
    assert (default["state_layout"], default["donate"]) == ("default", True)
    assert (changed["state_layout"], changed["donate"]) == ("auto", False)
    # the same step with another state layout or without donation: the same arithmetic; rel 1e-6 ~ 16 u
    assert changed["final_loss"] == pytest.approx(default["final_loss"], rel=1e-6)
    assert default["memory"]["alias_size_in_bytes"] > 0 and changed["memory"]["alias_size_in_bytes"] == 0


def test_train_step_counts_xla_flops_without_running(tmp_path):
    """--flops_only: XLA's count of the compiled step (here XLA:CPU's, which includes convolutions)."""
    bench = load_benchmark("train_step")
    out = tmp_path / "flops.json"
    argv = ["--config=tests/configs/tiny.py", "--batch_size=8", "--set=data.image_size=16", "--flops_only"]
    result = bench.main([*argv, "--compilation_cache", f"--json={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result)) and "rows" not in result
    f = result["flops"]
    assert f["batch_size"] == 8 and f["dtype"] == "float32" and f["loops_hide_flops"] is False
    assert 0.5 < f["xla_over_analytic"] < 1.5 and f["xla_flops_per_step"] > 0


def test_peak_table_matches_device_kinds():
    bench = load_benchmark("train_step")
    assert bench.peak_bf16("NVIDIA H200", "gpu") == 989e12
    assert bench.peak_bf16("NVIDIA H100 80GB HBM3", "gpu") == 989e12
    assert bench.peak_bf16("NVIDIA H100 PCIe", "gpu") == 756e12
    assert bench.peak_bf16("NVIDIA H100 NVL", "gpu") == bench.peak_bf16("NVIDIA H200 NVL", "gpu") == 835e12
    assert bench.peak_bf16("NVIDIA GH200 480GB", "gpu") == 989e12
    assert bench.peak_bf16("TPU v5p", "tpu") == bench.peak_bf16("TPU v5", "tpu") == 459e12
    assert bench.peak_bf16("NVIDIA A100-SXM4-80GB", "gpu") == 312e12
    assert bench.peak_bf16("TPU v5 lite", "tpu") == 197e12
    assert bench.peak_bf16("cpu", "cpu") is None


def test_profile_step_finds_the_ops_of_the_step_on_cpu(tmp_path):
    bench = load_benchmark("profile_step")
    argv = [
        "--config=tests/configs/tiny.py",
        "--steps=2",
        "--warmup=1",
        "--batch_size=8",
        "--set=data.image_size=16",
        f"--trace_dir={tmp_path / 'trace'}",
        f"--json={tmp_path / 'p.json'}",
    ]
    result = bench.main(argv)
    assert "error" not in result, result.get("error")
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(result))
    p = result["profile"]
    assert p["module"] == "jit_train_step" and p["steps"] == 2 and result["step_ms_unprofiled"] > 0
    assert p["source"].startswith("host threads") and p["kernels_per_step"] >= 50  # a ResNet-8 step's HLO ops
    assert len(p["ops"]) == 25 and all(o["ms_per_step"] > 0 and o["count_per_step"] > 0 for o in p["ops"])
    cats = {c["category"]: c for c in p["categories"]}
    assert math.isclose(sum(c["ms_per_step"] for c in cats.values()), p["op_ms_per_step"])
    assert math.isclose(sum(c["share"] for c in cats.values()), 1)
    assert math.isclose(sum(c["count_per_step"] for c in cats.values()), p["kernels_per_step"])
    assert cats["convolution"]["count_per_step"] >= 14  # 7 convolutions forward, and their gradients
    assert 0 < p["device_ms_per_step"] <= p["span_ms_per_step"] and 0 < p["busy_fraction"] <= 1
    assert math.isclose(p["device_ms_per_step"], p["op_ms_per_step"]) and p["concurrency"] >= 1 - 1e-9
    # The saved trace reads again without running anything, to the same figures.
    again = bench.main(["--from_trace", str(tmp_path / "trace")])
    assert again["profile"] == p


def gpu_like_trace(events: list[tuple], lines: tuple[str, ...]):
    """An XSpace shaped like a CUPTI trace from (line, kernel, hlo_op, hlo_module, start_us, duration_us)."""
    names = sorted({e[1] for e in events} | {"PjitFunction(train_step)"})
    ids = {n: i for i, n in enumerate(names, 1)}
    meta = "".join(f'event_metadata {{ key: {i} value {{ id: {i} name: "{n}" }} }}' for n, i in ids.items())
    meta += 'stat_metadata { key: 1 value { id: 1 name: "hlo_op" } } '
    meta += 'stat_metadata { key: 2 value { id: 2 name: "hlo_module" } }'
    device = ""
    for i, line in enumerate(lines):
        device += f'lines {{ id: {i} name: "{line}" timestamp_ns: 0 '
        for ln, kernel, op, module, start, dur in events:
            if ln == line:
                stats = f'stats {{ metadata_id: 1 str_value: "{op}" }}' if op else ""
                stats += f'stats {{ metadata_id: 2 str_value: "{module}" }}' if module else ""
                device += f"events {{ metadata_id: {ids[kernel]} offset_ps: {start}000000 "
                device += f"duration_ps: {dur}000000 {stats} }} "
        device += "} "
    host = f'lines {{ id: 1 name: "python" events {{ metadata_id: {ids["PjitFunction(train_step)"]} '
    host += "offset_ps: 0 duration_ps: 3000000 } }"
    planes = f'planes {{ id: 1 name: "/device:GPU:0" {device} {meta} }} '
    planes += f'planes {{ id: 2 name: "/host:CPU" {host} {meta} }}'
    return jax.profiler.ProfileData.from_text_proto(planes)


def test_profile_step_reads_a_gpu_trace():
    bench = load_benchmark("profile_step")
    s0, s1 = "Stream #7(Kernel)", "Stream #9(Kernel,MemcpyD2D)"
    m = "jit_train_step"
    trace = gpu_like_trace(
        [
            (s0, "sm90_xmma_fprop_implicit_gemm", "custom-call.1", m, 0, 40),  # a cuDNN convolution
            (s0, "nchwToNhwcKernel", "custom-call.1", m, 40, 10),  # its layout kernel: the same op
            (s0, "loop_add_fusion", "loop_add_fusion.2", m, 60, 20),
            (s0, "kernel_x", "fusion.7", m, 100, 30),  # a fusion that holds a convolution (from the HLO)
            (s1, "input_reduce_fusion", "input_reduce_fusion", m, 70, 20),  # overlaps loop_add_fusion.2
            (s1, "MemcpyD2D", None, None, 150, 10),  # no annotation: keyed by its name, kept
            (s1, "other_kernel", "fusion.1", "jit_other", 200, 50),  # another module's kernel: left out
        ],
        lines=(s0, s1, "CUPTI overhead"),
    )
    p = bench.summarize(trace, steps=2, module="jit_train_step", convs=frozenset({"fusion.7"}))
    assert p["source"] == "plane /device:GPU:0, 2 stream line(s)"
    assert (
        p["kernels_per_step"] == 3
        and p["distinct_ops"] == 5
        and p["other_modules_ms_per_step"] == {"jit_other": 0.025}
    )
    assert math.isclose(p["device_ms_per_step"], 120e-3 / 2)  # [0, 50], [60, 90], [100, 130], [150, 160] us
    assert math.isclose(p["op_ms_per_step"], p["device_ms_per_step"]) and math.isclose(
        p["concurrency"], 130 / 120
    )
    assert math.isclose(p["span_ms_per_step"], 160e-3 / 2) and math.isclose(p["busy_fraction"], 0.75)
    ops = {o["op"]: o for o in p["ops"]}
    assert ops["custom-call.1"]["count_per_step"] == 1 and ops["custom-call.1"]["mean_us"] == 25
    assert ops["custom-call.1"]["kernel"] == "sm90_xmma_fprop_implicit_gemm"
    assert ops["loop_add_fusion.2"]["mean_us"] == 20 and ops["loop_add_fusion.2"]["ms_per_step"] == 0.0075
    cats = {c["category"]: c["ms_per_step"] for c in p["categories"]}
    # pytest.approx's default rel 1e-6: sums of a few float64 microsecond spans, exact to ~1e-16
    assert cats == pytest.approx(  # the 10 us overlap of the fusion and the reduction is split between them
        {
            "convolution": 0.04,
            "fusion": 0.0075,
            "reduce": 0.0075,
            "copy/transpose": 0.005,
            "collective": 0,
            "other": 0,
        }
    )
    assert bench.host_dispatch_ns(trace, calls=2) == 1500


def test_profile_step_lists_the_trace_when_it_finds_no_device_ops():
    bench = load_benchmark("profile_step")
    trace = gpu_like_trace([("CUPTI overhead", "overhead", None, None, 0, 1)], lines=("CUPTI overhead",))
    with pytest.raises(bench.NoDeviceOps, match=r"(?s)plane '/device:GPU:0'.*line 'CUPTI overhead'"):
        bench.summarize(trace, steps=1, module=None)


def test_profile_step_reads_xla_cpu_ops_from_the_host_threads():
    """XLA:CPU: the host's op events are the ops; an asynchronous one lasts until its "end: <op>" event."""
    bench = load_benchmark("profile_step")
    host_only = jax.profiler.ProfileData.from_text_proto(
        'planes { id: 2 name: "/host:CPU" '
        'lines { id: 1 name: "t1" events { metadata_id: 1 duration_ps: 1000000 '
        '  stats { metadata_id: 1 str_value: "conv.1" } stats { metadata_id: 2 uint64_value: 7 } } } '
        'lines { id: 2 name: "t2" events { metadata_id: 2 offset_ps: 9000000 duration_ps: 1000000 '
        "stats { metadata_id: 3 uint64_value: 7 } } } "
        'event_metadata { key: 1 value { id: 1 name: "conv.1" } } '
        'event_metadata { key: 2 value { id: 2 name: "end: conv.1" } } '
        'stat_metadata { key: 1 value { id: 1 name: "hlo_op" } } '
        'stat_metadata { key: 2 value { id: 2 name: "_p" } } '
        'stat_metadata { key: 3 value { id: 3 name: "_c" } } }'
    )
    host = bench.summarize(host_only, steps=1, module=None)
    assert host["kernels_per_step"] == 1 and host["op_ms_per_step"] == 0.01
    with pytest.raises(bench.NoDeviceOps, match="no device plane"):  # a GPU's host launches do not
        bench.summarize(host_only, steps=1, module=None, platform="gpu")


def test_conv_ops_follows_fusions_not_loops():
    bench = load_benchmark("profile_step")
    hlo = """HloModule jit_train_step

%fused_conv (p0: f32[8]) -> f32[8] {
  ROOT %convolution.3 = f32[8]{0} convolution(%p0, %p0), window={size=1}
}

%body (p: f32[8]) -> f32[8] {
  ROOT %convolution.4 = f32[8]{0} convolution(%p, %p), window={size=1}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %ynn_fusion.2 = f32[8]{0} fusion(%a), kind=kCustom, calls=%fused_conv
  %custom-call.5 = f32[8]{0} custom-call(%a), custom_call_target="__cudnn$convForward"
  %add_fusion = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_add
  ROOT %while.1 = f32[8]{0} while(%a), condition=%cond, body=%body
}
"""
    convs = bench.conv_ops(hlo)
    assert {"ynn_fusion.2", "custom-call.5"} <= convs and not {"add_fusion", "while.1"} & convs
    assert bench.module_name(hlo) == "jit_train_step"
    assert bench.category("ynn_fusion.2", "", convs) == "convolution"
    names = {
        ("all-reduce.3", ""): "collective",
        ("transpose_copy_fusion.1", ""): "copy/transpose",
        ("input_reduce_fusion.2", ""): "reduce",
        ("convert_fusion.1", ""): "fusion",  # "convert" is no convolution
        ("fusion.3", "cutlass_80_tensorop_gemm"): "convolution",  # by its kernel
        ("wrapped_broadcast", ""): "fusion",  # XLA:CPU's single elementwise ops
        ("sort.1", ""): "other",
    }
    assert {key: bench.category(*key) for key in names} == names


def test_attributed_time_splits_overlaps_and_adds_up_to_the_busy_time():
    bench = load_benchmark("profile_step")
    ev = [
        bench.OpEvent(n, n, None, s, e)
        for n, s, e in [("a", 0, 10), ("b", 5, 15), ("z", 20, 20), ("c", 20, 30)]
    ]
    assert bench.attributed_ns(ev) == [7.5, 7.5, 0.0, 10.0] and bench.busy_ns(ev) == 25


def test_input_pipeline_benchmark_measures_every_pipeline_side_by_side(tmp_path, cifar_tar):
    """--quick on a tiny generated folder: every row, the derived columns, and an ImageNet-like folder."""
    import importlib.util

    import numpy as np

    bench = load_benchmark("input_pipeline")
    try:  # find_spec raises, not returns None, when the parent package "nvidia" is missing too
        has_dali = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        has_dali = False
    out = tmp_path / "ip.json"
    argv = ["--quick", f"--workdir={tmp_path}", f"--cifar_tar={cifar_tar}", f"--json={out}"]
    result = bench.main(argv + ([] if has_dali else ["--skip=dali"]))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {r["pipeline"]: r for r in result["results"]}
    crops = ("inception", "paper", "center", "ten")
    expected = {f"flax-style {k} ({t})" for k in ("train", "eval") for t in ("float32", "uint8")}
    expected |= {f"ours {c} ({t})" for c in crops for t in ("float32", "uint8")}
    expected |= {f"ours {c} through the folder iterator ({t})" for c in crops for t in ("float32", "uint8")}
    expected |= {f"dali cpu {c} (float32)" for c in crops} if has_dali else set()
    assert set(rows) == expected
    for r in rows.values():
        ms = r["cpu_ms_per_image"]
        assert 0 < r["cpu_ms_min"] <= ms <= r["cpu_ms_max"] and r["wall_images_per_s"] > 0
        base = rows[f"flax-style {r['kind']} (float32)"]["cpu_ms_per_image"]
        assert math.isclose(r["speed_vs_flax"], base / ms) and math.isclose(r["cores_for_h200"], 7.0 * ms)
    stats = result["meta"]["folder"]
    sizes = [p.stat().st_size / 1024 for p in (tmp_path / "imagenet_like" / "train").rglob("*.JPEG")]
    assert stats["images"] == len(sizes) == 24
    # Calibrated on 12 of the images to 110 KB: the set's mean within 4 standard errors of it, plus 10%
    # for the calibration sample differing from the set.
    assert abs(stats["mean_kb"] - 110) < 4 * np.std(sizes) / math.sqrt(len(sizes)) + 11
    assert -3.0 < stats["spectrum_slope"] < -1.5  # natural images: about -2 (1/f amplitude)
    assert (tmp_path / "imagenet_like" / "val").is_dir()


def test_input_pipeline_end_to_end_feeds_the_trainers_step_from_the_folder(tmp_path, cifar_tar):
    """--e2e through train.setup with data.path = the generated folder: a row per feed, each trained."""
    import importlib.util

    bench = load_benchmark("input_pipeline")
    try:
        has_dali = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        has_dali = False
    feeds = [f for f in bench.E2E_FEEDS if has_dali or f != "dali"]
    argv = ["--quick", f"--workdir={tmp_path}", f"--cifar_tar={cifar_tar}", "--e2e", "--e2e_batch=8"]
    argv += [
        "--config=configs/cifar10.py:resnet8",
        "--e2e_steps=2",
        "--repeats=2",
        f"--e2e_pipelines={','.join(feeds)}",
    ]
    argv += [f"--set={kv}" for kv in ("data.name=imagenet2012", "data.num_classes=0", "data.image_size=32")]
    rows = {r["pipeline"]: r for r in bench.main(argv)["e2e"]}
    assert set(rows) == set(feeds)
    for r in rows.values():
        assert (
            r["images_per_s"] > 0 and r["host_cpu_ms_per_image"] > 0 and r["rounds"] == 1
        )  # --quick: one round
        assert math.isfinite(r["last_loss"]) and r["model"] == "cifar ResNet-8" and r["batch"] == 8
