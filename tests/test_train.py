"""The trainer: end to end on real CIFAR JPEGs, sharding equivalence, BN modes, resume, exact eval."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    CIFAR_TAR,
    assert_trees_equal,
    checkpoint_steps,
    read_metrics,
    reordered_sum_rtol,
    restore_state,
    tiny_config,
)
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import config, models, optim, train
from resnet_jax.inputs import Inputs, device_held_inputs, to_global
from resnet_jax.losses import cross_entropy, topk_errors


def test_end_to_end_cifar20_on_the_jpeg_archive(tmp_path):
    """ResNet-20 for a few dozen steps on real images: every output is written and the loss falls."""
    cfg = tiny_config(
        **{
            "model.depth": 20,
            "batch_size": 32,
            "num_train_steps": 36,
            "log_every_steps": 12,
            "eval_every_steps": 36,
            "checkpoint_every_steps": 12,
            "data.name": "cifar10",
            "data.path": str(CIFAR_TAR),
            "data.val_split": 500,
            "data.eval_batch_size": 256,
        }
    )
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    assert summary["done"] and summary["step"] == 36 and summary["params"] == 269_722
    assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 20
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoint_steps(tmp_path) == [12, 24, 36]
    records = read_metrics(tmp_path)
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == [12, 24, 36]
    for key in ("epoch", "train/top1_error", "lr", "images_per_sec", "wall_time_s"):
        assert key in train_records[-1]
    assert train_records[-1]["train/loss"] < train_records[0]["train/loss"] - 0.1
    evals = [r for r in records if "eval/top1_error" in r]
    assert len(evals) == 1 and evals[0]["eval/count"] == 500 and evals[0]["step"] == 36
    assert summary["final_eval_top1_error"] == evals[0]["eval/top1_error"] < 90.0


def one_step(cfg, mesh):
    """Initialise and take one step on `mesh`; returns (state, metrics) on the host."""
    inputs = device_held_inputs(cfg, mesh, jnp.float32)
    model = models.build(config.model_options(cfg, mesh.devices.size), inputs.num_classes)
    tx, _ = optim.create(cfg, cfg.batch_size, 10, 100)
    state = train.init_state(model, tx, cfg.seed, inputs.image_shape, mesh)
    batch = next(inputs.train_batches(0))
    step = jax.jit(
        lambda s, b: train.train_step(s, b, model=model, tx=tx, inputs=inputs, skip_nonfinite=False)
    )
    return jax.device_get(step(state, batch)), model, inputs


def mesh_of(n: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:n]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def test_eight_device_global_bn_step_equals_one_device_step():
    assert jax.device_count() == 8
    cfg = tiny_config(batch_size=32)
    (s1, m1), _, _ = one_step(cfg, mesh_of(1))
    (s8, m8), _, _ = one_step(cfg, mesh_of(8))
    # The same per-example values; the batch sums (32 x 32 x 32 terms) are grouped otherwise (one device's
    # reductions vs 8 partial sums and an all-reduce): 4 sums per BN layer and the gradients', one step
    # (3.1e-4 for ResNet-8's 7 BN layers; the 1e-5 used before held on the machine it was written on).
    bn_layers = len(jax.tree.leaves(s1.batch_stats)) // 2
    tol = reordered_sum_rtol(32 * 32 * 32, sums=4 * bn_layers + 1)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), s1, s8)


@pytest.mark.parametrize("mode,group", [("per_device", 4), ("ghost", 2)])
def test_bn_modes_normalise_over_their_groups(mode, group):
    """The step's BN statistics equal those of each group (device shard / ghost group) on its own."""
    cfg = tiny_config(batch_size=32, **{"model.bn": mode, "model.bn_group_size": group})
    mesh = mesh_of(8)
    assert config.bn_group_size(cfg, 8) == group
    (state, _), model, inputs = one_step(cfg, mesh)

    # Recompute the same batch on the host, one group at a time, with whole-batch BN.
    plain = models.create("cifar", 8, "A", inputs.num_classes)
    tx, _ = optim.create(cfg, cfg.batch_size, 10, 100)
    init = jax.device_get(train.init_state(model, tx, cfg.seed, inputs.image_shape, mesh_of(1)))
    batch = next(inputs.host_train(0))
    rng = jax.random.fold_in(jax.random.wrap_key_data(init.rng), 0)
    images, _ = inputs.train_images(rng, {"index": jnp.asarray(batch["index"]), "held": inputs.held})
    variables = {"params": init.params, "batch_stats": init.batch_stats}
    stats = [
        plain.apply(variables, images[i : i + group], train=True, mutable=["batch_stats"])[1]["batch_stats"]
        for i in range(0, 32, group)
    ]
    expected = jax.tree.map(lambda *s: sum(s) / len(s), *stats)
    # Another program (the sharded step vs one group at a time on the host) sums each group's 2 x 32 x 32
    # values in another order: ~sqrt(2048) u = 2.7e-6 relative per moment, over 7 BN layers in sequence
    # ~2e-5 (rtol 2e-4 leaves 10x); atol for the means near 0. A wrong group (the whole batch) differs
    # by > 1e-3 (asserted below).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), state.batch_stats, expected
    )
    # ...and differ from whole-batch statistics.
    whole = plain.apply(variables, images, train=True, mutable=["batch_stats"])[1]["batch_stats"]
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), state.batch_stats, whole)
    assert max(jax.tree.leaves(diff)) > 1e-3  # other statistics: O(0.1) apart, 1e-3 is 5x the tolerance above


