"""GLUE task table, TSV and TFDS readers, featurisation and batching."""

import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tensorflow_datasets.text.glue  # noqa: F401  (registers glue/* for tfds.builder)

from bert_jax.data import glue

# Small files in the official GLUE download layout, quirks included: CoLA train/dev have no
# header, MNLI has 12 (train), 16 (dev) and 10 (test) columns, QQP has a question broken over
# two lines, STS-B has float scores, test files have an index and no label, AX is diagnostic/.
MNLI_HEAD = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2"
FILES = {
    "CoLA/train.tsv": "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThey drank the pub.\n",
    "CoLA/dev.tsv": "bc01\t1\t\tBill ran.\r\n",
    "CoLA/test.tsv": 'index\tsentence\n0\tBill whistled.\n1\tThe dog "barked".\n',
    "SST-2/train.tsv": "sentence\tlabel\nit 's a charming journey \t1\ndull \t0\n",
    "SST-2/dev.tsv": "sentence\tlabel\nfine \t1\n",
    "SST-2/test.tsv": "index\tsentence\n0\tuneasy mishmash\n",
    "MRPC/train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tA\tB\n",
    "MRPC/dev.tsv": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tC\tD\n1\t3\t4\tE\tF\n",
    "MRPC/test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tG\tH\n",
    "STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1"
    "\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tA jet."
    "\t5.000\n1\tmain-news\tx\t2012\t2\tnone\tnone\tA man.\tA cat.\t0.4\n",
    "STS-B/dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1"
    "\tsentence2\tscore\n7\tmain-forums\tf\t2015\t9\tnone\tnone\tS1\tS2\t2.75\n",
    "STS-B/test.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1"
    "\tsentence2\n0\tmain-news\tn\t2016\t1\tnone\tnone\tT1\tT2\n",
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "133273\t213221\t213222\tHow is the life?\tHow is life?\t0\n"
    "402555\t536040\t536041\tHow do I\n"  # a question with a raw newline: two broken rows
    "control my temper?\tWhat is anger?\t1\n"
    "360472\t364011\t490273\tWhat is X?\tWhat's X?\t1\n",
    "QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n5\t1\t2\tQ1\tQ2\t1\n",
    "QQP/test.tsv": "id\tquestion1\tquestion2\n0\tWhy?\tWhy not?\n1\tA?\tB?\n",
    "MNLI/train.tsv": f"{MNLI_HEAD}\tlabel1\tgold_label\n"
    "0\t31193\t31193n\tgov\t(a)\t(b)\t(A)\t(B)\tConceptually cream.\tProduct and geography."
    "\tneutral\tneutral\n",
    "MNLI/dev_matched.tsv": f"{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
    "0\t63735\t63735n\tslate\t(a)\t(b)\t(A)\t(B)\tP\tH\tneutral\tentailment\tneutral\tneutral"
    "\tneutral\tneutral\n"
    "1\t1\t1c\tslate\t(a)\t(b)\t(A)\t(B)\tP2\tH2\tcontradiction\tc\tc\tc\tc\tcontradiction\n",
    "MNLI/dev_mismatched.tsv": f"{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    "\n0\t75290\t75290c\tletters\t(a)\t(b)\t(A)\t(B)\tPm\tHm\te\te\te\te\te\tentailment\n",
    "MNLI/test_matched.tsv": f"{MNLI_HEAD}\n0\t31\t31e\tgov\t(a)\t(b)\t(A)\t(B)\tTP\tTH\n",
    "MNLI/test_mismatched.tsv": f"{MNLI_HEAD}\n0\t1\t1e\tnineeleven\t(a)\t(b)\t(A)\t(B)\tX\tY\n",
    "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen?\tIn 1990.\tentailment\n"
    "1\tWho?\tNobody knows.\tnot_entailment\n",
    "QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tQ\tS\tnot_entailment\n",
    "QNLI/test.tsv": "index\tquestion\tsentence\n0\tQ\tS\n",
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo war.\tWar.\tnot_entailment\n",
    "RTE/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tA\tB\n",
    "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin.\tI stuck it.\t1\n",
    "WNLI/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA\tB\t0\n",
    "WNLI/test.tsv": "index\tsentence1\tsentence2\n0\tA\tB\n",
    "diagnostic/diagnostic.tsv": "index\tsentence1\tsentence2\n0\tThe cat sat.\tThe cat did not sit.\n",
}

