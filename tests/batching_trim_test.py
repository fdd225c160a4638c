"""Fine-tuning batches cut to their longest example (issue 20 item 4): the same examples in the same steps on
every host, per-token fields trimmed to a rung of the length ladder, and the same loss as the full rows."""

import jax
import numpy as np
import pytest

from bert_jax.data import batching
from bert_jax.models import bert


def _features(n=40, length=64, seed=0, choices=None):
    rng = np.random.default_rng(seed)
    shape = (n, length) if choices is None else (n, choices, length)
    lengths = rng.integers(3, 30, shape[:-1])
    lengths[7] = 40 if choices is None else lengths[7]
    mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, 64, shape) * mask).astype(np.int32),
        "token_type_ids": np.zeros(shape, np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, 2, n).astype(np.int32),
    }


def test_length_ladder():
    assert batching.length_ladder(128) == (16, 32, 64, 128)
    assert batching.length_ladder(100) == (16, 32, 64, 100)
    assert batching.length_ladder(16) == (16,)


def test_trimmed_batches_hold_the_same_examples_cut_to_the_global_longest():
    feats = _features()
    ladder = batching.length_ladder(64)
    kwargs = dict(seed=3, epoch=1, process_count=2)
    assert batching.epoch_steps(feats, 8, 2, "trim") == 2
    for host in (0, 1):
        full = list(batching.train_batches(feats, 8, process_index=host, **kwargs))
        cut = list(
            batching.train_batches(feats, 8, process_index=host, batch_lengths="trim", **kwargs)
        )
        assert len(full) == len(cut) == 2
        for f, c, other in zip(
            full,
            cut,
            batching.train_batches(feats, 8, process_index=1 - host, **kwargs),
            strict=True,
        ):
            longest = max(f["attention_mask"].sum(1).max(), other["attention_mask"].sum(1).max())
            expected = next(b for b in ladder if b >= longest)
            assert c["input_ids"].shape == (8, expected)
            np.testing.assert_array_equal(c["input_ids"], f["input_ids"][:, :expected])
            np.testing.assert_array_equal(c["labels"], f["labels"])
            assert f["attention_mask"][:, expected:].sum() == 0  # only padding was cut


def test_swag_rows_trim_their_last_axis():
    feats = _features(n=16, choices=4)
    (batch,) = batching.train_batches(feats, 16, seed=0, epoch=0, batch_lengths="trim")
    assert batch["input_ids"].shape == (16, 4, 32)
    assert batch["labels"].shape == (16,)


def test_a_trimmed_batch_gives_the_full_batchs_logits():
    cfg = bert.BertConfig(
        vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    model = bert.build_model(cfg, "classification", num_labels=2)
    feats = _features(n=8, length=128)
    params = model.init(jax.random.key(0), feats["input_ids"])["params"]
    (cut,) = batching.train_batches(feats, 8, seed=0, epoch=0, batch_lengths="trim")
    (full,) = batching.train_batches(feats, 8, seed=0, epoch=0)
    assert cut["input_ids"].shape[1] == 64 and full["input_ids"].shape[1] == 128
    run = lambda b: model.apply(  # noqa: E731
        {"params": params}, b["input_ids"], b["token_type_ids"], b["attention_mask"]
    )["logits"]
    np.testing.assert_allclose(np.asarray(run(cut)), np.asarray(run(full)), rtol=1e-5, atol=1e-6)


def test_bucketed_batches_hold_similar_lengths_on_every_host():
    feats = _features(n=200, length=128, seed=1)
    lengths = feats["attention_mask"].sum(1)
    steps = batching.epoch_steps(feats, 8, 2, "bucket")
    counts = np.bincount(np.searchsorted([16, 32, 64, 128], lengths), minlength=4)
    assert steps == int(np.sum(counts // 16)) and steps >= 10
    kwargs = dict(seed=3, epoch=2, process_count=2, batch_lengths="bucket")
    hosts = [list(batching.train_batches(feats, 8, process_index=p, **kwargs)) for p in (0, 1)]
    assert len(hosts[0]) == len(hosts[1]) == steps
    seen = []
    for a, b in zip(*hosts, strict=True):
        width = a["input_ids"].shape[1]
        assert b["input_ids"].shape[1] == width  # the hosts agree on each step's width
        both = np.concatenate([a["attention_mask"].sum(1), b["attention_mask"].sum(1)])
        assert both.max() <= width and (width == 16 or both.min() > width // 2)
        seen += [tuple(r) for r in np.concatenate([a["input_ids"], b["input_ids"]])[:, :4]]
    assert len(set(seen)) == len(seen) == 16 * steps  # no example twice in an epoch
    again = list(batching.train_batches(feats, 8, process_index=0, start=3, **kwargs))
    np.testing.assert_array_equal(again[0]["input_ids"], hosts[0][3]["input_ids"])


def test_an_unknown_batch_lengths_is_one_line():
    with pytest.raises(ValueError, match=r"^batch_lengths='sorted' is not one of"):
        batching.epoch_steps(_features(), 8, 1, "sorted")
