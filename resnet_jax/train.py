"""The trainer: one jit-compiled, batch-sharded training step, from one CPU to a TPU pod.

Sections, in the order a run uses them: configuration checks, mesh, model and optimizer,
the train state, input feeding, the update and evaluation steps, checkpoints, metrics, and
the loop (`train_and_evaluate`). Parameters, BN statistics and optimizer state are
replicated over the mesh's `data` axis; every batch is sharded over it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import cluster, models, optim
from resnet_jax import data as data_lib
from resnet_jax.metrics import MetricWriter, ProgressClock, is_remote, write_whole


class ConfigError(ValueError):
    """A configuration mistake; the message is one sentence saying what to do."""


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, unusable checkpoints, ...)."""


# ---------------------------------------------------------------------------------------------
# Configuration checks: everything that can be wrong is found before anything compiles.


MODEL_KEYS = ("family", "depth", "shortcut", "stride_on", "bn", "bn_group_size", "init", "zero_init_residual")
DATA_KEYS = ("name", "path", "val_split", "mean", "num_classes", "image_size")
# Keys whose change on resume would silently change the run (batch order, step size); None: every key of
# the section. The run's length and the log, eval and checkpoint intervals may change.
RESUME_KEYS = {
    "": ("seed", "batch_size"),
    "model": MODEL_KEYS,
    "data": DATA_KEYS,
    "optimizer": None,
    "schedule": None,
}


def bn_group_size(cfg: ml_collections.ConfigDict, num_devices: int) -> int:
    """Examples per BN group: 0 (the whole global batch), one device's shard, or bn_group_size."""
    mode = cfg.model.bn
    if mode == "global":
        return 0
    if mode == "per_device":
        return cfg.batch_size // num_devices
    if mode == "ghost":
        return int(cfg.model.bn_group_size)
    raise ConfigError(f"model.bn must be 'global', 'per_device' or 'ghost'; got {mode!r}")


def check_config(cfg: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError (one sentence) for settings that cannot run; data checks are data.validate's."""
    m = cfg.model
    try:
        models.validate(m.family, m.depth, m.shortcut, m.stride_on, m.init)
    except models.ModelError as e:
        raise ConfigError(f"{e}") from None
    if m.stem_channels and m.stem_channels < 4:
        raise ConfigError(
            f"model.stem_channels must be 0 (off) or at least 4, e.g. 4 or 8; got {m.stem_channels}"
        )
    if m.zero_init_residual and m.shortcut == "none":
        raise ConfigError(
            "model.zero_init_residual=True would zero every block's output of a plain net (shortcut 'none'), "
            "so nothing before the FC could train: set it to False"
        )
    if cfg.batch_size <= 0 or cfg.batch_size % num_devices:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a positive multiple of the {num_devices} devices; "
            f"use e.g. {max(num_devices, cfg.batch_size // num_devices * num_devices)}"
        )
    group = bn_group_size(cfg, num_devices)
    if m.bn == "ghost" and group <= 0:
        raise ConfigError(
            "model.bn='ghost' needs model.bn_group_size, the examples per BN group (e.g. 32), dividing "
            f"the per-device batch of {cfg.batch_size // num_devices}"
        )
    if m.bn == "ghost" and (cfg.batch_size // num_devices) % group:
        raise ConfigError(
            f"model.bn_group_size {group} must divide the per-device batch of {cfg.batch_size // num_devices}"
        )
    if cfg.num_train_steps <= 0 and cfg.num_epochs <= 0:
        raise ConfigError("set num_train_steps or num_epochs to a positive number")
    if cfg.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"nan_policy must be 'stop' or 'skip'; got {cfg.nan_policy!r}")
    if cfg.steps_per_call < 1:
        raise ConfigError(f"steps_per_call must be >= 1; got {cfg.steps_per_call}")
    if cfg.schedule.name not in ("piecewise", "cosine"):
        raise ConfigError(f"schedule.name must be 'piecewise' or 'cosine'; got {cfg.schedule.name!r}")
    if cfg.schedule.warmup not in ("none", "constant", "linear"):
        raise ConfigError(
            f"schedule.warmup must be 'none', 'constant' or 'linear'; got {cfg.schedule.warmup!r}"
        )
    sch = cfg.schedule
    if sch.warmup != "none" and sch.warmup_steps <= 0 and sch.warmup_epochs <= 0:
        raise ConfigError(
            f"schedule.warmup={sch.warmup!r} needs its length: set schedule.warmup_steps or "
            "schedule.warmup_epochs (the paper's ResNet-110: 400 steps)"
        )
    if sch.warmup != "none" and sch.warmup_steps > 0 and sch.warmup_epochs > 0:
        raise ConfigError(
            f"schedule.warmup_steps ({sch.warmup_steps}) and schedule.warmup_epochs ({sch.warmup_epochs}) "
            "are both set: keep one (the other at 0)"
        )
    if m.dtype not in ("auto", *models.DTYPES):
        raise ConfigError(f"model.dtype must be 'auto' or one of {', '.join(models.DTYPES)}; got {m.dtype!r}")


