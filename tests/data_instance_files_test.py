"""Instance files in the loader: phase 2, held-out eval, static masking, original TFRecords, damage."""

import pathlib

import numpy as np
import pytest

from bert_jax.configs.pretraining import data_config
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import loader as loader_lib
from bert_jax.data import masking, read_instances, records, tfrecord
from bert_jax.data.create_pretraining_data import create_shards
from bert_jax.data.tfrecord import CorruptRecordError
from bert_jax.data.tokenizer import load_tokenizer

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"


def _write(path, seq_length, max_predictions, dupe_factor=1):
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB))
    return create_shards(
        str(corpus_lib.SAMPLE_EVAL_CORPUS),
        tok,
        lambda block, current: current or records.InstanceWriter([str(path)]),
        max_seq_length=seq_length,
        max_predictions=max_predictions,
        masked_lm_prob=0.15,
        short_seq_prob=0.1,
        dupe_factor=dupe_factor,
        seed=3,
        whole_word=False,
        documents_per_shard=1000,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("instances")
    _write(d / "p1.array_record", 48, 8)
    _write(d / "p2.tfrecord", 96, 16)
    return d


def _config(d, **overrides):
    cfg = data_config()
    cfg.update(
        dict(
            source="instances",
            input_pattern=f"{d}/p1.array_record",
            phase2_input_pattern=f"{d}/p2.tfrecord",
            seq_length=48,
            max_predictions_per_seq=8,
            phase2_seq_length=96,
            phase2_max_predictions_per_seq=16,
            phase2_fraction=0.5,
        )
    )
    cfg.update(overrides)
    return cfg


def _rows(batch, with_masks=False):
    ids = batch["input_ids"] if with_masks else masking.unmask(batch)
    if not with_masks:
        return {tuple(r) for r in ids}
    return {
        (tuple(r), tuple(p), tuple(m))
        for r, p, m in zip(ids, batch["masked_lm_positions"], batch["masked_lm_ids"], strict=True)
    }


def _file_rows(path, with_masks=False):
    source = records.InstanceSource(str(path))
    return _rows(source.batch(range(len(source))), with_masks)


def test_phase2_reads_its_own_512_style_files(files):
    cfg = _config(files)
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=40)
    assert [loader.seq_length(s) for s in (19, 20)] == [48, 96]
    before, after = loader.batch(19), loader.batch(20)
    assert before["input_ids"].shape == (8, 48) and before["masked_lm_ids"].shape == (8, 8)
    assert after["input_ids"].shape == (8, 96) and after["masked_lm_ids"].shape == (8, 16)
    longest = max(loader.batch(s)["attention_mask"].sum(1).max() for s in range(20, 24))
    assert longest > 48  # phase 2 trains on sequences longer than phase 1's
    assert _rows(after) <= _file_rows(files / "p2.tfrecord")
    assert _rows(before) <= _file_rows(files / "p1.array_record")


def test_phase2_files_are_checked_at_startup(files):
    make = lambda cfg: loader_lib.make_pretraining_loader(
        cfg, global_batch_size=8, num_train_steps=40
    )
    wrong = _config(files, phase2_input_pattern=f"{files}/p1.array_record")
    message = "p1.array_record: instances are 48 tokens long, but data.phase2_input_pattern"
    with pytest.raises(ValueError, match=message):
        make(wrong)
    nothing = _config(files, phase2_input_pattern=f"{files}/nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match=r"^data.phase2_input_pattern: .*no file matches"):
        make(nothing)
    with pytest.raises(ValueError, match="data.phase2_input_pattern: required for phase 2"):
        make(_config(files, phase2_input_pattern=None))


def test_eval_rows_never_appear_in_training(files):
    cfg = _config(files, phase2_fraction=0.0, eval_holdout_modulus=10)
    source = records.InstanceSource(f"{files}/p1.array_record")
    total, held = len(source), len(source) // 10
    head = _rows(source.batch(range(total - held)))
    tail = _rows(source.batch(range(total - held, total)))
    assert len(head) == total - held and len(tail) == held >= 20 and not head & tail
    evals = loader_lib.make_eval_batches(cfg, global_batch_size=4, num_batches=held // 4)
    eval_rows = set().union(*[_rows(b) for b in evals])
    train = loader_lib.make_pretraining_loader(cfg, global_batch_size=16, num_train_steps=10**6)
    steps = (total - held) // 16 + 2  # more than one epoch
    train_rows = set().union(*[_rows(train.batch(s)) for s in range(steps)])
    assert train_rows == head  # every training row, and only those
    assert len(eval_rows) == held // 4 * 4 and eval_rows <= tail
    assert not eval_rows & train_rows
    # With eval files given, eval reads exactly those and training keeps every record.
    explicit = _config(files, phase2_fraction=0.0, eval_input_pattern=f"{files}/p2.tfrecord")
    (batch,) = loader_lib.make_eval_batches(
        explicit, global_batch_size=4, num_batches=1, seq_length=96, max_predictions=16
    )
    assert _rows(batch) <= _file_rows(files / "p2.tfrecord")
    train = loader_lib.make_pretraining_loader(explicit, global_batch_size=16, num_train_steps=9)
    assert train._phases[0][1].hi == total


def test_static_masking_trains_on_the_stored_masks(files):
    stored = _file_rows(files / "p1.array_record", with_masks=True)
    cfg = _config(files, phase2_fraction=0.0, masking="static")
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=16, num_train_steps=10**6)
    epoch = loader._phases[0][1].per_epoch // 16
    first, later = loader.batch(0), loader.batch(epoch + 1)
    assert _rows(first, with_masks=True) <= stored and _rows(later, with_masks=True) <= stored
    dynamic = loader_lib.make_pretraining_loader(
        _config(files, phase2_fraction=0.0), global_batch_size=16, num_train_steps=10**6
    )
    # Re-masked rows: same sequences, (almost all) other masks than the stored ones.
    assert _rows(dynamic.batch(0)) <= _file_rows(files / "p1.array_record")
    assert len(_rows(dynamic.batch(0), with_masks=True) & stored) <= 1
    with pytest.raises(ValueError, match="data.masking='static' needs data.source='instances'"):
        loader_lib.make_pretraining_loader(
            _config(files, source="text", masking="static"), global_batch_size=8, num_train_steps=9
        )


def test_loader_trains_on_the_original_tools_tfrecords():
    golden = GOLDEN / "pieces.tfrecord"
    cfg = _config(
        "",
        input_pattern=str(golden),
        eval_input_pattern=str(golden),
        phase2_fraction=0.0,
        seq_length=64,
        max_predictions_per_seq=10,
        masking="static",
    )
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=100)
    batch = loader.batch(0)
    assert batch["input_ids"].shape == (8, 64) and batch["masked_lm_weights"].shape == (8, 10)
    assert _rows(batch, with_masks=True) <= _file_rows(golden, with_masks=True)
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "masked_lm_positions",
        "masked_lm_ids",
        "masked_lm_weights",
        "next_sentence_labels",
    }


