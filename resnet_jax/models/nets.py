"""The paper's networks: CIFAR ResNets (section 4.2) and ImageNet ResNets (Table 1).

A `ResNet` is built from one ModelOptions record, handed whole to its blocks; it knows nothing of
configs, data or training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.config import IMAGENET_DEPTHS
from resnet_jax.models.blocks import BasicBlock, BottleneckBlock, ScanBody
from resnet_jax.models.layers import DTYPES, BatchNorm, ChannelPaddedConv, conv
from resnet_jax.schema import ModelOptions

# ImageNet depth -> (block type, blocks per stage), Table 1.
IMAGENET_STAGES: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
assert tuple(IMAGENET_STAGES) == IMAGENET_DEPTHS, "Table 1's depths are the config's ImageNet depths"


class ResNet(nn.Module):
    """A stem, stages of residual blocks, global average pooling and a fully connected layer.

    Stage `s` (1-based) holds `stage_sizes[s-1]` blocks of width `widths[s-1]`; the first block
    of every stage but the first downsamples by 2. Blocks are named `stage{s}_block{b}`; with
    `scan_blocks` the identical blocks 1.. of a stage with more than two blocks run under one
    `nn.scan` named `stage{s}_scan` (stacked variables).
    """

    options: ModelOptions
    num_classes: int

    @property
    def stem(self) -> str:
        """ "cifar": 3x3/1 conv; "imagenet": 7x7/2 conv + 3x3/2 max-pool."""
        return self.options.family

    @property
    def block(self) -> str:
        """ "basic" | "bottleneck"."""
        return "basic" if self.options.family == "cifar" else IMAGENET_STAGES[self.options.depth][0]

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        if self.options.family == "cifar":
            n = (self.options.depth - 2) // 6
            return (n, n, n)
        return IMAGENET_STAGES[self.options.depth][1]

    @property
    def widths(self) -> tuple[int, ...]:
        return (16, 32, 64) if self.options.family == "cifar" else (64, 128, 256, 512)

    def with_options(self, **changes: Any) -> ResNet:
        """The same net with some options changed (e.g. scan_blocks=False, remat=False for analysis)."""
        return self.clone(options=dataclasses.replace(self.options, **changes))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        o = self.options
        dtype = DTYPES[o.dtype]
        bn = functools.partial(
            BatchNorm, train=train, momentum=o.bn_momentum, epsilon=o.bn_epsilon, group_size=o.bn_group_size,
            dtype=dtype,
        )  # fmt: skip
        x = x.astype(dtype)
        features, kernel, strides = (self.widths[0], 3, 1) if self.stem == "cifar" else (64, 7, 2)
        if o.stem_channels > x.shape[-1]:
            conv1 = ChannelPaddedConv(features, kernel, strides, o.stem_channels, dtype, o.init, name="conv1")
        else:
            conv1 = conv(features, kernel, strides, dtype, o.init, "conv1")
        x = nn.relu(bn(name="bn1")(conv1(x)))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True), start=1):
            x = self.stage(x, s, n, width, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x)

    def stage(self, x: jax.Array, s: int, n: int, width: int, train: bool) -> jax.Array:
        block_cls = scanned_cls = BasicBlock if self.block == "basic" else BottleneckBlock
        if self.options.remat:
            # prevent_cse=False is safe only under scan: elsewhere XLA's CSE undoes the remat.
            block_cls, scanned_cls = nn.remat(block_cls), nn.remat(block_cls, prevent_cse=False)
        kwargs: dict[str, Any] = dict(options=self.options, features=width, train=train)
        x = block_cls(strides=1 if s == 1 else 2, name=f"stage{s}_block0", **kwargs)(x)
        if self.options.scan_blocks and n > 2:
            body = nn.scan(
                ScanBody,
                variable_axes={"params": 0, "batch_stats": 0},
                split_rngs={"params": True},
                length=n - 1,
                unroll=min(self.options.scan_unroll, n - 1),
            )
            x, _ = body(functools.partial(scanned_cls, strides=1, **kwargs), name=f"stage{s}_scan")(x, None)
        else:
            for b in range(1, n):
                x = block_cls(strides=1, name=f"stage{s}_block{b}", **kwargs)(x)
        return x
