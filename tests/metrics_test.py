"""GLUE metrics, GLUE score and table, leaderboard files, metric writers."""

import json
import logging
import struct

import numpy as np
import pytest
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from bert_jax import metrics, reporting
from bert_jax.data import glue

# References written from the definitions with NumPy, independent of scikit-learn/scipy.


def _confusion(p, y):
    tp, tn = np.sum((p == 1) & (y == 1)), np.sum((p == 0) & (y == 0))
    fp, fn = np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    return tp, tn, fp, fn


def _mcc(p, y):
    tp, tn, fp, fn = _confusion(p, y)
    return (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def _f1(p, y):
    tp, _, fp, fn = _confusion(p, y)
    return 2 * tp / (2 * tp + fp + fn)


def _ranks(x):  # ties get no special care: the test data has none
    return np.argsort(np.argsort(x)).astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_definitions(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.7, y, 1 - y)  # correlated, and asymmetric in p vs y
    p[:40] = 1
    assert metrics.task_metrics(glue.get_task("cola"), p, y) == pytest.approx(
        {"matthews_corr": _mcc(p, y)}
    )
    assert metrics.task_metrics(glue.get_task("sst2"), p, y) == pytest.approx(
        {"accuracy": np.mean(p == y)}
    )
    reference = {"f1": _f1(p, y), "accuracy": np.mean(p == y)}
    assert metrics.task_metrics(glue.get_task("mrpc"), p, y) == pytest.approx(reference)
    assert metrics.task_metrics(glue.get_task("qqp"), p, y) == pytest.approx(reference)
    # Logits are arg-maxed.
    logits = np.stack([-p, p], axis=1).astype(np.float32)
    assert metrics.task_metrics(glue.get_task("qqp"), logits, y) == pytest.approx(reference)
    y3 = rng.integers(0, 3, 300)
    p3 = np.where(rng.random(300) < 0.6, y3, rng.integers(0, 3, 300))
    logits3 = np.eye(3)[p3] + rng.normal(0, 0.1, (300, 3))
    assert metrics.task_metrics(glue.get_task("mnli"), logits3, y3) == pytest.approx(
        {"accuracy": np.mean(p3 == y3)}
    )


def test_multiclass_matthews_matches_gorodkin_rk():
    # AX is scored with the multi-class Matthews correlation (R_K, Gorodkin 2004).
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.5, y, rng.integers(0, 3, 200))
    c = np.zeros((3, 3))
    np.add.at(c, (y, p), 1)
    t, s, n, correct = c.sum(1), c.sum(0), c.sum(), np.trace(c)
    rk = (correct * n - t @ s) / np.sqrt((n**2 - s @ s) * (n**2 - t @ t))
    assert metrics.task_metrics(glue.get_task("ax"), p, y)["matthews_corr"] == pytest.approx(rk)


def test_regression_metrics_match_definitions():
    rng = np.random.default_rng(4)
    y = rng.uniform(0, 5, 200).astype(np.float32)
    p = (y + rng.normal(0, 1.5, 200)).astype(np.float32)
    pearson = np.sum((p - p.mean()) * (y - y.mean())) / (
        np.sqrt(np.sum((p - p.mean()) ** 2)) * np.sqrt(np.sum((y - y.mean()) ** 2))
    )
    rp, ry = _ranks(p), _ranks(y)
    spearman = np.corrcoef(rp, ry)[0, 1]
    expected = {"pearson": pearson, "spearman": spearman}
    assert metrics.task_metrics(glue.get_task("stsb"), p, y) == pytest.approx(expected, rel=1e-5)
    assert metrics.task_metrics(glue.get_task("stsb"), p[:, None], y) == pytest.approx(
        expected, rel=1e-5
    )


def test_metric_shape_mismatch():
    with pytest.raises(ValueError, match=r"rte: predictions \(3,\) and labels \(4,\) differ"):
        metrics.task_metrics(glue.get_task("rte"), [0, 1, 0], [0, 1, 0, 1])