def check_intervals(cfg: ml_collections.ConfigDict, total_steps: int) -> None:
    """Intervals longer than the run are mistakes (nothing would be logged or saved on time)."""
    # All of them in one sentence: a short try-out run (num_train_steps=40) usually has all three.
    bad = [
        f"{key} is {cfg[key]}"
        for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")
        if cfg[key] <= 0 or cfg[key] > total_steps
    ]
    if bad:
        listed = ", ".join(bad[:-1]) + " and " + bad[-1] if len(bad) > 1 else bad[0]
        raise ConfigError(f"{listed} but the run has {total_steps} steps; use 1..{total_steps}")
    if cfg.steps_per_call > 1:
        # Each call runs steps_per_call steps: a run whose length is no multiple of it would overshoot.
        if total_steps % cfg.steps_per_call:
            raise ConfigError(
                f"the run's {total_steps} steps must be a multiple of steps_per_call ({cfg.steps_per_call}); "
                "change num_train_steps (or num_epochs) or steps_per_call"
            )
        for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
            if cfg[key] % cfg.steps_per_call:
                raise ConfigError(
                    f"{key} ({cfg[key]}) must be a multiple of steps_per_call ({cfg.steps_per_call})"
                )


def compute_dtype(name: str) -> Any:
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return models.DTYPES[name]


# ---------------------------------------------------------------------------------------------
# Mesh, model, optimizer.


def create_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis `data` (Auto axis types)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def create_model(cfg: ml_collections.ConfigDict, num_classes: int, num_devices: int) -> models.ResNet:
    m = cfg.model
    return models.create(
        m.family,
        m.depth,
        m.shortcut,
        num_classes,
        dtype=compute_dtype(m.dtype),
        scan_blocks=m.scan_blocks,
        scan_unroll=m.scan_unroll,
        remat=m.remat,
        stride_on=m.stride_on,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        bn_group_size=bn_group_size(cfg, num_devices),
        zero_init_residual=m.zero_init_residual,
        init=m.init,
        stem_channels=m.stem_channels,
    )


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the config: the data position is `step`."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw threefry key data (uint32[2]); augmentation keys are fold_in(rng, step)


def init_state(model, tx, seed: int, image_shape: tuple[int, ...], mesh: Mesh) -> TrainState:
    """Create the state directly replicated on the mesh (one jit, no host copy)."""

    def init() -> TrainState:
        # rbg keys make the init cheap to compile; the result is a pure function of `seed`.
        variables = model.init(jax.random.key(seed, impl="rbg"), jnp.zeros((1, *image_shape), jnp.float32))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed + 1)),
        )

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


