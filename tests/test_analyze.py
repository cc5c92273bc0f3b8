"""The analysis commands on real (tiny) runs: Figure 7 responses and per-block gradient norms."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, checkpoint_steps, damage_checkpoint, tiny_config

from resnet_jax import analyze, models, probes, report, train

pytestmark = pytest.mark.needs_trainer
TINY = str(ROOT / "tests" / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """plain-8 and ResNet-8, two steps each on synthetic data, one checkpoint (step 2)."""
    out = {}
    for name, shortcut in (("plain", "none"), ("resnet", "A")):
        workdir = tmp_path_factory.mktemp(name)
        cfg = tiny_config(
            num_train_steps=2, log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=2,
            **{"model.shortcut": shortcut},
        )  # fmt: skip
        train.train_and_evaluate(cfg, str(workdir))
        out[name] = workdir
    return out


def read_csv(path: pathlib.Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_responses_of_plain_and_residual_nets(runs, tmp_path, capsys):
    workdirs = f"{runs['plain']},{runs['resnet']}"
    assert analyze.main(["responses", f"--workdir={workdirs}", f"--out={tmp_path}"]) == 0
    rows = read_csv(tmp_path / "responses.csv")
    # depth 6n+2 = 8: the 3x3 stem and the 6n = 6 3x3 convolutions of the blocks
    for net in ("plain-8", "ResNet-8"):
        mine = [r for r in rows if r["net"] == net]
        assert [int(r["layer_index"]) for r in mine] == list(range(1, 8))
        assert mine[0]["layer"] == "bn1" and mine[-1]["layer"] == "stage3_block0/bn2"
        assert {r["step"] for r in mine} == {"2"} and {r["examples"] for r in mine} == {"64"}
        assert all(float(r["std"]) > 0 and float(r["std_all"]) >= float(r["std"]) - 1e-9 for r in mine)
    assert (tmp_path / "responses.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "plain-8" in out and "stage2_block0/bn1" in out and "responses.png" in out


def test_max_examples_spans_a_class_sorted_evaluation_split():
    """An image folder's test split is sorted by class: --max_examples takes an evenly spaced subset,
    not the first N (which would be all of class 0); streamed data keeps its first N."""
    labels = np.repeat(np.arange(10), 10)  # 100 examples, class by class

    def eval_batches(size=16):
        for lo in range(0, 100, size):
            idx = np.arange(lo, lo + size)
            yield {"index": np.minimum(idx, 99).astype(np.int32), "mask": idx < 100}

    inputs = types.SimpleNamespace(num_eval=100, device_held=True, host_eval=eval_batches)
    batches = list(analyze.eval_subset(inputs, 20))
    assert all(len(b["index"]) == 16 for b in batches)  # the evaluation's batch shape: no recompile
    used = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert len(used) == 20 and len(set(used)) == 20
    assert sorted(np.bincount(labels[used], minlength=10)) == [2] * 10

    inputs.device_held = False
    used = np.concatenate([b["index"][b["mask"]] for b in analyze.eval_subset(inputs, 20)])
    assert used.tolist() == list(range(20))
    inputs.device_held = True
    assert sum(int(b["mask"].sum()) for b in analyze.eval_subset(inputs, 0)) == 100


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def bn_eval(x: jax.Array, params: dict, stats: dict) -> jax.Array:
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def test_residual_response_is_the_bn_output_before_the_addition(runs):
    cfg = analyze.read_config(str(runs["resnet"]))
    net = analyze.load_net(cfg, "r", str(runs["resnet"]), step=2, at_init=False)
    assert net.step == 2
    spaced = np.arange(24) * net.inputs.num_eval // 24  # the examples --max_examples=24 takes
    batch = {"index": spaced.astype(np.int32), "mask": np.ones(24, bool)}
    images, _, _ = net.inputs.eval_images({**batch, "held": net.inputs.held})
    p, s = net.variables["params"], net.variables["batch_stats"]
    x = jax.nn.relu(bn_eval(conv3x3(images, p["conv1"]["kernel"]), p["bn1"], s["bn1"]))  # the stem
    b, bs = p["stage1_block0"], s["stage1_block0"]
    r1 = bn_eval(conv3x3(x, b["conv1"]["kernel"]), b["bn1"], bs["bn1"])
    r2 = bn_eval(conv3x3(jax.nn.relu(r1), b["conv2"]["kernel"]), b["bn2"], bs["bn2"])
    layers = probes.response_layers(p)
    got = jax.jit(lambda v, x: probes.layer_responses(net.model, v, x, layers))(net.variables, images)
    np.testing.assert_allclose(got["stage1_block0/bn1"], r1, atol=1e-4)  # before the ReLU
    np.testing.assert_allclose(got["stage1_block0/bn2"], r2, atol=1e-4)  # before the addition
    # (the probe and this recomputation are two programs: 3 BN'd 3x3 convs of sqrt(144) u each on O(1)
    # values, ~1e-6; atol 1e-4 is far below the O(1) change that a ReLU or the addition would make)
    assert float(r1.min()) < 0 and not np.allclose(r2, jax.nn.relu(r2 + x), atol=1e-2)
    rows = analyze.responses(net, max_examples=24)
    want = float(np.asarray(r2, np.float64).std(axis=(0, 1, 2)).mean())
    assert rows[2]["layer"] == "stage1_block0/bn2" and rows[2]["examples"] == 24
    # float32 moments over 24 x 32 x 32 values per channel vs a float64 std: sqrt(24,576) u = 9e-6 for
    # the mean square, doubled by the variance's cancellation (rtol 1e-4)
    np.testing.assert_allclose(rows[2]["std"], want, rtol=1e-4)


def test_gradients_at_init_and_at_a_checkpoint(runs, tmp_path, capsys):
    argv = ["gradients", f"--config={TINY}:plain", f"--config={TINY}", f"--workdir={runs['resnet']}"]
    assert analyze.main([*argv, "--step=2", "--batches=2", f"--out={tmp_path}"]) == 0
    rows = read_csv(tmp_path / "gradients.csv")
    nets = {r["net"]: [] for r in rows}
    for r in rows:
        nets[r["net"]].append(r)
    assert list(nets) == ["ResNet-8 at step 2", "plain-8 at init", "ResNet-8 at init"]
    for net_rows in nets.values():  # stem, 3n = 3 blocks, fc
        assert [r["block"] for r in net_rows] == [
            "stem",
            "stage1_block0",
            "stage2_block0",
            "stage3_block0",
            "fc",
        ]
        # finite and not exploded: a ResNet-8's per-block gradient norms at lr 0.1 are O(0.1..10)
        assert all(0 < float(r["grad_norm"]) < 1e3 for r in net_rows)
    # same seed, same weights at init: only the shortcuts differ, and they change every block's gradient
    plain, res = (
        np.array([float(r["grad_norm"]) for r in nets[k]]) for k in ("plain-8 at init", "ResNet-8 at init")
    )
    assert not np.allclose(plain[:4], res[:4], rtol=1e-3)  # shortcuts change the norms by O(1), not 1e-3
    assert (tmp_path / "gradients.png").stat().st_size > 10_000
    assert "at init" in capsys.readouterr().out


def test_gradients_of_a_run_trained_with_steps_per_call_are_those_of_single_steps():
    """A run fused k steps per call (the GPU setting): its gradients use the same batches, one at a time."""
    single, fused = (
        analyze.gradients(analyze.load_net(tiny_config(steps_per_call=k), "r", None, None, True), 2)
        for k in (1, 2)
    )
    assert [r["block"] for r in fused] == [r["block"] for r in single]
    # the same program on the same batches: equal up to the last bits of a norm's square root (rtol 1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in fused], [r["grad_norm"] for r in single], rtol=1e-6)


def test_scanned_runs_are_analysed_unstacked():
    cfg = tiny_config(**{"model.depth": 20, "model.scan_blocks": True})
    net = analyze.load_net(cfg, "r20", None, None, at_init=True)
    layers = probes.response_layers(net.variables["params"])
    assert len(layers) == 19 and layers[4] == ("stage1_block1", "bn2")
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    stacked = models.convert_variables(net.variables, to_scan=True)  # the checkpoint's layout
    assert "stage1_scan" in stacked["params"] and "stage1_block1" in net.variables["params"]
    scanned = jax.jit(net.trained_model.apply)(stacked, images)
    # scanned vs unrolled programs of ResNet-20 on O(1) logits: regrouped sums over 19 layers, ~19 x 2 x
    # sqrt(576) x u = 5e-5 (helpers.reordered_sum_rtol); atol 1e-4
    np.testing.assert_allclose(jax.jit(net.model.apply)(net.variables, images), scanned, atol=1e-4)


def test_help_without_a_command_prints_the_usage(capsys):
    assert analyze.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m resnet_jax.analyze responses --workdir=" in out
    assert "<responses|gradients> --help" in out


def test_bad_input_is_one_sentence_and_exit_2(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(runs["plain"] / "config.json", empty / "config.json")
    cases = [
        (["plot"], "must be one of responses, gradients"),
        (["responses", f"--workdir={empty}"], "no checkpoints in"),
        (["responses", f"--workdir={runs['plain']}", "--step=7"], "no checkpoint for step 7"),
        (["responses", f"--workdir={tmp_path / 'missing'}"], "no such run directory"),
        (["gradients"], "give --workdir"),
    ]
    for argv, words in cases:
        assert analyze.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, (argv, err)
    assert json.loads((empty / "config.json").read_text())["model"]["shortcut"] == "none"


def test_a_damaged_latest_checkpoint_is_read_around_and_left_in_place(tmp_path, capsys):
    """analyze falls back to the previous checkpoint but renames nothing: only a resuming run sets
    damaged checkpoints aside."""
    workdir = tmp_path / "run"
    cfg = tiny_config(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4)
    train.train_and_evaluate(cfg, str(workdir))
    damage_checkpoint(workdir, 4)
    before = sorted(str(p.relative_to(workdir)) for p in (workdir / "checkpoints").rglob("*"))
    argv = ["gradients", f"--workdir={workdir}", "--batches=1", f"--out={tmp_path / 'out'}"]
    assert analyze.main(argv) == 0
    # a handled fault: one warning line, on stderr (#14)
    assert f"checkpoint {workdir / 'checkpoints' / '4'} is unreadable" in capsys.readouterr().err
    assert {r["net"] for r in read_csv(tmp_path / "out" / "gradients.csv")} == {"ResNet-8 at step 2"}
    assert checkpoint_steps(workdir) == [2, 4]
    assert sorted(str(p.relative_to(workdir)) for p in (workdir / "checkpoints").rglob("*")) == before


def test_a_run_in_a_gs_bucket_is_analysed_and_reported_there(gs_bucket, capsys):
    """The trainer writes to gs:// (conftest.gs_bucket: orbax's GCS paths, a local store), analyze and
    report read the run there and write their files beside it."""
    run = "gs://b/sweep/resnet8-seed0"
    train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2), run)
    local = gs_bucket / "b" / "sweep" / "resnet8-seed0"
    assert (local / "checkpoints" / "2" / "commit_success.txt").exists()  # a GCS checkpoint, not renamed
    assert analyze.main(["gradients", f"--workdir={run}", "--batches=1"]) == 0
    assert f"wrote {run}/analysis/gradients.csv, {run}/analysis/gradients.png" in capsys.readouterr().out
    rows = read_csv(local / "analysis" / "gradients.csv")
    assert len(rows) == 5 and {r["net"] for r in rows} == {"ResNet-8 at step 2"}
    assert (local / "analysis" / "gradients.png").read_bytes()[:4] == b"\x89PNG"
    (row,) = report.report("gs://b/sweep")
    assert (row["point"], row["done"], row["steps"]) == ("resnet8", 1, 2)
    assert (gs_bucket / "b" / "sweep" / "results.md").exists()


@pytest.mark.parametrize("depth, count", [(18, 16), (50, 16)])
def test_imagenet_layers_are_the_3x3_convolutions(depth, count):
    """Basic blocks: both BNs; bottlenecks: bn2 only; the 7x7 stem and 1x1 projections never."""
    model = models.create("imagenet", depth, "B")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    layers = probes.response_layers(shapes["params"])
    assert len(layers) == count and ("bn1",) not in layers
    assert {p[-1] for p in layers} == ({"bn1", "bn2"} if depth == 18 else {"bn2"})
