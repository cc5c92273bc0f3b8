"""The cost of a checkpoint's checksums (checkpoints.checksums) beside the trainer's own step, in one run.

    python benchmarks/checksum.py --config=configs/imagenet_r50.py --batch_size 8

The state is the run's (train.setup, Run.init: parameters, BN statistics, momentum), on one device unless
XLA_FLAGS asks for more (a replicated state is summed on every device at once, so one device's time is the
cost). Timed: the checksums' first call (with its compilation) and `repeats` calls after it (min/median/max,
each to the host), then `steps` training steps of the same run (median), unless --no_step.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import add_config_flags, build_config, environment, write_json  # noqa: E402 (jax-free)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_flags(p)
    p.add_argument("--repeats", type=int, default=10, help="timed calls of the checksums")
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--no_step", action="store_true", help="time the checksums only")
    p.add_argument("--json", default="", help="write the result here")
    args = p.parse_args(argv)

    import jax

    from resnet_jax import checkpoints, models, train

    run = train.setup(build_config(args, steps_per_call=1))
    state = jax.block_until_ready(run.init())
    leaves = jax.tree.leaves(state)
    row = {
        "config": args.config,
        "arrays": len(leaves),
        "state_bytes": int(sum(x.nbytes for x in leaves)),
        "params": models.count_params(state.params),
    }
    t = time.perf_counter()
    checkpoints.checksums(state)
    row["checksum_first_call_s"] = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        checkpoints.checksums(state)
        times.append(time.perf_counter() - t)
    row.update(
        checksum_s_min=min(times), checksum_s_median=statistics.median(times), checksum_s_max=max(times)
    )
    if not args.no_step:
        batches = run.batches(0)
        state, _ = run.update(state, next(batches))  # compiles
        jax.block_until_ready(state)
        steps = []
        for _ in range(args.steps):
            t = time.perf_counter()
            state, _ = run.update(state, next(batches))
            jax.block_until_ready(state)
            steps.append(time.perf_counter() - t)
        row["step_s_median"] = statistics.median(steps)
        row["checksum_per_step"] = row["checksum_s_median"] / row["step_s_median"]
    row["environment"] = environment()
    for key, value in row.items():
        print(f"{key}: {value}")
    if args.json:
        write_json(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