# ---------------------------------------------------------------------------------------------
# Loss and metrics (float32).


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def topk_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example top-1 and top-5 error indicators (float32); ties and NaN scores make an example wrong.

    The rank counts the other classes that score at least the label's score: a tie counts against
    the label (a constant classifier scores 100% error, not 0%). Every comparison with NaN is false,
    so without the NaN check a diverged model (NaN logits) would score 0% error.
    """
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    rank = jnp.sum(scores >= label_score, axis=-1) - 1  # other classes at or above the label
    nan = jnp.isnan(scores).any(axis=-1)
    return ((rank >= 1) | nan).astype(jnp.float32), ((rank >= 5) | nan).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Inputs. Device-resident data (CIFAR, image folders, synthetic) lives replicated on the
# devices and each step sends only the batch's indices; streamed data (TFDS/tf.data) sends
# the images. `Inputs` hides the difference from the loop.


@dataclasses.dataclass
class Inputs:
    """Where batches come from, and the jit-side function that turns a batch into images."""

    num_train: int
    num_eval: int
    num_classes: int
    image_shape: tuple[int, int, int]
    arrays: dict  # device arrays the jitted steps read (empty for streamed data)
    train_batches: Callable[[int], Iterator[dict]]  # start step -> host batches (global or local)
    eval_batches: Callable[[], Iterator[dict]]
    train_images: Callable  # (rng, batch, arrays) -> (images, labels) inside jit
    eval_images: Callable  # (batch, arrays) -> (images, labels, mask) inside jit
    resident: bool


def in_memory_inputs(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any) -> Inputs:
    """Put a whole small dataset on the devices (uint8, replicated); augment inside the step."""
    ds = data_lib.load_in_memory(cfg.data, cfg.seed, batch_size=cfg.batch_size)
    replicated = NamedSharding(mesh, P())
    arrays = {
        "train_images": jax.device_put(ds.train_images, replicated),
        "train_labels": jax.device_put(ds.train_labels.astype(np.int32), replicated),
        "eval_images": jax.device_put(ds.eval_images, replicated),
        "eval_labels": jax.device_put(ds.eval_labels.astype(np.int32), replicated),
        "mean": jax.device_put(np.asarray(ds.mean, np.float32), replicated),
        "std": jax.device_put(np.asarray(ds.std, np.float32), replicated),
    }
    n, m = len(ds.train_labels), len(ds.eval_labels)
    batch, eval_batch = cfg.batch_size, eval_batch_size(cfg, mesh)
    augment = ds.name != "synthetic"

    def train_batches(start: int) -> Iterator[dict]:
        for step in range(start, 2**62):
            yield {"index": data_lib.train_batch_indices(cfg.seed, step, batch, n)}

    def eval_batches() -> Iterator[dict]:
        for lo in range(0, m, eval_batch):
            idx = np.arange(lo, lo + eval_batch)
            yield {"index": np.minimum(idx, m - 1).astype(np.int32), "mask": idx < m}

    def train_images(rng, b, a):
        images = a["train_images"][b["index"]]
        if augment:
            images = data_lib.augment_cifar(rng, images)
        return data_lib.normalize(images, a["mean"], a["std"], dtype), a["train_labels"][b["index"]]

    def eval_images(b, a):
        images = data_lib.normalize(a["eval_images"][b["index"]], a["mean"], a["std"], dtype)
        return images, a["eval_labels"][b["index"]], b["mask"]

    return Inputs(
        n, m, ds.num_classes, tuple(ds.train_images.shape[1:]), arrays,
        train_batches, eval_batches, train_images, eval_images, resident=True,
    )  # fmt: skip


def streamed_inputs(cfg: ml_collections.ConfigDict, mesh: Mesh, dtype: Any) -> Inputs:
    """TFDS through tf.data on the host: each process reads its own part of every batch."""
    info = data_lib.dataset_info(cfg.data)
    eval_batch = eval_batch_size(cfg, mesh)

    def train_images(rng, b, a):
        return b["image"].astype(dtype), b["label"]

    def eval_images(b, a):
        return b["image"].astype(dtype), b["label"], b["mask"]

    return Inputs(
        info["num_train"], info["num_eval"], info["num_classes"], tuple(info["image_shape"]), {},
        lambda start: data_lib.tfds_train_iterator(cfg.data, cfg.batch_size, cfg.seed, start, dtype=dtype),
        lambda: data_lib.tfds_eval_iterator(cfg.data, eval_batch, dtype=dtype),
        train_images, eval_images, resident=False,
    )  # fmt: skip


def eval_batch_size(cfg: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """The evaluation batch, rounded up to a multiple of the device count."""
    b = cfg.data.eval_batch_size or cfg.batch_size
    d = mesh.devices.size
    return -(-b // d) * d


def is_resident(cfg: ml_collections.ConfigDict) -> bool:
    return data_lib.is_in_memory(cfg.data)


def to_global(batch: dict, mesh: Mesh, resident: bool, batch_axis: int = 0) -> dict:
    """Host batch -> arrays sharded over `data` along `batch_axis`.

    Device-resident inputs: every process computes the same global index batch and each device takes
    its own slice of it, wherever the mesh puts the process's devices (a TPU mesh may interleave hosts).
    Streamed inputs: each process already holds only its own examples.
    """
    sharding = NamedSharding(mesh, P(*([None] * batch_axis), "data"))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if resident and jax.process_count() > 1:
            out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


# ---------------------------------------------------------------------------------------------
# The update and evaluation steps.


def train_step(
    state: TrainState,
    batch: dict,
    arrays: dict,
    *,
    model,
    tx,
    inputs: Inputs,
    mesh: Mesh,
    skip_nonfinite: bool,
) -> tuple[TrainState, dict]:
    """One SGD step on one global batch; returns the new state and this step's metric sums."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, labels = inputs.train_images(rng, batch, arrays)
    images = jax.lax.with_sharding_constraint(images, NamedSharding(mesh, P("data")))

    def loss_fn(params):
        logits, new_vars = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        return cross_entropy(logits, labels).mean(), (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Every gradient element finite (a norm could overflow to inf on large but finite gradients).
    finite = jax.tree.reduce(lambda ok, g: ok & jnp.isfinite(g).all(), grads, jnp.isfinite(loss))
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    if skip_nonfinite:  # keep the old weights, move on to the next batch
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state.replace(step=state.step + 1))
        # ...but the optimizer's step counters (its integer leaves: the lr schedule's count) advance with
        # `step`, else every skipped step would shift the lr schedule (and the boundaries) one step later.
        new = new.replace(opt_state=jax.tree.map(keep_counters, new.opt_state, opt_state))
    top1, _ = topk_errors(logits.astype(jnp.float32), labels)
    # The sums cover the steps that were applied: a skipped step's loss and errors are not counted.
    metrics = {
        "loss": jnp.where(finite, loss, 0.0) * labels.shape[0],
        "top1_errors": jnp.where(finite, top1.sum(), 0.0),
        "count": jnp.where(finite, jnp.float32(labels.shape[0]), 0.0),
        "nonfinite": (~finite).astype(jnp.int32),
        "first_nonfinite": jnp.where(finite, jnp.int32(2**30), state.step),
    }
    return new, metrics


