"""The trainer: the train state, the jitted update and evaluation steps, `setup` (a configured `Run`), and
`train_and_evaluate`, the paper's procedure: set up, restore, then loop (step, log, evaluate, checkpoint).

Config rules are config.py's, batches inputs.py's, checkpoints checkpoints.py's, the net models/'s;
parameters, BN statistics and optimizer state are replicated over the mesh, every batch is sharded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoints, cluster, config, data, inputs, models, optim
from resnet_jax.config import TrainingError
from resnet_jax.losses import cross_entropy, topk_errors
from resnet_jax.metrics import MetricWriter, ProgressClock

# ---------------------------------------------------------------------------------------------
# The train state.


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the config: the data position is `step`."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw threefry key data (uint32[2]); augmentation keys are fold_in(rng, step)


def fresh_state(seed: jax.Array, *, model, tx, image_shape: tuple[int, ...]) -> TrainState:
    """The state at step 0: a pure function of `seed` (call under jit; a traced seed gives the same bits)."""
    variables = models.init_variables(model, seed, image_shape)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        rng=inputs.augment_key(seed),
    )


def init_state(model, tx, seed: int, image_shape: tuple[int, ...], mesh: Mesh) -> TrainState:
    """Create the state directly replicated on the mesh (one jit, no host copy)."""
    init = functools.partial(fresh_state, model=model, tx=tx, image_shape=image_shape)
    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(jnp.int32(seed))


# ---------------------------------------------------------------------------------------------
# The update and evaluation steps (pure; bound with `partial` and jitted by `setup`).


def train_step(
    state: TrainState, batch: dict, *, model, tx, inputs: inputs.Inputs, skip_nonfinite: bool
) -> tuple[TrainState, dict]:
    """One SGD step on one global batch; returns the new state and this step's metric sums."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, labels = inputs.train_images(rng, batch)
    images = jax.lax.with_sharding_constraint(images, NamedSharding(inputs.mesh, P("data")))

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


NO_METRICS = {"loss": 0.0, "top1_errors": 0.0, "count": 0.0, "nonfinite": 0, "first_nonfinite": 2**30}


def accumulate(total: dict | None, metrics: dict) -> dict:
    """Sum metric dicts on the device (no host sync); first_nonfinite keeps the minimum."""
    if total is None:
        return metrics
    out = jax.tree.map(jnp.add, total, metrics)
    out["first_nonfinite"] = jnp.minimum(total["first_nonfinite"], metrics["first_nonfinite"])
    return out


def metric_arrays(sums: dict) -> dict:
    """Metric sums with the dtypes `train_step` produces (NO_METRICS, or sums restored from a checkpoint)."""
    ints = ("nonfinite", "first_nonfinite")
    return {k: jnp.asarray(v, jnp.int32 if k in ints else jnp.float32) for k, v in sums.items()}


def multi_step(state: TrainState, batch: dict, **kwargs) -> tuple[TrainState, dict]:
    """`steps_per_call` steps under one jit: a lax.scan over the leading axis of the batch's arrays (the
    held arrays of device-held data are the same for every step)."""
    held = {"held": batch["held"]} if "held" in batch else {}
    steps = {key: value for key, value in batch.items() if key != "held"}

    def body(carry, one):
        state, total = carry
        state, metrics = train_step(state, {**one, **held}, **kwargs)
        return (state, accumulate(total, metrics)), None

    (state, total), _ = jax.lax.scan(body, (state, metric_arrays(NO_METRICS)), steps)
    return state, total


def eval_step(state: TrainState, batch: dict, *, model, inputs: inputs.Inputs) -> dict:
    """Masked sums of loss and top-1/top-5 errors; ten-crop batches average the crops' softmax."""
    images, labels, mask = inputs.eval_images(batch)
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


