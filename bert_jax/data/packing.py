"""Sequence packing: several short sequences share one row, so a batch carries fewer padding tokens.

The packer is histogram-based shortest-pack-first (Krell et al. 2021, "Efficient Sequence Packing
without Cross-contamination", SPFHP), written from the paper's description: sequences are taken
longest first and each goes into the open row with the least remaining room that still holds it
(a new row when none does); a row closes when it holds `max_per_row` sequences. Open rows are kept
in a histogram indexed by remaining room, so a step costs O(N * L) at worst and is deterministic
(ties: the lower sequence index first, the most recently touched row first).

A packed batch holds the same sequences as the unpacked one, each intact and contiguous, laid out
in rows of the same length L. Its fields (per row, K = `max_per_row`):

* `input_ids`, `token_type_ids` (per sequence, as unpacked), `attention_mask` (1 on real tokens)
  [R, L];
* `segment_ids` [R, L]: 1..K for the row's sequences in order, 0 on padding;
* `position_ids` [R, L]: restart at 0 at each sequence's first token ([CLS]);
* `cls_positions` [R, K] (the column of each sequence's [CLS]) and `cls_weights` [R, K] (1 for a
  filled slot, 0 for an empty one; also the weights of the NSP loss);
* `next_sentence_labels` [R, K];
* `masked_lm_positions`/`masked_lm_ids`/`masked_lm_weights` [R, P]: every sequence's predictions
  moved to its columns in the row, in increasing column order; P is `prediction_budget`.

`placement` (row, slot, offset per sequence) is returned beside the batch, so `unpack_features`
can rebuild every field of every sequence. Rows are ordered by their first sequence, and within a
row sequences keep their original order. Pure NumPy.
"""

from __future__ import annotations

import math

import numpy as np

_MLM = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def check_settings(max_length: int, max_per_row: int, longest: int | None = None) -> None:
    """Raises ValueError (one line naming the field) for a packing that cannot hold a sequence."""
    if max_per_row < 1:
        raise ValueError(f"data.max_sequences_per_row={max_per_row}: must be >= 1")
    if longest is not None and longest > max_length:
        raise ValueError(
            f"data.seq_length={max_length}: a packed row cannot hold a sequence of {longest} tokens"
        )


def pack_lengths(
    lengths, max_length: int, max_per_row: int, predictions=None, max_predictions_per_row=None
) -> list[list[int]]:
    """SPFHP: the sequence indices of each row, rows ordered by first index, indices ascending.

    Every sequence is placed exactly once; a row's lengths sum to at most `max_length` and it
    holds at most `max_per_row` sequences. With `predictions` (per sequence), a row's sum also
    stays within `max_predictions_per_row`: the best-fitting row that still has the slots is
    taken. Zero-length sequences are placed like 1-token ones.
    """
    lengths = np.asarray(lengths, np.int64)
    check_settings(max_length, max_per_row, int(lengths.max()) if len(lengths) else None)
    preds = np.zeros(len(lengths), np.int64) if predictions is None else np.asarray(predictions)
    budget = max_predictions_per_row if predictions is not None else 0
    if len(preds) and preds.max() > budget:
        raise ValueError(f"a sequence has {preds.max()} predictions, a packed row holds {budget}")
    # open_rows[r]: rows with exactly r tokens of room and fewer than max_per_row sequences.
    open_rows: list[list[int]] = [[] for _ in range(max_length + 1)]
    has_open = np.zeros(max_length + 1, bool)
    rows: list[list[int]] = []
    used: list[int] = []  # predictions per row
    for i in np.argsort(-lengths, kind="stable").tolist():
        need, p = max(int(lengths[i]), 1), int(preds[i])
        r = None
        for room in (need + np.flatnonzero(has_open[need:])).tolist():
            fits = [x for x in reversed(open_rows[room]) if used[x] + p <= budget]
            if fits:
                r = fits[0]
                open_rows[room].remove(r)
                has_open[room] = bool(open_rows[room])
                break
        if r is None:
            room, r = max_length, len(rows)
            rows.append([])
            used.append(0)
        rows[r].append(i)
        used[r] += p
        room -= need
        if len(rows[r]) < max_per_row and room > 0:
            open_rows[room].append(r)
            has_open[room] = True
    rows = [sorted(r) for r in rows]
    rows.sort(key=lambda r: r[0])
    return rows