def keep_counters(kept: jax.Array, updated: jax.Array) -> jax.Array:
    """`updated` for an optimizer-state step counter (an integer leaf), else `kept`."""
    return updated if jnp.issubdtype(updated.dtype, jnp.integer) else kept


def accumulate(total: dict | None, metrics: dict) -> dict:
    """Sum metric dicts on the device (no host sync); first_nonfinite keeps the minimum."""
    if total is None:
        return metrics
    out = jax.tree.map(jnp.add, total, metrics)
    out["first_nonfinite"] = jnp.minimum(total["first_nonfinite"], metrics["first_nonfinite"])
    return out


def check_finite(summed: dict, last_good_checkpoint, policy: str) -> dict:
    """With nan_policy "stop", a non-finite loss or gradient ends the run naming the step."""
    if summed["nonfinite"] and policy == "stop":
        step = int(summed["first_nonfinite"])
        raise TrainingError(
            f"non-finite loss at step {step}; last good checkpoint: step {last_good_checkpoint}"
        )
    return summed


def pending_metrics(saved: dict | None) -> dict | None:
    """Metric sums restored from a checkpoint, with the dtypes `train_step` produces."""
    if not saved:
        return None
    ints = ("nonfinite", "first_nonfinite")
    return {k: jnp.asarray(v, jnp.int32 if k in ints else jnp.float32) for k, v in saved.items()}


def multi_step(state, batches, arrays, **kwargs):
    """`steps_per_call` steps under one jit: a lax.scan over the leading axis of the batches."""

    def body(carry, batch):
        state, total = carry
        state, metrics = train_step(state, batch, arrays, **kwargs)
        return (state, accumulate(total, metrics)), None

    zeros = {
        "loss": jnp.float32(0), "top1_errors": jnp.float32(0), "count": jnp.float32(0),
        "nonfinite": jnp.int32(0), "first_nonfinite": jnp.int32(2**30),
    }  # fmt: skip
    (state, total), _ = jax.lax.scan(body, (state, zeros), batches)
    return state, total