def test_resume_gives_the_same_result_as_a_straight_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_and_evaluate(tiny_config(num_train_steps=8, eval_every_steps=8), str(straight))
    train.train_and_evaluate(tiny_config(num_train_steps=4, eval_every_steps=4), str(resumed))
    summary = train.train_and_evaluate(tiny_config(num_train_steps=8, eval_every_steps=8), str(resumed))
    assert summary["step"] == 8
    assert_trees_equal(restore_state(straight, 8), restore_state(resumed, 8))

    def train_losses(workdir):
        return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}

    assert train_losses(straight) == train_losses(resumed)
    final = [r for r in read_metrics(resumed) if r["step"] == 8 and "eval/loss" in r]
    assert final[0]["eval/loss"] == [r for r in read_metrics(straight) if "eval/loss" in r][-1]["eval/loss"]


def test_a_best_eval_error_of_zero_survives_a_resume(tmp_path):
    """A restored best of 0.0% is a best, not "no evaluation yet" (it was read as `or math.inf`)."""
    train.train_and_evaluate(tiny_config(num_train_steps=4, eval_every_steps=4), str(tmp_path))
    clock = tmp_path / "checkpoints" / "4" / "clock" / "metadata"
    saved = json.loads(clock.read_text())
    edited = {k: v for k, v in saved.items() if k != "sha256"} | {"best_eval_top1_error": 0.0}
    # Sealed again as the trainer seals a clock (checkpoints.seal), else restore sets it aside as damaged.
    edited["sha256"] = hashlib.sha256(json.dumps(edited, sort_keys=True).encode()).hexdigest()
    clock.write_text(json.dumps(edited))
    summary = train.train_and_evaluate(tiny_config(num_train_steps=8, eval_every_steps=4), str(tmp_path))
    assert summary["step"] == 8 and summary["final_eval_top1_error"] > 0.0
    assert summary["best_eval_top1_error"] == 0.0
    assert checkpoint_steps(tmp_path)[-1] == 8


def test_a_continued_run_is_not_reported_done_before_it_ends(tmp_path):
    """A finished run given more steps drops its old summary.json ("done" at step 4) until it ends again."""
    train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["done"]
    longer = tiny_config(num_train_steps=8, **{"schedule.base_lr": 1e30})  # fails at its first log
    longer.allow_config_change = True  # the lr change that makes it fail
    with pytest.raises(config.TrainingError, match="non-finite loss"):
        train.train_and_evaluate(longer, str(tmp_path))
    assert not (tmp_path / "summary.json").exists()


