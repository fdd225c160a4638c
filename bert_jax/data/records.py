"""Sharded pretraining-instance files: ArrayRecord and the original tool's TFRecords.

Instances are written to ArrayRecord files (random access, so the loader can shuffle globally
and jump to any step; readable without TensorFlow). One record is a little-endian int32 array:

    [MAGIC, max_seq_length, max_predictions, num_tokens, a_length, num_predictions, label,
     input_ids[num_tokens], masked_lm_positions[num_predictions], masked_lm_ids[num_predictions]]

where `a_length` counts [CLS] A [SEP] (token type 0) and the rest up to `num_tokens` is type 1.

`InstanceSource` and `read_instances` also read TFRecord files of tf.train.Example in the
original create_pretraining_data.py's layout (`bert_jax.data.tfrecord`, no TensorFlow), with
random access through a header index. A truncated or corrupt file of either kind raises
`CorruptRecordError` naming the file and byte offset; with `skip_corrupt` a bad record is
replaced by the next good one, counted and logged.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from absl import logging
from etils import epath

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import tfrecord
from bert_jax.data.tfrecord import CorruptRecordError

MAGIC = 0x314A4942  # b"BIJ1"
HEADER = 7


def encode_instance(
    input_ids, a_length, positions, ids, label, max_seq_length, max_predictions
) -> bytes:
    """One instance (unpadded arrays) as record bytes."""
    head = [MAGIC, max_seq_length, max_predictions, len(input_ids), a_length, len(positions), label]
    return np.concatenate([head, input_ids, positions, ids]).astype("<i4").tobytes()


def encode_batch(feats: dict[str, np.ndarray], max_predictions: int) -> list[bytes]:
    """Record bytes for each row of a padded feature batch."""
    out = []
    seq_len = feats["input_ids"].shape[1]
    n_tok = feats["attention_mask"].sum(1)
    n_a = n_tok - feats["token_type_ids"].sum(1)
    n_pred = (feats["masked_lm_weights"] > 0).sum(1)
    for i in range(len(n_tok)):
        out.append(
            encode_instance(
                feats["input_ids"][i, : n_tok[i]],
                n_a[i],
                feats["masked_lm_positions"][i, : n_pred[i]],
                feats["masked_lm_ids"][i, : n_pred[i]],
                feats["next_sentence_labels"][i],
                seq_len,
                max_predictions,
            )
        )
    return out


def decode_batch(
    blobs: list[bytes], seq_length: int | None = None, max_predictions: int | None = None
) -> dict[str, np.ndarray]:
    """Padded features for a list of records (lengths default to the ones stored)."""
    arrays = [np.frombuffer(b, "<i4") for b in blobs]
    head = np.stack([a[:HEADER] for a in arrays])
    if (head[:, 0] != MAGIC).any():
        raise ValueError("not a bert_jax instance record (bad magic)")
    length = seq_length or int(head[:, 1].max())
    n_pred_max = max_predictions or int(head[:, 2].max())
    if head[:, 3].max() > length:
        raise ValueError(f"instance of {head[:, 3].max()} tokens exceeds seq_length {length}")
    if head[:, 5].max() > n_pred_max:
        raise ValueError(f"instance of {head[:, 5].max()} predictions exceeds {n_pred_max}")
    n = len(arrays)
    out = {
        "input_ids": np.zeros((n, length), np.int32),
        "masked_lm_positions": np.zeros((n, n_pred_max), np.int32),
        "masked_lm_ids": np.zeros((n, n_pred_max), np.int32),
        "next_sentence_labels": head[:, 6].astype(np.int32),
    }
    for i, a in enumerate(arrays):
        t, p = a[3 + 0], a[5]
        out["input_ids"][i, :t] = a[HEADER : HEADER + t]
        out["masked_lm_positions"][i, :p] = a[HEADER + t : HEADER + t + p]
        out["masked_lm_ids"][i, :p] = a[HEADER + t + p : HEADER + t + 2 * p]
    j = np.arange(length)[None, :]
    out["attention_mask"] = (j < head[:, 3:4]).astype(np.int32)
    out["token_type_ids"] = ((j >= head[:, 4:5]) & (j < head[:, 3:4])).astype(np.int32)
    out["masked_lm_weights"] = (np.arange(n_pred_max)[None, :] < head[:, 5:6]).astype(np.float32)
    return out


# The original tool's feature names and order; bert_jax's names where they differ.
TF_FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)
_FROM_TF = {"input_mask": "attention_mask", "segment_ids": "token_type_ids"}


def tf_examples(feats: dict[str, np.ndarray]) -> list[bytes]:
    """Serialized tf.train.Example per row of a padded batch, in the original's layout."""
    out = []
    for i in range(len(feats["input_ids"])):
        row = {name: feats[_FROM_TF.get(name, name)][i] for name in TF_FEATURES}
        row["masked_lm_weights"] = row["masked_lm_weights"].astype(np.float32)
        out.append(tfrecord.encode_example(row))
    return out


