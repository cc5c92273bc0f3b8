"""Train a ResNet: `python -m resnet_jax.main --config=configs/cifar10.py:resnet20 --workdir=runs/r20`.

Rerunning the same command resumes from the workdir's latest checkpoint. Override any config key
with `--config.key=value`. The processes of a multi-host run (TPU VM slices, GKE, SLURM, Open MPI, or
explicit coordinator flags) join in resnet_jax.cluster before anything touches the devices. A run fed
by DALI (data.pipeline='dali') turns XLA's command buffers off unless XLA_FLAGS already sets them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. configs/cifar10.py:resnet110,A.")
flags.DEFINE_string("workdir", None, "Where config.json, metrics, TensorBoard events and checkpoints go.")
flags.DEFINE_bool("verbose", False, "Show the full traceback of configuration and data errors.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 60, "Multi-process: when a process dies, the others stop after this long."
)

USAGE_EXIT = 2


def eval_set_name(cfg_data) -> str:
    """What the evaluation error is measured on: the held-out part of the training split (data.val_split),
    the test split of device-resident data (CIFAR, image folders), or a TFDS validation split (ImageNet)."""
    from resnet_jax import config

    if cfg_data.val_split > 0:
        return "held-out validation"
    return "test" if config.is_device_held(cfg_data) else "validation"


def flag_error(e: Exception, argv: Sequence[str] = ()) -> str:
    """One sentence for a bad flag, config file, config argument or override key."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    if isinstance(e, AttributeError) and "get_config" in str(e):
        return f"the config file {spec!r} defines no get_config(arg=None)"
    if not isinstance(e, flags.Error | KeyError | AttributeError | OSError | ValueError | TypeError):
        return f"cannot load the config file {spec!r}: {cli.loading_error(e)}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    unknown = re.search(r"'([\w.]+)'\s*\\?n?\s*Did you mean \"([\w.]+)\"", text.replace("\\'", "'"))
    bare_key = re.fullmatch(r"""["']*([\w.]+)["']*""", text.strip())
    if unknown or isinstance(e, KeyError) or (isinstance(e, AttributeError) and bare_key):
        key = unknown.group(1) if unknown else bare_key.group(1) if bare_key else text.strip("'")
        hint = unknown.group(2) if unknown else None
        # ml_collections names only the last part of the key: take the whole of it from the override
        path = next((m.group(1) for a in argv if (m := re.match(rf"--config\.((?:\w+\.)*{key})=", a))), key)
        hint = f" (did you mean {path[: len(path) - len(key)] + hint!r}?)" if hint else ""
        where = f"in a --config override{hint}"
        return f"unknown config key {path!r} {where}; `python -m resnet_jax.schema` lists the keys"
    flat = " ".join(text.split())
    if "Failed loading config file" in flat:
        path = flat.split("Attempted [Relative path]:")[-1].split(" [Errno")[0].strip()
        return f"cannot load the config file {path!r}; pass --config=configs/<file>.py[:arg]"
    if "Error whilst parsing config file" in flat:  # get_config raised: keep its last line
        return "bad --config argument: " + text.strip().splitlines()[-1].split(": ", 1)[-1]
    return flat


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, but a bad flag, config file or override is one sentence and exit code 2."""
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].present or FLAGS.config is not None:
            FLAGS.config.get("seed")  # config_flags loads lazily: surface a bad file here
        return rest
    except Exception as e:  # noqa: BLE001 - a config file is the user's code: any error in it is bad input
        if "--verbose" in argv:
            raise
        print(f"error: {flag_error(e, argv)}", file=sys.stderr)
        sys.exit(USAGE_EXIT)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are --config and --workdir", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    if FLAGS.config is None or not FLAGS.workdir:
        print("error: give --config=<configs/file.py[:arg]> and --workdir=<dir>", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    if not FLAGS.verbose:
        # orbax logs every checkpoint at INFO, and a fault it hands back to us (a damaged checkpoint, a
        # failed write) as ERROR lines with tracebacks: the trainer reports those in one line each.
        logging.set_verbosity(logging.FATAL)
    if FLAGS.config.data.get("pipeline") == "dali":  # read when the devices are first touched, below
        from resnet_jax.data import dali

        os.environ["XLA_FLAGS"] = dali.xla_flags(os.environ.get("XLA_FLAGS", ""))
    from resnet_jax import cluster

    try:
        cluster.initialize(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout_seconds
        )
    except cluster.ClusterError as e:
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT)

    from resnet_jax import checkpoints, config, pack, train

    checkpoints.VERBOSE = FLAGS.verbose
    try:
        if FLAGS.config.num_seeds > 1:  # the seeds side by side in one program, seed s in <workdir>-seed<s>
            sys.exit(report_pack(pack.train_and_evaluate(FLAGS.config, FLAGS.workdir), FLAGS.config))
        summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except config.ConfigError as e:  # also ModelError and DataError
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    except config.TrainingError as e:
        if FLAGS.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a run's file could not be written (a full disk, a read-only workdir)
        if FLAGS.verbose:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"error: {e.strerror or e}{where}; free disk space or fix permissions, then rerun",
            file=sys.stderr,
        )
        sys.exit(1)
    import jax

    if summary.get("done") and jax.process_index() == 0:
        err = summary.get("final_eval_top1_error")
        where = eval_set_name(FLAGS.config.data)
        print(f"done: step {summary['step']}, {where} top-1 error {err:.2f}%" if err is not None else "done")


def report_pack(summaries: list[dict], cfg) -> int:
    """One line per seed of a packed run; exit status 1 when a seed stopped (its error on stderr)."""
    import jax

    if jax.process_index() != 0:
        return 0
    where, failed = eval_set_name(cfg.data), 0
    for k, s in enumerate(summaries):
        seed = cfg.seed + k
        if s.get("error"):
            failed += 1
            print(f"error: seed {seed}: {s['error']}", file=sys.stderr)
        elif s.get("done"):
            err = s.get("final_eval_top1_error")
            top1 = f", {where} top-1 error {err:.2f}%" if err is not None else ""
            print(f"done: seed {seed}: step {s['step']}{top1}")
    return 1 if failed else 0


def run(argv: list[str] | None = None) -> None:
    # Ctrl-C before the loop (imports, a dataset download, compiling) stops the process at once, as a
    # kill does: a KeyboardInterrupt would first wait for the download's or orbax's threads and print a
    # traceback. The loop's own handler (checkpoints.Preemption) checkpoints instead, then puts this back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