def test_eval_counts_every_example_once_with_an_uneven_last_batch():
    """100 examples in batches of 24 on 8 devices: 5 batches, the last padded and masked."""
    cfg = tiny_config(**{"data.synthetic_examples": 100, "data.eval_batch_size": 24})
    mesh = mesh_of(8)
    (state, _), model, inputs = one_step(cfg, mesh)
    step = jax.jit(lambda s, b: train.eval_step(s, b, model=model, inputs=inputs))
    result = train.evaluate(state, inputs.eval_batches(), step)
    assert result["eval/count"] == 100
    # The same numbers straight from the model over all 100 examples at once.
    images = (inputs.held["eval_images"].astype(jnp.float32) - inputs.held["mean"]) / inputs.held["std"]
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
    labels = inputs.held["eval_labels"]
    top1 = 100 * float(jnp.mean(jnp.argmax(logits, -1) != labels))
    loss = float(cross_entropy(logits, labels).mean())
    # Counts of errors are exact; the mean loss sums 100 float32 terms in batches instead of at once:
    # at most 99 u = 5.9e-6 relative (rel 1e-5).
    assert result["eval/top1_error"] == pytest.approx(top1, abs=1e-6)
    assert result["eval/loss"] == pytest.approx(loss, rel=1e-5)


def test_in_memory_training_images_are_augmented_and_eval_images_are_not(tmp_path):
    """A real (non-synthetic) in-memory dataset: each step's key draws its own crops and flips."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    folder = {"data.name": "image_folder", "data.path": str(tmp_path), "data.cache_dir": str(tmp_path / "c")}
    inputs = device_held_inputs(tiny_config(**folder), mesh_of(1), jnp.float32)
    a = inputs.held
    index = np.arange(8, dtype=np.int32)
    x0, y0 = inputs.train_images(jax.random.key(0), {"index": index, "held": a})
    x1, y1 = inputs.train_images(jax.random.key(1), {"index": index, "held": a})
    unaugmented = (a["train_images"][index].astype(jnp.float32) - a["mean"]) / a["std"]
    np.testing.assert_array_equal(y0, y1)
    assert not np.allclose(x0, x1) and not np.allclose(x0, unaugmented)
    images, _, _ = inputs.eval_images({"index": index, "mask": np.ones(8, bool), "held": a})
    np.testing.assert_allclose(images, (a["eval_images"][index].astype(jnp.float32) - a["mean"]) / a["std"])


def test_nan_scores_count_as_errors():
    """A diverged model's NaN logits are wrong at top-1 and top-5, not right (NaN compares false)."""
    scores = jnp.array([[0.0, 1.0, 2.0], [jnp.nan, jnp.nan, jnp.nan], [3.0, jnp.nan, 0.0]])
    top1, top5 = topk_errors(scores, jnp.array([2, 0, 0]))
    np.testing.assert_array_equal(top1, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(top5, [0.0, 1.0, 1.0])


def test_ties_with_the_label_count_as_errors():
    """A constant classifier is wrong everywhere (a tie used to count for the label: 0% error)."""
    scores = jnp.zeros((2, 10)).at[1, 3].set(1.0).at[1, 4].set(1.0)  # row 1: classes 3 and 4 tie on top
    top1, top5 = topk_errors(scores, jnp.array([0, 3]))
    np.testing.assert_array_equal(top1, [1.0, 1.0])
    np.testing.assert_array_equal(top5, [1.0, 0.0])


def test_ten_crop_eval_averages_softmax_over_crops():
    model = models.create("cifar", 8, "A", 10)
    x = jax.random.normal(jax.random.key(0), (3, 2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x[:, 0])
    state = train.TrainState(jnp.int32(0), variables["params"], variables["batch_stats"], None, None)
    labels = jnp.array([1, 2, 3])
    inputs = Inputs(
        0, 0, 10, (32, 32, 3), False, None, {}, None, None, None, lambda b: (b["x"], labels, b["m"])
    )
    sums = train.eval_step(state, {"x": x, "m": jnp.array([True, True, False])}, model=model, inputs=inputs)
    probs = jnp.stack([jax.nn.softmax(model.apply(variables, x[:, c])) for c in range(2)]).mean(0)
    expected = -jnp.log(probs[jnp.arange(3), labels])[:2].sum()
    assert float(sums["count"]) == 2
    # The same softmax averages summed in another order (2 crops, 2 examples): a few u; rtol 1e-5 is the
    # float32 resolution of the log (u x |log p| ~ 3e-7) with 30x to spare.
    np.testing.assert_allclose(sums["loss"], expected, rtol=1e-5)


def test_learning_rate_schedules_follow_the_paper():
    cfg = tiny_config(**{"schedule.warmup": "constant", "schedule.warmup_steps": 400})
    _, sched = optim.create(cfg, 128, 390, 64_000)
    # pytest.approx's default rel=1e-6: the schedule's values are products of 2 or 3 float32 numbers
    # (a few u = 1e-7 relative).
    assert [float(sched(s)) for s in (0, 399, 400, 31_999, 32_000, 48_000)] == pytest.approx(
        [0.01, 0.01, 0.1, 0.1, 0.01, 0.001]
    )
    cfg = tiny_config(
        **{
            "schedule.boundaries_epochs": (30, 60),
            "schedule.scale_by_batch": True,
            "schedule.warmup": "linear",
            "schedule.warmup_epochs": 5.0,
            "schedule.warmup_lr": 0.1,
        }
    )
    _, sched = optim.create(cfg, 1024, 100, 9000)  # Goyal et al.: from 0.1 up to 0.1 x 1024/256
    assert float(sched(0)) == pytest.approx(0.1) and float(sched(250)) == pytest.approx(0.25)
    assert [float(sched(s)) for s in (500, 2999, 3000, 6000)] == pytest.approx([0.4, 0.4, 0.04, 0.004])


def test_weight_decay_can_exclude_bn_and_biases():
    params = {"conv1": {"kernel": 1}, "bn1": {"scale": 1, "bias": 1}, "fc": {"kernel": 1, "bias": 1}}
    assert optim.decay_mask(params, False) == {
        "conv1": {"kernel": True},
        "bn1": {"scale": False, "bias": False},
        "fc": {"kernel": True, "bias": False},
    }
    assert all(jax.tree.leaves(optim.decay_mask(params, True)))
    # ...and the optimizer applies the configured mask: a zero gradient moves only decayed weights.
    w = {"conv1": {"kernel": jnp.array(1.0)}, "bn1": {"scale": jnp.array(1.0), "bias": jnp.array(1.0)}}
    for decay_all, moved in ((False, {"kernel"}), (True, {"kernel", "scale", "bias"})):
        cfg = tiny_config(**{"optimizer.weight_decay": 0.5, "optimizer.decay_bn_and_bias": decay_all})
        tx, _ = optim.create(cfg, 16, 10, 10)
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
        changed = {p[-1].key for p, u in jax.tree_util.tree_leaves_with_path(updates) if u}
        assert changed == moved


def test_sgd_is_torch_style_so_a_new_lr_applies_at_once():
    """v <- m v + (g + wd w); w <- w - lr v, the lr of the step multiplying the whole velocity."""
    cfg = tiny_config(**{"schedule.boundaries": (2,), "optimizer.weight_decay": 0.5})
    tx, _ = optim.create(cfg, 16, 10, 10)
    w, g = {"kernel": jnp.array(1.0)}, {"kernel": jnp.array(2.0)}
    state, v, expected = tx.init(w), 0.0, float(w["kernel"])
    for lr in (0.1, 0.1, 0.01):  # the boundary: step 2 runs at 0.01
        updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        v = 0.9 * v + (2.0 + 0.5 * expected)
        expected -= lr * v
        assert float(w["kernel"]) == pytest.approx(expected, rel=1e-6)  # 3 float32 steps: ~3 x 2 u


def test_nonfinite_loss_stops_with_the_step_and_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"schedule.base_lr": 1e30, "num_train_steps": 8, "eval_every_steps": 8})
    with pytest.raises(
        config.TrainingError, match=r"non-finite loss at step \d+; last good checkpoint: step"
    ):
        train.train_and_evaluate(cfg, str(tmp_path))


