"""Every rule on a configuration (schema.py declares its keys) and the error types (cli.override sets keys).

Rules by when they can be checked: `check` before anything is built, `check_run_length` once the run's length
is known, `check_resume_config`/`check_resume` against the checkpoint's config and clock. No jax at import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import ml_collections

from resnet_jax import schema
from resnet_jax.schema import BN_MODES, DTYPES, FAMILIES, INITS, SHORTCUTS, STRIDE_ON


class ConfigError(ValueError):
    """A configuration mistake; the message is one sentence saying what to do."""


class ModelError(ConfigError):
    """An invalid model specification; the message is one sentence saying what is valid."""


class DataError(ConfigError):
    """A data mistake (unknown name, missing or malformed dataset), stated in one sentence."""


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, unusable checkpoints, ...)."""


CIFAR_DEPTHS_NAMED = (20, 32, 44, 56, 110, 1202)
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)  # Table 1 (models/nets.py holds their stages)
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
DEVICE_HELD_NAMES = ("cifar10", "cifar100", "image_folder", "synthetic")


# ---------------------------------------------------------------------------------------------
# Values against the schema (schema.py declares every key).


def value_problem(key: schema.Key, value: Any, types_only: bool = False) -> str | None:
    """What is wrong with `value` for `key` ("must be in [0, 1)"), or None; `types_only`: its type only."""
    kind = type(key.default)
    if kind is bool:
        return None if isinstance(value, bool) else "must be True or False"
    if kind in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            return f"must be {'an integer' if kind is int else 'a number'}"
        if not math.isfinite(value):
            return "must be finite"
        if types_only:
            return None
        low = key.lo is not None and (value < key.lo or (key.lo_open and value == key.lo))
        high = key.hi is not None and (value > key.hi or (key.hi_open and value == key.hi))
        if low or high:
            lo, hi = "-inf" if key.lo is None else key.lo, "inf" if key.hi is None else key.hi
            left, right = "(" if key.lo_open else "[", ")" if key.hi_open or key.hi is None else "]"
            return f"must be in {left}{lo}, {hi}{right}"
        return None
    if kind is tuple:
        if not isinstance(value, tuple | list):
            return "must be a tuple, e.g. (30, 60)"
        if types_only:
            return None
        integer = bool(key.default) and isinstance(key.default[0], int)
        ok = all(isinstance(x, int if integer else int | float) and not isinstance(x, bool) for x in value)
        rising = all(b > a for a, b in zip(value, value[1:], strict=False))
        if not ok or any(x <= 0 for x in value) or not rising:
            return f"must be increasing positive {'integers' if integer else 'numbers'}"
        return None
    if not isinstance(value, kind):
        return f"must be a {kind.__name__}"
    if types_only:
        return None
    if key.choices and value not in key.choices:
        quoted = [repr(c) for c in key.choices]
        return f"must be {' or '.join([', '.join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)}"
    return None


def check_keys(cfg: Any, section: str = "", types_only: bool = False) -> None:
    """Every key of `cfg` (or of its `section`) against its declaration: known, of its type, in its range
    or choices. `cfg` may be a ConfigDict or a ModelOptions (attributes named as the keys)."""
    declared = {k: v for k, v in schema.keys().items() if k.startswith(f"{section}.") or not section}
    if isinstance(cfg, ml_collections.ConfigDict):
        extra = sorted(set(flat(cfg, f"{section}." if section else "")) - set(declared))
        if extra:
            raise ConfigError(f"{extra[0]!r} is not a config key; the keys are in resnet_jax/schema.py")
    for name, key in declared.items():
        node = cfg
        try:
            for part in name.split(".")[1 if section else 0 :]:
                node = getattr(node, part)
        except AttributeError:
            raise ConfigError(f"the config has no {name!r}: start it from schema.base_config()") from None
        problem = value_problem(key, node, types_only)
        if problem:
            raise ConfigError(f"{name} {problem}; got {node!r}")


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.depth": 20, ...} of a nested dict or ConfigDict."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        nested = isinstance(v, dict | ml_collections.ConfigDict)
        out.update(flat(v, f"{prefix}{k}.") if nested else {prefix + k: v})
    return out


# ---------------------------------------------------------------------------------------------
# The model options (schema.ModelOptions).