def test_glue_score_hand_computed():
    results = {
        "cola": {"matthews_corr": 0.5},
        "mrpc": {"f1": 0.9, "accuracy": 0.8},  # task score 0.85
        "mnli_m": {"accuracy": 0.8},
        "mnli_mm": {"accuracy": 0.7},  # one MNLI task: (0.8 + 0.7) / 2 = 0.75
        "ax": {"matthews_corr": 0.1},  # not part of the score
    }
    assert metrics.glue_score(results) == pytest.approx((0.5 + 0.85 + 0.75) / 3)
    with pytest.raises(ValueError, match=r"results\['mrpc'\] lacks \['accuracy'\]"):
        metrics.glue_score({"mrpc": {"f1": 0.9}})


def _percent(row):
    return {entry: {m: v / 100 for m, v in values.items()} for entry, values in row.items()}


def test_glue_score_reproduces_leaderboard_rows():
    # GLUE leaderboard rows (test set) with their published scores.
    bert_large = {
        "cola": {"matthews_corr": 60.5}, "sst2": {"accuracy": 94.9},
        "mrpc": {"f1": 89.3, "accuracy": 85.4}, "stsb": {"pearson": 87.6, "spearman": 86.5},
        "qqp": {"f1": 72.1, "accuracy": 89.3}, "mnli_m": {"accuracy": 86.7},
        "mnli_mm": {"accuracy": 85.9}, "qnli": {"accuracy": 92.7}, "rte": {"accuracy": 70.1},
        "wnli": {"accuracy": 65.1}, "ax": {"matthews_corr": 39.6},
    }  # fmt: skip
    roberta = {
        "cola": {"matthews_corr": 67.8}, "sst2": {"accuracy": 96.7},
        "mrpc": {"f1": 92.3, "accuracy": 89.8}, "stsb": {"pearson": 92.2, "spearman": 91.9},
        "qqp": {"f1": 74.3, "accuracy": 90.2}, "mnli_m": {"accuracy": 90.8},
        "mnli_mm": {"accuracy": 90.2}, "qnli": {"accuracy": 95.4}, "rte": {"accuracy": 88.2},
        "wnli": {"accuracy": 89.0}, "ax": {"matthews_corr": 48.7},
    }  # fmt: skip
    assert round(100 * metrics.glue_score(_percent(bert_large)), 1) == 80.5
    assert round(100 * metrics.glue_score(_percent(roberta)), 1) == 88.1


def _bert_base_results():
    return _percent(
        {e: {metrics.BERT_PAPER_METRIC[e]: v} for e, v in metrics.BERT_BASE_TEST.items()}
    )


def test_bert_paper_average_reproduces_79_6():
    assert round(100 * metrics.bert_paper_average(_bert_base_results()), 1) == 79.6


def test_glue_table():
    results = {
        "cola": {"matthews_corr": 0.5512},
        "mrpc": {"f1": 0.9, "accuracy": 0.85},
        "mnli_m": {"accuracy": 0.84},
        "mnli_mm": {"accuracy": 0.83},
    }
    lines = metrics.format_glue_table(results).splitlines()
    assert lines[0] == "task     metric               ours (dev)  BERT-base (test)"
    assert lines[1] == "CoLA     matthews_corr              55.1              52.1"
    assert lines[3] == "MRPC     f1/accuracy           90.0/85.0              88.9"
    assert lines[4] == "STS-B    pearson/spearman              -              85.8"
    assert lines[6] == "MNLI-m   accuracy                   84.0              84.6"
    assert lines[10] == "WNLI     accuracy                      -                 -"
    assert [line.split()[0] for line in lines[1:12]] == list(metrics.ENTRIES.values())
    # (55.12 + 87.5 + 83.5) / 3 and (55.12 + 90 + 84 + 83) / 4
    assert lines[12].startswith("GLUE score                          75.4                 -  (3/9 ")
    assert lines[13].startswith("BERT paper average                  78.0              79.6  (4/9 ")
    assert len(lines) == 14


def test_leaderboard_file_names():
    assert metrics.LEADERBOARD_FILES == (
        "CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
        "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv",
    )  # fmt: skip