def eval_step(state: TrainState, batch: dict, arrays: dict, *, model, inputs: Inputs) -> dict:
    """Masked sums of loss and top-1/top-5 errors; ten-crop batches average the crops' softmax."""
    images, labels, mask = inputs.eval_images(batch, arrays)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if images.ndim == 5:  # [batch, crops, H, W, 3]
        b, c = images.shape[:2]
        logits = model.apply(variables, images.reshape((b * c, *images.shape[2:])), train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape((b, c, -1)).mean(1)
        loss = -jnp.log(jnp.take_along_axis(probs, labels[:, None], -1)[:, 0] + 1e-12)
        scores = probs
    else:
        logits = model.apply(variables, images, train=False)
        loss, scores = cross_entropy(logits, labels), logits.astype(jnp.float32)
    top1, top5 = topk_errors(scores, labels)
    w = mask.astype(jnp.float32)
    return {
        "loss": (loss * w).sum(),
        "top1_errors": (top1 * w).sum(),
        "top5_errors": (top5 * w).sum(),
        "count": w.sum(),
    }


def evaluate(state: TrainState, inputs: Inputs, step_fn, mesh: Mesh) -> dict:
    """Loss and top-1/top-5 error (percent) over the whole evaluation split, each example once."""
    total = None
    for batch in inputs.eval_batches():
        sums = step_fn(state, to_global(batch, mesh, inputs.resident), inputs.arrays)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    n = float(total["count"])
    return {
        "eval/loss": float(total["loss"]) / n,
        "eval/top1_error": 100.0 * float(total["top1_errors"]) / n,
        "eval/top5_error": 100.0 * float(total["top5_errors"]) / n,
        "eval/count": int(round(n)),
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints: orbax, asynchronous, the latest `keep` plus the best by eval error.


def checkpoint_dir(workdir: str) -> epath.Path:
    """<workdir>/checkpoints: absolute for a local workdir (orbax needs that), a URL kept as it is."""
    return epath.Path(workdir if is_remote(workdir) else os.path.abspath(workdir)) / "checkpoints"


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    pp = ocp.checkpoint_managers
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=keep),
            pp.BestN(
                get_metric_fn=lambda m: -m["eval/top1_error"], n=1, keep_checkpoints_without_metrics=False
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save_checkpoint(
    mngr: ocp.CheckpointManager, state: TrainState, clock: dict, metrics: dict | None
) -> None:
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), clock=ocp.args.JsonSave(clock))
    mngr.save(step, args=args, metrics=metrics, force=True)


def restore_checkpoint(
    mngr: ocp.CheckpointManager, abstract: TrainState, set_aside_damaged: bool = True
) -> tuple[TrainState, dict] | None:
    """The latest readable checkpoint, falling back to older ones (with a warning) if it is damaged.

    A resuming run sets damaged ones aside (so their steps can be written again); readers such as
    `analyze` pass `set_aside_damaged=False` and leave the workdir untouched.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), clock=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
            where = os.path.join(str(mngr.directory), str(step))
            print(f"warning: checkpoint {where} is unreadable ({type(e).__name__}); trying the previous one")
            if i == len(steps) - 1:
                raise TrainingError(
                    f"no usable checkpoint in {mngr.directory} (the newest failed with {type(e).__name__}); "
                    "move the directory away to start afresh"
                ) from None
            continue
        if set_aside_damaged:
            set_aside(mngr, steps[:i])
        return restored["state"], dict(restored["clock"] or {})
    return None


def set_aside(mngr: ocp.CheckpointManager, damaged: list[int]) -> None:
    """Rename unreadable checkpoints to `<step>.damaged` (kept for inspection, ignored by orbax)."""
    if not damaged:
        return
    if jax.process_index() == 0:
        for step in damaged:
            path = epath.Path(mngr.directory) / str(step)
            path.rename(path.parent / f"{step}.damaged-{int(time.time())}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("set_aside_damaged_checkpoints")
    mngr.reload()


# ---------------------------------------------------------------------------------------------
# The loop.


class Preemption:
    """SIGTERM/SIGINT: finish the step, checkpoint, exit 0. A second SIGINT exits at once.

    The first signal puts SIGINT back to the system default, so a second Ctrl-C kills the process
    at once (shell status 130), even while the main thread waits in XLA or on a checkpoint write; a
    KeyboardInterrupt would wait for those, then spill tracebacks from orbax's threads. It loses no
    more than a kill -9: the last complete checkpoint stays as it was.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under a notebook's executor)
                pass
        return self

    def should_stop(self) -> bool:
        """Whether any process was asked to stop (a collective when there are several processes)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def _handle(self, signum: int, frame: object) -> None:
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if not self.requested and jax.process_index() == 0:
            name = signal.Signals(signum).name
            line = f"[{time.strftime('%H:%M:%S')}] {name}: finishing this step, then a checkpoint; "
            os.write(2, f"{line}Ctrl-C again aborts at once\n".encode())  # print() is not reentrant
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """<workdir>/config.json, replaced whole: a kill mid-write, or another process reading it at that
    moment, never sees a cut file."""
    write_whole(epath.Path(workdir) / "config.json", cfg.to_json(indent=2))


def same_file(a: str, b: str) -> bool:
    """One local file or directory spelled two ways (relative / absolute, a symlink)."""
    if not a or not b or is_remote(a) or is_remote(b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (here)
        return False


def check_workdir_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse to resume a run whose model, data, batch, seed or optimizer config differs (unless
    allow_config_change)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists() or cfg.allow_config_change:
        return
    old = json.loads(path.read_text())
    new = json.loads(cfg.to_json())
    old_data, new_data = old.get("data", {}), new.setdefault("data", {})
    if same_file(old_data.get("path") or "", new_data.get("path") or ""):
        new_data["path"] = old_data["path"]  # another spelling of the same data is no change
    differ = []
    for section, keys in RESUME_KEYS.items():
        was, now = (old, new) if not section else (old.get(section, {}), new.get(section, {}))
        for key in keys or sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                differ.append(f"{section}.{key}" if section else key)
    if differ:
        raise ConfigError(
            f"{workdir} holds a run with a different config ({', '.join(differ)}); use another --workdir "
            "or pass --config.allow_config_change=True"
        )


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        a, b = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"profile_steps must look like '100:110'; got {spec!r}") from None
    if not 0 <= a < b:
        raise ConfigError(
            f"profile_steps must be 'first:end' with 0 <= first < end, e.g. '100:110'; got {spec!r}"
        )
    return a, b


@dataclasses.dataclass
class Run:
    """A configured run: mesh, inputs, model, optimizer and the trainer's jitted steps.

    `setup(cfg)` builds it without touching a workdir; `train_and_evaluate` and the benchmarks
    use the same object, so a benchmark times exactly the step a run executes.
    """

    cfg: ml_collections.ConfigDict
    mesh: Mesh
    dtype: Any
    inputs: Inputs
    model: models.ResNet
    tx: optax.GradientTransformation
    schedule: Callable
    steps_per_epoch: int
    total_steps: int
    update: Callable  # jitted (state, batch, arrays) -> (state, metric sums); donates the state
    evaluate_step: Callable  # jitted (state, batch, arrays) -> masked sums

    def init(self) -> TrainState:
        return init_state(self.model, self.tx, self.cfg.seed, self.inputs.image_shape, self.mesh)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and (replicated) shardings of the state; nothing is computed."""
        replicated = NamedSharding(self.mesh, P())
        shapes = jax.eval_shape(self.init)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)

    def batches(self, start_step: int) -> Iterator[dict]:
        """Device batches for the calls of `update` from `start_step` on (steps_per_call steps each)."""
        k = self.cfg.steps_per_call
        host = self.inputs.train_batches(start_step)
        while True:
            if k == 1:
                yield to_global(next(host), self.mesh, self.inputs.resident)
            else:  # [steps, batch]: shard the batch axis
                group = [next(host) for _ in range(k)]
                stacked = {key: np.stack([b[key] for b in group]) for key in group[0]}
                yield to_global(stacked, self.mesh, self.inputs.resident, 1)