def test_a_nonfinite_state_is_not_evaluated_between_log_steps(tmp_path):
    """Evaluations off the log grid check the steps since the last log first (nan_policy "stop")."""
    cfg = tiny_config(**{"schedule.base_lr": 1e30, "log_every_steps": 4, "eval_every_steps": 1})
    with pytest.raises(
        config.TrainingError, match=r"non-finite loss at step 1; last good checkpoint: step 1"
    ):
        train.train_and_evaluate(cfg, str(tmp_path))
    assert [r["step"] for r in read_metrics(tmp_path) if "eval/loss" in r] == [1]


def test_skip_policy_keeps_the_weights_of_nonfinite_steps(tmp_path):
    cfg = tiny_config(**{"schedule.base_lr": 1e30, "nan_policy": "skip"})
    summary = train.train_and_evaluate(cfg, str(tmp_path))
    assert summary["done"]
    # Step 1 blows the weights up; every later step is non-finite and leaves the state alone...
    a, b = restore_state(tmp_path, 2), restore_state(tmp_path, 4)
    assert_trees_equal(a["params"], b["params"])
    assert_trees_equal(a["batch_stats"], b["batch_stats"])
    momentum = lambda s: jax.tree.leaves(s["opt_state"][1][0])  # noqa: E731 - sgd's trace
    assert_trees_equal(momentum(a), momentum(b))
    # ...except the lr schedule's count, which must stay equal to the step (it was frozen at the first
    # skipped step, which moved every later lr boundary one step later per skipped step).
    assert int(b["opt_state"][1][1]["count"]) == int(b["step"]) == 4
    # The skipped steps' loss (and errors) are not averaged in as zeros: an interval whose every
    # step was skipped has no training loss, and says how many steps were skipped.
    train_records = [r for r in read_metrics(tmp_path) if "lr" in r]
    assert train_records[-1]["train/loss"] is None and train_records[-1]["train/top1_error"] is None
    assert train_records[-1]["train/skipped_steps"] == 2
    assert summary["final_train_top1_error"] is None