def is_tfrecord_path(path) -> bool:
    """TFRecord by name (`*.tfrecord*`) or, failing that, by a valid first header."""
    return ".tfrecord" in epath.Path(path).name or tfrecord.is_tfrecord(path)


class InstanceWriter:
    """Writes padded instance batches round-robin over ArrayRecord and/or TFRecord files.

    A path containing ".tfrecord" gets tf.train.Examples in the original tool's layout (what
    its pretraining code reads); any other path gets bert_jax's ArrayRecord records, or, with
    `tfrecord_default` (the original's behaviour), TFRecords unless it ends in ".array_record".
    """

    def __init__(self, paths: list[str], tfrecord_default: bool = False):
        from array_record.python.array_record_module import ArrayRecordWriter

        self._writers, self._is_tf = [], []
        for p in paths:
            name = epath.Path(p).name
            is_tf = ".tfrecord" in name or (tfrecord_default and not name.endswith(".array_record"))
            epath.Path(p).parent.mkdir(parents=True, exist_ok=True)
            # group_size:1 makes every record individually addressable (fast random reads).
            writer = (
                tfrecord.TFRecordWriter(p) if is_tf else ArrayRecordWriter(str(p), "group_size:1")
            )
            self._writers.append(writer)
            self._is_tf.append(is_tf)
        self.count = 0

    def write_batch(self, feats: dict[str, np.ndarray], max_predictions: int) -> None:
        """Writes every row of a padded batch (the shapes of the original's features)."""
        array_records = tf_records = None
        for i in range(len(feats["input_ids"])):
            k = self.count % len(self._writers)
            if self._is_tf[k]:
                tf_records = tf_records or tf_examples(feats)
                self._writers[k].write(tf_records[i])
            else:
                array_records = array_records or encode_batch(feats, max_predictions)
                self._writers[k].write(array_records[i])
            self.count += 1

    def close(self) -> None:
        for w in self._writers:
            w.close()


class _ArrayRecordFile:
    """One ArrayRecord file, opened with a check that its footer (the record index) is intact."""

    def __init__(self, path: epath.Path):
        from array_record.python.array_record_module import ArrayRecordReader

        self.path = path
        self._errors: dict[int, str] = {}
        try:
            self._reader = ArrayRecordReader(str(path))
            ok = self._reader.ok()
        except Exception:  # noqa: BLE001 - reported below with the file named
            ok = False
        if not ok:
            size = path.stat().length
            raise CorruptRecordError(
                f"{path}: not a readable ArrayRecord file (footer missing at byte {size}: "
                "truncated or not an instance file)"
            )

    def __len__(self) -> int:
        return self._reader.num_records()

    def read(self, indices) -> list[bytes | None]:
        try:
            return list(self._reader.read(list(indices)))
        except RuntimeError:  # a damaged chunk: find which records, one by one
            out = []
            for i in indices:
                try:
                    out.append(self._reader.read([i])[0])
                except RuntimeError as e:
                    out.append(None)
                    self._errors[i] = str(e).splitlines()[0]
            return out

    def check(self, index: int, blob: bytes | None) -> bytes:
        if blob is None:
            raise CorruptRecordError(f"{self.path}: record {index}: {self._errors.get(index)}")
        return blob

    def decode(self, blobs, seq_length, max_predictions) -> dict[str, np.ndarray]:
        try:
            return decode_batch(blobs, seq_length, max_predictions)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None

    def stored_seq_length(self) -> int:
        head = np.frombuffer(self.check(0, self.read([0])[0])[: 4 * HEADER], "<i4")
        return int(head[1])


class _TFRecordFile(tfrecord.TFRecordFile):
    """One TFRecord file of the original tool's tf.train.Examples."""

    def decode(self, blobs, seq_length, max_predictions) -> dict[str, np.ndarray]:
        parsed = tfrecord.parse_examples(blobs)
        for name in TF_FEATURES:
            if name not in parsed or not parsed[name][2].all():
                raise ValueError(f"{self.path}: tf.train.Example has no feature {name!r}")
        length = seq_length or int(parsed["input_ids"][1].max())
        n_pred = max_predictions or int(parsed["masked_lm_ids"][1].max())
        out = {}
        for name in TF_FEATURES:
            values, counts, _ = parsed[name]
            if name == "next_sentence_labels":
                out[name] = values[np.cumsum(counts) - 1].astype(np.int32)
                continue
            width = n_pred if name.startswith("masked_lm") else length
            if counts.max() > width:
                raise ValueError(
                    f"{self.path}: feature {name!r} has {counts.max()} values, more than {width}"
                )
            dtype = np.float32 if name == "masked_lm_weights" else np.int32
            padded = np.zeros((len(blobs), width), dtype)
            rows = np.repeat(np.arange(len(blobs)), counts)
            cols = np.arange(len(values)) - np.repeat(np.cumsum(counts) - counts, counts)
            padded[rows, cols] = values
            out[_FROM_TF.get(name, name)] = padded
        return out

    def stored_seq_length(self) -> int:
        ex = tfrecord.parse_example(self.check(0, self.read([0])[0]))
        if "input_ids" not in ex:
            raise ValueError(f"{self.path}: tf.train.Example has no feature 'input_ids'")
        return len(ex["input_ids"])


