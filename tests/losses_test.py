"""Each loss against a float64 NumPy reference (log-softmax by hand), with zero-weight padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import losses


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _nll(logits, labels):
    log_probs = _log_softmax(logits)
    out = np.zeros(labels.shape)
    for index in np.ndindex(labels.shape):
        out[index] = -log_probs[index + (labels[index],)]
    return out


def _assert_close(got: dict, want: dict):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == jnp.float32 and got[key].shape == (), key
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mlm_loss(rng, dtype):
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    ids = rng.integers(0, 11, (3, 5)).astype(np.int32)
    weights = np.ones((3, 5), np.float32)
    weights[0, 3:] = weights[2, 1:] = 0.0  # padding predictions, as the loader emits them
    ids[weights == 0] = 0
    ids[0, 1] = logits[0, 1].argmax()  # at least one hit
    logits = np.asarray(jnp.asarray(logits, dtype).astype(jnp.float32))  # what the loss will see
    got = losses.mlm_loss(jnp.asarray(logits, dtype), ids, weights)
    nll = _nll(logits, ids)
    hits = logits.argmax(-1) == ids
    want = {
        "loss_sum": (nll * weights).sum(),
        "correct_sum": (hits * weights).sum(),
        "weight_sum": 9.0,
    }
    _assert_close(got, want)
    assert want["correct_sum"] >= 1


def test_padding_labels_out_of_range_are_ignored(rng):
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    ids = rng.integers(0, 7, (2, 4)).astype(np.int32)
    weights = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    padded = np.where(weights > 0, ids, -100)  # Hugging Face style ignore label
    got = losses.mlm_loss(logits, padded, weights)
    want = losses.mlm_loss(logits, ids, weights)
    for key in want:
        assert np.isfinite(float(got[key]))
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-6)
    # No gradient reaches the logits of padding predictions.
    grad = jax.grad(lambda x: losses.mlm_loss(x, padded, weights)["loss_sum"])(jnp.asarray(logits))
    assert np.all(np.asarray(grad)[weights == 0] == 0)
    assert np.all(np.abs(np.asarray(grad)[weights > 0]).sum(-1) > 0)


def test_nsp_loss(rng):
    logits = rng.normal(size=(6, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (6,)).astype(np.int32)
    got = losses.nsp_loss(logits, labels)
    nll = _nll(logits, labels)
    _assert_close(
        got,
        {
            "loss_sum": nll.sum(),
            "correct_sum": (logits.argmax(-1) == labels).sum(),
            "count": 6.0,
        },
    )
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)  # a padded eval batch
    got = losses.nsp_loss(logits, labels, weights)
    _assert_close(
        got,
        {
            "loss_sum": nll[:4].sum(),
            "correct_sum": (logits.argmax(-1) == labels)[:4].sum(),
            "count": 4.0,
        },
    )


def test_classification_loss(rng):
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (5,)).astype(np.int32)
    weights = np.array([1, 0, 1, 1, 0], np.float32)
    nll, hits = _nll(logits, labels), logits.argmax(-1) == labels
    _assert_close(
        losses.classification_loss(logits, labels, weights),
        {
            "loss_sum": (nll * weights).sum(),
            "correct_sum": (hits * weights).sum(),
            "weight_sum": 3.0,
        },
    )
    _assert_close(
        losses.classification_loss(logits, labels),
        {"loss_sum": nll.sum(), "correct_sum": hits.sum(), "weight_sum": 5.0},
    )


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_regression_loss(rng, shape):
    preds = rng.normal(size=shape).astype(np.float32)
    labels = rng.uniform(0, 5, (4,)).astype(np.float32)  # STS-B style scores
    weights = np.array([1, 1, 1, 0], np.float32)
    flat = preds.reshape(4).astype(np.float64)
    _assert_close(
        losses.regression_loss(preds, labels, weights),
        {"loss_sum": (((flat - labels) ** 2) * weights).sum(), "weight_sum": 3.0},
    )


def test_span_loss(rng):
    start, end = (rng.normal(size=(3, 9)).astype(np.float32) for _ in range(2))
    start_pos = np.array([1, 4, 0], np.int32)
    end_pos = np.array([2, 8, 0], np.int32)
    start_pos[0] = start[0].argmax()
    weights = np.array([1, 1, 0], np.float32)
    per_example = 0.5 * (_nll(start, start_pos) + _nll(end, end_pos))
    _assert_close(
        losses.span_loss(start, end, start_pos, end_pos, weights),
        {
            "loss_sum": (per_example * weights).sum(),
            "start_correct_sum": ((start.argmax(-1) == start_pos) * weights).sum(),
            "end_correct_sum": ((end.argmax(-1) == end_pos) * weights).sum(),
            "weight_sum": 2.0,
        },
    )


def test_token_classification_loss(rng):
    logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 6)).astype(np.int32)
    weights = np.ones((2, 6), np.float32)
    weights[0, 4:] = weights[1, 2:] = 0  # padding and word-piece continuations
    nll, hits = _nll(logits, labels), logits.argmax(-1) == labels
    _assert_close(
        losses.token_classification_loss(logits, labels, weights),
        {
            "loss_sum": (nll * weights).sum(),
            "correct_sum": (hits * weights).sum(),
            "weight_sum": 6.0,
        },
    )


def test_losses_are_jittable_and_sum_across_batches(rng):
    """Sums plus weights: two half batches add up to the whole batch, which a mean of means would not."""
    logits = rng.normal(size=(4, 3, 8)).astype(np.float32)
    ids = rng.integers(0, 8, (4, 3)).astype(np.int32)
    weights = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)
    fn = jax.jit(losses.mlm_loss)
    whole = fn(logits, ids, weights)
    halves = [fn(logits[s], ids[s], weights[s]) for s in (slice(0, 2), slice(2, 4))]
    for key in whole:
        np.testing.assert_allclose(float(whole[key]), sum(float(h[key]) for h in halves), rtol=1e-6)
    mean = float(whole["loss_sum"] / whole["weight_sum"])
    mean_of_means = np.mean([float(h["loss_sum"] / h["weight_sum"]) for h in halves])
    assert abs(mean - mean_of_means) > 1e-4
