"""Table 6 and Figure 6: plain nets and ResNets (option A) of 20, 32, 44, 56, 110 layers on CIFAR-10,
and ResNet-1202.

    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py --workdir=runs/cifar_depth
    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py --workdir=runs/cifar_depth --seeds=5
    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py --workdir=runs/cifar_depth --seeds=5 --pack
    python -m resnet_jax.sweep configs/sweeps/cifar_depth.py:smoke --workdir=/tmp/cifar_depth --only=resnet20
    python -m resnet_jax.report runs/cifar_depth

The argument's tokens are appended to every point's config argument (e.g. "smoke", "val"). ResNet-110
runs 5 seeds by default, as the paper's "best of 5 (mean 6.61 ± 0.16)"; --seeds=N sets every point's.
Paper: ResNet 8.75 / 7.51 / 7.17 / 6.97 / 6.43 / 7.93% for 20 ... 1202; plain nets worse with depth.
Expected time on one H200 with --override=steps_per_call=50 -- ESTIMATE from the times in configs/cifar10.py
(ResNet-20 132 s measured; 32 ~3 min, 44 ~4.5, 56 5.5, 110 15, 1202 2.6 h): ResNets 20-110 ~30 min,
plain nets the same, 4 more ResNet-110 seeds ~1 h, ResNet-1202 2.6 h: ~4.6 h in all. --pack trains each
point's seeds as one program (docs/experiments.md: 5 seeds everywhere, 3.5 to 17.7 h, unmeasured).
"""

from resnet_jax import experiments

DEPTHS = (20, 32, 44, 56, 110)


def get_sweep(arg: str | None = None) -> list[dict]:
    """{plain, resnet} x DEPTHS, plus ResNet-1202."""
    points = [
        experiments.sweep_point(
            f"{kind}{d}", f"configs/cifar10.py:{kind}{d}", arg, seeds=5 if (kind, d) == ("resnet", 110) else 1
        )
        for kind in ("plain", "resnet")
        for d in DEPTHS
    ]
    return points + [experiments.sweep_point("resnet1202", "configs/cifar10.py:resnet1202", arg)]
