"""`--original_rng`: identical output to google-research/bert's create_pretraining_data.py.

The golden TFRecords in tests/golden were written by the original tool itself (see the README
there); these tests rebuild them with bert_jax and compare every feature of every instance.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from tensorflow_datasets.proto import tf_example_generated_pb2 as example_pb2

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import create_pretraining_data as cpd
from bert_jax.data import read_instances, tfrecord

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
CORPUS = f"{GOLDEN / 'corpus_a.txt'},{GOLDEN / 'corpus_b.txt'}"
VOCAB = str(corpus_lib.SAMPLE_VOCAB)
RUNS = {
    "pieces": [
        "--max_seq_length=64",
        "--max_predictions_per_seq=10",
        "--dupe_factor=3",
        "--short_seq_prob=0.3",
        "--random_seed=7",
    ],
    "whole_word": [
        "--do_whole_word_mask=True",
        "--max_seq_length=48",
        "--max_predictions_per_seq=8",
        "--masked_lm_prob=0.2",
        "--dupe_factor=2",
        "--random_seed=12345",
    ],
    # Cased with the uncased sample vocab: capitalized words become [UNK], accents stay.
    "cased": [
        "--do_lower_case=False",
        "--max_seq_length=32",
        "--max_predictions_per_seq=5",
        "--masked_lm_prob=0.3",
        "--short_seq_prob=0.0",
        "--dupe_factor=1",
        "--random_seed=3",
    ],
}
OUTPUTS = {
    "cased": ["cased.tfrecord"],
    "pieces": ["pieces.tfrecord"],
    "whole_word": ["whole_word-0.tfrecord", "whole_word-1.tfrecord"],
}


def _flags(argv):
    values = flags.FlagValues()
    cpd.define_flags(values)
    values(["create_pretraining_data", *argv])
    return values


def _assert_same_instances(got_path, want_path):
    got, want = list(read_instances(str(got_path))), list(read_instances(str(want_path)))
    assert len(got) == len(want) > 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys()
        for name in w:
            np.testing.assert_array_equal(g[name], w[name], err_msg=f"instance {i} {name}")
            assert g[name].dtype == w[name].dtype


@pytest.mark.parametrize("run", sorted(RUNS))
def test_original_rng_equals_the_original_tool(tmp_path, run):
    outputs = [tmp_path / name for name in OUTPUTS[run]]
    argv = [
        "--original_rng",
        f"--input_file={CORPUS}",
        f"--vocab_file={VOCAB}",
        f"--output_file={','.join(map(str, outputs))}",
        *RUNS[run],
    ]
    counts = cpd.run(_flags(argv))
    assert counts["instances"] == {"pieces": 121, "whole_word": 83, "cased": 54}[run]
    for out in outputs:  # same instances in the same order, in the same file of the round-robin
        _assert_same_instances(out, GOLDEN / out.name)


def test_original_rng_array_record_output_holds_the_same_instances(tmp_path):
    out = tmp_path / "pieces.array_record"
    argv = ["--original_rng", f"--input_file={CORPUS}", f"--vocab_file={VOCAB}"]
    cpd.run(_flags([*argv, f"--output_file={out}", *RUNS["pieces"]]))
    _assert_same_instances(out, GOLDEN / "pieces.tfrecord")


def test_golden_has_the_features_the_original_writes():
    # Sanity of the golden file itself: masks are where the original puts them.
    rows = list(read_instances(str(GOLDEN / "pieces.tfrecord")))
    labels = [r["next_sentence_labels"] for r in rows]
    assert 0 < np.mean(labels) < 1
    for r in rows:
        n = int(r["attention_mask"].sum())
        assert r["input_ids"][0] == 2 and r["input_ids"][n - 1] == 3  # [CLS] ... [SEP]
        k = int(r["masked_lm_weights"].sum())
        assert 1 <= k <= 10 and (r["masked_lm_positions"][:k] < n).all()


def test_tfrecord_writer_is_what_tensorflow_reads(tmp_path):
    values = {
        "input_ids": np.array([2, 300, 20000, 3, 0], np.int32),
        "masked_lm_weights": np.array([1.0, 0.5, 0.0], np.float32),
        "next_sentence_labels": np.array([1]),
    }
    raw = tfrecord.encode_example(values)
    ex = example_pb2.Example.FromString(raw)  # protobuf's own parser
    assert list(ex.features.feature["input_ids"].int64_list.value) == [2, 300, 20000, 3, 0]
    assert list(ex.features.feature["masked_lm_weights"].float_list.value) == [1.0, 0.5, 0.0]
    assert list(ex.features.feature["next_sentence_labels"].int64_list.value) == [1]
    # CRC-32C check value (RFC 3720), both implementations, and TFRecord framing of the golden
    # file (written by TensorFlow).
    assert tfrecord.crc32c(b"123456789") == tfrecord.crc32c_python(b"123456789") == 0xE3069283
    data = np.random.default_rng(0).integers(0, 256, 1001, np.uint8).tobytes()
    assert tfrecord.crc32c(data) == tfrecord.crc32c_python(data)
    first = (GOLDEN / "pieces.tfrecord").read_bytes()
    n = int.from_bytes(first[:8], "little")
    assert tfrecord.frame(first[12 : 12 + n]) == first[: 16 + n]
    # Our decoder against protobuf's on the original's own records.
    blobs = list(tfrecord.TFRecordFile(GOLDEN / "pieces.tfrecord"))
    parsed = tfrecord.parse_examples(blobs)
    for i in (0, 7, len(blobs) - 1):
        ex = example_pb2.Example.FromString(blobs[i])
        for name, feature in ex.features.feature.items():
            want = feature.int64_list.value or feature.float_list.value
            values, counts, present = parsed[name]
            start = int(counts[:i].sum())
            assert present[i] and list(values[start : start + counts[i]]) == list(want)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([f"--input_file={CORPUS}", f"--vocab_file={VOCAB}"], "--output_file is required"),
        ([f"--input_file={CORPUS}", "--output_file=o.tfrecord"], "--vocab_file is required"),
        (
            [
                f"--input_file={CORPUS}",
                f"--vocab_file={VOCAB}",
                "--output_dir=d",
                "--output_file=o",
            ],
            "--output_dir is not a flag of the original tool",
        ),
        (
            [
                f"--input_file={CORPUS}",
                f"--vocab_file={VOCAB}",
                "--output_file=o",
                "--max_seq_length=4",
            ],
            "--max_seq_length=4: the original needs at least 5",
        ),
        (
            [f"--input_file={CORPUS}", "--vocab_file=spm.model", "--output_file=o"],
            "--vocab_file=spm.model: the original reads vocab.txt only",
        ),
    ],
)
def test_flags_the_original_rejects(argv, message):
    with pytest.raises(ValueError, match=message):
        cpd.run(_flags(["--original_rng", *argv]))


def test_cli_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    cmd = [
        sys.executable,
        "-m",
        "bert_jax.data.create_pretraining_data",
        "--original_rng",
        f"--input_file={bad}",
        f"--vocab_file={VOCAB}",
        f"--output_file={tmp_path}/o.tfrecord",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bad}:2: invalid UTF-8 (the original tool stops here)"
