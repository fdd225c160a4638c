"""TFRecord files of `tf.train.Example` without TensorFlow: framing, CRC32C, protobuf by hand.

A TFRecord file is a sequence of

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little-endian), where masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2^32 and crc is
CRC-32C (Castagnoli). `TFRecordFile` indexes a file once (reading only the 12-byte headers and
checking their CRCs) and then reads any record by number, checking the data CRC, so a damaged
file is an error naming the file and byte offset, never a silent drop.

The example codec covers what BERT's instances use: int64 and float lists (packed), in the
feature layout of the original create_pretraining_data.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
from etils import epath

from bert_jax import tf_wire as _wire


class CorruptRecordError(ValueError):
    """A record file is truncated or fails its checksum; the message names file and offset."""


# ---- CRC-32C and protobuf: bert_jax/tf_wire.py (shared with the TF checkpoint reader) ----

crc32c, crc32c_python = _wire.crc32c, _wire.crc32c_python
_fields = _wire.fields


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC of `data`."""
    return _wire.mask(_wire.crc32c(data))


# ---- Framing ----


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        [
            length,
            struct.pack("<I", masked_crc32c(length)),
            record,
            struct.pack("<I", masked_crc32c(record)),
        ]
    )


class TFRecordWriter:
    """Writes framed records to one file (local or gs://)."""

    def __init__(self, path):
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("wb")

    def write(self, record: bytes) -> None:
        self._f.write(frame(record))

    def close(self) -> None:
        self._f.close()


class TFRecordFile:
    """Random access to one TFRecord file's records, every CRC checked.

    Opening reads the file once, sequentially, hopping over the headers (length and its CRC)
    to find each record's offset (~0.3 s per 100,000 records here); a header that
    is cut off or fails its CRC raises `CorruptRecordError` naming the byte offset, unless
    `skip_corrupt`, which keeps the records before it and counts the rest of the file as lost
    in `self.skipped_bytes` (the framing cannot be trusted past a bad length).
    """

    def __init__(self, path, skip_corrupt: bool = False):
        self.path = epath.Path(path)
        self.skipped_bytes = 0
        size = self.path.stat().length
        offsets, lengths, problem = self._scan(size)
        if problem:
            where, what = problem
            if not skip_corrupt:
                raise CorruptRecordError(f"{self.path}: {what} at byte {where}")
            self.skipped_bytes = size - where
        self.offsets = np.asarray(offsets, np.int64)
        self.lengths = np.asarray(lengths, np.int64)

    def _scan(self, size: int, chunk: int = 1 << 24):
        """One sequential read in 16 MB chunks, hopping from header to header in memory."""
        offsets, lengths = [], []
        unpack = struct.Struct("<QI").unpack_from
        buf, buf_start, offset = b"", 0, 0
        with self.path.open("rb") as f:
            while offset < size:
                if offset + 12 > buf_start + len(buf):  # refill: keep the unread tail
                    buf = buf[offset - buf_start :] + f.read(chunk)
                    buf_start = offset
                    if offset + 12 > buf_start + len(buf):
                        return offsets, lengths, (offset, "truncated record header")
                n, crc = unpack(buf, offset - buf_start)
                if crc != masked_crc32c(buf[offset - buf_start : offset - buf_start + 8]):
                    return offsets, lengths, (offset, "record length fails its CRC")
                if offset + 16 + n > size:
                    problem = f"truncated record (needs {n} bytes, file ends first)"
                    return offsets, lengths, (offset, problem)
                offsets.append(offset + 12)
                lengths.append(n)
                offset += 16 + n
                if offset - buf_start > len(buf):  # a record longer than the buffer: skip past it
                    f.seek(offset)
                    buf, buf_start = b"", offset
        return offsets, lengths, None

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, indices) -> list[bytes | None]:
        """The records at `indices`; a record failing its CRC raises (or is None if skipping)."""
        out: list[bytes | None] = []
        with self.path.open("rb") as f:
            for i in indices:
                f.seek(int(self.offsets[i]))
                n = int(self.lengths[i])
                blob = f.read(n + 4)
                if len(blob) < n + 4 or struct.unpack("<I", blob[n:])[0] != masked_crc32c(blob[:n]):
                    out.append(None)
                else:
                    out.append(blob[:n])
        return out

    def check(self, index: int, blob: bytes | None) -> bytes:
        """`blob`, or `CorruptRecordError` naming this file and the record's offset."""
        if blob is None:
            offset = int(self.offsets[index]) - 12
            raise CorruptRecordError(
                f"{self.path}: record {index} at byte {offset} fails its data CRC"
            )
        return blob

    def __iter__(self) -> Iterator[bytes]:
        for lo in range(0, len(self), 1024):
            idx = range(lo, min(lo + 1024, len(self)))
            for i, blob in zip(idx, self.read(idx), strict=True):
                yield self.check(i, blob)


