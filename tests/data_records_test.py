"""Offline mode: create_pretraining_data CLI, ArrayRecord round trip, original TFRecords."""

import subprocess
import sys

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_generated_pb2 as example_pb2

from bert_jax.configs.pretraining import data_config
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import loader as loader_lib
from bert_jax.data import masking, read_instances, records, tfrecord
from bert_jax.data.create_pretraining_data import create_shards
from bert_jax.data.tokenizer import load_tokenizer

FEATURES = (
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB))
    writers = []

    def writer_for(block, current):
        if current is not None:
            current.close()
        writers.append(records.InstanceWriter([str(out / f"instances-{block:05d}.array_record")]))
        return writers[-1]

    counts = create_shards(
        str(corpus_lib.SAMPLE_CORPUS),
        tok,
        writer_for,
        max_seq_length=64,
        max_predictions=10,
        masked_lm_prob=0.15,
        short_seq_prob=0.1,
        dupe_factor=2,
        seed=7,
        whole_word=False,
        documents_per_shard=600,
    )
    return out, counts, tok


def test_create_shards_counts_and_round_trip(shards):
    out, counts, tok = shards
    assert counts["blocks"] == 3 and counts["documents"] == 1500  # 600 + 600 + 300 documents
    assert sorted(p.name for p in out.iterdir()) == [
        f"instances-0000{i}.array_record" for i in range(3)
    ]
    instances = list(read_instances(f"{out}/*.array_record"))
    assert len(instances) == counts["instances"] > 3000
    for ex in instances[:500]:
        assert set(ex) == set(FEATURES)
        assert ex["input_ids"].shape == (64,) and ex["masked_lm_ids"].shape == (10,)
        assert ex["input_ids"].dtype == np.int32 and ex["masked_lm_weights"].dtype == np.float32
        n = ex["attention_mask"].sum()
        assert ex["input_ids"][0] == tok.cls_id and ex["input_ids"][n - 1] == tok.sep_id
        assert (ex["input_ids"][n:] == tok.pad_id).all() and ex["next_sentence_labels"] in (0, 1)
        k = int(ex["masked_lm_weights"].sum())
        assert k >= 1 and (ex["masked_lm_positions"][:k] < n).all()
        assert not np.isin(ex["masked_lm_ids"][:k], tok.special_ids).any()
        assert (ex["masked_lm_ids"][k:] == 0).all() and (ex["masked_lm_positions"][k:] == 0).all()
    labels = np.array([ex["next_sentence_labels"] for ex in instances])
    assert 0.3 < labels.mean() < 0.7


def test_records_encode_decode_exact():
    ids = np.array([2, 10, 11, 3, 12, 13, 14, 3], np.int32)
    rec = records.encode_instance(ids, 4, [1, 5], [10, 13], 1, 12, 4)
    out = records.decode_batch([rec, rec])
    np.testing.assert_array_equal(out["input_ids"][0], [*ids, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["token_type_ids"][1], [0] * 4 + [1] * 4 + [0] * 4)
    np.testing.assert_array_equal(out["masked_lm_weights"][0], [1, 1, 0, 0])
    np.testing.assert_array_equal(out["masked_lm_positions"][0], [1, 5, 0, 0])
    assert out["next_sentence_labels"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="bad magic"):
        records.decode_batch([np.zeros(8, "<i4").tobytes()])


def test_instances_source_in_loader_remasks_dynamically(shards):
    out, _, tok = shards
    cfg = data_config()
    cfg.update(
        dict(
            source="instances",
            input_pattern=f"{out}/*.array_record",
            seq_length=64,
            max_predictions_per_seq=10,
            phase2_fraction=0.0,
        )
    )
    hosts = [
        loader_lib.make_pretraining_loader(
            cfg, global_batch_size=8, num_train_steps=100, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    a0, a1 = hosts[0].batch(0), hosts[1].batch(0)
    assert a0["input_ids"].shape == (4, 64)
    rows = lambda b: {tuple(r) for r in masking.unmask(b)}
    assert not rows(a0) & rows(a1)
    again = loader_lib.make_pretraining_loader(
        cfg, global_batch_size=8, num_train_steps=100, process_index=1, process_count=2
    ).batch(0)
    np.testing.assert_array_equal(again["input_ids"], a1["input_ids"])
    # Dynamic masking: the same instances come back in a later epoch with other masks.
    source = hosts[0]._phases[0][1]
    n = len(source.source)
    assert (source.lo, source.hi) == (0, n - n // 50)  # the last 2% are held out for eval
    assert source.per_epoch == (n - n // 50) // 2


def _tf_example(feats):
    ex = example_pb2.Example()
    for name, values in feats.items():
        if name == "masked_lm_weights":
            ex.features.feature[name].float_list.value.extend(values)
        else:
            ex.features.feature[name].int64_list.value.extend(values)
    return ex.SerializeToString()


def test_reads_original_tfrecords(tmp_path):
    rng = np.random.default_rng(0)
    want = []
    path = tmp_path / "wiki.tfrecord"
    with open(path, "wb") as f:
        for _ in range(20):
            feats = {
                "input_ids": rng.integers(0, 30522, 128).tolist(),  # > 127 and > 16383: multi-byte
                "input_mask": [1] * 100 + [0] * 28,
                "segment_ids": [0] * 50 + [1] * 50 + [0] * 28,
                "masked_lm_positions": rng.integers(1, 99, 20).tolist(),
                "masked_lm_ids": rng.integers(0, 30522, 20).tolist(),
                "masked_lm_weights": [1.0] * 15 + [0.0] * 5,
                "next_sentence_labels": [int(rng.integers(2))],
            }
            want.append(feats)
            raw = _tf_example(feats)
            f.write(tfrecord.frame(raw))
    got = list(read_instances(str(path)))
    assert len(got) == 20
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g["input_ids"], w["input_ids"])
        np.testing.assert_array_equal(g["attention_mask"], w["input_mask"])
        np.testing.assert_array_equal(g["token_type_ids"], w["segment_ids"])
        np.testing.assert_array_equal(g["masked_lm_ids"], w["masked_lm_ids"])
        np.testing.assert_array_equal(g["masked_lm_weights"], w["masked_lm_weights"])
        assert g["next_sentence_labels"] == w["next_sentence_labels"][0]
        assert g["masked_lm_weights"].dtype == np.float32 and g["input_ids"].dtype == np.int32
    truncated = tmp_path / "cut.tfrecord"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="cut.tfrecord: truncated record"):
        list(read_instances(str(truncated)))


def test_cli_with_original_flag_names(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(corpus_lib.SAMPLE_EVAL_CORPUS.read_text())
    cmd = [
        sys.executable,
        "-m",
        "bert_jax.data.create_pretraining_data",
        f"--input_file={corpus}",
        f"--output_file={tmp_path}/a.array_record,{tmp_path}/b.array_record",
        f"--vocab_file={corpus_lib.SAMPLE_VOCAB}",
        "--do_lower_case",
        "--max_seq_length=32",
        "--max_predictions_per_seq=5",
        "--masked_lm_prob=0.15",
        "--random_seed=1",
        "--dupe_factor=1",
        "--short_seq_prob=0.1",
        "--do_whole_word_mask",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "'documents': 100" in result.stdout
    a = list(read_instances(f"{tmp_path}/a.array_record"))
    b = list(read_instances(f"{tmp_path}/b.array_record"))
    assert abs(len(a) - len(b)) <= 1 and a[0]["input_ids"].shape == (32,)  # round-robin