def setup(cfg: ml_collections.ConfigDict) -> Run:
    """Check `cfg` (one-sentence errors, before anything compiles) and build the run."""
    num_devices = jax.device_count()
    check_config(cfg, num_devices)
    data_lib.validate(cfg.data)
    parse_profile_steps(cfg.profile_steps)
    resident = is_resident(cfg)
    if cfg.steps_per_call > 1 and not resident:
        raise ConfigError("steps_per_call > 1 needs device-resident data (CIFAR, image folders or synthetic)")
    mesh = create_mesh()
    dtype = compute_dtype(cfg.model.dtype)
    inputs = (in_memory_inputs if resident else streamed_inputs)(cfg, mesh, dtype)
    steps_per_epoch, total_steps = optim.steps_for(cfg, inputs.num_train)
    check_intervals(cfg, total_steps)
    model = create_model(cfg, cfg.data.num_classes or inputs.num_classes, num_devices)
    tx, schedule = optim.create(cfg, cfg.batch_size, steps_per_epoch, total_steps)
    step_kwargs = dict(model=model, tx=tx, inputs=inputs, mesh=mesh, skip_nonfinite=cfg.nan_policy == "skip")
    step_fn = multi_step if cfg.steps_per_call > 1 else train_step
    update = jax.jit(functools.partial(step_fn, **step_kwargs), donate_argnums=(0,))
    evaluate_step = jax.jit(functools.partial(eval_step, model=model, inputs=inputs))
    return Run(
        cfg, mesh, dtype, inputs, model, tx, schedule, steps_per_epoch, total_steps, update, evaluate_step
    )