def test_steps_per_call_fuses_steps_without_changing_them(tmp_path):
    one, fused = tmp_path / "one", tmp_path / "fused"
    # Batch 64: BN over few examples amplifies float32 rounding differences between the two programs.
    big = {"batch_size": 64, "data.synthetic_examples": 256}
    train.train_and_evaluate(tiny_config(**big), str(one))
    train.train_and_evaluate(tiny_config(steps_per_call=2, **big), str(fused))
    a, b = restore_state(one, 4), restore_state(fused, 4)
    # XLA compiles a step inside the scan as another program: every sum may be regrouped (fusions,
    # YNNPACK convolutions), of N = 64 x 32 x 32 terms for a weight gradient or a BN moment, over the
    # 4 steps' sums in sequence (4 per BN layer and step, 7 BN layers): 1.8e-3 (helpers.reordered_sum_rtol;
    # the 1e-4 before was read off jax 0.11.2); a skipped, repeated or reordered step differs by ~1e-2.
    tol = reordered_sum_rtol(64 * 32 * 32, sums=4 * (4 * 7 + 1))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)
    losses = [[r["train/loss"] for r in read_metrics(d) if "train/loss" in r] for d in (one, fused)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=tol)


def test_steps_per_call_off_the_checkpoint_step_is_refused(tmp_path):
    """A checkpoint at step 3 resumed at 2 steps per call used to run on to step 5 of a 4-step run."""
    first = {"num_train_steps": 3, "log_every_steps": 1, "eval_every_steps": 3, "checkpoint_every_steps": 1}
    train.train_and_evaluate(tiny_config(**first), str(tmp_path))
    with pytest.raises(config.ConfigError, match="at step 3, not a multiple of steps_per_call"):
        train.train_and_evaluate(tiny_config(steps_per_call=2), str(tmp_path))
    assert checkpoint_steps(tmp_path)[-1] == 3