def _open(path: epath.Path, skip_corrupt: bool):
    if is_tfrecord_path(path):
        return _TFRecordFile(path, skip_corrupt)
    return _ArrayRecordFile(path)


class InstanceSource:
    """Random access to the instances of all ArrayRecord/TFRecord files matching a pattern.

    With `skip_corrupt`, a record that fails its checksum is replaced by the next good record
    (so batches stay full and deterministic), counted in `skipped_records` and logged.
    """

    def __init__(self, pattern: str, skip_corrupt: bool = False):
        self.paths = corpus_lib.expand_pattern(pattern)
        self.skip_corrupt = skip_corrupt
        self._files = [_open(p, skip_corrupt) for p in self.paths]
        sizes = [len(f) for f in self._files]
        for f in self._files:
            if getattr(f, "skipped_bytes", 0):
                logging.warning("%s: skipped %d damaged bytes at its end", f.path, f.skipped_bytes)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.skipped_records = 0

    def __len__(self) -> int:
        return int(self._starts[-1])

    def stored_seq_lengths(self) -> dict[str, int]:
        """Each file's stored sequence length (from its first record)."""
        return {str(f.path): f.stored_seq_length() for f in self._files if len(f)}

    def _read_file(self, f: int, local: np.ndarray) -> list[bytes]:
        blobs = self._files[f].read(local.tolist())
        out = []
        for i, blob in zip(local.tolist(), blobs, strict=True):
            tries = 0
            while blob is None and self.skip_corrupt and tries < len(self._files[f]):
                self.skipped_records += 1
                logging.warning(
                    "%s: record %d is corrupt, skipped (skip_corrupt_records)",
                    self._files[f].path,
                    i,
                )
                i = (i + 1) % len(self._files[f])
                blob, tries = self._files[f].read([i])[0], tries + 1
            out.append(self._files[f].check(i, blob))
        return out

    def batch(
        self, indices, seq_length: int | None = None, max_predictions: int | None = None
    ) -> dict[str, np.ndarray]:
        """Padded features of the instances at `indices` (lengths default to the stored ones)."""
        idx = np.asarray(indices, np.int64)
        file_of = np.searchsorted(self._starts, idx, side="right") - 1
        parts: list[tuple[np.ndarray, dict]] = []
        for f in np.unique(file_of):
            sel = np.flatnonzero(file_of == f)
            blobs = self._read_file(int(f), idx[sel] - self._starts[f])
            feats = self._files[f].decode(blobs, seq_length, max_predictions)
            parts.append((sel, feats))
        if len(parts) == 1:
            return parts[0][1]
        seq = seq_length or max(p[1]["input_ids"].shape[1] for p in parts)
        n_pred = max_predictions or max(p[1]["masked_lm_ids"].shape[1] for p in parts)
        out = {}
        for name, value in parts[0][1].items():
            width = () if value.ndim == 1 else (n_pred if name.startswith("masked_lm") else seq,)
            out[name] = np.zeros((len(idx), *width), value.dtype)
        for sel, feats in parts:
            for name, value in feats.items():
                if value.ndim == 1:
                    out[name][sel] = value
                else:
                    out[name][sel, : value.shape[1]] = value
        return out


def read_instances(
    path_or_glob: str, skip_corrupt: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Streams instances, one dict of NumPy arrays each, from ArrayRecord or TFRecord files.

    Arrays keep each file's stored lengths. Memory is bounded by one read chunk, never the
    whole file set; a damaged file raises `CorruptRecordError` naming file and offset.
    """
    for path in corpus_lib.expand_pattern(path_or_glob):
        source = InstanceSource(str(path), skip_corrupt)
        for lo in range(0, len(source), 1024):
            feats = source.batch(list(range(lo, min(lo + 1024, len(source)))))
            for i in range(len(feats["input_ids"])):
                yield {k: v[i] for k, v in feats.items()}