@pytest.mark.parametrize(
    "task,split,predictions,expected",
    [
        ("cola", "test", [1, 0, 1], ["1", "0", "1"]),
        ("sst2", "test", [0, 1, 1], ["0", "1", "1"]),
        ("mrpc", "test", [1, 1, 0], ["1", "1", "0"]),
        ("qqp", "test", [0, 0, 1], ["0", "0", "1"]),
        ("wnli", "test", [1, 0, 0], ["1", "0", "0"]),
        ("qnli", "test", [1, 0, 0], ["not_entailment", "entailment", "entailment"]),
        ("rte", "test", [0, 1, 0], ["entailment", "not_entailment", "entailment"]),
        ("mnli", "test_matched", [2, 0, 1], ["contradiction", "entailment", "neutral"]),
        ("mnli", "test_mismatched", [1, 1, 2], ["neutral", "neutral", "contradiction"]),
        ("ax", "test", [0, 2, 1], ["entailment", "contradiction", "neutral"]),
        ("stsb", "test", [5.7, -0.2, 2.25], ["5.000", "0.000", "2.250"]),
    ],
)
def test_leaderboard_files(tmp_path, task, split, predictions, expected):
    ids = [2, 0, 1]  # written sorted by index
    path = metrics.write_leaderboard_file(
        tmp_path / "sub", glue.get_task(task), split, ids, predictions
    )
    assert path.name == glue.TASKS[task].leaderboard_files[split]
    by_id = dict(zip(ids, expected, strict=True))
    want = "index\tprediction\n" + "".join(f"{i}\t{by_id[i]}\n" for i in range(3))
    assert path.read_text() == want


def test_leaderboard_file_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'dev' has no leaderboard file; use \\['test'\\]"):
        metrics.write_leaderboard_file(tmp_path, glue.get_task("rte"), "dev", [0], [0])
    with pytest.raises(ValueError, match="padding rows left in"):
        metrics.write_leaderboard_file(tmp_path, glue.get_task("rte"), "test", [0, -1], [0, 0])
    with pytest.raises(ValueError, match=r"label ids outside \[0, 3\)"):
        metrics.write_leaderboard_file(tmp_path, glue.get_task("mnli"), "test_matched", [0], [3])


def _read_events(path):
    """Reads a TFRecord file of Event protos, checking each record's masked CRC32C."""

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    events, data = [], path.read_bytes()
    while data:
        header, (length_crc,) = data[:8], struct.unpack("<I", data[8:12])
        (length,) = struct.unpack("<Q", header)
        assert masked(header) == length_crc
        payload, (payload_crc,) = (
            data[12 : 12 + length],
            struct.unpack("<I", data[12 + length : 16 + length]),
        )
        assert masked(payload) == payload_crc
        events.append(event_pb2.Event.FromString(payload))
        data = data[16 + length :]
    return events


def test_metric_writer(tmp_path, caplog):
    with caplog.at_level(logging.INFO), reporting.MetricWriter(tmp_path, process_index=0) as writer:
        writer.write_scalars(10, {"train/loss": np.float32(2.5), "train/lr": 1e-4})
        writer.write_scalars(20, {"train/loss": float("nan"), "eval/mrpc/f1": 0.875})
    assert "step 10: train/loss=2.5, train/lr=0.0001" in caplog.text
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "train/loss": 2.5, "train/lr": 1e-4},
        {"step": 20, "train/loss": None, "eval/mrpc/f1": 0.875},
    ]
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    scalars = [
        (e.step, v.tag, v.simple_value) for e in _read_events(event_file) for v in e.summary.value
    ]
    assert scalars[0] == (10, "train/loss", 2.5)
    assert scalars[1][:2] == (10, "train/lr") and scalars[1][2] == pytest.approx(1e-4)
    assert scalars[2][:2] == (20, "train/loss") and np.isnan(scalars[2][2])
    assert scalars[3] == (20, "eval/mrpc/f1", 0.875)
    assert len(scalars) == 4
    # A resumed run appends to the same metrics.jsonl.
    with reporting.MetricWriter(tmp_path, process_index=0) as writer:
        writer.write_scalars(30, {"train/loss": 1.0})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_metric_writer_only_on_process_zero(tmp_path):
    writer = reporting.MetricWriter(tmp_path / "w", process_index=1)
    writer.write_scalars(1, {"train/loss": 1.0})
    writer.flush()
    writer.close()
    assert not (tmp_path / "w").exists()
