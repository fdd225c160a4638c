"""TensorFlow's checkpoint format (TensorBundle), read and written with NumPy alone.

A checkpoint `PREFIX` (e.g. `bert_model.ckpt`) is an index file `PREFIX.index` and data shards
`PREFIX.data-00000-of-00001`, ... . The index is a LevelDB-style SSTable: data blocks of prefix-compressed
(key, value) entries, an index block pointing at them, and a 48-byte footer. The key "" holds a
`BundleHeaderProto` (number of shards, byte order); every other key is a tensor name whose value is a
`BundleEntryProto` (dtype, shape, shard, offset, size, masked CRC32C). A data shard is the tensors' raw bytes
back to back. Both protos are decoded here from the protobuf wire format, so no TensorFlow is needed.

This module imports NumPy and `bert_jax.tf_wire` only (no JAX), so it also runs under TensorFlow's Python for
cross-checks.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bert_jax import tf_wire
from bert_jax.tf_wire import crc32c
from bert_jax.tf_wire import mask as mask_crc

_FOOTER_SIZE = 48
_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER = 5  # compression type byte + masked CRC32C
_RESTART_INTERVAL = 16
# TensorFlow's table options: a new data block after 256 KiB.
_BLOCK_SIZE = 262144
# What TF 2.x's tf.train.Checkpoint writes besides the variables; TF1 Savers never do.
TF2_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"

# TensorFlow DataType enum -> NumPy dtype name (the numeric types a checkpoint of a model holds).
_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
_DTYPE_ENUM = {name: enum for enum, name in _DTYPES.items()}


class BundleError(ValueError):
    """A checkpoint file that is not a readable TensorBundle; the message names the file and tensor."""


# ----------------------------------------------------------------------------------------------------------
# Protobuf wire format: just enough for BundleHeaderProto and BundleEntryProto.
# ----------------------------------------------------------------------------------------------------------
_read_varint, _varint, _field = tf_wire.read_varint, tf_wire.varint, tf_wire.field


def _fields(buf: bytes) -> dict[int, list]:
    """field number -> values (ints for varint/fixed fields, bytes for length-delimited ones)."""
    out: dict[int, list] = {}
    for number, wire, value in tf_wire.fields(buf):
        out.setdefault(number, []).append(
            int.from_bytes(value, "little") if wire in (1, 5) else value
        )
    return out


@dataclass(frozen=True)
class Entry:
    """Where one tensor lives: its dtype, shape, data shard, byte range and masked CRC32C."""

    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int | None
    sliced: bool

    @classmethod
    def parse(cls, value: bytes) -> Entry:
        f = _fields(value)
        shape = _fields(f.get(2, [b""])[0])
        dims = tuple(_fields(d).get(1, [0])[0] for d in shape.get(2, []))
        enum = f.get(1, [0])[0]
        return cls(
            dtype=_DTYPES.get(enum, f"DataType {enum}"),
            shape=dims,
            shard=f.get(3, [0])[0],
            offset=f.get(4, [0])[0],
            size=f.get(5, [0])[0],
            crc=f.get(6, [None])[0],
            sliced=bool(f.get(7)),
        )

    def serialize(self) -> bytes:
        dims = b"".join(_field(2, _field(1, d) if d else b"") for d in self.shape)
        out = _field(1, _DTYPE_ENUM[self.dtype]) + _field(2, dims)
        for number, value in ((3, self.shard), (4, self.offset), (5, self.size)):
            out += _field(number, value) if value else b""
        return out + b"\x35" + struct.pack("<I", self.crc)  # field 6, fixed32


# ----------------------------------------------------------------------------------------------------------
# The SSTable.
# ----------------------------------------------------------------------------------------------------------
def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block (keys are prefix-compressed against the previous one)."""
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _read_varint(block, pos)
        unshared, pos = _read_varint(block, pos)
        value_size, pos = _read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((bytes(key), bytes(block[pos : pos + value_size])))
        pos += value_size
    if pos != end:
        raise IndexError("block entries overrun the restart array")
    return entries


def _read_block(data: bytes, handle: bytes, path: str) -> tuple[bytes, bytes]:
    """(block, rest of handle) for a BlockHandle (two varints) into the table bytes, CRC-checked."""
    offset, pos = _read_varint(handle, 0)
    size, pos = _read_varint(handle, pos)
    if offset + size + _BLOCK_TRAILER > len(data):
        raise BundleError(f"{path}: a table block lies past the end of the file (truncated index?)")
    block = data[offset : offset + size]
    kind, stored = struct.unpack_from("<BI", data, offset + size)
    if mask_crc(crc32c(data[offset : offset + size + 1])) != stored:
        raise BundleError(f"{path}: table block checksum mismatch (corrupt index file)")
    if kind != 0:
        raise BundleError(f"{path}: compressed table blocks (type {kind}) are not supported")
    return block, handle[pos:]


