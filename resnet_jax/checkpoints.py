"""A run's workdir: its lock, its config.json, its orbax checkpoints (save with checksums, restore verifying
them, damaged ones set aside), and preemption (a signal becomes a checkpoint and a clean exit).

Readers (analyze, report) read runs through here too; nothing here knows the model, the step or the data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import config, lock
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
        probe = root / f".write-test-{jax.process_index()}-{os.getpid()}"  # own name: starts may race
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - OSError locally, the store's own errors for gs:// and the like
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError(
            f"cannot write to --workdir {workdir} ({reason}); choose a writable directory"
        ) from None


@contextlib.contextmanager
def hold(workdir: str):
    """One run per workdir for the block: process 0 takes `<workdir>/run.lock` (lock.RunLock) and every
    process learns whether it could; another run holding it is a WorkdirInUse (ConfigError) naming it."""
    held = lock.RunLock(workdir, warn=lambda line: print(line, file=sys.stderr, flush=True))
    problem: Exception | None = None
    if jax.process_index() == 0:
        try:
            held.acquire()
        except Exception as e:  # noqa: BLE001 - raised below, once every process knows
            problem = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(problem is None))
        if not ok and problem is None:
            problem = lock.WorkdirInUse(f"process 0 could not take the lock of {workdir}; see its error")
    if problem is not None:
        raise problem
    try:
        yield
    finally:
        held.release()


def write_config(cfg: ml_collections.ConfigDict, workdir: str, step: int = 0) -> None:
    """<workdir>/config.json, replaced whole: a kill mid-write, or another process reading it at that
    moment, never sees a cut file. A config.json that differs (a resume changing a key that may change, or
    with allow_config_change) is kept first as config.<step>.json: the config of the run's steps up to
    `step` (the first one kept, when a run is resumed at one step several times)."""
    root = epath.Path(workdir)
    text = cfg.to_json(indent=2)
    old = files.read_config(workdir) if step else None
    kept = root / f"config.{step}.json"
    if old is not None and old != json.loads(text) and not kept.exists():
        write_whole(kept, json.dumps(old, indent=2))
    write_whole(root / "config.json", text)


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
    quiet_closed_loops()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


# The integrity of a checkpoint: two 32-bit position-weighted sums of every array's bits, computed where
# the arrays are (on the devices, replicated state included: only the small vector of sums travels), and a
# SHA-256 of the clock JSON that holds them. Damage that keeps a file's size and its format readable (a
# flipped byte in an array's data) is caught on restore like a truncated file.


def _bits(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector (narrower types widened, wider ones split)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    if x.dtype.itemsize >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _fold(x: jax.Array) -> jax.Array:
    """uint32[2]: the sums of the bits of `x` times two odd weights of their position (odd: invertible mod
    2**32, so any one changed word changes both sums; wrapping integer sums are exact, so the order of the
    reduction, hence the device count, does not matter). One small program per shape and dtype, shared by
    the arrays that have it (faster to compile and to run on CPU than one program for the whole tree)."""
    b = _bits(x)
    i = jnp.arange(b.size, dtype=jnp.uint32)
    odd = (b * (2 * i + 1)).sum(dtype=jnp.uint32)
    return jnp.stack([odd, (b * (i * jnp.uint32(0x9E3779B1) | 1)).sum(dtype=jnp.uint32)])


def checksums(tree: Any) -> dict[str, list[int]]:
    """{"params/conv1/kernel": [s1, s2], ...} for every array of `tree` (its path, however it is nested),
    computed where the arrays are: only the small vector of sums is fetched."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        return {}
    sums = jax.device_get(jnp.stack([_fold(x) for _, x in leaves]))
    names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves]
    return {name: [int(a), int(b)] for name, (a, b) in zip(names, sums, strict=True)}


def _digest(clock: dict) -> str:
    return hashlib.sha256(json.dumps(clock, sort_keys=True).encode()).hexdigest()


def seal(clock: dict, state: Any) -> dict:
    """The clock JSON of a checkpoint of `state`, with the state's checksums and its own SHA-256."""
    clock = {**clock, "checksums": checksums(state)}
    return {**clock, "sha256": _digest(clock)}


class Damaged(Exception):
    """A checkpoint whose bytes are not those that were written."""


