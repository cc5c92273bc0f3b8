"""Table 3: ResNet-34 with shortcut options A, B, C, and plain-34, on ImageNet.

    python -m resnet_jax.sweep configs/sweeps/imagenet_shortcuts.py --workdir=runs/imagenet_shortcuts
    python -m resnet_jax.sweep configs/sweeps/imagenet_shortcuts.py:batch=4096 --workdir=gs://BUCKET/sc \
        --mode=tpu
    python -m resnet_jax.report runs/imagenet_shortcuts

The argument's tokens go to every point's config (e.g. "batch=4096", "smoke").
Paper (10-crop top-1 / top-5): plain-34 28.54 / 10.02; A 25.03 / 7.76; B 24.52 / 7.46; C 24.19 / 7.40.
Expected time on one H200 -- ESTIMATE from configs/imagenet_r34.py: 4 x 5.5 h = ~22 h.
"""

from resnet_jax import experiments


def get_sweep(arg: str | None = None) -> list[dict]:
    """plain-34 and ResNet-34 A/B/C."""
    points = [experiments.sweep_point("plain34", "configs/imagenet_plain34.py", arg)]
    return points + [
        experiments.sweep_point(f"resnet34-{s}", f"configs/imagenet_r34.py:{s}", arg)
        for s in experiments.SHORTCUT_OPTIONS
    ]
