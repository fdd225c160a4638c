"""The packed phase-2 benchmark's batch (`bert_jax.benchmark_packing`): Wikipedia-like padding, and packing
that keeps every real token and prediction in fewer rows."""

import numpy as np

from bert_jax import benchmark_packing
from bert_jax.data import packing


def test_wikipedia_batch_packs_into_fewer_rows():
    feats = benchmark_packing.wikipedia_batch(32, 512, 80, vocab=1000)
    lengths = feats["attention_mask"].sum(1)
    assert feats["input_ids"].shape == (32, 512) and int(feats["input_ids"].max()) < 1000
    assert 0.3 < 1 - lengths.sum() / (32 * 512) < 0.7  # about Wikipedia's padding at 512
    predictions = feats["masked_lm_weights"].sum(1)
    np.testing.assert_array_equal(
        predictions, np.minimum(80, np.maximum(1, np.rint(0.15 * lengths)))
    )
    budget = packing.prediction_budget(512, 16, 80, 0.15)
    packed, _ = packing.pack_features(
        feats, max_per_row=16, buckets=packing.row_buckets(32, 16), predictions_per_row=budget
    )
    assert len(packed["input_ids"]) < 24
    assert int(packed["attention_mask"].sum()) == int(lengths.sum())
    assert float(packed["masked_lm_weights"].sum()) == float(predictions.sum())
