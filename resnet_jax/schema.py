"""The declared schema: every config key with its default, the values it may take, and what it means;
`base_config()` is built from it. Declarations only: config.py checks values against it (and across keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

FAMILIES = ("cifar", "imagenet")
SHORTCUTS = ("A", "B", "C", "none")  # "none": the plain net
STRIDE_ON = ("1x1", "3x3")  # bottleneck downsampling: paper (v1) | torchvision (v1.5)
INITS = ("fan_in", "fan_out")
DTYPES = ("float32", "bfloat16", "float16")
BN_MODES = ("global", "per_device", "ghost")


@dataclasses.dataclass(frozen=True)
class Key:
    """One key: its default (whose type every value must have: an int key takes ints, a float key numbers),
    and exactly one kind of check: `choices`; bounds `lo`/`hi` (inclusive unless `*_open`); `increasing`
    (a tuple of increasing positive numbers); a `rule` across keys (the config.py function checking it,
    with a value it refuses in `bad`); or `free` (any value of its type: why)."""

    default: Any
    doc: str
    choices: tuple = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    increasing: bool = False
    rule: str = ""
    bad: Any = None
    free: str = ""


SWITCH = "a switch: True or False"
UNIT = dict(lo=0.0, hi=1.0, hi_open=True)  # [0, 1)
SCHEMA: dict[str, Any] = {
    "seed": Key(0, "initialisation, data order and augmentation derive from it", lo=0, hi=2**31 - 2),
    "batch_size": Key(128, "global, over all devices and processes", lo=1),
    "num_train_steps": Key(64_000, "the run's length when > 0, else num_epochs", lo=-1),
    "num_epochs": Key(-1.0, "of the training split; used when num_train_steps <= 0", lo=-1.0),
    "log_every_steps": Key(100, "a train record and a console line every so many steps", lo=1),
    "eval_every_steps": Key(4_000, "an evaluation of the whole evaluation split", lo=1),
    "checkpoint_every_steps": Key(4_000, "also at every new best evaluation and at the end", lo=1),
    "keep_checkpoints": Key(3, "the most recent checkpoints kept, plus the best by eval error", lo=1),
    "steps_per_call": Key(1, "training steps fused into one jitted call (device-held data only)", lo=1),
    "profile_steps": Key("", 'e.g. "100:110": a jax.profiler trace', rule="parse_profile_steps", bad="3:3"),
    "nan_policy": Key("stop", "what a non-finite loss or gradient does", choices=("stop", "skip")),
    "allow_config_change": Key(False, "resume a run whose computation differs", free=SWITCH),
    "model": {
        "family": Key(
            "cifar", "the stem and stages: CIFAR (section 4.2), ImageNet (Table 1)", choices=FAMILIES
        ),
        "depth": Key(20, "CIFAR 6n+2; ImageNet 18, 34, 50, 101, 152", rule="check_model", bad=21),
        "shortcut": Key("A", "option A, B, C (section 3.3), or none: the plain net", choices=SHORTCUTS),
        "stride_on": Key("1x1", "bottleneck downsampling: 1x1 (paper, v1), 3x3 (v1.5)", choices=STRIDE_ON),
        "dtype": Key(
            "auto", "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU", choices=("auto", *DTYPES)
        ),
        "scan_blocks": Key(False, "nn.scan over the identical blocks of each stage", free=SWITCH),
        "scan_unroll": Key(1, "unroll factor of that scan", lo=1),
        "remat": Key(False, "rematerialise each block in the backward pass", free=SWITCH),
        "stem_channels": Key(
            0, "zero-pad the image channels to 4 or 8 for the first conv", rule="check_model", bad=2
        ),
        "bn": Key("global", "BN over the global batch, each device's shard, or groups", choices=BN_MODES),
        "bn_group_size": Key(0, "examples per BN group when bn is ghost", lo=0),
        "bn_momentum": Key(
            0.9, "running statistics: m * running + (1 - m) * batch; 1 freezes them", lo=0.0, hi=1.0
        ),
        "bn_epsilon": Key(1e-5, "added to the variance", lo=0.0, hi=1.0, lo_open=True),
        "zero_init_residual": Key(False, "zero-init the last BN scale of each residual block", free=SWITCH),
        "init": Key("fan_in", "He-normal mode: fan_in (paper), fan_out (torchvision)", choices=INITS),
    },
    "data": {
        "name": Key(
            "cifar10",
            "cifar10, cifar100, imagenet2012, image_folder, synthetic or a TFDS name",
            rule="check_data",
            bad="",
        ),  # fmt: skip
        "path": Key(
            "",
            "an image folder or .tar/.tar.gz <split>/<class>/<image>; empty: TFDS",
            free="checked by data.validate",
        ),  # fmt: skip
        "tfds_dir": Key("", "TFDS data_dir; empty: TFDS's default", free="checked by data.validate"),
        "cache_dir": Key("", "decoded-array cache; empty: ~/.cache/resnet_jax", free="created when written"),
        "val_split": Key(0, "training images held out as the evaluation set (paper: 5000)", lo=0),
        "mean": Key(
            "pixel", "normalisation: the mean image, or per-channel mean/std", choices=("pixel", "channel")
        ),
        "augment": Key("paper", "ImageNet training crops", choices=("paper", "inception")),
        "eval_crop": Key(
            "center", "ImageNet evaluation: the centre crop or 10 crops", choices=("center", "ten")
        ),
        "image_size": Key(224, "ImageNet crop size; synthetic data: the image side", lo=8),
        "eval_batch_size": Key(0, "0: batch_size", lo=0),
        "shuffle_buffer": Key(16_384, "tf.data shuffle buffer of streamed training data", lo=1),
        "num_classes": Key(0, "0: the dataset's; never fewer than the dataset's", lo=0),
        "synthetic_examples": Key(0, 'size of the "synthetic" split; 0: 10 batches', lo=0),
    },
    "optimizer": {
        "momentum": Key(0.9, "SGD momentum", **UNIT),
        "nesterov": Key(False, "Nesterov momentum (needs momentum > 0)", free=SWITCH),
        "weight_decay": Key(1e-4, "L2, added to the gradient (torch.optim.SGD)", **UNIT),
        "decay_bn_and_bias": Key(True, "False excludes BN scales/biases and the FC bias", free=SWITCH),
    },
    "schedule": {
        "name": Key("piecewise", "the learning-rate schedule", choices=("piecewise", "cosine")),
        "base_lr": Key(
            0.1, "the learning rate after the warm-up (0: the weights stay as initialised)", lo=0.0
        ),
        "scale_by_batch": Key(False, "linear scaling rule: base_lr * batch_size / 256", free=SWITCH),
        "boundaries": Key((32_000, 48_000), "steps; used when boundaries_epochs is empty", increasing=True),
        "boundaries_epochs": Key((), "e.g. (30, 60, 90)", increasing=True),
        "decay_factor": Key(0.1, "the lr is multiplied by it at each boundary", lo=0.0, hi=1.0, lo_open=True),
        "warmup": Key(
            "none", "constant: the paper's 0.01 start; linear: a ramp", choices=("none", "constant", "linear")
        ),
        "warmup_steps": Key(0, "the warm-up's length in steps", lo=0),
        "warmup_epochs": Key(0.0, "the warm-up's length in epochs", lo=0.0),
        "warmup_lr": Key(0.01, "the constant warm-up's lr; where the linear one starts", lo=0.0),
    },
}


# The `model` section as one frozen record, passed whole to the nets and blocks.
@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Every option of the net, named as the config's `model` keys (config.check_model checks it; models.build
    calls that).

    Two values are resolved from the run: `dtype` is never "auto", and `bn_group_size` is the examples per
    BN group of every mode (0: the whole global batch; per_device: one device's shard).
    """

    family: str = "cifar"
    depth: int = 20
    shortcut: str = "A"
    stride_on: str = "1x1"
    dtype: str = "float32"
    scan_blocks: bool = False
    scan_unroll: int = 1
    remat: bool = False
    stem_channels: int = 0
    bn: str = "global"
    bn_group_size: int = 0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = False
    init: str = "fan_in"


