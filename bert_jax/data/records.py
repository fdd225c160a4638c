"""Sharded pretraining-instance files: ArrayRecord writing/reading, and the original TFRecords.

Instances are written to ArrayRecord files (random access, so the loader can shuffle globally
and jump to any step; readable without TensorFlow). One record is a little-endian int32 array:

    [MAGIC, max_seq_length, max_predictions, num_tokens, a_length, num_predictions, label,
     input_ids[num_tokens], masked_lm_positions[num_predictions], masked_lm_ids[num_predictions]]

where `a_length` counts [CLS] A [SEP] (token type 0) and the rest up to `num_tokens` is type 1.
`read_instances` also reads TFRecord files of tf.train.Example written by Google's original
create_pretraining_data.py (`*.tfrecord*`, or any file whose first bytes are not ArrayRecord),
decoding the protobuf by hand so that TensorFlow is not needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
from etils import epath

from bert_jax.data import corpus as corpus_lib

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


class InstanceWriter:
    """Writes records round-robin over one or more ArrayRecord files."""

    def __init__(self, paths: list[str]):
        from array_record.python.array_record_module import ArrayRecordWriter

        for p in paths:
            epath.Path(p).parent.mkdir(parents=True, exist_ok=True)
        # group_size:1 makes every record individually addressable (fast random reads).
        self._writers = [ArrayRecordWriter(str(p), "group_size:1") for p in paths]
        self.count = 0

    def write(self, record: bytes) -> None:
        self._writers[self.count % len(self._writers)].write(record)
        self.count += 1

    def close(self) -> None:
        for w in self._writers:
            w.close()


class InstanceSource:
    """Random access to the records of all ArrayRecord files matching a pattern."""

    def __init__(self, pattern: str):
        from array_record.python.array_record_module import ArrayRecordReader

        self.paths = corpus_lib.expand_pattern(pattern)
        self._readers = [ArrayRecordReader(str(p)) for p in self.paths]
        sizes = [r.num_records() for r in self._readers]
        self._starts = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, indices: list[int]) -> list[bytes]:
        idx = np.asarray(indices, np.int64)
        file_of = np.searchsorted(self._starts, idx, side="right") - 1
        out: list[bytes] = [b""] * len(idx)
        for f in np.unique(file_of):
            sel = np.flatnonzero(file_of == f)
            blobs = self._readers[f].read((idx[sel] - self._starts[f]).tolist())
            for k, b in zip(sel, blobs, strict=True):
                out[k] = b
        return out

    def batch(self, indices: list[int], seq_length: int | None = None) -> dict[str, np.ndarray]:
        return decode_batch(self.read(indices), seq_length)


# ---- TFRecords of tf.train.Example, as written by the original tool ----

_TF_NAMES = {"input_mask": "attention_mask", "segment_ids": "token_type_ids"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _packed_varints(buf: bytes) -> np.ndarray:
    """Decodes a packed run of varints at once with NumPy."""
    b = np.frombuffer(buf, np.uint8).astype(np.uint64)
    ends = b < 0x80
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    shift = (np.arange(len(b)) - starts[group]) * 7
    values = np.zeros(int(ends.sum()), np.uint64)
    np.add.at(values, group, (b & 0x7F) << shift.astype(np.uint64))
    return values.view(np.int64)


def parse_tf_example(buf: bytes) -> dict[str, np.ndarray]:
    """A tf.train.Example's int64 and float features as NumPy arrays."""
    out = {}
    for _, _, features in _fields(buf):  # Example.features = 1
        for _, _, entry in _fields(features):  # Features.feature map entries = 1
            key, value = None, None
            for f, _, v in _fields(entry):
                if f == 1:
                    key = v.decode("utf-8")
                else:
                    value = v
            for kind, _, lst in _fields(value or b""):
                ints, floats = [], []
                for _, wire, v in _fields(lst):
                    if kind == 3:
                        ints.append(_packed_varints(v) if wire == 2 else np.array([v], np.int64))
                    elif kind == 2:
                        floats.append(np.frombuffer(v, "<f4"))
                if kind == 3:
                    out[key] = np.concatenate(ints) if ints else np.zeros(0, np.int64)
                elif kind == 2:
                    out[key] = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    return out


def _read_tfrecord(path: epath.Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        offset = 0
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord header at byte {offset}")
            (n,) = struct.unpack("<Q", header[:8])
            data = f.read(n + 4)
            if len(data) < n + 4:
                raise ValueError(f"{path}: truncated TFRecord at byte {offset}")
            offset += 12 + n + 4
            yield data[:n]


def read_instances(path_or_glob: str) -> Iterator[dict[str, np.ndarray]]:
    """Streams instances, one dict of NumPy arrays each, from ArrayRecord or TFRecord files.

    Memory is bounded by one read chunk, never the whole file set.
    """
    for path in corpus_lib.expand_pattern(path_or_glob):
        with path.open("rb") as f:
            start = f.read(8)
        if ".tfrecord" in path.name or (len(start) == 8 and not _is_array_record(path)):
            for raw in _read_tfrecord(path):
                ex = parse_tf_example(raw)
                feats = {_TF_NAMES.get(k, k): v for k, v in ex.items()}
                if "next_sentence_labels" in feats:  # stored as a length-1 list
                    feats["next_sentence_labels"] = feats["next_sentence_labels"].reshape(())
                yield {
                    k: v.astype(np.float32 if k == "masked_lm_weights" else np.int32)
                    for k, v in feats.items()
                }
            continue
        source = InstanceSource(str(path))
        for lo in range(0, len(source), 1024):
            feats = source.batch(list(range(lo, min(lo + 1024, len(source)))))
            for i in range(len(feats["input_ids"])):
                yield {k: v[i] for k, v in feats.items()}


def _is_array_record(path: epath.Path) -> bool:
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        ArrayRecordReader(str(path)).close()
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "not ArrayRecord"
        return False