def check_workdir(workdir: str) -> None:
    """The workdir must be creatable and writable before anything else happens."""
    try:
        root = epath.Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - OSError locally, the store's own errors for gs:// and the like
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError(
            f"cannot write to --workdir {workdir} ({reason}); choose a writable directory"
        ) from None


def check_resume_step(start_step: int, steps_per_call: int, workdir: str) -> None:
    """Calls of steps_per_call steps from a checkpoint off their grid would overshoot the run's end
    and never meet a log, eval or checkpoint step (a checkpoint saved with another steps_per_call)."""
    if start_step % steps_per_call:
        raise ConfigError(
            f"the checkpoint in {workdir} is at step {start_step}, not a multiple of steps_per_call "
            f"({steps_per_call}); resume with --config.steps_per_call=1 (or a divisor of {start_step})"
        )


def check_resume_bn(saved: dict, cfg: ml_collections.ConfigDict, num_devices: int, workdir: str) -> None:
    """per_device BN resumed on another device count would silently normalise over other groups."""
    was, now = saved.get("bn_group_size"), bn_group_size(cfg, num_devices)
    if was is None or was == now or cfg.allow_config_change:  # None: a checkpoint from before this check
        return
    devices = f"on {cfg.batch_size // was} devices" if was else "with the same model.bn"
    raise ConfigError(
        f"the checkpoint in {workdir} normalised BN over groups of {was} examples, but model.bn "
        f"{cfg.model.bn!r} on {num_devices} device(s) would use groups of {now}: resume {devices}, or pass "
        f"--config.allow_config_change=True (with --config.model.bn=ghost --config.model.bn_group_size={was} "
        "to keep the groups)"
    )