assert [f.name for f in dataclasses.fields(ModelOptions)] == list(SCHEMA["model"]), (
    "ModelOptions = model keys"
)


def keys(tree: dict = SCHEMA, prefix: str = "") -> dict[str, Key]:
    """Every key of the schema by its dotted name ("model.depth")."""
    out: dict[str, Key] = {}
    for name, value in tree.items():
        out.update(keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name: value})
    return out


def _build(tree: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for name, value in tree.items():
        c[name] = _build(value) if isinstance(value, dict) else value.default
    return c


def base_config() -> ml_collections.ConfigDict:
    """The defaults of every key: the paper's CIFAR-10 recipe for ResNet-20 (section 4.2)."""
    return _build(SCHEMA)


def describe(key: Key) -> str:
    """The values a key takes, in words: "[0, 1)", "'A', 'B', 'C' or 'none'", "free: a switch"."""
    if key.choices:
        return " | ".join(map(repr, key.choices))
    if key.lo is not None or key.hi is not None:
        lo, hi = "-inf" if key.lo is None else key.lo, "inf" if key.hi is None else key.hi
        return f"{'(' if key.lo_open else '['}{lo}, {hi}{')' if key.hi_open or key.hi is None else ']'}"
    if key.increasing:
        return "increasing positive numbers"
    return f"checked by {key.rule}" if key.rule else f"free: {key.free}"


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `data` section with its declared defaults and `overrides` (for using data/ on its own)."""
    section = base_config().data
    for key, value in overrides.items():
        if key not in section:
            raise KeyError(f"data.{key} is not a config key; the keys are in resnet_jax/schema.py")
        section[key] = value
    return section


if __name__ == "__main__":  # python -m resnet_jax.schema: every key, its default, its values, its meaning
    for name, key in keys().items():
        print(f"{name:32s} {key.default!r:>14}  {describe(key):34s} {key.doc}")