# Each row bucket is at most this much larger than the one below: a step rounded up to its bucket
# wastes under 1/64 of its rows, and a phase meets ~10 distinct counts (each compiles the step once;
# the bundled corpus at 256 sequences: 10 in phase 1 and 6 in phase 2 over 200 steps).
BUCKET_GROWTH = 1 / 64


def row_buckets(num_sequences: int, max_per_row: int, multiple: int = 1) -> tuple:
    """The allowed row counts for `num_sequences` sequences: a geometric ladder (BUCKET_GROWTH)
    of multiples of `multiple` (a host's local device count, so rows split evenly) from the fewest
    possible rows to the first that holds every sequence alone (which always fits)."""
    up = lambda x: math.ceil(x / multiple) * multiple  # noqa: E731
    top, rows, out = up(num_sequences), math.ceil(num_sequences / max_per_row), []
    while not out or out[-1] < top:
        out.append(min(up(rows), top))
        rows = max(out[-1] + 1, math.ceil(out[-1] * (1 + BUCKET_GROWTH)))
    return tuple(out)


def prediction_budget(
    max_length: int, max_per_row: int, max_predictions: int, masked_lm_prob: float
) -> int:
    """Masked-LM prediction slots per packed row: max(M, min(K * M, floor(p * L + K))).

    Masking (here and in the original tool) gives a sequence of n tokens at most
    max(1, rint(p * n)) <= p * n + 1 predictions, and a row's n sum to at most L, so a row holds at
    most floor(p * L + K) of them (never more than K * M; one sequence's M must always fit). The
    packer enforces the budget too, so masks stored with a larger p only cost more rows.
    """
    bound = math.floor(masked_lm_prob * max_length + max_per_row)
    return max(max_predictions, min(max_per_row * max_predictions, bound))


def place(rows: list[list[int]], lengths) -> dict[str, np.ndarray]:
    """Per sequence: its `row`, `slot` (0-based within the row) and `offset` (first column)."""
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    out = {k: np.zeros(n, np.int64) for k in ("row", "slot", "offset")}
    for r, members in enumerate(rows):
        offset = 0
        for s, i in enumerate(members):
            out["row"][i], out["slot"][i], out["offset"][i] = r, s, offset
            offset += int(lengths[i])
    return out


