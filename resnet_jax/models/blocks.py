"""Residual building blocks (paper Figure 5): basic (two 3x3) and bottleneck (1x1-3x3-1x1).

Each block computes relu(F(x) + shortcut(x)), with BN right after every convolution and the ReLU after
the addition; `shortcut="none"` drops the addition (the plain net). Blocks read the ModelOptions record
they are given; they know nothing of configs or training.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from resnet_jax.models.layers import DTYPES, BatchNorm, conv, shortcut_a
from resnet_jax.schema import ModelOptions


class Block(nn.Module):
    """Fields shared by both block types."""

    options: ModelOptions
    features: int  # the block's inner width; the output has features * expansion channels
    strides: int
    train: bool
    expansion = 1

    def bn(self, name: str, zero_init: bool = False) -> BatchNorm:
        o = self.options
        return BatchNorm(
            train=self.train,
            momentum=o.bn_momentum,
            epsilon=o.bn_epsilon,
            group_size=o.bn_group_size,
            zero_init=zero_init,
            dtype=DTYPES[o.dtype],
            name=name,
        )

    def conv(self, features: int, kernel: int, strides: int, name: str) -> nn.Conv:
        return conv(features, kernel, strides, DTYPES[self.options.dtype], self.options.init, name)

    def add_shortcut(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        """relu(residual + shortcut(x)) for the block's option; relu(residual) for plain nets."""
        out = self.features * self.expansion
        changes = self.strides != 1 or x.shape[-1] != out
        shortcut = self.options.shortcut
        if shortcut == "none":
            return nn.relu(residual)
        if shortcut == "C" or (shortcut == "B" and changes):
            x = self.conv(out, 1, self.strides, "shortcut_conv")(x)
            x = self.bn("shortcut_bn")(x)
        elif changes:  # option A, or option B where the shape is unchanged
            x = shortcut_a(x, out, self.strides)
        return nn.relu(residual + x)


class BasicBlock(Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(self.bn("bn1")(y))
        y = self.conv(self.features, 3, 1, "conv2")(y)
        y = self.bn("bn2", self.options.zero_init_residual)(y)
        return self.add_shortcut(x, y)


class BottleneckBlock(Block):
    """1x1 reduce, 3x3, 1x1 expand (x4): ResNet-50/101/152.

    `options.stride_on="1x1"` puts the downsampling stride on the first 1x1 (the paper, "v1");
    `"3x3"` puts it on the 3x3 (torchvision's "v1.5").
    """

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s1, s3 = (self.strides, 1) if self.options.stride_on == "1x1" else (1, self.strides)
        y = self.conv(self.features, 1, s1, "conv1")(x)
        y = nn.relu(self.bn("bn1")(y))
        y = self.conv(self.features, 3, s3, "conv2")(y)
        y = nn.relu(self.bn("bn2")(y))
        y = self.conv(self.features * 4, 1, 1, "conv3")(y)
        y = self.bn("bn3", self.options.zero_init_residual)(y)
        return self.add_shortcut(x, y)


class ScanBody(nn.Module):
    """Adapts a block to `nn.scan`'s (carry, x) -> (carry, y) signature."""

    block: functools.partial

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.block(name="block")(x), None