# (task, split) -> (idx, text_a, text_b, labels); labels None on test splits.
EXPECTED = {
    ("cola", "train"): (
        [0, 1],
        ["The sailors rode the breeze.", "They drank the pub."],
        None,
        [1, 0],
    ),
    ("cola", "dev"): ([0], ["Bill ran."], None, [1]),
    ("cola", "test"): ([0, 1], ["Bill whistled.", 'The dog "barked".'], None, None),
    ("sst2", "train"): ([0, 1], ["it 's a charming journey ", "dull "], None, [1, 0]),
    ("sst2", "dev"): ([0], ["fine "], None, [1]),
    ("sst2", "test"): ([0], ["uneasy mishmash"], None, None),
    ("mrpc", "train"): ([0], ["A"], ["B"], [1]),
    ("mrpc", "dev"): ([0, 1], ["C", "E"], ["D", "F"], [0, 1]),
    ("mrpc", "test"): ([0], ["G"], ["H"], None),
    ("stsb", "train"): ([0, 1], ["A plane.", "A man."], ["A jet.", "A cat."], [5.0, 0.4]),
    ("stsb", "dev"): ([7], ["S1"], ["S2"], [2.75]),
    ("stsb", "test"): ([0], ["T1"], ["T2"], None),
    ("qqp", "train"): (
        [133273, 360472],
        ["How is the life?", "What is X?"],
        ["How is life?", "What's X?"],
        [0, 1],
    ),
    ("qqp", "dev"): ([5], ["Q1"], ["Q2"], [1]),
    ("qqp", "test"): ([0, 1], ["Why?", "A?"], ["Why not?", "B?"], None),
    ("mnli", "train"): ([0], ["Conceptually cream."], ["Product and geography."], [1]),
    ("mnli", "dev_matched"): ([0, 1], ["P", "P2"], ["H", "H2"], [1, 2]),
    ("mnli", "dev_mismatched"): ([0], ["Pm"], ["Hm"], [0]),
    ("mnli", "test_matched"): ([0], ["TP"], ["TH"], None),
    ("mnli", "test_mismatched"): ([0], ["X"], ["Y"], None),
    ("qnli", "train"): ([0, 1], ["When?", "Who?"], ["In 1990.", "Nobody knows."], [0, 1]),
    ("qnli", "dev"): ([0], ["Q"], ["S"], [1]),
    ("qnli", "test"): ([0], ["Q"], ["S"], None),
    ("rte", "train"): ([0], ["No war."], ["War."], [1]),
    ("rte", "dev"): ([0], ["A"], ["B"], [0]),
    ("rte", "test"): ([0], ["A"], ["B"], None),
    ("wnli", "train"): ([0], ["I stuck a pin."], ["I stuck it."], [1]),
    ("wnli", "dev"): ([0], ["A"], ["B"], [0]),
    ("wnli", "test"): ([0], ["A"], ["B"], None),
    ("ax", "test"): ([0], ["The cat sat."], ["The cat did not sit."], None),
}


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    for name, text in FILES.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(text.encode("utf-8"))
    return root


def test_expected_covers_every_split_of_every_task():
    assert sorted(EXPECTED) == sorted((t.name, s) for t in glue.TASKS.values() for s in t.splits)


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_reads_official_layout(glue_dir, task, split):
    examples = glue.read_examples(task, split, str(glue_dir))
    idx, text_a, text_b, labels = EXPECTED[task, split]
    assert (examples.task, examples.split) == (task, split)
    assert examples.idx.tolist() == idx
    assert examples.text_a == text_a
    assert examples.text_b == text_b
    if labels is None:
        assert examples.labels is None
    else:
        dtype = np.float32 if task == "stsb" else np.int32
        assert examples.labels.dtype == dtype
        np.testing.assert_array_equal(examples.labels, np.asarray(labels, dtype))
    assert examples.num_skipped == (2 if (task, split) == ("qqp", "train") else 0)


