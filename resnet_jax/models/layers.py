"""Convolution, batch normalisation and shortcut layers (paper section 3.3).

Plain values in, flax modules or arrays out: layers know nothing of blocks, nets or configs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.schema import DTYPES as DTYPE_NAMES

Dtype = Any
DTYPES = {name: jnp.dtype(name) for name in DTYPE_NAMES}  # ModelOptions.dtype -> the compute dtype


def he_normal(mode: str = "fan_in") -> nn.initializers.Initializer:
    """He et al. (2015) initialisation: normal with variance 2 / fan."""
    return nn.initializers.variance_scaling(2.0, mode, "normal")


def conv(features: int, kernel: int, strides: int, dtype: Dtype, init: str, name: str) -> nn.Conv:
    """A bias-free k x k convolution padded by k // 2 on every side (Caffe / PyTorch padding)."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=he_normal(init),
        name=name,
    )


class ChannelPaddedConv(nn.Module):
    """`conv` with its input channels zero-padded to `in_channels` before the convolution.

    The same function and the same parameter (`kernel`, shape `(k, k, c, features)`, initialised
    identically): the kernel gets zero rows for the padded channels, so outputs and gradients are
    those of `conv`. Tensor-core convolution kernels want channel counts in multiples of 4 or 8; an
    RGB stem (c = 3) otherwise runs in a slow path on GPUs.
    """

    features: int
    kernel: int
    strides: int
    in_channels: int
    dtype: Dtype
    init_mode: str  # He-normal mode ("init" is a flax Module method)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, k, pad = x.shape[-1], self.kernel, self.kernel // 2
        w = self.param("kernel", he_normal(self.init_mode), (k, k, c, self.features), jnp.float32)
        extra = max(self.in_channels - c, 0)
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (0, 0), (0, 0), (0, extra)))
        w = jnp.pad(w.astype(self.dtype), ((0, 0), (0, 0), (0, extra), (0, 0)))
        return jax.lax.conv_general_dilated(
            x,
            w,
            (self.strides, self.strides),
            ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class BatchNorm(nn.Module):
    """Batch normalisation with statistics in float32 over groups of `group_size` examples.

    `group_size=0` normalises over the whole (global) batch: under a batch-sharded `jit` this
    is synchronised BN. A group size equal to the per-device batch gives each device's shard
    its own statistics (the paper's per-GPU BN); smaller groups are "ghost" BN. Running
    statistics are the mean over groups of the group statistics. Variables are named as
    `flax.linen.BatchNorm`'s: params `scale`, `bias`; batch_stats `mean`, `var`.
    """

    train: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    group_size: int = 0
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        scale = self.param("scale", scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if self.train:
            mean, var = _group_moments(x32, self.group_size)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(0)
                ra_var.value = m * ra_var.value + (1 - m) * var.mean(0)
            mul = scale * jax.lax.rsqrt(var + self.epsilon)  # [G, C]
            add = bias - mean * mul
            g = mean.shape[0]
            xg = x32.reshape((g, -1) + x.shape[1:])
            shape = (g, 1) + (1,) * (x.ndim - 2) + (c,)
            y = (xg * mul.reshape(shape) + add.reshape(shape)).reshape(x.shape)
        else:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            y = x32 * mul + (bias - ra_mean.value * mul)
        return y.astype(self.dtype)


def _group_moments(x: jax.Array, group_size: int) -> tuple[jax.Array, jax.Array]:
    """Per-group mean and (biased) variance over all axes but channels: [G, C] each."""
    n = x.shape[0]
    if group_size < 0 or (group_size and n % group_size):
        raise ValueError(f"BN group size {group_size} does not divide the batch of {n}")
    g = n // group_size if group_size else 1
    xg = x.reshape((g, -1, x.shape[-1]))
    mean = xg.mean(1)
    var = jnp.maximum((xg * xg).mean(1) - mean * mean, 0.0)
    return mean, var


def shortcut_a(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Option A: identity, subsampled by `strides` and zero-padded to `features` channels.

    The extra channels are split half before and half after the identity channels, the
    layout of the widely used PyTorch CIFAR ResNets. No parameters.
    """
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x
