"""Seeds side by side in one program: the trainer's own step vmapped over a leading pack axis of the state and
the batch (shard_map over the mesh's "pack" axis), each seed with its own init, data order, augmentation,
BN statistics, workdir and files.

Reuses train.py's pure step, `Run` and `Loop` (one per seed); it must not change what a seed computes (seed s
trains as it would alone, up to float32 reordering), nor hold config rules (config.py's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoints, config, inputs, models, train
from resnet_jax import workdir as files
from resnet_jax.config import TrainingError
from resnet_jax.metrics import MetricWriter, ProgressClock

# ---------------------------------------------------------------------------------------------
# The seeds of a pack.


def seed_workdir(workdir: str, seed: int) -> str:
    """Where seed `seed` of a packed run trains: <workdir>-seed<seed>, as resnet_jax.sweep names its runs."""
    return f"{str(workdir).rstrip('/')}-seed{seed}"


def seed_configs(cfg: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The runs of the pack: seeds seed, seed+1, ..., each an ordinary run's config (num_seeds=1)."""
    out = []
    for k in range(cfg.num_seeds):
        c = cfg.copy_and_resolve_references()
        c.seed, c.num_seeds = cfg.seed + k, 1
        out.append(c)
    return out


def create_mesh(num_seeds: int, devices: Any = None) -> Mesh:
    """The ("pack", "data") mesh: K seeds dividing the D devices, one seed per group of D/K devices, its
    batch sharded over them; else the largest d <= D dividing K devices, K/d seeds on each.

    XLA partitions a seed's step over the data axis, but not a vmap of several seeds' steps (compiled, it
    does each device's share of the batch for every seed: 7.6x the work on 8 CPU devices), so no group
    holds several seeds and several devices at once."""
    devices = np.asarray(jax.devices() if devices is None else devices).ravel()
    k, n = num_seeds, devices.size
    groups = k if n % k == 0 else max(d for d in range(1, min(k, n) + 1) if k % d == 0)
    used = devices[: groups * (n // k if n % k == 0 else 1)]
    auto = jax.sharding.AxisType.Auto
    return Mesh(used.reshape(groups, -1), ("pack", "data"), axis_types=(auto, auto))


@dataclasses.dataclass
class Pack:
    """K runs as one program: `runs[i]` is seed i's `train.Run` (its config and inputs; the pack's mesh,
    model, optimizer and evaluation step); `update` is their training step vmapped over the pack axis.

    Built by `setup(cfg)`; `train_and_evaluate` and benchmarks/train_step.py --pack use the same object.
    """

    runs: list[train.Run]
    mesh: Mesh
    update: Callable  # jitted (packed state, packed batch) -> (packed state, packed metric sums); donates
    fresh: Callable  # jitted seed -> one seed's state at step 0 (replicated), as train.init_state makes it
    held: dict  # the held arrays the packed step reads: shared by the seeds, or stacked (synthetic data)
    stack: Callable  # jitted list of K single states -> the packed state
    unstack: Callable  # jitted (packed state, i) -> seed i's state, replicated as a single run's

    @property
    def cfg(self) -> ml_collections.ConfigDict:
        return self.runs[0].cfg

    @property
    def inputs(self) -> inputs.Inputs:
        return self.runs[0].inputs

    @property
    def model(self) -> models.ResNet:
        return self.runs[0].model

    @property
    def dtype(self) -> Any:
        return self.runs[0].dtype

    @property
    def seeds(self) -> list[int]:
        return [r.cfg.seed for r in self.runs]

    def init(self) -> train.TrainState:
        return self.stack([self.fresh(jnp.int32(s)) for s in self.seeds])

    def abstract_state(self) -> train.TrainState:
        """Shapes, dtypes and shardings of the packed state; nothing is computed."""
        one = self.runs[0].abstract_state()
        sharding = NamedSharding(self.mesh, P("pack"))
        k = len(self.runs)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype, sharding=sharding), one)

    def batches(self, start_step: int) -> Iterator[dict]:
        """Packed device batches from `start_step` on: seed i's example indices at [i] (steps_per_call > 1:
        [i, step of the call]), sharded over ("pack", "data")."""
        k = self.cfg.steps_per_call
        hosts = [r.inputs.host_train(start_step) for r in self.runs]
        while True:
            if k == 1:
                index = np.stack([next(h)["index"] for h in hosts])
            else:
                index = np.stack([np.stack([next(h)["index"] for _ in range(k)]) for h in hosts])
            batch = inputs.to_global({"index": index}, self.mesh, True, int(k > 1), pack_axis=True)
            yield {**batch, "held": self.held}