def read_index(path: str) -> dict[str, bytes]:
    """All (key, value) pairs of a TensorBundle index file (an SSTable), keys decoded as UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_SIZE:
        raise BundleError(f"{path}: {len(data)} bytes is too short for a checkpoint index")
    footer = data[-_FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != _TABLE_MAGIC:
        raise BundleError(f"{path}: not a TensorFlow checkpoint index (bad magic number)")
    try:
        _, pos = _read_varint(footer, 0)
        _, pos = _read_varint(footer, pos)  # the metaindex block: empty in TensorBundles
        index_block, _ = _read_block(data, footer[pos:40], path)
        out = {}
        for _, handle in _block_entries(index_block):
            block, _ = _read_block(data, handle, path)
            out.update((k.decode("utf-8", "replace"), v) for k, v in _block_entries(block))
    except (IndexError, ValueError, struct.error) as e:
        raise BundleError(f"{path}: malformed checkpoint index ({e})") from e
    return out


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % _RESTART_INTERVAL == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))


def _separator(last: bytes, following: bytes | None) -> bytes:
    """LevelDB's short index key: >= `last`, < `following` (or any successor of `last` if None)."""
    if following is None:
        for i, byte in enumerate(last):
            if byte != 0xFF:
                return last[:i] + bytes([byte + 1])
        return last
    common = 0
    while common < min(len(last), len(following)) and last[common] == following[common]:
        common += 1
    if common < min(len(last), len(following)):
        byte = last[common]
        if byte < 0xFF and byte + 1 < following[common]:
            return last[:common] + bytes([byte + 1])
    return last


def write_index(path: str, items: Mapping[bytes, bytes]) -> None:
    """Writes sorted (key, value) pairs as an uncompressed SSTable, as TensorFlow's BundleWriter does."""
    data = bytearray()

    def append_block(block: bytes) -> bytes:
        handle = _varint(len(data)) + _varint(len(block))
        data.extend(block + b"\x00" + struct.pack("<I", mask_crc(crc32c(block + b"\x00"))))
        return handle

    keys = sorted(items)
    index, pending, pending_size = [], [], 0
    for i, key in enumerate(keys):
        pending.append((key, items[key]))
        pending_size += len(key) + len(items[key])
        following = keys[i + 1] if i + 1 < len(keys) else None
        if pending_size >= _BLOCK_SIZE or following is None:
            index.append((_separator(key, following), append_block(_block(pending))))
            pending, pending_size = [], 0
    metaindex = append_block(_block([]))
    index_handle = append_block(_block(index))
    footer = (metaindex + index_handle).ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)
    with open(path, "wb") as f:
        f.write(bytes(data) + footer)


# ----------------------------------------------------------------------------------------------------------
# Bundles: the index plus its data shards.
# ----------------------------------------------------------------------------------------------------------
def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def find_prefix(path: str) -> str:
    """The checkpoint prefix for `path`: a prefix, an `.index` file, or a directory holding one checkpoint.

    In a directory, `bert_model.ckpt` (Google's name) wins; otherwise the single `*.index` file there, or with
    several (a training run's model.ckpt-1000, model.ckpt-2000, ...) the latest, as the `checkpoint` state file
    that tf.train.Saver writes beside them names it.
    """
    path = os.fspath(path)
    if path.endswith(".index") and os.path.isfile(path):
        return path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "bert_model.ckpt.index")):
            return os.path.join(path, "bert_model.ckpt")
        found = sorted(f for f in os.listdir(path) if f.endswith(".index"))
        if len(found) == 1:
            return os.path.join(path, found[0][: -len(".index")])
        latest = _latest(path)
        if found and latest and f"{latest}.index" in found:
            return os.path.join(path, latest)
        if found:
            raise BundleError(f"{path}: several checkpoints {found}; pass one prefix")
    raise FileNotFoundError(f"{path}: no TensorFlow checkpoint (no {os.path.basename(path)}.index)")


