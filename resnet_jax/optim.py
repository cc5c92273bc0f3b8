"""SGD with momentum, L2 weight decay and the paper's learning-rate schedules (optax).

The optimizer of a config, as an optax transformation; it never sees data, the model or a checkpoint.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate(cfg: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int):
    """The schedule of `cfg.schedule` as an optax schedule (a function of the step).

    piecewise: base_lr divided by 1/decay_factor at each boundary (steps, or epochs);
    cosine: from base_lr to 0 over the steps after the warm-up. Warm-up: "constant" holds
    `warmup_lr` (the paper's 0.01 for ResNet-110/1202), "linear" ramps from `warmup_lr` to base_lr
    (Goyal et al. start at the unscaled 0.1).
    The linear scaling rule (`scale_by_batch`) multiplies base_lr by batch_size / 256.
    """
    s = cfg.schedule
    base = s.base_lr * (batch_size / 256 if s.scale_by_batch else 1.0)
    warmup = s.warmup_steps or round(s.warmup_epochs * steps_per_epoch)
    if s.warmup == "none":
        warmup = 0
    if s.name == "piecewise":
        bounds = [round(e * steps_per_epoch) for e in s.boundaries_epochs] or list(s.boundaries)
        main = optax.piecewise_constant_schedule(base, {int(b): s.decay_factor for b in bounds})
    else:
        cosine = optax.cosine_decay_schedule(base, max(total_steps - warmup, 1))
        main = optax.join_schedules([optax.constant_schedule(base), cosine], [warmup]) if warmup else cosine
    if not warmup:
        return main
    if s.warmup == "constant":
        head = optax.constant_schedule(s.warmup_lr)
    else:
        head = optax.linear_schedule(s.warmup_lr, base, warmup)
    # join_schedules restarts the second schedule's count at the boundary; piecewise boundaries
    # are absolute steps, so wrap it to see the global step.
    return lambda step: jax.numpy.where(step < warmup, head(step), main(step))


def decay_mask(params, decay_bn_and_bias: bool):
    """True for the parameters that get weight decay: all of them, or only conv/dense kernels."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decay_bn_and_bias or getattr(path[-1], "key", None) == "kernel", params
    )


def create(cfg: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int):
    """(optax transformation, schedule): L2 decay added to the gradient, then SGD with momentum.

    This is torch.optim.SGD's update: v <- m v + (g + wd w); w <- w - lr v. Caffe's (the paper's
    framework) is v <- m v + lr (g + wd w); w <- w - v: the same while lr is constant, but there a new
    lr reaches the step over ~1/(1-m) = 10 steps, here at once.
    """
    o = cfg.optimizer
    schedule = learning_rate(cfg, batch_size, steps_per_epoch, total_steps)
    tx = optax.chain(
        optax.add_decayed_weights(o.weight_decay, mask=lambda p: decay_mask(p, o.decay_bn_and_bias)),
        optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov),
    )
    return tx, schedule