def check_model(m: Any) -> None:
    """The model zoo's rules on a ModelOptions or a config's `model` section (ModelError, one sentence)."""
    check_keys(m, "model", types_only=True)
    if m.family not in FAMILIES:
        raise ModelError(f"model family must be one of {', '.join(FAMILIES)}; got {m.family!r}")
    if m.family == "cifar" and (not isinstance(m.depth, int) or m.depth < 8 or (m.depth - 2) % 6):
        named = ", ".join(map(str, CIFAR_DEPTHS_NAMED))
        raise ModelError(f"CIFAR depth must be 6n+2 ({named}, ...); got {m.depth}")
    if m.family == "imagenet" and m.depth not in IMAGENET_DEPTHS:
        raise ModelError(
            f"ImageNet depth must be one of {', '.join(map(str, IMAGENET_DEPTHS))}; got {m.depth}"
        )
    if m.shortcut not in SHORTCUTS:
        raise ModelError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {m.shortcut!r}")
    if m.stride_on not in STRIDE_ON:
        raise ModelError(f"stride_on must be '1x1' (paper, v1) or '3x3' (v1.5); got {m.stride_on!r}")
    if m.init not in INITS:
        raise ModelError(f"init must be 'fan_in' (paper) or 'fan_out' (torchvision); got {m.init!r}")
    if m.dtype not in DTYPES and m.dtype != "auto":
        # a config's model.dtype may also be "auto"; a ModelOptions' is resolved
        allowed = (
            "dtype must be one of"
            if isinstance(m, schema.ModelOptions)
            else "model.dtype must be 'auto' or one of"
        )
        raise ModelError(f"{allowed} {', '.join(DTYPES)}; got {m.dtype!r}")
    if m.bn not in BN_MODES:
        raise ModelError(f"model.bn must be 'global', 'per_device' or 'ghost'; got {m.bn!r}")
    if m.stem_channels and m.stem_channels < 4:
        raise ModelError(
            f"model.stem_channels must be 0 (off) or at least 4, e.g. 4 or 8; got {m.stem_channels}"
        )
    check_keys(m, "model")


def compute_dtype(name: str) -> str:
    """'auto' is bfloat16 on GPU/TPU and float32 on CPU."""
    if name != "auto":
        return name
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def bn_group_size(cfg: ml_collections.ConfigDict, num_devices: int) -> int:
    """Examples per BN group: 0 (the whole global batch), one device's shard, or model.bn_group_size."""
    return {"global": 0, "per_device": cfg.batch_size // num_devices}.get(
        cfg.model.bn, cfg.model.bn_group_size
    )


def model_options(cfg: ml_collections.ConfigDict, num_devices: int) -> schema.ModelOptions:
    """The run's ModelOptions: the `model` section with its dtype and BN group size resolved."""
    fields = {f.name: cfg.model[f.name] for f in dataclasses.fields(schema.ModelOptions)}
    fields.update(dtype=compute_dtype(cfg.model.dtype), bn_group_size=bn_group_size(cfg, num_devices))
    options = schema.ModelOptions(**fields)
    check_model(options)
    return options


def is_device_held(cfg_data: ml_collections.ConfigDict) -> bool:
    """True when the dataset is held whole on the devices (CIFAR, image folders, synthetic), False when
    it is streamed (a TFDS set, or an ImageNet-style folder at data.path) through tf.data or DALI."""
    return cfg_data.name in DEVICE_HELD_NAMES


# ---------------------------------------------------------------------------------------------
# Before anything is built.


def check_data(d: ml_collections.ConfigDict) -> None:
    """The `data` section's own rules (DataError); whether the dataset is there is data.validate's."""
    if not d.name or not isinstance(d.name, str):
        raise DataError(f"data.name must name a dataset, not {d.name!r}.")
    for key in ("mean", "augment", "eval_crop", "pipeline"):
        allowed = schema.SCHEMA["data"][key].choices
        if d[key] not in allowed:
            raise DataError(f"data.{key} must be one of {', '.join(allowed)}, not {d[key]!r}.")
    if d.val_split < 0:
        raise DataError(f"data.val_split must be >= 0, not {d.val_split}.")
    if d.val_split and d.name == "synthetic":  # it would be ignored, the eval still called held-out
        raise DataError("synthetic data is evaluated on its training images: set data.val_split=0.")
    if d.path and d.name == "synthetic":
        raise DataError("data.path is not read for synthetic data: set it to '' or name the dataset.")
    if d.pipeline == "dali" and is_device_held(d):
        raise DataError(
            f"data.pipeline 'dali' streams ImageNet-style data (TFDS or a train/, val/ JPEG folder), but "
            f"{d.name!r} is held on the devices: use data.pipeline='tfdata'."
        )
    if d.name == "image_folder" and not d.path:
        raise DataError("data.name 'image_folder' needs data.path, a directory or .tar/.tar.gz archive.")


