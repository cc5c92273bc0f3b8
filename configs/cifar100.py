"""CIFAR-100 with the paper's CIFAR-10 recipe unchanged (section 4.2); the paper reports no CIFAR-100 run.

    python -m resnet_jax.main --config=configs/cifar100.py:resnet56 --workdir=runs/cifar100-resnet56
    python -m resnet_jax.main --config=configs/cifar100.py:resnet20,smoke --workdir=/tmp/smoke  # CPU

Argument: as configs/cifar10.py ("<net>[,<shortcut>][,smoke][,val]"); only the data set and the
100-way classifier differ. Paper number: none. Expected time: as configs/cifar10.py (the FC layer is
the only change), e.g. ResNet-56 ~5.5 min on one H200 with --config.steps_per_call=50 (estimate: 64k x
5.0 ms step time).
"""

import ml_collections

from resnet_jax import experiments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The CIFAR recipe on CIFAR-100 for the net named in `arg` (default ResNet-20, option A)."""
    return experiments.cifar_config(arg, dataset="cifar100")