def checkpoint_failure(mngr: ocp.CheckpointManager, step: int, e: Exception) -> TrainingError:
    """Let earlier asynchronous saves finish, then name the last complete checkpoint."""
    try:
        mngr.wait_until_finished()
    except Exception:  # noqa: BLE001,S110 - the failure being reported
        pass
    mngr.reload()
    good = mngr.latest_step()
    return TrainingError(
        f"writing checkpoint {step} in {mngr.directory} failed ({type(e).__name__}: {e}); the last complete "
        f"checkpoint (step {good}) is intact: free disk space or fix permissions, then rerun the same command"
    )


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train `cfg` in `workdir`, resuming from its latest checkpoint; returns the summary dict."""
    check_workdir(workdir)
    check_workdir_config(cfg, workdir)
    run = setup(cfg)
    inputs, mesh, total_steps, steps_per_epoch = run.inputs, run.mesh, run.total_steps, run.steps_per_epoch
    profile = parse_profile_steps(cfg.profile_steps)
    num_devices = jax.device_count()
    if jax.process_index() == 0:
        write_config(cfg, workdir)

    mngr = checkpoint_manager(workdir, cfg.keep_checkpoints)
    restored = restore_checkpoint(mngr, run.abstract_state()) if mngr.all_steps() else None
    state, clock_state = restored if restored is not None else (run.init(), {})
    start_step = int(jax.device_get(state.step))
    check_resume_step(start_step, cfg.steps_per_call, workdir)
    check_resume_bn(clock_state, cfg, num_devices, workdir)
    params_count = models.count_params(state.params)
    update, evaluate_step, schedule, k = run.update, run.evaluate_step, run.schedule, cfg.steps_per_call

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
        writer.truncate(start_step)
        if start_step < total_steps:  # e.g. a finished run given more steps: not done until it ends again
            writer.discard_summary()
        clock = ProgressClock(total_steps, start_step, cfg.batch_size, num_devices, clock_state)
        writer.console(
            f"{cfg.model.family} ResNet-{cfg.model.depth} ({cfg.model.shortcut}), {params_count:,} params, "
            f"{inputs.num_train:,} train / {inputs.num_eval:,} eval images, {total_steps:,} steps "
            f"({total_steps / steps_per_epoch:.1f} epochs) at batch {cfg.batch_size} on "
            f"{cluster.describe()}, {jnp.dtype(run.dtype).name}"
            + (f"; resuming from step {start_step}" if start_step else "")
        )

        batches = run.batches(start_step)
        total = pending_metrics(clock_state.get("pending_metrics"))
        last_eval: dict = {}
        saved_best = clock_state.get("best_eval_top1_error")  # None: no evaluation yet (0.0 is a real best)
        best_error = math.inf if saved_best is None else float(saved_best)
        last_good_checkpoint = mngr.latest_step() or "none"
        step = start_step
        tracing = False
        with Preemption() as preemption:
            while step < total_steps:
                # From the first call at or after profile[0] (a resumed run or steps_per_call may pass it by).
                if profile and not tracing and profile[0] <= step < profile[1]:
                    jax.profiler.start_trace(str(epath.Path(workdir) / "profile"))
                    tracing = True
                batch = next(batches)
                if step == start_step:
                    t0 = time.perf_counter()
                    state, metrics = update(state, batch, inputs.arrays)
                    jax.block_until_ready(state)
                    writer.console(f"first step compiled and ran in {time.perf_counter() - t0:.1f} s")
                    clock.start(step + k)
                else:
                    state, metrics = update(state, batch, inputs.arrays)
                total = accumulate(total, metrics)
                step += k

                final = step >= total_steps
                do_log = step % cfg.log_every_steps == 0 or final
                # Several processes agree on preemption at log steps (a collective); one checks every step.
                stop = preemption.should_stop() if do_log or jax.process_count() == 1 else False
                if tracing and (step >= profile[1] or final or stop):
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                    tracing = False
                do_eval = step % cfg.eval_every_steps == 0 or final
                do_ckpt = step % cfg.checkpoint_every_steps == 0 or final or stop
                if do_log:
                    summed = check_finite(jax.device_get(total), last_good_checkpoint, cfg.nan_policy)
                    total = None
                    record = clock.log(step, summed, float(schedule(step - 1)), steps_per_epoch)
                    writer.write(step, record)
                    writer.console(clock.progress_line(step, record))
                if do_eval:
                    if total is not None:  # an evaluation off the log grid: not of a non-finite state
                        check_finite(jax.device_get(total), last_good_checkpoint, cfg.nan_policy)
                    last_eval = evaluate(state, inputs, evaluate_step, mesh)
                    # A new best is checkpointed so that it is kept (the `keep_checkpoints` latest
                    # + the best).
                    do_ckpt = do_ckpt or last_eval["eval/top1_error"] < best_error
                    best_error = min(best_error, last_eval["eval/top1_error"])
                    writer.write(step, {"epoch": step / steps_per_epoch, **last_eval})
                    writer.console(
                        f"eval at step {step}: loss {last_eval['eval/loss']:.4f}, top-1 error "
                        f"{last_eval['eval/top1_error']:.2f}%, "
                        f"top-5 error {last_eval['eval/top5_error']:.2f}%"
                    )
                if do_ckpt:
                    pending = None  # the sums of a log interval cut by this checkpoint are kept in it
                    if total is not None:
                        summed = check_finite(jax.device_get(total), last_good_checkpoint, cfg.nan_policy)
                        pending = {key: value.item() for key, value in summed.items()}
                    try:
                        clock_state = {
                            **clock.state(best_error),
                            "pending_metrics": pending,
                            "bn_group_size": bn_group_size(cfg, num_devices),
                        }
                        save_checkpoint(mngr, state, clock_state, last_eval if do_eval else None)
                    except Exception as e:  # noqa: BLE001 - includes the previous async write's error
                        raise checkpoint_failure(mngr, step, e) from e
                    last_good_checkpoint = step
                    writer.sync()  # remote workdirs: TensorBoard events follow the checkpoints
                if do_eval or do_ckpt:
                    clock.start(step)  # throughput counts training time only
                if stop and not final:
                    mngr.wait_until_finished()
                    mngr.close()
                    writer.console(
                        f"preempted at step {step}; checkpoint saved; rerun the same command to resume"
                    )
                    writer.close()
                    return {"done": False, "step": step}
        if not last_eval:  # resumed a run that had already finished
            last_eval = evaluate(state, inputs, evaluate_step, mesh)
        try:
            mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise checkpoint_failure(mngr, step, e) from e
        mngr.close()
        summary = {
            "done": True,
            "step": step,
            "final_eval_loss": last_eval.get("eval/loss"),
            "final_eval_top1_error": last_eval.get("eval/top1_error"),
            "final_eval_top5_error": last_eval.get("eval/top5_error"),
            "best_eval_top1_error": best_error if math.isfinite(best_error) else None,
            "final_train_top1_error": clock.last_train_error,
            "params": params_count,
            **clock.summary(),
        }
        writer.summary(summary)
        writer.close()
        return summary
    except BaseException:
        # Close now, not in tensorboardX's exit hook: under Python 3.12 a writer that has written nothing
        # yet cannot start its queue's thread at interpreter shutdown and prints a traceback.
        with contextlib.suppress(Exception):  # keep the error that got us here
            writer.close()
        raise
