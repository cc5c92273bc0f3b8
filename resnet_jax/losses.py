"""The training objective and the error counts, in float32: softmax cross-entropy and top-k errors.

Pure functions of logits and labels, shared by the trainer's steps and the analyses; no state, no data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def topk_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example top-1 and top-5 error indicators (float32); ties and NaN scores make an example wrong.

    The rank counts the other classes that score at least the label's score: a tie counts against
    the label (a constant classifier scores 100% error, not 0%). Every comparison with NaN is false,
    so without the NaN check a diverged model (NaN logits) would score 0% error.
    """
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    rank = jnp.sum(scores >= label_score, axis=-1) - 1  # other classes at or above the label
    nan = jnp.isnan(scores).any(axis=-1)
    return ((rank >= 1) | nan).astype(jnp.float32), ((rank >= 5) | nan).astype(jnp.float32)
