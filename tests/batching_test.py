"""Fixed-shape batches of any task's features (data/batching.py): a padded last eval batch, global batches split
across processes, and shuffled training epochs that resume mid-epoch."""

import numpy as np
import pytest

from bert_jax.data import batching


def _features(n):
    return {
        "input_ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3),
        "labels": np.arange(n, dtype=np.int32) % 2,
        "example_ids": np.arange(100, 100 + n, dtype=np.int32),
    }


def test_eval_batches_pad_last_batch():
    batches = list(batching.eval_batches(_features(10), 4))
    assert len(batches) == batching.num_eval_batches(10, 4) == 3
    assert all(b["input_ids"].shape == (4, 3) for b in batches)
    np.testing.assert_array_equal(batches[2]["weights"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[2]["example_ids"], [108, 109, -1, -1])
    # Padding repeats the last real row: valid inputs, never an all-masked row.
    np.testing.assert_array_equal(batches[2]["input_ids"][2:], [[27, 28, 29]] * 2)
    ids = np.concatenate([b["example_ids"][b["weights"] > 0] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(100, 110))


def test_eval_batches_split_global_batches_across_processes():
    single = list(batching.eval_batches(_features(11), 4))
    per_process = [list(batching.eval_batches(_features(11), 2, process_index=p, process_count=2))
                   for p in range(2)]  # fmt: skip
    assert [len(b) for b in per_process] == [3, 3]
    for b, (p0, p1) in enumerate(zip(*per_process, strict=True)):
        for key in single[b]:
            np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), single[b][key])


def test_train_batches_epochs_are_permutations():
    features = _features(10)
    epoch0 = list(batching.train_batches(features, 3, seed=5, epoch=0))
    assert len(epoch0) == batching.steps_per_epoch(10, 3) == 3
    seen = np.concatenate([b["example_ids"] for b in epoch0])
    assert len(set(seen.tolist())) == 9 and set(seen.tolist()) <= set(range(100, 110))
    again = list(batching.train_batches(features, 3, seed=5, epoch=0, start=1))
    np.testing.assert_array_equal(again[0]["example_ids"], epoch0[1]["example_ids"])
    epoch1 = np.concatenate(
        [b["example_ids"] for b in batching.train_batches(features, 3, seed=5, epoch=1)]
    )
    assert not np.array_equal(seen, epoch1)
    halves = [next(batching.train_batches(features, 2, seed=5, epoch=0, process_index=p, process_count=2))
              for p in range(2)]  # fmt: skip
    np.testing.assert_array_equal(
        np.concatenate([h["example_ids"] for h in halves]),
        next(batching.train_batches(features, 4, seed=5, epoch=0))["example_ids"],
    )
    with pytest.raises(ValueError, match="less than one global batch of 12"):
        next(batching.train_batches(features, 6, seed=0, epoch=0, process_count=2))
