"""The TensorBundle reader and writer against checkpoints written by real TensorFlow (tests/testdata, made by
make_tf1_fixture.py), and the errors for damaged files."""

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from bert_jax import tf_checkpoint, tf_wire
from bert_jax.tf_checkpoint import Bundle, BundleError

FIXTURE = Path(__file__).parent / "testdata" / "tf1_uncased_L-2_H-36_A-3"
PREFIX = FIXTURE / "bert_model.ckpt"


def test_reads_what_tensorflow_saver_wrote():
    bundle = Bundle(str(FIXTURE))
    assert bundle.prefix == str(PREFIX) and bundle.num_shards == 1 and not bundle.is_tf2
    # 46 model variables, their adam_m/adam_v slots, global_step.
    assert len(bundle.names) == 46 * 3 + 1
    assert bundle.entry("global_step").dtype == "int64" and bundle.read("global_step").shape == ()
    assert bundle.read("global_step") == 0
    embeddings = bundle.read("bert/embeddings/word_embeddings")
    assert embeddings.dtype == np.float32 and embeddings.shape == (99, 36)
    # make_tf1_fixture.py loaded N(0, 0.2) values (gamma: 1 + N(0, 0.2)) into every float variable.
    assert 0.18 < embeddings.std() < 0.22 and abs(embeddings.mean()) < 0.02
    gamma = bundle.read("bert/embeddings/LayerNorm/gamma")
    assert 0.9 < gamma.mean() < 1.1
    # The same bytes whatever the spelling of the path.
    for spelling in (str(PREFIX), str(PREFIX) + ".index"):
        np.testing.assert_array_equal(
            Bundle(spelling).read("cls/predictions/output_bias"),
            bundle.read("cls/predictions/output_bias"),
        )


def test_sharded_checkpoint_reads_the_same_tensors():
    sharded = Bundle(str(FIXTURE / "sharded" / "model.ckpt"))
    whole = Bundle(str(PREFIX))
    assert sharded.num_shards == 2 and len(sharded.names) == 46
    assert {sharded.entry(n).shard for n in sharded.names} == {0, 1}
    for name in sharded.names:
        np.testing.assert_array_equal(sharded.read(name), whole.read(name), err_msg=name)


@pytest.mark.parametrize("checkpoint,shards", [("bert_model.ckpt", 1), ("sharded/model.ckpt", 2)])
def test_writer_reproduces_tensorflows_files_byte_for_byte(tmp_path, checkpoint, shards):
    source = FIXTURE / checkpoint
    bundle = Bundle(str(source))
    tf_checkpoint.write_bundle(
        str(tmp_path / "out"), {n: bundle.read(n) for n in bundle.names}, num_shards=shards
    )
    for suffix in [".index", *(f".data-{i:05d}-of-{shards:05d}" for i in range(shards))]:
        theirs = Path(str(source) + suffix).read_bytes()
        assert (tmp_path / ("out" + suffix)).read_bytes() == theirs, suffix


def test_writer_round_trips_dtypes_shapes_and_many_shards(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a/float": rng.normal(size=(3, 5)).astype(np.float32),
        "a/bf16": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
        "b/half": rng.normal(size=(2, 2, 2)).astype(np.float16),
        "b/int64_scalar": np.array(7, np.int64),
        "c/int32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "c/empty": np.zeros((0, 3), np.float32),
        "d/bool": np.array([True, False]),
        # Enough entries for several index blocks and restart points.
        **{f"many/{i:04d}": np.full((3,), i, np.float64) for i in range(300)},
    }
    tensors["big"] = rng.normal(size=(300, 300)).astype(np.float32)
    tf_checkpoint.write_bundle(str(tmp_path / "m.ckpt"), tensors, num_shards=3)
    bundle = Bundle(str(tmp_path / "m.ckpt"))
    assert bundle.num_shards == 3 and sorted(tensors) == bundle.names
    for name, value in tensors.items():
        got = bundle.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name


def test_crc32c_matches_the_reference_values():
    # RFC 3720's check value for "123456789", and the pure-Python fallback agrees with the C one.
    assert tf_checkpoint.crc32c(b"123456789") == 0xE3069283
    data = np.random.default_rng(1).bytes(1000)
    assert tf_checkpoint.crc32c(data) == tf_wire.crc32c_python(data)
    # Continuing a CRC over a split equals one CRC of the whole, in both implementations.
    for crc in (tf_wire.crc32c, tf_wire.crc32c_python):
        assert crc(data[300:], crc(data[:300])) == tf_checkpoint.crc32c(data)
    assert tf_checkpoint.mask_crc(0) == 0xA282EAD8


def copy_fixture(tmp_path) -> Path:
    for f in FIXTURE.glob("bert_model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "bert_model.ckpt"


def test_truncated_data_shard_names_the_file_and_tensor(tmp_path):
    prefix = copy_fixture(tmp_path)
    shard = Path(str(prefix) + ".data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:1000])
    bundle = Bundle(str(prefix))
    bundle.read("bert/embeddings/LayerNorm/beta")  # offset 0: still whole
    with pytest.raises(BundleError, match=r"data-00000-of-00001: tensor 'global_step' needs bytes "
                       r"319980..319988 but the shard has 1000 \(truncated"):  # fmt: skip
        bundle.read("global_step")


def test_index_pointing_past_the_end_of_a_shard(tmp_path):
    prefix = str(tmp_path / "m.ckpt")
    tf_checkpoint.write_bundle(prefix, {"w": np.ones(4, np.float32)})
    items = tf_checkpoint.read_index(prefix + ".index")
    entry = tf_checkpoint.Entry.parse(items["w"])
    moved = tf_checkpoint.Entry(**{**entry.__dict__, "offset": 64})
    tf_checkpoint.write_index(prefix + ".index", {b"": items[""], b"w": moved.serialize()})
    with pytest.raises(
        BundleError, match=r"m.ckpt.data-00000-of-00001: tensor 'w' needs bytes 64..80 but"
    ):
        Bundle(prefix).read("w")


def test_corrupt_bytes_fail_the_checksums(tmp_path):
    prefix = copy_fixture(tmp_path)
    shard = Path(str(prefix) + ".data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF  # inside bert/embeddings/LayerNorm/beta
    shard.write_bytes(bytes(data))
    with pytest.raises(
        BundleError, match="tensor 'bert/embeddings/LayerNorm/beta' fails its CRC32C"
    ):
        Bundle(str(prefix)).read("bert/embeddings/LayerNorm/beta")
    index = Path(str(prefix) + ".index")
    data = bytearray(index.read_bytes())
    data[100] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="bert_model.ckpt.index: table block checksum mismatch"):
        Bundle(str(prefix))


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "x.index").write_bytes(b"not an sstable at all" * 5)
    with pytest.raises(
        BundleError, match=r"x.index: not a TensorFlow checkpoint index \(bad magic"
    ):
        Bundle(str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint"):
        Bundle(str(tmp_path / "nothing"))
    prefix = copy_fixture(tmp_path)
    Path(str(prefix) + ".data-00000-of-00001").unlink()
    with pytest.raises(
        BundleError, match="missing data shard .needed for tensor .cls/predictions/output_bias."
    ):
        Bundle(str(prefix)).read("cls/predictions/output_bias")
    assert Bundle(str(FIXTURE / "tf2")).is_tf2