def setup(cfg: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Pack:
    """Check `cfg` and every seed's run (one-sentence errors, before anything compiles) and build the pack."""
    config.check(cfg, jax.device_count())
    cfgs = seed_configs(cfg)
    first = train.setup(cfgs[0], mesh or create_mesh(len(cfgs)))
    runs = [first] + [
        dataclasses.replace(first, cfg=c, inputs=inputs.for_seed(first.inputs, c, first.dtype))
        for c in cfgs[1:]
    ]
    mesh = first.mesh
    packed, replicated = NamedSharding(mesh, P("pack")), NamedSharding(mesh, P())
    shared = all(r.inputs.held is first.inputs.held for r in runs)
    if shared:
        held, held_axes = first.inputs.held, None
    else:  # synthetic images are drawn from the seed: each seed reads its own
        held, held_axes = stack_held([r.inputs.held for r in runs], packed), 0
    # The trainer's own step, as `train.setup` bound it (model, optimizer, inputs, nan_policy), vmapped
    # over each group's seeds; the groups are manual (shard_map), the data axis is XLA's to partition.
    step = jax.vmap(first.update.__wrapped__, in_axes=(0, {"index": 0, "held": held_axes}))
    held_spec = jax.tree.map(lambda _: P() if held_axes is None else P("pack"), held)
    update = jax.jit(
        jax.shard_map(
            step, mesh=mesh, in_specs=(P("pack"), {"index": P("pack"), "held": held_spec}),
            out_specs=(P("pack"), P("pack")), axis_names={"pack"}, check_vma=False,
        ),
        donate_argnums=(0,),
    )  # fmt: skip
    fresh = jax.jit(
        functools.partial(
            train.fresh_state, model=first.model, tx=first.tx, image_shape=first.inputs.image_shape
        ),
        out_shardings=replicated,
    )
    stack = jax.jit(lambda states: jax.tree.map(lambda *x: jnp.stack(x), *states), out_shardings=packed)
    unstack = jax.jit(lambda state, i: jax.tree.map(lambda x: x[i], state), out_shardings=replicated)
    return Pack(runs, mesh, update, fresh, held, stack, unstack)


def stack_held(held: list[dict], sharding: NamedSharding) -> dict:
    """The seeds' held arrays stacked on the pack axis (abstract ones, on a compile-only mesh such as
    benchmarks/gpu_aot.py's, stay abstract)."""
    if isinstance(jax.tree.leaves(held[0])[0], jax.ShapeDtypeStruct):
        return jax.tree.map(
            lambda *x: jax.ShapeDtypeStruct((len(x), *x[0].shape), x[0].dtype, sharding=sharding), *held
        )
    return jax.jit(lambda hs: jax.tree.map(lambda *x: jnp.stack(x), *hs), out_shardings=sharding)(held)


# ---------------------------------------------------------------------------------------------
# Each seed's files: its own writer (console lines name the seed) and clock (its share of the devices).


class SeedWriter(MetricWriter):
    """A seed's MetricWriter: its workdir's metrics.jsonl and TensorBoard events; console lines name it."""

    def __init__(self, workdir: str, seed: int, enabled: bool) -> None:
        super().__init__(workdir, enabled=enabled)
        self.seed = seed

    def console(self, line: str) -> None:
        super().console(f"seed {self.seed}: {line}")


class SharedClock(ProgressClock):
    """A seed's clock when `share` seeds train on the same devices: its device-hours are its share of theirs
    (so a sweep's device-hours sum to what the devices spent)."""

    def __init__(self, *args: Any, share: int) -> None:
        super().__init__(*args)
        self.share = share

    def device_seconds(self) -> float:
        return self.device_s_before + (time.perf_counter() - self.t_process) * self.num_devices / self.share

    def summary(self) -> dict:
        return {**super().summary(), "pack_size": self.share}


def console(line: str) -> None:
    if jax.process_index() == 0:
        print(f"[{time.strftime('%H:%M:%S')}] pack: {line}", flush=True)


# ---------------------------------------------------------------------------------------------
# Resuming: every training seed at the latest step all of them have a checkpoint of.


def restore(pack: Pack, live: list[int], mngrs: dict) -> dict[int, tuple[train.TrainState, dict]]:
    """{seed index: (state, clock)} of the seeds in `live`, all at one step; {} to start them afresh.

    A kill between two seeds' checkpoint writes leaves them one checkpoint apart (the pack lets every
    write finish before it starts the next ones); the seeds ahead resume at the step behind, and their
    later checkpoints are deleted (the pack writes them again, the same to the bit).
    """
    have = {i: set(mngrs[i].all_steps()) for i in live}
    common = set.intersection(*have.values()) if have else set()
    if not common:
        if all(len(s) <= 1 for s in have.values()):  # killed before every seed wrote its first checkpoint
            for i in live:
                checkpoints.discard_after(mngrs[i], 0)
            return {}
        listed = ", ".join(f"seed {pack.seeds[i]}: {sorted(have[i])[-3:]}" for i in live)
        raise TrainingError(
            f"the seeds' checkpoints share no step ({listed}): resume each seed alone (resnet_jax.main on "
            "its workdir, or the sweep without --pack)"
        )
    upto = max(common)
    while True:
        restored = {i: checkpoints.restore(mngrs[i], pack.runs[i].abstract_state(), upto=upto) for i in live}
        if any(r is None for r in restored.values()):
            raise TrainingError(f"no usable checkpoint at or before step {upto} for every seed of the pack")
        steps = {i: int(jax.device_get(r[0].step)) for i, r in restored.items()}
        if len(set(steps.values())) == 1:
            break
        upto = min(steps.values())  # a damaged checkpoint made a seed fall back: all of them go there
    for i in live:
        checkpoints.discard_after(mngrs[i], upto)
    return restored


# ---------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Train seeds cfg.seed .. cfg.seed + cfg.num_seeds - 1 as one program, seed s in <workdir>-seed<s>,
    resuming from their checkpoints; returns each seed's summary (with "error" for a seed that stopped)."""
    cfgs = seed_configs(cfg)
    dirs = [seed_workdir(workdir, c.seed) for c in cfgs]
    with contextlib.ExitStack() as held:  # each seed's workdir is locked as an ordinary run's
        for c, d in zip(cfgs, dirs, strict=True):
            checkpoints.check_workdir(d)
            held.enter_context(checkpoints.hold(d))
            checkpoints.check_workdir_config(c, d)
        return _train_and_evaluate(cfg, cfgs, dirs)


def _train_and_evaluate(cfg: ml_collections.ConfigDict, cfgs: list, dirs: list[str]) -> list[dict]:
    pack = setup(cfg)
    results: dict[int, dict] = {}
    for i, d in enumerate(dirs):  # finished seeds, and seeds stopped by a non-finite loss, are left out
        summary = files.read_summary(d) or {}
        done = summary.get("done") and summary.get("step", 0) >= pack.runs[i].total_steps
        if done or summary.get("error"):
            results[i] = summary
            why = "done" if done else f"stopped ({summary['error']}); rerun it alone to retry"
            console(f"seed {pack.seeds[i]} in {d} is {why}: left out")
    live = [i for i in range(len(dirs)) if i not in results]
    if not live:
        return [results[i] for i in range(len(dirs))]
    mngrs = {i: checkpoints.manager(dirs[i], cfg.keep_checkpoints) for i in live}
    restored = restore(pack, live, mngrs)
    step = int(jax.device_get(restored[live[0]][0].step)) if restored else 0
    state = pack.stack(
        [restored[i][0] if i in restored else pack.fresh(jnp.int32(s)) for i, s in enumerate(pack.seeds)]
    )
    saved = {i: restored[i][1] if i in restored else {} for i in live}
    for i in live:
        config.check_resume(cfgs[i], step, saved[i], jax.device_count(), dirs[i])
        if jax.process_index() == 0:
            checkpoints.write_config(cfgs[i], dirs[i], step)
    loops: dict[int, train.Loop] = {}
    try:
        params = models.count_params(pack.runs[0].abstract_state().params)
        for i in live:
            writer = SeedWriter(dirs[i], pack.seeds[i], enabled=jax.process_index() == 0)
            loops[i] = train.Loop(pack.runs[i], dirs[i], mngrs[i], writer, step, saved[i], params)
            r = pack.runs[i]
            loops[i].clock = SharedClock(r.total_steps, step, cfg.batch_size, jax.device_count(), saved[i],
                                         share=len(live))  # fmt: skip
        console(f"{len(live)} of {len(dirs)} seeds ({', '.join(str(pack.seeds[i]) for i in live)}) in one "
                f"program on a {dict(pack.mesh.shape)} mesh")  # fmt: skip
        return PackLoop(pack, loops, results).run(state, step, pending(pack, saved, live))
    except BaseException:
        for loop in loops.values():
            with contextlib.suppress(Exception):  # keep the error that got us here
                loop.writer.close()
        raise


def pending(pack: Pack, saved: dict[int, dict], live: list[int]) -> dict | None:
    """The packed metric sums of a log interval cut by the checkpoints resumed from (None: none)."""
    if not any(saved[i].get("pending_metrics") for i in live):
        return None
    sums = [saved[i].get("pending_metrics") or train.NO_METRICS if i in saved else train.NO_METRICS
            for i in range(len(pack.runs))]  # fmt: skip
    return jax.tree.map(lambda *x: jnp.stack(x), *[train.metric_arrays(s) for s in sums])


class PackLoop:
    """The loop of a pack: one packed call a step, then each training seed's `train.Loop` logs, evaluates
    and checkpoints as its own run would; a seed whose loss turns non-finite stops, the others go on."""

    def __init__(self, pack: Pack, loops: dict[int, train.Loop], results: dict[int, dict]) -> None:
        self.pack, self.loops, self.results, self.cfg = pack, loops, results, pack.cfg
        self.total_steps = pack.runs[0].total_steps

    def run(self, state: train.TrainState, step: int, total: dict | None) -> list[dict]:
        cfg, loops = self.cfg, self.loops
        batches = self.pack.batches(step)
        start = step
        with checkpoints.Preemption() as preemption:
            while step < self.total_steps and loops:
                lead = next(iter(loops.values()))
                lead.profile(step)
                t0 = time.perf_counter()
                state, metrics = self.pack.update(state, next(batches))
                if step == start:
                    jax.block_until_ready(state)
                    console(f"first step compiled and ran in {time.perf_counter() - t0:.1f} s")
                    for loop in loops.values():
                        loop.clock.start(step + cfg.steps_per_call)
                total = train.accumulate(total, metrics)
                step += cfg.steps_per_call
                final = step >= self.total_steps
                log = step % cfg.log_every_steps == 0 or final
                stop = preemption.should_stop() if log or jax.process_count() == 1 else False
                lead.profile(step, state, end=final or stop)
                evaluate = step % cfg.eval_every_steps == 0 or final
                save = step % cfg.checkpoint_every_steps == 0 or final or stop
                if log or evaluate or save:
                    self.act(state, step, total, log, evaluate, save)
                    total = None if log else total
                if stop and not final:
                    for loop in loops.values():
                        loop.preempted(step)
                    return self.summaries()
        for i, loop in list(loops.items()):
            self.results[i] = loop.finish(self.pack.unstack(state, i), step)
        return self.summaries()

    def act(self, state, step: int, total: dict | None, log: bool, evaluate: bool, save: bool) -> None:
        """What each training seed's own run does at this step, in the same order: log, evaluate, checkpoint
        (all of them when one has a new best, so that every seed keeps checkpoints at the same steps)."""
        host = jax.device_get(total) if total is not None else None
        for i in list(self.loops):
            loop = self.loops[i]
            loop.total = {k: v[i] for k, v in host.items()} if host is not None else None
            try:
                if loop.total is not None:
                    loop.finite_sums()  # nan_policy "stop": a non-finite step ends this seed
            except TrainingError as e:
                self.stop(i, e)
        states = {i: self.pack.unstack(state, i) for i in self.loops} if evaluate or save else {}
        if log:
            for loop in self.loops.values():
                loop.log(step)
        best = False
        if evaluate:
            for i, loop in self.loops.items():
                best |= loop.evaluate(states[i], step)
        if save or best:
            for loop in self.loops.values():  # every seed's previous write first (see `restore`)
                try:
                    loop.mngr.wait_until_finished()
                except Exception as e:  # noqa: BLE001 - the previous asynchronous write's error
                    raise checkpoints.failure(loop.mngr, step, e) from e
            for i, loop in self.loops.items():
                loop.checkpoint(states[i], step)
        if evaluate or save or best:
            for loop in self.loops.values():  # throughput counts training time only
                loop.clock.start(step)
        if log and self.loops:
            rates = [loop.clock.last_rate for loop in self.loops.values() if loop.clock.last_rate]
            if rates:
                console(f"step {step}: {sum(rates):,.0f} img/s over {len(self.loops)} seeds")

    def stop(self, i: int, error: TrainingError) -> None:
        """Seed i's loss turned non-finite: its workdir records why (summary.json), the others go on."""
        loop = self.loops.pop(i)
        loop.writer.console(f"stopped: {error}; the other seeds go on")
        record = {"done": False, "error": str(error)}
        loop.writer.summary(record)
        loop.mngr.wait_until_finished()
        loop.mngr.close()
        loop.writer.close()
        self.results[i] = record

    def summaries(self) -> list[dict]:
        return [self.results.get(i, {"done": False}) for i in range(len(self.pack.runs))]