def is_tfrecord(path) -> bool:
    """Whether the file starts with a valid TFRecord header (length CRC matches)."""
    with epath.Path(path).open("rb") as f:
        header = f.read(12)
    if len(header) < 12:
        return False
    return struct.unpack("<I", header[8:])[0] == masked_crc32c(header[:8])


# ---- tf.train.Example ----


def _encode_varints(values: np.ndarray) -> bytes:
    """Protobuf varints of non-negative (or two's-complement int64) values, vectorized."""
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = (v[:, None] >> shifts[None, :]) & np.uint64(0x7F)
    nbytes = np.maximum(1, 10 - np.argmax((v[:, None] >> shifts[None, :])[:, ::-1] > 0, axis=1))
    nbytes = np.where(v == 0, 1, nbytes)
    cols = np.arange(10)[None, :]
    more = cols < (nbytes[:, None] - 1)
    out = (groups | np.where(more, np.uint64(0x80), np.uint64(0))).astype(np.uint8)
    return out[cols < nbytes[:, None]].tobytes()


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _wire.field(field, payload)


def encode_example(features: dict[str, np.ndarray]) -> bytes:
    """A tf.train.Example: float arrays become FloatList, integer arrays Int64List (packed)."""
    entries = []
    for name, values in features.items():
        values = np.asarray(values).reshape(-1)
        if np.issubdtype(values.dtype, np.floating):
            inner = _length_delimited(1, values.astype("<f4").tobytes())
            feature = _length_delimited(2, inner)  # Feature.float_list = 2
        else:
            inner = _length_delimited(1, _encode_varints(values)) if len(values) else b""
            feature = _length_delimited(3, inner)  # Feature.int64_list = 3
        entry = _length_delimited(1, name.encode("utf-8")) + _length_delimited(2, feature)
        entries.append(_length_delimited(1, entry))  # Features.feature (map entry) = 1
    return _length_delimited(1, b"".join(entries))  # Example.features = 1


def _packed_varints(buf: bytes) -> np.ndarray:
    """Decodes a packed run of varints at once with NumPy."""
    if not buf:
        return np.zeros(0, np.int64)
    b = np.frombuffer(buf, np.uint8).astype(np.uint64)
    ends = b < 0x80
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    shift = (np.arange(len(b)) - starts[group]) * 7
    values = np.zeros(int(ends.sum()), np.uint64)
    np.add.at(values, group, (b & 0x7F) << shift.astype(np.uint64))
    return values.view(np.int64)


def parse_examples(blobs) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Many tf.train.Examples at once: name -> (flat values, count per example, present per example).

    The message structure is walked in Python; all of a feature's varints (or floats) over the
    batch are decoded in one NumPy pass. Int64 values come back as int64, floats as float32.
    """
    n = len(blobs)
    found: dict[str, tuple[int, list[bytes], np.ndarray]] = {}
    for i, blob in enumerate(blobs):
        for _, _, features in _fields(blob):  # Example.features = 1
            for _, _, entry in _fields(features):  # Features.feature map entries = 1
                key, value = "", b""
                for f, _, v in _fields(entry):
                    if f == 1:
                        key = v.decode("utf-8")
                    else:
                        value = v
                for kind, _, lst in _fields(value):  # Feature: 2 = float_list, 3 = int64_list
                    parts = []
                    for _, wire, v in _fields(lst):
                        if wire == 0:  # an unpacked int64
                            parts.append(_encode_varints(np.array([v])))
                        else:
                            parts.append(v)
                    if key not in found:
                        found[key] = (kind, [b""] * n, np.zeros(n, bool))
                    found[key][1][i] = b"".join(parts)
                    found[key][2][i] = True
    out = {}
    for key, (kind, bufs, present) in found.items():
        joined = b"".join(bufs)
        if kind == 2:
            values = np.frombuffer(joined, "<f4").astype(np.float32)
            counts = np.array([len(b) // 4 for b in bufs], np.int64)
        else:
            values = _packed_varints(joined)
            ends = np.frombuffer(joined, np.uint8) < 0x80
            edges = np.cumsum([0] + [len(b) for b in bufs])
            cum = np.concatenate([[0], np.cumsum(ends)])
            counts = cum[edges[1:]] - cum[edges[:-1]]
        out[key] = (values, counts, present)
    return out


def parse_example(buf: bytes) -> dict[str, np.ndarray]:
    """A tf.train.Example's int64 (as int64) and float (as float32) features."""
    return {key: values for key, (values, _, _) in parse_examples([buf]).items()}