def check(cfg: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise ConfigError (one sentence) for a config that cannot run or would not run as it says: every key
    against its declaration, then the rules across keys. The dataset's own checks are data.validate's."""
    m, d, sch = cfg.model, cfg.data, cfg.schedule
    check_keys(cfg, types_only=True)
    check_model(m)
    check_data(d)
    check_keys(cfg)
    if m.zero_init_residual and m.shortcut == "none":
        raise ConfigError(
            "model.zero_init_residual=True would zero every block's output of a plain net (shortcut 'none'), "
            "so nothing before the FC could train: set it to False"
        )
    if cfg.batch_size % num_devices:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a positive multiple of the {num_devices} devices; "
            f"use e.g. {max(num_devices, cfg.batch_size // num_devices * num_devices)}"
        )
    group, per_device = bn_group_size(cfg, num_devices), cfg.batch_size // num_devices
    if m.bn == "ghost" and group <= 0:
        raise ConfigError(
            "model.bn='ghost' needs model.bn_group_size, the examples per BN group (e.g. 32), dividing "
            f"the per-device batch of {per_device}"
        )
    if m.bn == "ghost" and per_device % group:
        raise ConfigError(f"model.bn_group_size {group} must divide the per-device batch of {per_device}")
    if m.bn != "ghost" and m.bn_group_size:
        raise ConfigError(
            f"model.bn_group_size ({m.bn_group_size}) is read only with model.bn='ghost' (model.bn is "
            f"{m.bn!r}): set it to 0 or use ghost BN"
        )
    if cfg.num_train_steps <= 0 and cfg.num_epochs <= 0:
        raise ConfigError("set num_train_steps or num_epochs to a positive number")
    check_pack(cfg)
    if cfg.steps_per_call > 1 and not is_device_held(d):
        raise ConfigError("steps_per_call > 1 needs device-held data (CIFAR, image folders or synthetic)")
    known = DATASET_CLASSES.get(d.name)
    if known and 0 < d.num_classes < known:
        raise ConfigError(f"data.num_classes={d.num_classes} is below the {known} classes of {d.name}; use 0")
    if cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov=True needs optimizer.momentum > 0 (e.g. 0.9)")
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
    if sch.warmup == "none" and (sch.warmup_steps or sch.warmup_epochs):
        raise ConfigError(
            "schedule.warmup_steps/warmup_epochs are set but schedule.warmup is 'none': set schedule.warmup "
            "to 'constant' or 'linear', or the length to 0"
        )
    parse_profile_steps(cfg.profile_steps)


def check_pack(cfg: ml_collections.ConfigDict) -> None:
    """num_seeds: seeds in one program (pack.py), resumed at a checkpoint step that all of them keep."""
    k = cfg.num_seeds
    if k > 1 and not is_device_held(cfg.data):
        raise ConfigError(
            f"num_seeds={k} packs the seeds into one program, which needs device-held data (CIFAR, image "
            "folders or synthetic): train streamed data one seed per run (sweep without --pack)"
        )
    if k > 1 and cfg.seed + k - 1 > schema.SCHEMA["seed"].hi:
        raise ConfigError(f"num_seeds={k} from seed {cfg.seed} passes the largest seed; start lower")
    if k > 1 and cfg.keep_checkpoints < 2:
        raise ConfigError(f"num_seeds={k} needs keep_checkpoints >= 2 to resume all seeds at one step")


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """'first:end' -> (first, end); '' -> None."""
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


# ---------------------------------------------------------------------------------------------
# Once the run's length is known (from the training split's size).


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches per epoch: each epoch drops the last num_train % batch_size examples of its order."""
    if batch_size <= 0 or batch_size > num_train:
        raise ConfigError(
            f"batch size {batch_size} must be in [1, {num_train}] for {num_train} training examples"
        )
    return num_train // batch_size


def run_length(cfg: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
    """(steps_per_epoch, total_steps): num_train_steps when > 0, else num_epochs of the training split."""
    per_epoch = steps_per_epoch(num_train, cfg.batch_size)
    if cfg.num_train_steps > 0:
        return per_epoch, int(cfg.num_train_steps)
    return per_epoch, int(math.ceil(cfg.num_epochs * per_epoch))


INTERVALS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")


def check_run_length(cfg: ml_collections.ConfigDict, total_steps: int) -> None:
    """Intervals longer than the run are mistakes (nothing would be logged or saved on time)."""
    # All of them in one sentence: a short try-out run (num_train_steps=40) usually has all three.
    bad = [f"{key} is {cfg[key]}" for key in INTERVALS if cfg[key] <= 0 or cfg[key] > total_steps]
    if bad:
        listed = ", ".join(bad[:-1]) + " and " + bad[-1] if len(bad) > 1 else bad[0]
        raise ConfigError(f"{listed} but the run has {total_steps} steps; use 1..{total_steps}")
    k = cfg.steps_per_call
    if k > 1:
        # Each call runs steps_per_call steps: a run whose length is no multiple of it would overshoot.
        if total_steps % k:
            raise ConfigError(
                f"the run's {total_steps} steps must be a multiple of steps_per_call ({k}); "
                "change num_train_steps (or num_epochs) or steps_per_call"
            )
        for key in INTERVALS:
            if cfg[key] % k:
                raise ConfigError(f"{key} ({cfg[key]}) must be a multiple of steps_per_call ({k})")


# ---------------------------------------------------------------------------------------------
# On resume: against the config and the clock the checkpointed run wrote.
# Deny by default: on resume every key must equal the run's config.json except these, which cannot change
# what is computed (docs: RELIABILITY.md); allow_config_change resumes anyway.
MAY_CHANGE = {
    "num_train_steps": "the run's length: the steps so far stay as they were (not with a cosine schedule)",
    "num_epochs": "the same (not with a cosine schedule, whose every step's lr depends on the length)",
    "log_every_steps": "what is logged, not what is computed",
    "eval_every_steps": "when the evaluation split is measured; evaluating changes no state",
    "checkpoint_every_steps": "when the state is saved: a resumed run is bit-identical to a straight one",
    "keep_checkpoints": "how many checkpoints are kept",
    "steps_per_call": "fused steps are the same steps (tested equal); check_resume keeps them on its grid",
    "profile_steps": "a trace of some steps",
    "nan_policy": "acts only at a non-finite step, which 'stop' ends: 'skip' after a stop is its use",
    "allow_config_change": "this switch",
    "data.cache_dir": "where decoded arrays are cached; the cache is keyed by the source's content",
    "data.eval_batch_size": "how evaluation is batched: training is untouched (eval sums: last-bit rounding)",
}
SAME_PLACE = ("data.path", "data.tfds_dir")  # the same file spelled another way is no change


def same_file(a: str, b: str) -> bool:
    """One local file or directory spelled two ways (relative / absolute, a symlink)."""
    if not a or not b or "://" in a or "://" in b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (here)
        return False


def check_resume_config(cfg: ml_collections.ConfigDict, old: dict, workdir: str) -> None:
    """Refuse to resume a run whose config differs from `old` (the run's config.json) in any key but
    MAY_CHANGE, unless allow_config_change. A key `old` lacks (added since) must have its default."""
    if cfg.allow_config_change:
        return
    new, was = flat(json.loads(cfg.to_json())), flat(old)
    defaults = {k: json.loads(json.dumps(v.default)) for k, v in schema.keys().items()}
    cosine = cfg.schedule.name == "cosine"
    differ = []
    for key in [*defaults, *sorted((set(new) | set(was)) - set(defaults))]:
        a, b = was.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if a == b or (key in MAY_CHANGE and not (cosine and key in ("num_train_steps", "num_epochs"))):
            continue
        if not (key in SAME_PLACE and same_file(a, b)):
            differ.append(key)
    if differ:
        raise ConfigError(
            f"{workdir} holds a run with a different config ({', '.join(differ)}); use another --workdir "
            "or pass --config.allow_config_change=True"
        )


def check_resume(
    cfg: ml_collections.ConfigDict, start_step: int, saved: dict, num_devices: int, workdir: str
):
    """The checkpoint's step, precision and BN groups against this start (`saved`: its clock)."""
    k = cfg.steps_per_call
    # Calls of k steps off their grid would overshoot the run's end and miss the log/eval/checkpoint steps.
    if start_step % k:
        raise ConfigError(
            f"the checkpoint in {workdir} is at step {start_step}, not a multiple of steps_per_call "
            f"({k}); resume with --config.steps_per_call=1 (or a divisor of {start_step})"
        )
    # model.dtype "auto" resumed on another backend would silently compute in another precision.
    was, now = saved.get("compute_dtype"), compute_dtype(cfg.model.dtype)
    if was is not None and was != now and not cfg.allow_config_change:
        raise ConfigError(
            f"the checkpoint in {workdir} was trained in {was}, but model.dtype {cfg.model.dtype!r} here "
            f"computes in {now}: pass --config.model.dtype={was} (or --config.allow_config_change=True)"
        )
    # per_device BN resumed on another device count would silently normalise over other groups.
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
