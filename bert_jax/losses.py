"""Losses for pretraining and fine-tuning, as sums plus denominators.

Each function returns a dict of float32 scalars: sums over the (weighted) examples and the weight they were
summed over, so the host can add them across steps and devices and divide once (a mean of means would
weight a half-padded batch like a full one). The training objective is `loss_sum / weight_sum`.
All computation is float32 whatever the logits' dtype. Weights are 0 for padding, 1 otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _weights(weights, shape) -> Array:
    return jnp.ones(shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)


def _cross_entropy(logits: Array, labels: Array) -> Array:
    """Per-position -log softmax(logits)[label], float32; labels index the last axis."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # Padding labels may be anything (e.g. -100); out-of-range gathers would give NaN, and NaN * 0 is NaN.
    labels = jnp.clip(jnp.asarray(labels, jnp.int32), 0, logits.shape[-1] - 1)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _correct(logits: Array, labels: Array) -> Array:
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def mlm_loss(logits: Array, ids: Array, weights: Array) -> dict[str, Array]:
    """Masked-LM cross entropy. logits [B, P, V], ids [B, P] (`masked_lm_ids`), weights [B, P].

    Returns loss_sum, correct_sum (argmax hits) and weight_sum, all weighted by `masked_lm_weights`.
    """
    w = _weights(weights, ids.shape)
    return {
        "loss_sum": jnp.sum(_cross_entropy(logits, ids) * w),
        "correct_sum": jnp.sum(_correct(logits, ids) * w),
        "weight_sum": jnp.sum(w),
    }


def nsp_loss(logits: Array, labels: Array, weights: Array | None = None) -> dict[str, Array]:
    """Next-sentence-prediction cross entropy. logits [B, 2], labels [B] (0 IsNext, 1 NotNext).

    `weights` [B] (optional) masks padded examples of an eval batch. Returns loss_sum, correct_sum, count.
    """
    w = _weights(weights, labels.shape)
    return {
        "loss_sum": jnp.sum(_cross_entropy(logits, labels) * w),
        "correct_sum": jnp.sum(_correct(logits, labels) * w),
        "count": jnp.sum(w),
    }


def classification_loss(
    logits: Array, labels: Array, weights: Array | None = None
) -> dict[str, Array]:
    """Sequence classification cross entropy. logits [B, C], labels [B]. Returns loss/correct/weight sums."""
    w = _weights(weights, labels.shape)
    return {
        "loss_sum": jnp.sum(_cross_entropy(logits, labels) * w),
        "correct_sum": jnp.sum(_correct(logits, labels) * w),
        "weight_sum": jnp.sum(w),
    }


def regression_loss(preds: Array, labels: Array, weights: Array | None = None) -> dict[str, Array]:
    """Squared error (e.g. STS-B). preds [B] or [B, 1], labels [B]. Returns loss_sum and weight_sum."""
    preds = jnp.asarray(preds, jnp.float32)
    if preds.ndim == labels.ndim + 1:
        preds = preds[..., 0]
    w = _weights(weights, labels.shape)
    error = preds - jnp.asarray(labels, jnp.float32)
    return {"loss_sum": jnp.sum(jnp.square(error) * w), "weight_sum": jnp.sum(w)}


def span_loss(
    start_logits: Array,
    end_logits: Array,
    start_positions: Array,
    end_positions: Array,
    weights: Array | None = None,
) -> dict[str, Array]:
    """Span prediction (SQuAD): the mean of start and end cross entropy over the length axis, per example.

    start/end_logits [B, L], start/end_positions [B] (valid indices into L; mask others with `weights`).
    Returns loss_sum, start_correct_sum, end_correct_sum, weight_sum.
    """
    w = _weights(weights, start_positions.shape)
    per_example = 0.5 * (
        _cross_entropy(start_logits, start_positions) + _cross_entropy(end_logits, end_positions)
    )
    return {
        "loss_sum": jnp.sum(per_example * w),
        "start_correct_sum": jnp.sum(_correct(start_logits, start_positions) * w),
        "end_correct_sum": jnp.sum(_correct(end_logits, end_positions) * w),
        "weight_sum": jnp.sum(w),
    }


def token_classification_loss(logits: Array, labels: Array, weights: Array) -> dict[str, Array]:
    """Per-token cross entropy (e.g. NER). logits [B, L, C], labels [B, L], weights [B, L] (0 on padding
    and on word-piece continuations). Returns loss_sum, correct_sum, weight_sum."""
    w = _weights(weights, labels.shape)
    return {
        "loss_sum": jnp.sum(_cross_entropy(logits, labels) * w),
        "correct_sum": jnp.sum(_correct(logits, labels) * w),
        "weight_sum": jnp.sum(w),
    }
