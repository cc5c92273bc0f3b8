"""The paper's networks: CIFAR ResNets (section 4.2) and ImageNet ResNets (Table 1)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.blocks import BasicBlock, BottleneckBlock, ScanBody
from resnet_jax.models.layers import BatchNorm, ChannelPaddedConv, conv

# ImageNet depth -> (block type, blocks per stage), Table 1.
IMAGENET_STAGES: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """A stem, stages of residual blocks, global average pooling and a fully connected layer.

    Stage `s` (1-based) holds `stage_sizes[s-1]` blocks of width `widths[s-1]`; the first block
    of every stage but the first downsamples by 2. Blocks are named `stage{s}_block{b}`; with
    `scan_blocks` the identical blocks 1.. of a stage with more than two blocks run under one
    `nn.scan` named `stage{s}_scan` (stacked variables).
    """

    stem: str  # "cifar": 3x3/1 conv; "imagenet": 7x7/2 conv + 3x3/2 max-pool
    block: str  # "basic" | "bottleneck"
    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int
    shortcut: str = "A"
    stride_on: str = "1x1"
    dtype: Any = jnp.float32
    scan_blocks: bool = False
    scan_unroll: int = 1
    remat: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_group_size: int = 0
    zero_init_residual: bool = False
    init_mode: str = "fan_in"
    stem_channels: int = 0  # > 3: zero-pad the image's channels to this for the first conv

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = functools.partial(
            BatchNorm,
            train=train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            group_size=self.bn_group_size,
            dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        features, kernel, strides = (self.widths[0], 3, 1) if self.stem == "cifar" else (64, 7, 2)
        if self.stem_channels > x.shape[-1]:
            conv1 = ChannelPaddedConv(
                features, kernel, strides, self.stem_channels, self.dtype, self.init_mode, name="conv1"
            )
        else:
            conv1 = conv(features, kernel, strides, self.dtype, self.init_mode, "conv1")
        x = nn.relu(bn(name="bn1")(conv1(x)))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True), start=1):
            x = self.stage(x, s, n, width, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x)

    def stage(self, x: jax.Array, s: int, n: int, width: int, train: bool) -> jax.Array:
        block_cls = scanned_cls = BasicBlock if self.block == "basic" else BottleneckBlock
        if self.remat:
            # prevent_cse=False is safe only under scan: elsewhere XLA's CSE undoes the remat.
            block_cls, scanned_cls = nn.remat(block_cls), nn.remat(block_cls, prevent_cse=False)
        kwargs: dict[str, Any] = dict(
            features=width,
            shortcut=self.shortcut,
            train=train,
            dtype=self.dtype,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_group_size=self.bn_group_size,
            zero_init_residual=self.zero_init_residual,
            init_mode=self.init_mode,
        )
        if self.block == "bottleneck":
            kwargs["stride_on"] = self.stride_on
        x = block_cls(strides=1 if s == 1 else 2, name=f"stage{s}_block0", **kwargs)(x)
        if self.scan_blocks and n > 2:
            body = nn.scan(
                ScanBody,
                variable_axes={"params": 0, "batch_stats": 0},
                split_rngs={"params": True},
                length=n - 1,
                unroll=min(self.scan_unroll, n - 1),
            )
            x, _ = body(functools.partial(scanned_cls, strides=1, **kwargs), name=f"stage{s}_scan")(x, None)
        else:
            for b in range(1, n):
                x = block_cls(strides=1, name=f"stage{s}_block{b}", **kwargs)(x)
        return x
