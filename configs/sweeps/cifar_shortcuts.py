"""Shortcut options A, B, C (section 3.3) on CIFAR-10 for ResNet-20, 56 and 110. The paper ablates the
options only on ImageNet (Table 3); on CIFAR it uses A throughout (Table 6: 8.75 / 6.97 / 6.43%).

    python -m resnet_jax.sweep configs/sweeps/cifar_shortcuts.py --workdir=runs/cifar_shortcuts
    python -m resnet_jax.sweep configs/sweeps/cifar_shortcuts.py:56 --workdir=runs/cifar_shortcuts56
    python -m resnet_jax.report runs/cifar_shortcuts

Argument: depths and config tokens, e.g. "20,56" or "110,smoke" (default depths 20, 56, 110).
Expected time on one H200 with --override=steps_per_call=50 -- ESTIMATE from configs/cifar10.py
(projections add little): 3 x (132 s + 5.5 min + 15 min) = ~1.1 h.
"""

from resnet_jax import experiments


def get_sweep(arg: str | None = None) -> list[dict]:
    """ResNet-<d> with shortcut A, B and C for each depth d."""
    toks = experiments.tokens(arg)
    depths = [int(t) for t in toks if t.isdigit()] or [20, 56, 110]
    rest = ",".join(t for t in toks if not t.isdigit())
    return [
        experiments.sweep_point(f"resnet{d}-{s}", f"configs/cifar10.py:resnet{d},{s}", rest)
        for d in depths
        for s in experiments.SHORTCUT_OPTIONS
    ]