def pack_features(
    feats: dict[str, np.ndarray],
    *,
    max_per_row: int,
    num_rows: int | None = None,
    buckets: tuple | None = None,
    predictions_per_row: int | None = None,
    position_keys: tuple = (),
    pad_values: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Packs an unpacked batch (rows of length L, real tokens first) into rows of length L.

    The row count is `num_rows`, else the smallest of `buckets` that holds the packing, else the
    packing's own count. Returns (packed batch, placement). Masked-LM fields, if present, need
    `predictions_per_row`, which the packer respects. Other fields: [N, L] ones move with their
    tokens (padding `pad_values.get(name, 0)`), [N] ones go to their sequence's slot [R, K]
    (`position_keys`, e.g. SQuAD's start_positions, are token columns and move with the offset).
    """
    n, length = feats["input_ids"].shape
    lengths = feats["attention_mask"].sum(1).astype(np.int64)
    preds = None
    if "masked_lm_weights" in feats:
        preds = (feats["masked_lm_weights"] > 0).sum(1)
    rows = pack_lengths(lengths, length, max_per_row, preds, predictions_per_row)
    if num_rows is None:
        num_rows = next((b for b in buckets if b >= len(rows)), None) if buckets else len(rows)
    if num_rows is None or num_rows < len(rows):
        raise ValueError(f"{n} sequences need {len(rows)} packed rows, more than {num_rows}")
    where = place(rows, lengths)
    where["kinds"] = kinds = _kinds(feats, n, length, position_keys, pad_values or {})
    seq, col = np.nonzero(feats["attention_mask"])  # row-major: each sequence's tokens in order
    dest = (where["row"][seq], where["offset"][seq] + col)
    slots = (where["row"], where["slot"])
    out = {}
    for k, (kind, pad) in kinds.items():
        v = feats[k]
        if kind == "token":
            out[k] = np.full((num_rows, length), pad, v.dtype)
            out[k][dest] = v[seq, col]
        else:
            out[k] = np.zeros((num_rows, max_per_row), v.dtype)
            out[k][slots] = v + where["offset"] if kind == "position" else v
    out["attention_mask"] = np.zeros((num_rows, length), feats["attention_mask"].dtype)
    out["attention_mask"][dest] = 1
    out["segment_ids"] = np.zeros((num_rows, length), np.int32)
    out["segment_ids"][dest] = where["slot"][seq] + 1
    out["position_ids"] = np.zeros((num_rows, length), np.int32)
    out["position_ids"][dest] = col
    out["cls_positions"] = np.zeros((num_rows, max_per_row), np.int32)
    out["cls_positions"][slots] = where["offset"]
    out["cls_weights"] = np.zeros((num_rows, max_per_row), np.float32)
    out["cls_weights"][slots] = 1.0
    if "masked_lm_positions" in feats:
        out.update(_pack_predictions(feats, where, num_rows, predictions_per_row))
    return out, where


def _kinds(feats, n, length, position_keys, pad_values) -> dict[str, tuple[str, int]]:
    """How each field packs: ("token" | "sequence" | "position", padding value)."""
    kinds = {}
    for k, v in feats.items():
        if k in _MLM or k == "attention_mask":
            continue
        if v.shape == (n, length):
            kinds[k] = ("token", pad_values.get(k, 0))
        elif v.shape == (n,):
            kinds[k] = ("position" if k in position_keys else "sequence", 0)
        else:
            raise ValueError(f"{k}: shape {v.shape} cannot be packed (only [N, L] or [N] fields)")
    return kinds


def _pack_predictions(feats, where, num_rows, budget):
    seq, k = np.nonzero(feats["masked_lm_weights"] > 0)
    row = where["row"][seq]
    col = where["offset"][seq] + feats["masked_lm_positions"][seq, k]
    order = np.lexsort((col, row))
    seq, k, row, col = seq[order], k[order], row[order], col[order]
    counts = np.bincount(row, minlength=num_rows)
    assert counts.max(initial=0) <= budget  # the packer keeps every row within the budget
    rank = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = {
        "masked_lm_positions": np.zeros((num_rows, budget), np.int32),
        "masked_lm_ids": np.zeros((num_rows, budget), np.int32),
        "masked_lm_weights": np.zeros((num_rows, budget), np.float32),
    }
    out["masked_lm_positions"][row, rank] = col
    out["masked_lm_ids"][row, rank] = feats["masked_lm_ids"][seq, k]
    out["masked_lm_weights"][row, rank] = feats["masked_lm_weights"][seq, k]
    return out


def unpack_features(
    packed: dict[str, np.ndarray], where: dict, max_predictions: int | None = None
) -> dict[str, np.ndarray]:
    """The unpacked batch back from a packed one and its placement (rows of the packed length)."""
    length = packed["input_ids"].shape[1]
    row, slot, offset = where["row"], where["slot"], where["offset"]
    in_seq = packed["segment_ids"][row] == (slot + 1)[:, None]  # [n, L] this sequence's columns
    lengths = in_seq.sum(1)
    j = np.arange(length)[None, :]
    src = np.minimum(offset[:, None] + j, length - 1)
    real = j < lengths[:, None]
    out = {}
    for k, (kind, pad) in where["kinds"].items():
        if kind == "token":
            out[k] = np.where(real, np.take_along_axis(packed[k][row], src, axis=1), pad)
        else:
            out[k] = packed[k][row, slot] - (offset if kind == "position" else 0)
        out[k] = out[k].astype(packed[k].dtype)
    out["attention_mask"] = real.astype(packed["attention_mask"].dtype)
    if "masked_lm_positions" in packed:
        pos = packed["masked_lm_positions"][row]  # [n, P]
        mine = (packed["masked_lm_weights"][row] > 0) & (pos >= offset[:, None])
        mine &= pos < (offset + lengths)[:, None]
        width = max_predictions or int(mine.sum(1).max(initial=0))
        order = np.argsort(~mine, axis=1, kind="stable")[:, :width]  # this sequence's slots first
        keep = np.take_along_axis(mine, order, axis=1)
        out["masked_lm_positions"] = np.where(
            keep, np.take_along_axis(pos, order, axis=1) - offset[:, None], 0
        ).astype(np.int32)
        for k in ("masked_lm_ids", "masked_lm_weights"):
            vals = np.take_along_axis(packed[k][row], order, axis=1)
            out[k] = np.where(keep, vals, 0).astype(packed[k].dtype)
    return out


def bucket_by_length(
    lengths, batch_size: int, boundaries, *, seed: int | None = None, drop_remainder: bool = False
) -> list[tuple[np.ndarray, int]]:
    """Fine-tuning batches of similar length: (example indices, bucket length) per batch.

    Each example goes to the smallest boundary that holds it; a bucket is cut into batches of
    `batch_size` (its last one shorter unless `drop_remainder`). With `seed`, examples are
    shuffled within buckets and batches across them (a pure function of the seed); without,
    buckets run shortest first, examples in index order.
    """
    lengths, bounds = np.asarray(lengths), np.sort(np.asarray(boundaries))
    if len(lengths) and lengths.max() > bounds[-1]:
        raise ValueError(
            f"a sequence of {lengths.max()} tokens exceeds the longest bucket {bounds[-1]}"
        )
    rng = None if seed is None else np.random.default_rng(seed)
    bucket = np.searchsorted(bounds, lengths)  # the first boundary >= length
    batches = []
    for b, bound in enumerate(bounds.tolist()):
        members = np.flatnonzero(bucket == b)
        if rng is not None:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            if len(chunk) == batch_size or not drop_remainder:
                batches.append((chunk, bound))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def trim_batch(feats: dict[str, np.ndarray], indices, length: int) -> dict[str, np.ndarray]:
    """The rows `indices` of a feature dict, its per-token fields ([N, ..., L], SWAG's
    [N, choices, L] too) cut to `length`."""
    full = feats["input_ids"].shape[-1]
    return {
        k: v[indices][..., :length] if v.ndim >= 2 and v.shape[-1] == full else v[indices]
        for k, v in feats.items()
    }


def padding_fraction(attention_mask: np.ndarray) -> float:
    """The share of a batch's token slots that hold padding."""
    return 1.0 - float(np.asarray(attention_mask).sum()) / attention_mask.size


def pad_rows(packed: dict[str, np.ndarray], num_rows: int) -> dict[str, np.ndarray]:
    """The same packed batch with empty rows appended up to `num_rows` (so hosts that packed into
    different bucket sizes can agree on the largest; an empty row is all padding, weight 0)."""
    extra = num_rows - len(packed["input_ids"])
    if extra < 0:
        raise ValueError(
            f"a packed batch of {len(packed['input_ids'])} rows cannot pad to {num_rows}"
        )
    return {
        k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in packed.items()
    }
