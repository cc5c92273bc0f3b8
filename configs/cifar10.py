"""CIFAR-10, section 4.2 of the paper: ResNets and plain nets of depth 6n+2 (Table 6, Figure 6).

    python -m resnet_jax.main --config=configs/cifar10.py:resnet110,A --workdir=runs/cifar10-resnet110
    python -m resnet_jax.main --config=configs/cifar10.py:resnet20,A,smoke --workdir=/tmp/smoke  # CPU

Argument: "<net>[,<shortcut>][,smoke][,val][,batch=<N>]" (see resnet_jax/experiments.py); net resnet20
(default), resnet32, 44, 56, 110, 1202 or any resnet<6n+2>; plain20 ... plain110 (no shortcuts); shortcut
A (default, the paper's), B or C; batch=<N> the same epochs at batch N (lr x N/128; not the paper's).
Recipe: batch 128, 64k steps, lr 0.1 / 10 at 32k and 48k, momentum 0.9, weight decay 1e-4, 4-pixel
pad + random 32x32 crop + flip, per-pixel mean; depth >= 110 warms up at lr 0.01 for 400 steps and
scans its blocks.

Paper test error (option A): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43% (best of 5; mean
6.61 ± 0.16), 1202 7.93%; plain nets get worse with depth (Fig. 6). Our data copy is JPEG-re-encoded: a
plain JAX ResNet-20 run of this recipe ended at 12.35% on it (shared/ENV-NOTES.md), so expect a few points
above the paper.

Time on one NVIDIA H200, bf16, with --config.steps_per_call=50 (BENCHMARKS.md): ResNet-20 MEASURED
132 s of training for the whole recipe (12.23% test error on the JPEG copy). ESTIMATES = 64k steps x
the step time measured at 20 steps/call: ResNet-56 64k x 5.0 ms = 5.5 min, ResNet-110 64k x 13.9 ms
(scanned) = 15 min, ResNet-1202 64k x 144 ms = 2.6 h; ResNet-32/44 in between 20 and 56. Plain nets
cost the same as the ResNet of equal depth.
"""

import ml_collections

from resnet_jax import experiments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 recipe for the net named in `arg` (default ResNet-20, option A)."""
    return experiments.cifar_config(arg, dataset="cifar10")
