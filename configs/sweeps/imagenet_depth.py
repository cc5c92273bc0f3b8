"""Tables 2 and 3: ResNet-18, 34 (option A, as Table 2), 50, 101, 152 (option B) on ImageNet.

    python -m resnet_jax.sweep configs/sweeps/imagenet_depth.py --workdir=runs/imagenet_depth
    python -m resnet_jax.sweep configs/sweeps/imagenet_depth.py:batch=4096 --workdir=gs://BUCKET/depth \
        --mode=tpu
    python -m resnet_jax.report runs/imagenet_depth

The argument's tokens go to every point's config (e.g. "batch=4096", "smoke").
Paper (10-crop top-1): 27.88, 25.03, 22.85, 21.75, 21.43%.
Expected time on one H200 -- ESTIMATE from the configs' FLOP-scaled figures:
2.7 + 5.5 + 5.8 + 11.5 + 17.2 h = ~43 h.
"""

from resnet_jax import experiments


def get_sweep(arg: str | None = None) -> list[dict]:
    """ResNet-<d> for d in 18, 34, 50, 101, 152, each with its paper shortcut option."""
    return [
        experiments.sweep_point(f"resnet{d}", f"configs/imagenet_r{d}.py", arg)
        for d in experiments.IMAGENET_DEPTHS
    ]
