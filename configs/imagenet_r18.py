"""ResNet-18 on ImageNet (Table 2; option A, as the paper's 18/34-layer ResNets).

    # paper recipe, one host:
    python -m resnet_jax.main --config=configs/imagenet_r18.py --workdir=runs/imagenet_r18
    # a pod slice at global batch 4096 (workdir on storage shared by all hosts):
    python -m resnet_jax.main --config=configs/imagenet_r18.py:batch=4096 --workdir=gs://BUCKET/r18
    # a few steps on CPU, synthetic data:
    python -m resnet_jax.main --config=configs/imagenet_r18.py:smoke --workdir=/tmp/smoke-r18

Paper: 27.88% top-1 (10-crop, option A); plain-18 27.94%.

Recipe (section 3.4): batch 256, lr 0.1 / 10 at epochs 30, 60, 90 (a fixed stand-in for "when the error
plateaus"), 120 epochs, momentum 0.9, weight decay 1e-4, scale + crop + flip + colour augmentation,
10-crop evaluation every 2 epochs. Argument tokens: shortcut A (default), B or C; batch=<N> for a pod
(Goyal et al.: lr x N/256, 5-epoch linear warm-up, BN over groups of 32); smoke. See
resnet_jax/experiments.py.

Expected time on one NVIDIA H200, bf16 -- an ESTIMATE of 2.7 h: 120 epochs = 153.7M images; the flax
ImageNet example's ResNet-50 (v1.5, 4.09 GFLOPs) trained at 6,879 img/s there (22,349 s = 6.2 h), scaled
by this net's 1.8 GFLOPs (Table 1). Assumes the input pipeline keeps up; leaves out the 10-crop
evaluations (~5%).
"""

import ml_collections

from resnet_jax import experiments


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's ImageNet recipe for ResNet-18; `arg` as in the module docstring."""
    return experiments.imagenet_config(18, plain=False, arg=arg, shortcut="A")