def evaluate(state: TrainState, batches: Iterator[dict], step_fn: Callable) -> dict:
    """Loss and top-1/top-5 error (percent) over the whole evaluation split, each example once."""
    total = None
    for batch in batches:
        sums = step_fn(state, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    n = float(total["count"])
    return {
        "eval/loss": float(total["loss"]) / n,
        "eval/top1_error": 100.0 * float(total["top1_errors"]) / n,
        "eval/top5_error": 100.0 * float(total["top5_errors"]) / n,
        "eval/count": int(round(n)),
    }


def check_finite(summed: dict, last_good_checkpoint, policy: str) -> dict:
    """With nan_policy "stop", a non-finite loss or gradient ends the run naming the step."""
    if summed["nonfinite"] and policy == "stop":
        step = int(summed["first_nonfinite"])
        raise TrainingError(
            f"non-finite loss at step {step}; last good checkpoint: step {last_good_checkpoint}"
        )
    return summed


# ---------------------------------------------------------------------------------------------
# A configured run.


@dataclasses.dataclass
class Run:
    """A configured run: mesh, inputs, model, optimizer and the trainer's jitted steps.

    `setup(cfg)` builds it without touching a workdir; `train_and_evaluate` and the benchmarks
    use the same object, so a benchmark times exactly the step a run executes.
    """

    cfg: ml_collections.ConfigDict
    mesh: Mesh
    dtype: Any
    inputs: inputs.Inputs
    model: models.ResNet
    tx: optax.GradientTransformation
    schedule: Callable
    steps_per_epoch: int
    total_steps: int
    update: Callable  # jitted (state, device batch) -> (state, metric sums); donates the state
    evaluate_step: Callable  # jitted (state, device batch) -> masked sums

    def init(self) -> TrainState:
        return init_state(self.model, self.tx, self.cfg.seed, self.inputs.image_shape, self.mesh)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and (replicated) shardings of the state; nothing is computed."""
        replicated = NamedSharding(self.mesh, P())
        shapes = jax.eval_shape(self.init)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)

    def batches(self, start_step: int) -> Iterator[dict]:
        """Device batches for the calls of `update` from `start_step` on (steps_per_call steps each)."""
        return self.inputs.train_batches(start_step, self.cfg.steps_per_call)

    def evaluate(self, state: TrainState) -> dict:
        return evaluate(state, self.inputs.eval_batches(), self.evaluate_step)


def setup(cfg: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Run:
    """Check `cfg` (one-sentence errors, before anything compiles) and build the run; `mesh`: another mesh
    over every device with a `data` axis (a packed run's ("pack", "data")), else `inputs.create_mesh()`."""
    num_devices = jax.device_count()
    config.check(cfg, num_devices)
    data.validate(cfg.data)
    mesh = mesh or inputs.create_mesh()
    dtype = jnp.dtype(config.compute_dtype(cfg.model.dtype))
    feed = inputs.create(cfg, mesh, dtype)
    steps_per_epoch, total_steps = config.run_length(cfg, feed.num_train)
    config.check_run_length(cfg, total_steps)
    model = models.build(config.model_options(cfg, num_devices), cfg.data.num_classes or feed.num_classes)
    tx, schedule = optim.create(cfg, cfg.batch_size, steps_per_epoch, total_steps)
    step_fn = multi_step if cfg.steps_per_call > 1 else train_step
    bound = functools.partial(
        step_fn, model=model, tx=tx, inputs=feed, skip_nonfinite=cfg.nan_policy == "skip"
    )
    update = jax.jit(bound, donate_argnums=(0,))
    evaluate_step = jax.jit(functools.partial(eval_step, model=model, inputs=feed))
    return Run(
        cfg, mesh, dtype, feed, model, tx, schedule, steps_per_epoch, total_steps, update, evaluate_step
    )


# ---------------------------------------------------------------------------------------------
# The loop.

EARLY_LINE_S = 5.0  # the first console line comes this long after the first step, log step or not


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train `cfg` in `workdir`, resuming from its latest checkpoint; returns the summary dict. One run at a
    time per workdir: another start while this one runs is refused, naming it (checkpoints.hold)."""
    if cfg.num_seeds > 1:  # the seeds of one program, each in its own workdir: pack.py's
        raise config.ConfigError("num_seeds > 1 trains in pack.train_and_evaluate (as resnet_jax.main does)")
    checkpoints.check_workdir(workdir)
    with checkpoints.hold(workdir):
        return _train_and_evaluate(cfg, workdir)


def _train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    checkpoints.check_workdir_config(cfg, workdir)
    run = setup(cfg)
    mngr = checkpoints.manager(workdir, cfg.keep_checkpoints)
    restored = checkpoints.restore(mngr, run.abstract_state()) if mngr.all_steps() else None
    state, saved = restored if restored is not None else (run.init(), {})
    step = int(jax.device_get(state.step))
    config.check_resume(cfg, step, saved, jax.device_count(), workdir)
    if jax.process_index() == 0:
        checkpoints.write_config(cfg, workdir, step)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
        loop = Loop(run, workdir, mngr, writer, step, saved, models.count_params(state.params))
        batches = run.batches(step)
        with checkpoints.Preemption() as preemption:
            while step < run.total_steps:
                loop.profile(step)
                state, step = loop.train(state, next(batches), step)
                final = step >= run.total_steps
                log = step % cfg.log_every_steps == 0 or final
                # Several processes agree on preemption at log steps (a collective); one checks every step.
                stop = preemption.should_stop() if log or jax.process_count() == 1 else False
                loop.profile(step, state, end=final or stop)
                if log:
                    loop.log(step)
                else:
                    loop.early_progress(step)
                best = loop.evaluate(state, step) if step % cfg.eval_every_steps == 0 or final else False
                if step % cfg.checkpoint_every_steps == 0 or final or stop or best:
                    loop.checkpoint(state, step)
                if stop and not final:
                    return loop.preempted(step)
        return loop.finish(state, step)
    except BaseException:
        # Close now, not in tensorboardX's exit hook: under Python 3.12 a writer that has written nothing
        # yet cannot start its queue's thread at interpreter shutdown and prints a traceback.
        with contextlib.suppress(Exception):  # keep the error that got us here
            writer.close()
        raise


class Loop:
    """What the loop of `train_and_evaluate` keeps between steps: the metric sums since the last log, the
    clock, the best evaluation, the last complete checkpoint, the profiler; one method per thing a step
    may do."""

    def __init__(self, run: Run, workdir: str, mngr: ocp.CheckpointManager, writer: MetricWriter,
                 start: int, saved: dict, params: int) -> None:  # fmt: skip
        cfg = run.cfg
        self.run, self.cfg, self.workdir, self.mngr, self.writer, self.start = (
            run,
            cfg,
            workdir,
            mngr,
            writer,
            start,
        )
        self.params = params
        pending = saved.get("pending_metrics")
        self.total = metric_arrays(pending) if pending else None  # sums of a log interval cut by a checkpoint
        self.last_eval: dict = {}
        self.evaluated_now = False
        best = saved.get("best_eval_top1_error")  # None: no evaluation yet (0.0 is a real best)
        self.best_error = math.inf if best is None else float(best)
        self.last_good = mngr.latest_step() or "none"
        self.profile_range = config.parse_profile_steps(cfg.profile_steps)
        self.tracing = False
        writer.truncate(start)
        if start < run.total_steps:  # e.g. a finished run given more steps: not done until it ends again
            writer.discard_summary()
        self.clock = ProgressClock(run.total_steps, start, cfg.batch_size, jax.device_count(), saved)
        self.next_line, self.line_every = math.inf, EARLY_LINE_S  # early_progress's schedule
        self.in_flight: tuple | None = None  # (step, sums) of the last call, for early_progress
        writer.console(self.header())

    def header(self) -> str:
        cfg, run, feed = self.cfg, self.run, self.run.inputs
        return (
            f"{cfg.model.family} ResNet-{cfg.model.depth} ({cfg.model.shortcut}), {self.params:,} params, "
            f"{feed.num_train:,} train / {feed.num_eval:,} eval images, {run.total_steps:,} steps "
            f"({run.total_steps / run.steps_per_epoch:.1f} epochs) at batch {cfg.batch_size} on "
            f"{cluster.describe()}, {jnp.dtype(run.dtype).name}"
            + (f"; resuming from step {self.start}" if self.start else "")
        )

    def train(self, state: TrainState, batch: dict, step: int) -> tuple[TrainState, int]:
        """One call of the update (steps_per_call steps); the first one is timed with its compilation."""
        if step == self.start:
            t0 = time.perf_counter()
            state, metrics = self.run.update(state, batch)
            jax.block_until_ready(state)
            self.writer.console(f"first step compiled and ran in {time.perf_counter() - t0:.1f} s")
            self.clock.start(step + self.cfg.steps_per_call)
            self.next_line = time.perf_counter() + self.line_every
        else:
            state, metrics = self.run.update(state, batch)
        self.total = accumulate(self.total, metrics)
        self.evaluated_now = False
        return state, step + self.cfg.steps_per_call

    def profile(self, step: int, state: TrainState | None = None, end: bool = False) -> None:
        """A jax.profiler trace of profile_steps: from the first call at or after its start (a resumed run or
        steps_per_call may pass it by) to its end, the run's end or a preemption."""
        first, last = self.profile_range or (0, 0)
        if state is None and not self.tracing and first <= step < last:
            jax.profiler.start_trace(str(epath.Path(self.workdir) / "profile"))
            self.tracing = True
        elif state is not None and self.tracing and (step >= last or end):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False

    def finite_sums(self) -> dict:
        return check_finite(jax.device_get(self.total), self.last_good, self.cfg.nan_policy)

    def early_progress(self, step: int) -> None:
        """Until the first log step, a console line EARLY_LINE_S after the first step, then at doubling
        intervals (a CPU run's first 100 steps take minutes); the sums and metrics.jsonl are untouched.

        Meanwhile it waits for the previous call's sums, so that one call at most is in flight: else the
        host runs steps ahead and a line that is due waits for all of them (35 s for 5 CPU steps)."""
        if self.next_line == math.inf or self.total is None or not self.writer.enabled:
            return
        done, self.in_flight = self.in_flight, (step, self.total)
        if done is None:
            return
        step, total = done
        jax.block_until_ready(total)
        if time.perf_counter() < self.next_line:
            return
        record = self.clock.interim(
            step, jax.device_get(total), float(self.run.schedule(step - 1)), self.run.steps_per_epoch
        )
        self.writer.console(self.clock.progress_line(step, record))
        self.line_every *= 2
        self.next_line = time.perf_counter() + self.line_every

    def log(self, step: int) -> None:
        self.next_line = math.inf  # the log lines take over from early_progress
        summed, self.total = self.finite_sums(), None
        record = self.clock.log(step, summed, float(self.run.schedule(step - 1)), self.run.steps_per_epoch)
        self.writer.write(step, record)
        self.writer.console(self.clock.progress_line(step, record))

    def evaluate(self, state: TrainState, step: int) -> bool:
        """Evaluate and record; True for a new best (checkpointed, so that it is kept)."""
        if self.total is not None:  # an evaluation off the log grid: not of a non-finite state
            self.finite_sums()
        self.last_eval = e = self.run.evaluate(state)
        self.evaluated_now = True
        best = e["eval/top1_error"] < self.best_error
        self.best_error = min(self.best_error, e["eval/top1_error"])
        self.writer.write(step, {"epoch": step / self.run.steps_per_epoch, **e})
        self.writer.console(
            f"eval at step {step}: loss {e['eval/loss']:.4f}, top-1 error {e['eval/top1_error']:.2f}%, "
            f"top-5 error {e['eval/top5_error']:.2f}%"
        )
        self.clock.start(step)  # throughput counts training time only
        return best

    def checkpoint(self, state: TrainState, step: int) -> None:
        # The sums of a log interval cut by this checkpoint are kept in it.
        pending = {k: v.item() for k, v in self.finite_sums().items()} if self.total is not None else None
        clock = {
            **self.clock.state(self.best_error),
            "pending_metrics": pending,
            "bn_group_size": config.bn_group_size(self.cfg, jax.device_count()),
            "compute_dtype": jnp.dtype(self.run.dtype).name,
        }
        try:
            checkpoints.save(self.mngr, state, clock, self.last_eval if self.evaluated_now else None)
        except Exception as e:  # noqa: BLE001 - includes the previous async write's error
            raise checkpoints.failure(self.mngr, step, e) from e
        self.last_good = step
        self.writer.sync()  # remote workdirs: TensorBoard events follow the checkpoints
        self.clock.start(step)

    def preempted(self, step: int) -> dict:
        self.mngr.wait_until_finished()
        self.mngr.close()
        self.writer.console(f"preempted at step {step}; checkpoint saved; rerun the same command to resume")
        self.writer.close()
        return {"done": False, "step": step}

    def finish(self, state: TrainState, step: int) -> dict:
        """Wait for the last checkpoint, write summary.json and return it."""
        if not self.last_eval:  # resumed a run that had already finished
            self.last_eval = self.run.evaluate(state)
        try:
            self.mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise checkpoints.failure(self.mngr, step, e) from e
        self.mngr.close()
        e = self.last_eval
        summary = {
            "done": True,
            "step": step,
            "final_eval_loss": e.get("eval/loss"),
            "final_eval_top1_error": e.get("eval/top1_error"),
            "final_eval_top5_error": e.get("eval/top5_error"),
            "best_eval_top1_error": self.best_error if math.isfinite(self.best_error) else None,
            "final_train_top1_error": self.clock.last_train_error,
            "params": self.params,
            **self.clock.summary(),
        }
        self.writer.summary(summary)
        self.writer.close()
        return summary