def test_qqp_broken_rows_are_logged_with_their_lines(glue_dir, caplog):
    with caplog.at_level(logging.WARNING):
        glue.read_examples("qqp", "train", str(glue_dir))
    assert "skipped 2 malformed rows (lines 3, 4)" in caplog.text


def test_ax_also_found_as_AX_folder(tmp_path):
    (tmp_path / "AX").mkdir()
    (tmp_path / "AX" / "AX.tsv").write_text("index\tsentence1\tsentence2\n3\tP\tH\n")
    examples = glue.read_examples("AX", "test", str(tmp_path))
    assert (examples.idx.tolist(), examples.text_a, examples.text_b) == ([3], ["P"], ["H"])


@pytest.mark.parametrize(
    "text,message",
    [
        ("index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tA\tB\n", ":3: expected 4"),
        ("index\tsentence1\tsentence2\tlabel\n0\tA\tB\tmaybe\n", ":2: label 'maybe' not in"),
        ("index\tsentence1\tlabel\n0\tA\tentailment\n", ":1: no column 'sentence2'"),
        ("index\tsentence1\tsentence2\tlabel\nx\tA\tB\tentailment\n", ":2: invalid literal"),
        (b"index\tsentence1\tsentence2\tlabel\n0\t\xff\tB\tentailment\n", ":2: not UTF-8"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, text, message):
    (tmp_path / "RTE").mkdir()
    path = tmp_path / "RTE" / "dev.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=f"^{path}{message}"):
        glue.read_examples("rte", "dev", str(tmp_path))


def test_missing_folder_file_task_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"folder not found: {tmp_path / 'MRPC'}$"):
        glue.read_examples("mrpc", "dev", str(tmp_path))
    (tmp_path / "MRPC").mkdir()
    with pytest.raises(
        FileNotFoundError, match=f"file not found: {tmp_path / 'MRPC' / 'dev.tsv'}$"
    ):
        glue.read_examples("mrpc", "dev", str(tmp_path))
    with pytest.raises(
        ValueError, match="valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte"
    ):
        glue.read_examples("mprc", "dev", str(tmp_path))
    with pytest.raises(ValueError, match="valid splits: train, dev_matched, dev_mismatched, test_"):
        glue.read_examples("mnli", "dev", str(tmp_path))


def test_task_table():
    assert glue.get_task("STS-B") is glue.TASKS["stsb"]
    assert glue.get_task("SST-2") is glue.TASKS["sst2"]
    assert {t.name: t.num_labels for t in glue.TASKS.values()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1, "qqp": 2, "mnli": 3, "qnli": 2, "rte": 2,
        "wnli": 2, "ax": 3,
    }  # fmt: skip
    mnli = glue.TASKS["mnli"]
    assert mnli.dev_splits == ("dev_matched", "dev_mismatched")
    assert mnli.test_splits == ("test_matched", "test_mismatched")
    assert [mnli.entry(s) for s in mnli.dev_splits] == ["mnli_m", "mnli_mm"]
    assert glue.TASKS["rte"].entry("dev") == "rte"


# What each TFDS label name means in the TSV/leaderboard strings: TFDS ids must equal ours.
TFDS_LABEL_MEANING = {
    "unacceptable": "0", "acceptable": "1", "negative": "0", "positive": "1",
    "not_equivalent": "0", "equivalent": "1", "not_duplicate": "0", "duplicate": "1",
}  # fmt: skip


@pytest.mark.parametrize("task", [t for t in glue.TASKS if t != "stsb"])
def test_label_order_matches_tfds(task):
    names = tfds.builder(f"glue/{task}").info.features["label"].names
    if task == "wnli":  # TFDS names WNLI's 0/1 by meaning: 1 is entailment
        assert names == ["not_entailment", "entailment"]
        names = ["0", "1"]
    assert [TFDS_LABEL_MEANING.get(n, n) for n in names] == list(glue.TASKS[task].labels)


@pytest.mark.parametrize(
    "task,split,tfds_split",
    [
        ("mrpc", "dev", "validation"),
        ("mnli", "dev_mismatched", "validation_mismatched"),
        ("stsb", "train", "train"),
        ("cola", "test", "test"),
    ],
)
def test_reads_tfds_mock_data(task, split, tfds_split):
    t = glue.TASKS[task]
    with tfds.testing.mock_data(num_examples=7):
        examples = glue.read_examples(task, split)
        rows = list(tfds.data_source(f"glue/{task}", split=tfds_split))
    assert len(examples) == 7
    assert examples.idx.tolist() == [int(r["idx"]) for r in rows]
    assert examples.text_a == [r[t.tfds_features[0]] for r in rows]
    if len(t.tfds_features) == 2:
        assert examples.text_b == [r[t.tfds_features[1]] for r in rows]
    else:
        assert examples.text_b is None
    if split.startswith("test"):
        assert examples.labels is None
    else:
        np.testing.assert_array_equal(examples.labels, [r["label"] for r in rows])
        assert examples.labels.dtype == (np.float32 if t.is_regression else np.int32)


class FakeTokenizer:
    """Word-level stand-in with the project tokenizer's call signature: [CLS]=2, [SEP]=3, pad 0."""

    def __init__(self):
        self.vocab = {}

    def _ids(self, text):
        return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]

    def __call__(self, texts, pairs=None, max_length=None, padding="max_length", truncation=True):
        assert padding == "max_length" and truncation
        out = {k: np.zeros((len(texts), max_length), np.int64) for k in
               ("input_ids", "token_type_ids", "attention_mask")}  # fmt: skip
        for i, text in enumerate(texts):
            ids, types = [2, *self._ids(text), 3], []
            types = [0] * len(ids)
            if pairs is not None:
                second = [*self._ids(pairs[i]), 3]
                ids, types = ids + second, types + [1] * len(second)
            ids, types = ids[:max_length], types[:max_length]
            out["input_ids"][i, : len(ids)] = ids
            out["token_type_ids"][i, : len(ids)] = types
            out["attention_mask"][i, : len(ids)] = 1
        return out