def verify(state: Any, clock: dict) -> dict:
    """The clock without its seal, once the restored `state` and `clock` match their checksums (Damaged
    if not). A checkpoint written before checksums were kept has neither: it is taken as it is."""
    clock = dict(clock or {})
    sealed = clock.pop("sha256", None)
    if sealed is None and "checksums" not in clock:
        return clock
    if sealed != _digest(clock):
        raise Damaged("its clock does not match its SHA-256")
    saved, now = clock.pop("checksums"), checksums(state)
    bad = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise Damaged(f"the checksum of {bad[0]}{more} differs from the one written with it")
    return clock


def save(mngr: ocp.CheckpointManager, state: Any, clock: dict, metrics: dict | None) -> None:
    """Start writing checkpoint `state.step` (the train state and the clock's JSON, sealed with the
    state's checksums) in the background."""
    step = int(jax.device_get(state.step))
    clock = seal(clock, state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), clock=ocp.args.JsonSave(clock))
    mngr.save(step, args=args, metrics=metrics, force=True)


VERBOSE = False  # main.py's --verbose: show the tracebacks of handled faults too


def quiet_closed_loops() -> None:
    """A failed orbax restore or save closes its event loop while tensorstore reads or writes are still in
    flight; each then reports "Event loop is closed" as an unraisable exception, one traceback each (60
    for one damaged checkpoint). They are the failure already reported in one line: drop them (only
    them), unless VERBOSE."""
    previous = sys.unraisablehook
    if VERBOSE or getattr(previous, "quiet_closed_loops", False):
        return

    def hook(u) -> None:
        if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
            previous(u)

    hook.quiet_closed_loops = True
    sys.unraisablehook = hook


def restore(
    mngr: ocp.CheckpointManager,
    abstract: Any | Callable[[int], Any],
    set_aside_damaged: bool = True,
    upto: int | None = None,
) -> tuple[Any, dict] | None:
    """(state, clock) of the latest readable checkpoint whose checksums match (at most step `upto` when
    given), falling back to older ones (one warning each) when it is damaged; None when there is none.
    `abstract` is the state's abstract tree, or a function of the step giving it.

    A resuming run sets damaged ones aside (so their steps can be written again); readers such as
    `analyze` pass `set_aside_damaged=False` and leave the workdir untouched.
    """
    quiet_closed_loops()
    steps = sorted((s for s in mngr.all_steps() if upto is None or s <= upto), reverse=True)
    for i, step in enumerate(steps):
        target = abstract(step) if callable(abstract) else abstract
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), clock=ocp.args.JsonRestore()),
            )
            clock = verify(restored["state"], restored["clock"])
        except Exception as e:  # noqa: BLE001 - any unreadable or damaged checkpoint is skipped the same way
            where = os.path.join(str(mngr.directory), str(step))
            why = f"is damaged ({e})" if isinstance(e, Damaged) else f"is unreadable ({type(e).__name__})"
            print(f"warning: checkpoint {where} {why}; trying the previous one", file=sys.stderr, flush=True)
            if i == len(steps) - 1:
                raise TrainingError(
                    f"no usable checkpoint in {mngr.directory} (the oldest {why}); "
                    "move the directory away to start afresh"
                ) from None
            continue
        if set_aside_damaged:
            set_aside(mngr, steps[:i])
        return restored["state"], clock
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
    with contextlib.suppress(Exception):  # e.g. the directory itself is gone
        mngr.reload()
    gone = not epath.Path(mngr.directory).is_dir()
    good = None if gone else mngr.latest_step()
    kept = (
        f"the last complete checkpoint (step {good}) is intact"
        if good is not None
        else f"no complete checkpoint is left{' (the directory was removed)' if gone else ''}, so a rerun "
        "starts from step 0"
    )
    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return TrainingError(
        f"writing checkpoint {step} in {mngr.directory} failed ({type(e).__name__}: {why}); {kept}: free "
        "disk space or fix permissions, then rerun the same command"
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
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(step)), clock=ocp.args.JsonRestore()
        )
        restored = mngr.restore(step, args=args)
        try:
            verify(restored["state"], restored["clock"])
        except Damaged as e:
            raise ConfigError(
                f"checkpoint {step} in {directory} is damaged ({e}); read another step"
            ) from None
        return restored["state"]
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
