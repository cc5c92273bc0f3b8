"""Table 2 and Figure 4: plain-18/34 against ResNet-18/34 (option A, as Table 2); with ResNet-50, 101,
152 (option B), the depths of Table 3. On ImageNet.

    python -m resnet_jax.sweep configs/sweeps/imagenet_depth.py --workdir=runs/imagenet_depth
    python -m resnet_jax.sweep configs/sweeps/imagenet_depth.py:batch=4096 --workdir=gs://BUCKET/depth \
        --mode=tpu
    python -m resnet_jax.report runs/imagenet_depth

The argument's tokens go to every point's config (e.g. "batch=4096", "smoke").
Paper (10-crop top-1): plain-18 27.94, plain-34 28.54; ResNet 27.88, 25.03, 22.85, 21.75, 21.43%.
Expected time on one H200 -- ESTIMATE from the configs' FLOP-scaled figures:
plain 2.7 + 5.5 h, ResNet 2.7 + 5.5 + 5.8 + 11.5 + 17.2 h = ~51 h.
"""

from resnet_jax import config, experiments


def get_sweep(arg: str | None = None) -> list[dict]:
    """plain-18, plain-34; ResNet-<d> for d in 18, 34, 50, 101, 152, each with its paper shortcut option."""
    points = [experiments.sweep_point(f"plain{d}", f"configs/imagenet_plain{d}.py", arg) for d in (18, 34)]
    return points + [
        experiments.sweep_point(f"resnet{d}", f"configs/imagenet_r{d}.py", arg)
        for d in config.IMAGENET_DEPTHS
    ]
