"""resnet_jax: deep residual networks (He, Zhang, Ren, Sun, 2015) in JAX/Flax."""

__version__ = "0.1.0"
