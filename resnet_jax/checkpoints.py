"""A run's workdir: its config.json, its orbax checkpoints (save, restore, damaged ones set aside), and
preemption (a signal becomes a checkpoint and a clean exit).

Readers (analyze, report) read runs through here too; nothing here knows the model, the step or the data.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import config
from resnet_jax import workdir as files
from resnet_jax.config import ConfigError, TrainingError
from resnet_jax.workdir import is_remote, write_whole

# ---------------------------------------------------------------------------------------------
# The workdir and its config.json.


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


def write_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """<workdir>/config.json, replaced whole: a kill mid-write, or another process reading it at that
    moment, never sees a cut file."""
    write_whole(epath.Path(workdir) / "config.json", cfg.to_json(indent=2))


def check_workdir_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """A workdir holding a run may only be resumed with the same computation (config.check_resume_config)."""
    old = files.read_config(workdir)
    if old is not None:
        config.check_resume_config(cfg, old, workdir)


# ---------------------------------------------------------------------------------------------
# Checkpoints: orbax, asynchronous, the latest `keep` plus the best by eval error.


def checkpoint_dir(workdir: str) -> epath.Path:
    """<workdir>/checkpoints: absolute for a local workdir (orbax needs that), a URL kept as it is."""
    return epath.Path(workdir if is_remote(workdir) else os.path.abspath(workdir)) / "checkpoints"


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """The run's checkpoint manager: asynchronous saves, the latest `keep` kept plus the best."""
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


def save(mngr: ocp.CheckpointManager, state: Any, clock: dict, metrics: dict | None) -> None:
    """Start writing checkpoint `state.step` (the train state and the clock's JSON) in the background."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), clock=ocp.args.JsonSave(clock))
    mngr.save(step, args=args, metrics=metrics, force=True)


def restore(
    mngr: ocp.CheckpointManager,
    abstract: Any | Callable[[int], Any],
    set_aside_damaged: bool = True,
    upto: int | None = None,
) -> tuple[Any, dict] | None:
    """(state, clock) of the latest readable checkpoint (at most step `upto` when given), falling back to
    older ones (one warning each) when it is damaged; None when there is none. `abstract` is the state's
    abstract tree, or a function of the step giving it.

    A resuming run sets damaged ones aside (so their steps can be written again); readers such as
    `analyze` pass `set_aside_damaged=False` and leave the workdir untouched.
    """
    steps = sorted((s for s in mngr.all_steps() if upto is None or s <= upto), reverse=True)
    for i, step in enumerate(steps):
        target = abstract(step) if callable(abstract) else abstract
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), clock=ocp.args.JsonRestore()),
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


def discard_after(mngr: ocp.CheckpointManager, step: int) -> None:
    """Delete the checkpoints after `step`: a run resumed at an earlier step writes them again."""
    for later in [s for s in mngr.all_steps() if s > step]:
        mngr.delete(later)
    mngr.reload()


def set_aside(mngr: ocp.CheckpointManager, damaged: list[int]) -> None:
    """Rename unreadable checkpoints to `<step>.damaged-<time>` (kept for inspection, ignored by orbax)."""
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


def failure(mngr: ocp.CheckpointManager, step: int, e: Exception) -> TrainingError:
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


def read_state(workdir: str, step: int | None, sharding: jax.sharding.Sharding) -> Any:
    """The state tree (a dict) of checkpoint `step` (None: the latest readable one) of a run, placed with
    `sharding`, read-only: for readers that do not rebuild the trainer (analyze)."""
    directory = checkpoint_dir(workdir)
    steps = ocp.utils.checkpoint_steps(directory) if directory.is_dir() else []
    if not steps:
        raise ConfigError(f"no checkpoints in {directory}; train the run first")
    if step is not None and step not in steps:
        raise ConfigError(f"no checkpoint for step {step} in {directory}; there are {sorted(steps)}")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))

    def abstract(s: int) -> Any:
        tree = mngr.item_metadata(s)["state"]
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)

    try:
        if step is None:
            return restore(mngr, abstract, set_aside_damaged=False)[0]
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract(step))))[
            "state"
        ]
    finally:
        mngr.close()


# ---------------------------------------------------------------------------------------------
# Preemption.


class Preemption:
    """SIGTERM, SIGHUP (a closed terminal) or SIGINT: finish the step, checkpoint, exit 0. A second
    SIGINT exits at once.

    The first signal puts SIGINT back to the system default, so a second Ctrl-C kills the process
    at once (shell status 130), even while the main thread waits in XLA or on a checkpoint write; a
    KeyboardInterrupt would wait for those, then spill tracebacks from orbax's threads. It loses no
    more than a kill -9: the last complete checkpoint stays as it was.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> Preemption:
        for sig in self.SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # under nohup: a closed terminal must not stop the run
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