def _latest(directory: str) -> str | None:
    """The `model_checkpoint_path` of tf.train.Saver's `checkpoint` state file (a text proto), if it names a
    checkpoint inside `directory`."""
    state = os.path.join(directory, "checkpoint")
    if not os.path.isfile(state):
        return None
    with open(state, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                return os.path.basename(value.strip().strip('"'))
    return None


class Bundle:
    """A TensorBundle checkpoint opened for reading: `names`, `entry(name)`, `read(name)`.

    Opening reads only the index; `read` reads one tensor's bytes and checks their length and CRC32C, so the
    optimizer slots of a pretraining checkpoint are never read.
    """

    def __init__(self, prefix: str):
        self.prefix = find_prefix(prefix)
        self.index_path = self.prefix + ".index"
        items = read_index(self.index_path)
        header = _fields(items.pop("", b""))
        self.num_shards = header.get(1, [1])[0]
        if header.get(2, [0])[0] != 0:
            raise BundleError(f"{self.index_path}: big-endian checkpoints are not supported")
        self.is_tf2 = TF2_OBJECT_GRAPH in items
        self._items = items
        self._entries: dict[str, Entry] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._items)

    def entry(self, name: str) -> Entry:
        if name not in self._items:
            raise KeyError(f"{self.index_path}: no tensor {name!r}")
        if name not in self._entries:
            try:
                self._entries[name] = Entry.parse(self._items[name])
            except (IndexError, ValueError) as e:
                raise BundleError(f"{self.index_path}: entry {name!r} is malformed ({e})") from e
        return self._entries[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entry(name).shape

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a NumPy array; BundleError naming the file and tensor if it is unreadable."""
        e = self.entry(name)
        where = f"{self.index_path}: tensor {name!r}"
        if e.sliced:
            raise BundleError(f"{where} is a partitioned (sliced) variable, which is not supported")
        if e.dtype not in _DTYPE_ENUM:
            raise BundleError(f"{where} has unsupported dtype ({e.dtype})")
        if e.dtype == "bfloat16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(e.dtype)
        expected = int(np.prod(e.shape, dtype=np.int64)) * dtype.itemsize
        if e.size != expected:
            raise BundleError(f"{where}: {e.size} bytes recorded for shape {e.shape} {e.dtype}")
        if e.shard >= self.num_shards:
            raise BundleError(f"{where} is in shard {e.shard} of {self.num_shards}")
        path = shard_path(self.prefix, e.shard, self.num_shards)
        if not os.path.isfile(path):
            raise BundleError(f"{path}: missing data shard (needed for tensor {name!r})")
        file_size = os.path.getsize(path)
        if e.offset + e.size > file_size:
            raise BundleError(
                f"{path}: tensor {name!r} needs bytes {e.offset}..{e.offset + e.size} but the shard "
                f"has {file_size} (truncated file, or an index that does not belong to it)"
            )
        with open(path, "rb") as f:
            f.seek(e.offset)
            data = f.read(e.size)
        if e.crc is not None and mask_crc(crc32c(data)) != e.crc:
            raise BundleError(f"{path}: tensor {name!r} fails its CRC32C check (corrupt data)")
        return np.frombuffer(data, dtype).reshape(e.shape).copy()


def write_bundle(prefix: str, tensors: Mapping[str, np.ndarray], num_shards: int = 1) -> None:
    """Writes `tensors` as a TF1 checkpoint `prefix.index` + `prefix.data-*` that tf.train.Saver restores.

    With `num_shards` > 1 the tensors are dealt round-robin (in name order) over that many data shards.
    """
    names = sorted(tensors)
    buffers = [bytearray() for _ in range(num_shards)]
    items = {b"": _field(1, num_shards) + _field(3, _field(1, 1))}  # num_shards; version producer 1
    for i, name in enumerate(names):
        array = np.asarray(tensors[name], order="C")
        dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
        if dtype not in _DTYPE_ENUM:
            raise ValueError(f"{name}: dtype {array.dtype} has no TensorFlow checkpoint encoding")
        shard = i % num_shards
        data = array.tobytes()
        entry = Entry(
            dtype=dtype,
            shape=tuple(array.shape),
            shard=shard,
            offset=len(buffers[shard]),
            size=len(data),
            crc=mask_crc(crc32c(data)),
            sliced=False,
        )
        buffers[shard] += data
        items[name.encode()] = entry.serialize()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    for shard, buffer in enumerate(buffers):
        with open(shard_path(prefix, shard, num_shards), "wb") as f:
            f.write(buffer)
    write_index(prefix + ".index", items)
