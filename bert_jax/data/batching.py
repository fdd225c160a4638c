"""Fixed-shape batches of any task's features (NumPy only): every training epoch shuffled by (seed, epoch) in full
batches, and every evaluation row once with the last batch padded, so each jitted step compiles once.

`features` is a dict of arrays with one row per example on axis 0 (`input_ids` among them); each process
yields its own slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bert_jax.data import packing

# How training batches are cut (the recipe's `batch_lengths`): "full" rows of max_seq_length; "trim", each
# batch cut to the ladder rung of its longest example (same examples, same steps); "bucket", examples sorted
# into the ladder's length buckets and batched within them (`packing.bucket_by_length`: another order, a few
# steps fewer per epoch, the least padding). docs/performance.md "Fine-tuning batches" has their speeds.
BATCH_LENGTHS = ("full", "trim", "bucket")


def check_batch_lengths(batch_lengths: str) -> None:
    if batch_lengths not in BATCH_LENGTHS:
        raise ValueError(f"batch_lengths={batch_lengths!r} is not one of {BATCH_LENGTHS}")


def _example_lengths(features) -> np.ndarray:
    """Real tokens of each example (the longest choice of a SWAG row)."""
    mask = np.asarray(features["attention_mask"])
    return mask.sum(-1).reshape(len(mask), -1).max(1)


def epoch_steps(
    features, batch_size: int, process_count: int = 1, batch_lengths: str = "full"
) -> int:
    """Global batches in one epoch of `train_batches` with these `batch_lengths`."""
    check_batch_lengths(batch_lengths)
    n = len(features["input_ids"])
    if batch_lengths != "bucket":
        return steps_per_epoch(n, batch_size, process_count)
    ladder = np.asarray(length_ladder(features["input_ids"].shape[-1]))
    counts = np.bincount(np.searchsorted(ladder, _example_lengths(features)), minlength=len(ladder))
    return int(np.sum(counts // (batch_size * process_count)))


def length_ladder(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """The lengths a trimmed batch may have: powers of two from `smallest` below `max_length`, then
    `max_length` (each one compiles the train step once)."""
    out, length = [], smallest
    while length < max_length:
        out.append(length)
        length *= 2
    return (*out, max_length)


def trimmed_length(attention_mask: np.ndarray, boundaries) -> int:
    """The smallest of `boundaries` that holds every row's real tokens (right padding; any leading axes)."""
    longest = int(np.max(np.asarray(attention_mask).sum(-1), initial=1))
    return next(b for b in sorted(boundaries) if b >= longest)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches `eval_batches` yields: the last one is padded, not dropped."""
    return -(-num_examples // (batch_size * process_count))


def eval_batches(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields every example once in batches of exactly `batch_size` rows, so eval compiles once.

    Padding rows have `weights` 0 and `example_ids` -1. With several processes each yields its
    `batch_size` slice of every global batch, all the same number of batches.
    """
    n = len(features["input_ids"])
    global_size = batch_size * process_count
    total = num_eval_batches(n, batch_size, process_count) * global_size
    # Padding repeats the last real row rather than zeros: an all-masked row can give NaN
    # logits, and NaN * weight 0 is still NaN in the summed metrics.
    rows = np.minimum(np.arange(total), n - 1)
    weights = (np.arange(total) < n).astype(np.float32)
    for start in range(process_index * batch_size, total, global_size):
        take = rows[start : start + batch_size]
        batch = {key: value[take] for key, value in features.items()}
        batch["weights"] = weights[start : start + batch_size]
        if "example_ids" in batch:
            batch["example_ids"] = np.where(batch["weights"] > 0, batch["example_ids"], -1)
        yield batch


def steps_per_epoch(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Full global batches in one epoch (`train_batches` drops the remainder)."""
    return num_examples // (batch_size * process_count)


def train_batches(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    batch_lengths: str = "full",
) -> Iterator[dict[str, np.ndarray]]:
    """Yields one epoch of shuffled full batches, from batch `start` on.

    The order depends only on (seed, epoch), so resuming needs only the step number. Each
    process yields its `batch_size` slice of every global batch. `batch_lengths` (BATCH_LENGTHS):
    with "trim" every per-token field is cut to the `length_ladder` rung that holds the global
    batch's longest example (the same on every host): the same examples in the same steps, fewer
    padding columns, a few more shapes to compile. With "bucket" the epoch is
    `packing.bucket_by_length` over the ladder (full global batches only; `epoch_steps` of them).
    """
    check_batch_lengths(batch_lengths)
    ladder = length_ladder(features["input_ids"].shape[-1])
    if batch_lengths == "bucket":
        yield from _bucketed(
            features, batch_size, ladder, seed, epoch, start, process_index, process_count
        )
        return
    n = len(features["input_ids"])
    steps = steps_per_epoch(n, batch_size, process_count)
    if steps == 0:
        raise ValueError(f"{n} rows is less than one global batch of {batch_size * process_count}")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    global_size = batch_size * process_count
    for step in range(start, steps):
        begin = step * global_size + process_index * batch_size
        take = order[begin : begin + batch_size]
        batch = {key: value[take] for key, value in features.items()}
        batch["weights"] = np.ones(batch_size, np.float32)
        if batch_lengths == "trim":
            everyone = order[step * global_size : (step + 1) * global_size]
            length = trimmed_length(features["attention_mask"][everyone], ladder)
            batch = packing.trim_batch(batch, np.arange(batch_size), length)
        yield batch


def _bucketed(features, batch_size, ladder, seed, epoch, start, process_index, process_count):
    """`train_batches` with "bucket": a pure function of (seed, epoch), as the plain order is."""
    global_size = batch_size * process_count
    batches = packing.bucket_by_length(
        _example_lengths(features), global_size, ladder, seed=[seed, epoch], drop_remainder=True
    )
    for members, bound in batches[start:]:
        take = members[process_index * batch_size : (process_index + 1) * batch_size]
        batch = packing.trim_batch(features, take, bound)
        batch["weights"] = np.ones(batch_size, np.float32)
        yield batch
