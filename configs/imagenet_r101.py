"""ResNet-101 on ImageNet (Table 3, bottleneck blocks, option B).

    # paper recipe, one host:
    python -m resnet_jax.main --config=configs/imagenet_r101.py --workdir=runs/imagenet_r101
    # v1.5 variant:
    python -m resnet_jax.main --config=configs/imagenet_r101.py:v1.5 --workdir=runs/imagenet_r101-v15
    # a pod slice at global batch 4096 (workdir on storage shared by all hosts):
    python -m resnet_jax.main --config=configs/imagenet_r101.py:batch=4096 --workdir=gs://BUCKET/r101
    # a few steps on CPU, synthetic data:
    python -m resnet_jax.main --config=configs/imagenet_r101.py:smoke --workdir=/tmp/smoke-r101

Paper: 21.75% top-1, 6.05% top-5 (10-crop).

Recipe (section 3.4): batch 256, lr 0.1 / 10 at epochs 30, 60, 90 (a fixed stand-in for "when the error
plateaus"), 120 epochs, momentum 0.9, weight decay 1e-4, scale + crop + flip + colour augmentation,
10-crop evaluation every 2 epochs. Argument tokens: shortcut B (default), C or A; v1.5 puts the stride on
the 3x3 conv (torchvision); batch=<N> for a pod (Goyal et al.: lr x N/256, 5-epoch linear warm-up, BN over
groups of 32); smoke. See resnet_jax/experiments.py.

Expected time on one NVIDIA H200, bf16 -- an ESTIMATE of 11.5 h: 120 epochs = 153.7M images; the flax
ImageNet example's ResNet-50 (v1.5, 4.09 GFLOPs) trained at 6,879 img/s there (22,349 s = 6.2 h), scaled
by this net's 7.6 GFLOPs (Table 1). Assumes the input pipeline keeps up; leaves out the 10-crop
evaluations (~5%).
"""

import ml_collections

from resnet_jax import experiments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's ImageNet recipe for ResNet-101; `arg` as in the module docstring."""
    return experiments.imagenet_config(101, plain=False, arg=arg, shortcut="B")