def test_encode_pairs_with_labels():
    examples = glue.Examples(
        "rte", "dev", np.array([4, 9]), ["a b", "c"], ["b", "a d e"], np.array([1, 0], np.int32)
    )
    features = glue.encode_examples(examples, FakeTokenizer(), max_length=6)
    np.testing.assert_array_equal(
        features["input_ids"], [[2, 10, 11, 3, 11, 3], [2, 12, 3, 10, 13, 14]]
    )
    np.testing.assert_array_equal(
        features["token_type_ids"], [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
    )
    np.testing.assert_array_equal(features["attention_mask"], np.ones((2, 6)))
    np.testing.assert_array_equal(features["labels"], [1, 0])
    np.testing.assert_array_equal(features["example_ids"], [4, 9])
    assert {k: v.dtype for k, v in features.items()} == dict.fromkeys(features, np.int32)


@pytest.mark.parametrize("task,fill,dtype", [("stsb", np.nan, np.float32), ("sst2", -1, np.int32)])
def test_encode_test_split_fills_labels(task, fill, dtype):
    b = ["x"] if task == "stsb" else None
    examples = glue.Examples(task, "test", np.array([0]), ["a"], b, None)
    features = glue.encode_examples(examples, FakeTokenizer(), max_length=4)
    assert features["labels"].dtype == dtype
    np.testing.assert_array_equal(features["labels"], [fill])
    np.testing.assert_array_equal(features["attention_mask"], [[1, 1, 1, 1] if b else [1, 1, 1, 0]])
