"""`python -m bert_jax.predict`: a tiny model fine-tuned on a clear rule predicts new TSV/JSONL rows exactly as
the run's own leaderboard file, in input order with a padded last batch; bad input is one line each."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from finetune_test import read_tsv, tiny_config, write_sst2_rule

from bert_jax import checkpoint, finetune, predict
from bert_jax.data import glue

# Fine-tuning the model the tests share takes ~20 s of CPU (more on a busy machine).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished SST-2-layout run (label 1 iff "good" appears): its workdir and the test sentences."""
    root = tmp_path_factory.mktemp("predict")
    sentences = write_sst2_rule(root / "glue", root / "vocab.txt", np.random.default_rng(0))
    config = tiny_config(
        task="sst2", data_dir=str(root / "glue"), vocab_file=str(root / "vocab.txt"),
        max_seq_length=16, global_batch_size=32, learning_rate=3e-3, num_epochs=4, log_every_steps=5,
    )  # fmt: skip
    finetune.run(config, root / "run")
    return root, sentences["test"]


def test_tsv_in_the_glue_test_layout_equals_the_leaderboard_file(run, tmp_path):
    root, _ = run
    out = tmp_path / "predictions.tsv"
    # 48 rows at batch 32: the second batch is padded.
    assert predict.main([
        f"--workdir={root / 'run'}", f"--input={root / 'glue' / 'SST-2' / 'test.tsv'}",
        f"--output={out}", "--batch_size=32",
    ]) == 0  # fmt: skip
    header, rows = read_tsv(out)
    assert header == "index\tprediction\tprobability_0\tprobability_1"
    _, board = read_tsv(root / "run" / "leaderboard" / "SST-2.tsv")
    assert [r[:2] for r in rows] == board and len(rows) == 48
    probabilities = np.array([[float(p) for p in r[2:]] for r in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=2e-6)
    assert [str(p) for p in probabilities.argmax(1)] == [r[1] for r in rows]


def test_jsonl_with_generic_keys_keeps_input_order(run, tmp_path):
    root, test_rows = run
    order = np.random.default_rng(1).permutation(len(test_rows))
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"text_a": test_rows[i][0]}) + "\n" for i in order))
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.predict", f"--workdir={root / 'run'}", f"--input={source}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # The default output sits beside the input, in its format.
    out = tmp_path / "rows.predictions.jsonl"
    assert done.stdout.startswith(f"wrote 48 sst2 predictions to {out} (")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    _, board = read_tsv(root / "run" / "leaderboard" / "SST-2.tsv")
    by_index = {int(i): label for i, label in board}
    assert [r["index"] for r in rows] == list(range(48))
    assert [r["prediction"] for r in rows] == [by_index[int(i)] for i in order]
    assert sorted(rows[0]["probabilities"]) == ["0", "1"]
    # The model learnt the rule: these are the true labels too.
    truth = [str(test_rows[i][1]) for i in order]
    assert np.mean([r["prediction"] == t for r, t in zip(rows, truth, strict=True)]) >= 0.9


def test_logits_equal_the_model_applied_by_hand(run):
    root, test_rows = run
    classifier = predict.load_classifier(root / "run")
    assert classifier.task.name == "sst2" and classifier.max_seq_length == 16
    texts = [s for s, _ in test_rows[:5]]
    logits = predict.predict(classifier, texts, None, batch_size=8)
    batch = classifier.tokenizer(texts, max_length=16, padding="max_length")
    expected = jax.jit(classifier.model.apply)({"params": classifier.params}, **batch)["logits"]
    np.testing.assert_allclose(logits, np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_pair_task_columns_and_stsb_scores():
    mrpc, stsb = glue.get_task("mrpc"), glue.get_task("stsb")
    glue_names = ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert predict.text_columns(mrpc, glue_names, "x") == ("#1 String", "#2 String")
    assert predict.text_columns(mrpc, ["text_b", "text_a"], "x") == ("text_a", "text_b")
    with pytest.raises(predict.PredictError, match=r"x: mrpc needs the column\(s\)"):
        predict.text_columns(mrpc, ["text_a"], "x")
    rows = predict.prediction_rows(stsb, np.array([[6.2], [-0.5], [2.71828]]), [7, 8, 9])
    assert rows == [
        {"index": 7, "prediction": 5.0},
        {"index": 8, "prediction": 0.0},
        {"index": 9, "prediction": 2.718},
    ]


def write_pretraining_checkpoint(workdir):
    ckpt = checkpoint.Checkpointer(
        str(workdir / "checkpoints"), keep=1, save_interval_steps=1, async_save=False
    )
    state = {"params": {"w": np.zeros(2, np.float32)}}
    ckpt.save(1, state, data_state={}, config={"mode": "pretrain"}, force=True)
    ckpt.close()


def test_bad_input_is_one_line_each(run, tmp_path):
    root, _ = run
    good = str(root / "glue" / "SST-2" / "test.tsv")
    (tmp_path / "pretrain").mkdir()
    write_pretraining_checkpoint(tmp_path / "pretrain")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.json").write_text(json.dumps({"best_run": {"workdir": "/r/x"}}))
    (tmp_path / "wrong.tsv").write_text("index\treview\n0\tgood film\n")
    (tmp_path / "short.tsv").write_text("index\tsentence\n0\n")
    (tmp_path / "rows.jsonl").write_text('{"sentence": "good"}\n{"text": "bad"}\n')
    (tmp_path / "rows.csv").write_text("sentence\ngood\n")
    cases = {
        (str(tmp_path / "nowhere"), good): "--workdir=" + str(tmp_path / "nowhere") + ": no such directory",
        (str(tmp_path), good): "no checkpoints/ (not a bert_jax fine-tuning workdir)",
        (str(tmp_path / "pretrain"), good): "is a pretrain workdir; predict needs a fine-tuned GLUE model",
        (str(tmp_path / "sweep"), good): "a sweep's summary; predict with its best run: --workdir=/r/x",
        (str(root / "run"), str(tmp_path / "missing.tsv")): "missing.tsv: no such file",
        (str(root / "run"), str(tmp_path / "rows.csv")): "expected a .tsv or .jsonl file",
        (str(root / "run"), str(tmp_path / "wrong.tsv")): (
            "wrong.tsv:1: sst2 needs the column(s) ['sentence'] or ['text_a']; found ['index', 'review']"
        ),
        (str(root / "run"), str(tmp_path / "short.tsv")): "short.tsv:2: 1 tab-separated fields, the header has 2",
        (str(root / "run"), str(tmp_path / "rows.jsonl")): "rows.jsonl:2: 'sentence' is missing or not a string",
    }  # fmt: skip
    for (workdir, source), message in cases.items():
        with pytest.raises(SystemExit) as raised:
            predict.main(
                [f"--workdir={workdir}", f"--input={source}", f"--output={tmp_path}/o.tsv"]
            )
        text = str(raised.value.code)
        assert text.startswith("error: ") and message in text and "\n" not in text, text
    assert not Path(tmp_path / "o.tsv").exists()
