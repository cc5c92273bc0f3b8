"""Recipes shared by the experiment files in `configs/`: the paper's CIFAR and ImageNet set-ups.

Config files are loaded by path (`--config=configs/imagenet_r50.py:B`), so they cannot import
each other; they call the builders here instead. A config argument is a comma-separated list of
tokens, e.g. "resnet110,A,smoke". Tokens:

  resnet<d> | plain<d>   CIFAR net (d = 6n+2); plain nets have no shortcuts
  A | B | C              shortcut option (section 3.3): zero-padding / projections up / all projections
  smoke                  a few steps on synthetic data: runs on a laptop CPU
  val                    CIFAR: hold out 5k training images as the test set (the paper's 45k/5k split)
  v1.5                   bottleneck nets: stride on the 3x3 conv, as torchvision
  batch=<N>              ImageNet at global batch N (Goyal et al. 2017): lr x N/256, 5-epoch linear
                         warm-up, BN over groups of 32 examples, zero-init last BN of each
                         residual block (not of plain nets).
                         CIFAR at global batch N (not the paper's recipe): lr x N/128 and every step
                         count x 128/N (same epochs); from N = 512 a 5-epoch linear warm-up
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
from types import ModuleType

import ml_collections

from resnet_jax import config, schema
from resnet_jax.schema import base_config

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository: configs/ lies here
IMAGENET_TRAIN_EXAMPLES = 1_281_167
SHORTCUT_OPTIONS = tuple(s for s in schema.SHORTCUTS if s != "none")  # the tokens A, B, C (section 3.3)
SCAN_FROM_DEPTH = 110  # nn.scan the blocks of deeper nets: faster to compile, and faster on GPU


def tokens(arg: str | None) -> list[str]:
    """The comma-separated tokens of a config or sweep argument ("" and None give [])."""
    return [t.strip() for t in (arg or "").split(",") if t.strip()]


def pop_shortcut(toks: list[str]) -> str | None:
    """Remove and return the shortcut token (A, B or C), or None when there is none."""
    found = [t for t in toks if t in SHORTCUT_OPTIONS]
    if len(found) > 1:
        raise ValueError(f"more than one shortcut option in {toks}")
    for t in found:
        toks.remove(t)
    return found[0] if found else None


def pop_flag(toks: list[str], name: str) -> bool:
    """Remove `name` from the tokens; True if it was there."""
    if name in toks:
        toks.remove(name)
        return True
    return False


def pop_int(toks: list[str], key: str) -> int | None:
    """Remove a "<key>=<int>" token and return the int, or None when there is none."""
    for t in toks:
        if t.startswith(key + "="):
            toks.remove(t)
            return int(t.split("=", 1)[1])
    return None


def check_empty(toks: list[str]) -> None:
    """Fail on tokens that no builder consumed (typos must not pass silently)."""
    if toks:
        raise ValueError(f"unknown config argument token(s): {toks}")


def cifar_net(token: str) -> tuple[int, bool]:
    """Parse "resnet<d>" or "plain<d>" into (depth, plain); depth must be 6n+2."""
    m = re.fullmatch(r"(resnet|plain)(\d+)", token)
    if not m:
        raise ValueError(f"not a CIFAR net: {token!r} (expected resnet<d> or plain<d>, d = 6n+2)")
    depth = int(m.group(2))
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR depth must be 6n+2 with n >= 1, got {depth}")
    return depth, m.group(1) == "plain"


SMOKE_BATCH = 16  # divisible by the 8 fake CPU devices of the tests


def smoke(c: ml_collections.ConfigDict) -> None:
    """A few steps on a small synthetic data set, evaluating and checkpointing along the way.

    A healthy smoke run looks healthy: its evaluation (on its training images, with the BN running
    statistics) stays near the training loss, below chance. Evaluating after 3 steps asks more of the
    running statistics than a real run's first evaluation (after 2 epochs) does, so three things follow
    from the run's shortness (ImageNet ResNet-50's eval loss was ~1e13, its training loss 7-33):
    - the learning rate follows the batch (the linear scaling rule, as batch=<N>): lr 0.1 at batch 16
      diverged;
    - the running statistics average over a horizon that fits in the run: the recipe's momentum 0.9
      averages over ~10 steps, so at step 3 0.9^3 = 73% of them were still the initial mean 0 and
      variance 1; 0.5^3 leaves 1/8;
    - each residual block starts as the identity (the last BN's scale 0, as batch=<N>; Goyal et al. 5.1):
      statistics one step behind the weights are off by ~10-25% per BN, which compounded over ResNet-50's
      16 blocks to logits of ~1e3 (eval loss 327 at step 3); from the identity they cannot compound.
    """
    factor = SMOKE_BATCH / c.batch_size
    if not c.schedule.scale_by_batch:  # with it (batch=<N>), optim scales base_lr by the batch itself
        c.schedule.base_lr *= factor
    c.schedule.warmup_lr *= factor
    c.batch_size = SMOKE_BATCH
    c.model.bn_momentum = 0.5
    c.model.zero_init_residual = c.model.shortcut != "none"  # a plain net has no block to start as identity
    c.num_train_steps = 6
    c.log_every_steps = 1
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.keep_checkpoints = 2
    c.data.name = "synthetic"
    c.data.synthetic_examples = 64
    c.data.eval_crop = "center"
    c.data.shuffle_buffer = 64
    c.data.image_size = 64 if c.model.family == "imagenet" else 32
    if c.model.bn == "ghost":  # batch=N,smoke: groups of 2, the per-device batch on 8 devices
        c.model.bn_group_size = 2


def cifar_config(arg: str | None, dataset: str = "cifar10") -> ml_collections.ConfigDict:
    """The paper's CIFAR recipe (section 4.2) for the net and options in `arg`."""
    toks = tokens(arg)
    is_smoke, holdout = pop_flag(toks, "smoke"), pop_flag(toks, "val")
    shortcut = pop_shortcut(toks)
    batch = pop_int(toks, "batch")
    nets = [t for t in toks if t.startswith(("resnet", "plain"))]
    net = nets[0] if nets else "resnet20"
    toks = [t for t in toks if t != net]
    check_empty(toks)
    depth, plain = cifar_net(net)
    if plain and shortcut:
        raise ValueError("plain nets have no shortcuts: drop the shortcut option")

    c = base_config()
    c.model.family = "cifar"
    c.model.depth = depth
    c.model.shortcut = "none" if plain else shortcut or "A"
    c.model.scan_blocks = depth >= SCAN_FROM_DEPTH
    c.data.name = dataset
    c.data.num_classes = config.DATASET_CLASSES[dataset]
    c.data.mean = "pixel"
    c.data.val_split = 5_000 if holdout else 0
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.eval_every_steps = 1_000  # 64 points per test-error curve (Fig. 6)
    c.data.eval_batch_size = 1_000  # 10 calls per evaluation of the 10k test images (exact either way)
    c.schedule.base_lr = 0.1
    c.schedule.boundaries = (32_000, 48_000)
    if depth >= SCAN_FROM_DEPTH:  # lr 0.01 until training error < 80% (~400 steps), then 0.1
        c.schedule.warmup = "constant"
        c.schedule.warmup_steps = 400
        c.schedule.warmup_lr = 0.01
    if batch is not None:
        cifar_batch(c, batch)
    if is_smoke:
        smoke(c)
    return c


CIFAR_BATCH = 128
CIFAR_WARMUP_FROM_BATCH = 512


def cifar_batch(c: ml_collections.ConfigDict, batch: int) -> None:
    """The CIFAR recipe at global batch `batch`: linear lr scaling, the same epochs in fewer steps.

    Not the paper's recipe (batch 128): a lever for accelerators that a batch of 128 leaves idle.
    From batch 512 the learning rate also ramps up linearly over 5 epochs (Goyal et al. 2017).
    """
    counts = {
        "num_train_steps": c.num_train_steps,
        "eval_every_steps": c.eval_every_steps,
        "checkpoint_every_steps": c.checkpoint_every_steps,
        **{f"boundary {i + 1}": b for i, b in enumerate(c.schedule.boundaries)},
    }
    if batch <= 0 or any(n * CIFAR_BATCH % batch for n in counts.values()):
        raise ValueError(
            f"CIFAR batch={batch} must divide the recipe's step counts scaled by 128 "
            f"({', '.join(f'{k} {v}' for k, v in counts.items())}): use e.g. 256, 512 or 1024"
        )
    scale = lambda n: n * CIFAR_BATCH // batch  # noqa: E731
    c.batch_size = batch
    reference_lr = c.schedule.base_lr
    c.schedule.base_lr = reference_lr * batch / CIFAR_BATCH
    c.num_train_steps = scale(c.num_train_steps)
    c.eval_every_steps = scale(c.eval_every_steps)
    c.checkpoint_every_steps = scale(c.checkpoint_every_steps)
    c.schedule.boundaries = tuple(scale(b) for b in c.schedule.boundaries)
    if batch >= CIFAR_WARMUP_FROM_BATCH:  # from the batch-128 lr, as Goyal et al. from their batch-256 one
        c.schedule.warmup = "linear"
        c.schedule.warmup_lr = reference_lr
        c.schedule.warmup_steps = 0
        c.schedule.warmup_epochs = 5.0
    elif c.schedule.warmup_steps:
        c.schedule.warmup_steps = max(1, scale(c.schedule.warmup_steps))


def large_batch(c: ml_collections.ConfigDict, batch: int) -> None:
    """Goyal et al. (2017): global batch `batch`, linear lr scaling, 5-epoch warm-up, ghost BN of 32."""
    if batch % 32:
        raise ValueError(f"batch={batch} must be a multiple of the BN group size 32")
    c.batch_size = batch
    c.schedule.scale_by_batch = True  # lr = 0.1 * batch / 256
    c.schedule.warmup = "linear"  # from the batch-256 lr 0.1 to 0.1 * batch / 256, as theirs (section 2.2)
    c.schedule.warmup_lr = c.schedule.base_lr
    c.schedule.warmup_steps = 0
    c.schedule.warmup_epochs = 5.0
    c.model.bn = "ghost"
    c.model.bn_group_size = 32
    # gamma = 0 in the last BN of each residual block (their section 5.1). Not in a plain net: there that
    # BN's output is the block's whole output, so every block would output relu(0) = 0 and nothing before
    # the FC would ever get a gradient.
    c.model.zero_init_residual = c.model.shortcut != "none"


def imagenet_config(
    depth: int, plain: bool, arg: str | None, shortcut: str = "B"
) -> ml_collections.ConfigDict:
    """The paper's ImageNet recipe (sections 3.4, 4.1) for ResNet-<depth> or plain-<depth>."""
    toks = tokens(arg)
    is_smoke, v15 = pop_flag(toks, "smoke"), pop_flag(toks, "v1.5")
    batch = pop_int(toks, "batch")
    given = pop_shortcut(toks)
    check_empty(toks)
    bottleneck = depth >= 50
    if plain and (given or v15):
        raise ValueError("plain nets take no shortcut or v1.5 option")
    if v15 and not bottleneck:
        raise ValueError("v1.5 moves the stride of bottleneck blocks: ResNet-50/101/152 only")

    c = base_config()
    c.model.family = "imagenet"
    c.model.depth = depth
    c.model.shortcut = "none" if plain else given or shortcut
    c.model.stride_on = "3x3" if v15 else "1x1"
    c.data.name = "imagenet2012"
    c.data.num_classes = 1000
    c.data.augment = "paper"  # scale augmentation [256, 480], 224 crop, flip, colour (AlexNet)
    c.data.eval_crop = "ten"  # 10-crop testing, as Tables 2 and 3
    c.data.image_size = 224
    c.batch_size = 256
    c.num_train_steps = -1
    c.num_epochs = 120.0  # "up to 60 x 10^4 iterations" at batch 256
    c.schedule.base_lr = 0.1
    c.schedule.boundaries = ()
    c.schedule.boundaries_epochs = (30, 60, 90)  # fixed stand-in for "divided by 10 when error plateaus"
    if batch is not None:
        large_batch(c, batch)
    epoch = config.steps_per_epoch(
        IMAGENET_TRAIN_EXAMPLES, c.batch_size
    )  # the trainer's epochs: full batches
    c.eval_every_steps = 2 * epoch
    c.checkpoint_every_steps = epoch
    if is_smoke:
        smoke(c)
    return c


def sweep_point(
    name: str, config: str, arg: str | None, seeds: int = 1, overrides: dict | None = None
) -> dict:
    """One sweep point: `config` ("configs/x.py:tokens") with the sweep's own argument tokens appended;
    `overrides` maps dotted config keys to values ({"model.remat": True})."""
    path, _, own = config.partition(":")
    joined = ",".join(tokens(own) + tokens(arg))
    config = f"{path}:{joined}" if joined else path
    return {"name": name, "config": config, "overrides": dict(overrides or {}), "seeds": seeds}


def load_file(path: str) -> ModuleType:
    """Import a config or sweep file by its path (relative paths: from the cwd, else the repository)."""
    file = pathlib.Path(path)
    if not file.exists() and (ROOT / file).exists():
        file = ROOT / file
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_loaded_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """get_config(arg) of "path/to/config.py[:arg]", as --config=... loads it."""
    path, _, arg = spec.partition(":")
    return load_file(path).get_config(arg or None)