def test_batch_sharding_layout():
    mesh = mesh_of(8)
    batch = to_global({"index": np.arange(16, dtype=np.int32)}, mesh, True)
    assert batch["index"].sharding == NamedSharding(mesh, P("data"))
    assert os.environ["XLA_FLAGS"].endswith("8")


def test_profile_steps_write_a_trace(tmp_path):
    train.train_and_evaluate(tiny_config(profile_steps="1:2"), str(tmp_path))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


def test_a_profile_range_passed_by_a_resume_or_steps_per_call_is_traced_from_there(tmp_path):
    """Resumed at step 2 with 2 steps per call, "1:4" traces the call 2..4 (stop_trace used to raise)."""
    train.train_and_evaluate(tiny_config(num_train_steps=2, eval_every_steps=2), str(tmp_path))
    summary = train.train_and_evaluate(tiny_config(steps_per_call=2, profile_steps="1:4"), str(tmp_path))
    assert summary["step"] == 4
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))


def test_checkpoints_keep_the_latest_and_the_best_by_eval_error(tmp_path):
    cfg = tiny_config(num_train_steps=8, eval_every_steps=2, keep_checkpoints=1)
    train.train_and_evaluate(cfg, str(tmp_path))
    evals = {r["step"]: r["eval/top1_error"] for r in read_metrics(tmp_path) if "eval/top1_error" in r}
    best = min(evals, key=lambda s: (evals[s], s))  # the first step reaching the lowest error
    # 8 steps: the error rises again after step 6 (at 10 steps the last was best, testing nothing).
    assert best < 8, f"the last evaluation is the best ({evals}): keeping the best goes untested"
    assert checkpoint_steps(tmp_path) == [best, 8]


def test_console_progress_lines_come_early_and_leave_the_metrics_as_they_were(tmp_path, monkeypatch, capsys):
    """A CPU run's first log step can be minutes away (100 ResNet-20 steps: ~90 s): until it, a console line
    EARLY_LINE_S after the first step, then at doubling intervals; metrics.jsonl keeps the same records."""
    import re

    cfg = dict(num_train_steps=6, log_every_steps=6, eval_every_steps=6, checkpoint_every_steps=6)
    monkeypatch.setattr(train, "EARLY_LINE_S", float("inf"))  # never: the log steps' lines only
    train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "quiet"))
    assert re.findall(r"\] step (\d+)/6 ", capsys.readouterr().out) == ["6"]
    monkeypatch.setattr(train, "EARLY_LINE_S", 0.0)  # every step is late enough
    train.train_and_evaluate(tiny_config(**cfg), str(tmp_path / "early"))
    out = capsys.readouterr().out
    # each line reports the previous call's sums (the one it waited for): steps 1-4, then the log step 6
    assert re.findall(r"\] step (\d+)/6 ", out) == ["1", "2", "3", "4", "6"]
    assert re.search(r"\] step 3/6 epoch [\d.]+ loss \d+\.\d+ train error", out)  # the sums so far

    def records(workdir):  # without the wall-clock fields
        clock = ("wall_time_s", "images_per_sec", "images_per_sec_per_device", "eta_s")
        return [{k: v for k, v in r.items() if k not in clock} for r in read_metrics(workdir)]

    assert records(tmp_path / "early") == records(tmp_path / "quiet")
    assert_trees_equal(restore_state(tmp_path / "early", 6), restore_state(tmp_path / "quiet", 6))