def _damaged(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_or_corrupt_files_are_errors_naming_file_and_offset(files, tmp_path):
    tf_bytes = (files / "p2.tfrecord").read_bytes()
    src = records.InstanceSource(f"{files}/p2.tfrecord")
    off3 = int(src._files[0].offsets[3]) - 12  # byte offset of record 3's header
    # A flipped byte in record 3's data: its CRC fails, the error names file, record and offset.
    flipped = bytearray(tf_bytes)
    flipped[off3 + 20] ^= 0x40
    path = _damaged(tmp_path, "flip.tfrecord", bytes(flipped))
    with pytest.raises(CorruptRecordError, match=rf"flip.tfrecord: record 3 at byte {off3} fails"):
        list(read_instances(str(path)))
    # Opted in: the bad record is replaced by the next one, counted.
    skipping = records.InstanceSource(str(path), skip_corrupt=True)
    got = skipping.batch([2, 3, 5], 96, 16)
    want = src.batch([2, 4, 5], 96, 16)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert skipping.skipped_records == 1
    # Cut inside record 3: the header index stops there.
    path = _damaged(tmp_path, "cut.tfrecord", tf_bytes[: off3 + 30])
    with pytest.raises(
        CorruptRecordError, match=rf"cut.tfrecord: truncated record .* at byte {off3}"
    ):
        records.InstanceSource(str(path))
    assert len(records.InstanceSource(str(path), skip_corrupt=True)) == 3
    # A truncated ArrayRecord file: an error, never a silent half (or a MemoryError).
    ar_bytes = (files / "p1.array_record").read_bytes()
    path = _damaged(tmp_path, "cut.array_record", ar_bytes[: len(ar_bytes) // 2])
    message = rf"cut.array_record: not a readable ArrayRecord file \(footer missing at byte {len(ar_bytes) // 2}"
    with pytest.raises(CorruptRecordError, match=message):
        list(read_instances(str(path)))
    cfg = _config(files, input_pattern=str(path), phase2_fraction=0.0)
    with pytest.raises(CorruptRecordError, match="cut.array_record: not a readable ArrayRecord"):
        loader_lib.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=9)
    # A damaged chunk inside an ArrayRecord file: the record is named, with Riegeli's offset.
    flipped = bytearray(ar_bytes)
    flipped[len(ar_bytes) // 3] ^= 0x40
    path = _damaged(tmp_path, "flip.array_record", bytes(flipped))
    with pytest.raises(CorruptRecordError, match=r"flip.array_record: record \d+: .*at byte \d+"):
        list(read_instances(str(path)))


def test_tfrecord_missing_a_feature_is_one_line_naming_it(tmp_path):
    path = tmp_path / "partial.tfrecord"
    writer = tfrecord.TFRecordWriter(path)
    writer.write(tfrecord.encode_example({"input_ids": np.arange(8), "input_mask": np.ones(8)}))
    writer.close()
    with pytest.raises(
        ValueError, match=r"partial.tfrecord: tf.train.Example has no feature 'segment_ids'$"
    ):
        list(read_instances(str(path)))
