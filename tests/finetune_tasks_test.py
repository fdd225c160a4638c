"""SQuAD, SWAG and CoNLL-2003 fine-tuning: each learns a synthetic rule, writes its files, starts from a
transformers checkpoint's exact weights, and bad input is one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import task_fixtures
import tensorflow_datasets as tfds
import torch
import transformers

from bert_jax import checkpoint, finetune, run_setup, tasks, train_lib, warm_start
from bert_jax.configs import conll as conll_config
from bert_jax.configs import squad as squad_config
from bert_jax.configs import swag as swag_config
from bert_jax.run_setup import SetupError

REPO = Path(__file__).resolve().parents[1]


def _config(module, arg, **overrides):
    config = module.get_config(arg)
    with config.unlocked():
        config.update(overrides)
    return config


def _results(workdir):
    return json.loads((Path(workdir) / "results.json").read_text())


@pytest.mark.slow
def test_squad_v2_learns_and_writes_official_files(tmp_path):
    task_fixtures.write_squad(tmp_path, "2.0", n_train=240, n_dev=48)
    config = _config(
        squad_config, "tiny,2.0", data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path),
        max_seq_length=32, max_query_length=4, doc_stride=8, num_epochs=2,
    )  # fmt: skip
    finetune.run(config, tmp_path / "out")
    results = _results(tmp_path / "out")
    # The final model's scores are the run's; the epochs' history and best epoch sit beside them.
    assert results["results"] == results["epochs"][-1]["results"]
    assert results["score"] == results["results"]["f1"] >= 95.0
    assert results["results"]["HasAns_total"] == 32 and results["results"]["NoAns_total"] == 16
    assert set(results["best_epoch_on_dev"]) == {"epoch", "score"}
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    null_odds = json.loads((tmp_path / "out" / "null_odds.json").read_text())
    nbest = json.loads((tmp_path / "out" / "nbest_predictions.json").read_text())
    assert set(predictions) == set(null_odds) == set(nbest) == {f"dev{i}" for i in range(48)}
    # Unanswerable questions (every third) get "", the others their person word.
    dev = json.loads((tmp_path / "dev-v2.0.json").read_text())["data"][0]["paragraphs"]
    right = sum(
        predictions[p["qas"][0]["id"]] == (p["qas"][0]["answers"] or [{"text": ""}])[0]["text"]
        for p in dev
    )
    assert right >= 0.95 * len(dev)
    # The written threshold reproduces predictions.json from null_odds.json and the n-best lists.
    threshold = results["results"]["null_score_diff_threshold"]
    best_span = {q: next((x["text"] for x in n if x["text"]), "") for q, n in nbest.items()}
    assert predictions == {q: "" if null_odds[q] > threshold else best_span[q] for q in predictions}


@pytest.mark.slow
def test_swag_learns(tmp_path):
    task_fixtures.write_swag(tmp_path, n_train=240, n_dev=40)
    config = _config(
        swag_config, "tiny", data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path),
        max_seq_length=16, num_epochs=2,
    )  # fmt: skip
    finetune.run(config, tmp_path / "out")
    results = _results(tmp_path / "out")
    assert results["score"] == results["results"]["accuracy"] >= 0.95
    lines = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,prediction,label,p0,p1,p2,p3" and len(lines) == 41
    rows = [line.split(",") for line in lines[1:]]
    assert np.mean([r[1] == r[2] for r in rows]) == results["results"]["accuracy"]
    assert all(abs(sum(map(float, r[3:])) - 1) < 1e-4 for r in rows)
    # Each evaluation logs its throughput beside its scores.
    logged = [
        json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(m["perf/eval_sequences_per_sec"] > 0 for m in logged if "eval/swag/accuracy" in m)
    # The same command again reports the finished run; another run's settings are refused.
    again = finetune.run(config, tmp_path / "out")
    assert again["results"] == results["results"]
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == len(logged)
    with config.unlocked():
        config.learning_rate = 5e-4
    with pytest.raises(
        SetupError, match=r"^workdir: .* holds another run \(learning_rate: 0.001 -> 0.0005"
    ):
        finetune.run(config, tmp_path / "out")


@pytest.mark.slow
def test_conll_learns_and_writes_columns(tmp_path):
    task_fixtures.write_conll(tmp_path, n_train=320, n_dev=48)
    config = _config(
        conll_config, "tiny", data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path),
        max_seq_length=16, num_epochs=3,
    )  # fmt: skip
    finetune.run(config, tmp_path / "out")
    results = _results(tmp_path / "out")
    assert results["score"] == results["results"]["f1"] >= 0.95
    assert results["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    written = (tmp_path / "out" / "dev_predictions.txt").read_text().splitlines()
    source = (tmp_path / "valid.txt").read_text().splitlines()
    # Every input line comes back with the predicted tag appended.
    assert len(written) == len(source)
    token_lines = [
        (w, s) for w, s in zip(written, source, strict=True) if s and "DOCSTART" not in s
    ]
    assert all(w.startswith(s + " ") for w, s in token_lines)


def _save_hf(model, tmp_path, vocab):
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text(Path(vocab).read_text())
    return str(tmp_path / "hf")


def _hf_config(**kwargs):
    return transformers.BertConfig(
        vocab_size=len(task_fixtures.VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, **kwargs,
    )  # fmt: skip


def _initial(config, task, num_labels, weights=None):
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
    weights = weights or warm_start.load(config, head=task.HEAD, heads=task.KEPT_MODULES)
    model, _, params = warm_start.initial_params(
        weights, task.HEAD, num_labels, mesh, jax.random.key(7), task=task.HEAD
    )
    return model, jax.device_get(params)


@pytest.mark.slow
def test_starts_from_transformers_question_answering_weights(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForQuestionAnswering(_hf_config()).eval()
    path = _save_hf(hf, tmp_path, task_fixtures.write_vocab(tmp_path))
    config = _config(squad_config, "tiny", init_checkpoint=path)
    model, params = _initial(config, tasks.TASKS["squad"], 2)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    np.testing.assert_array_equal(params["qa_outputs"]["kernel"], state["qa_outputs.weight"].T)
    np.testing.assert_array_equal(params["qa_outputs"]["bias"], state["qa_outputs.bias"])
    np.testing.assert_array_equal(
        params["bert"]["embeddings"]["word_embeddings"]["embedding"],
        state["bert.embeddings.word_embeddings.weight"],
    )
    # Same inputs, same start logits as transformers: every weight arrived.
    ids = np.array([[2, 5, 6, 3, 12, 13, 14, 3]])
    types = np.array([[0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types)
        ).start_logits.numpy()
    got = model.apply({"params": params}, ids, types, np.ones_like(ids))["start_logits"]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_starts_from_transformers_token_classification_weights(tmp_path):
    task_fixtures.write_conll(tmp_path, n_train=20, n_dev=4)
    # The checkpoint's own label order differs from ours ("O" first, by type): it is kept.
    labels = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    torch.manual_seed(0)
    hf_config = _hf_config(
        id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)}
    )
    hf = transformers.BertForTokenClassification(hf_config).eval()
    path = _save_hf(hf, tmp_path, task_fixtures.write_vocab(tmp_path))
    config = _config(conll_config, "tiny", init_checkpoint=path, data_dir=str(tmp_path))
    task = tasks.TASKS["conll"]
    weights = warm_start.load(config, head=task.HEAD, heads=task.KEPT_MODULES)
    checkpoint_labels = finetune._checkpoint_labels(path)
    prepared = task.encode(config, task.read(config), weights.tokenizer, checkpoint_labels)
    assert prepared.info["labels"] == labels
    _, params = _initial(config, task, prepared.num_labels, weights)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    np.testing.assert_array_equal(params["classifier"]["kernel"], state["classifier.weight"].T)
    np.testing.assert_array_equal(
        params["bert"]["layer_1"]["intermediate"]["kernel"],
        state["bert.encoder.layer.1.intermediate.dense.weight"].T,
    )


def test_bad_input_is_one_setup_error(tmp_path):
    task_fixtures.write_conll(tmp_path, n_train=20, n_dev=4)
    (tmp_path / "valid.txt").write_text("p1 NN O B-MISC\n")
    config = _config(conll_config, "tiny", data_dir=str(tmp_path))
    with pytest.raises(SetupError, match=r"^data: .*valid.txt: tags \['B-MISC'\] do not occur"):
        finetune.run(config, tmp_path / "out")
    config = _config(squad_config, "tiny", data_dir=str(tmp_path))
    with pytest.raises(SetupError, match=r"^data: SQuAD file not found: .*train-v1.1.json"):
        finetune.run(config, tmp_path / "out")


def test_tfds_squad_through_the_loop_reads_mock_data(tmp_path):
    rows = [
        {"id": f"q{i}".encode(), "title": b"t", "context": b"w1 w2 p3 w4 .", "question": b"what ?",
         "answers": {"text": np.array([b"p3"], object), "answer_start": np.array([6], np.int32)}}
        for i in range(16)
    ]  # fmt: skip
    config = _config(
        squad_config, "tiny", vocab_file=task_fixtures.write_vocab(tmp_path), num_epochs=1
    )
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: rows):
        raw = tasks.TASKS["squad"].read(config)
    assert len(raw["train"]) == 16 and raw["train"].examples[0].start_word == 2


@pytest.mark.slow
def test_squad_command_end_to_end(tmp_path):
    """`python -m bert_jax.main --config=squad.py ...` trains, evaluates and writes its files; a bad file is
    one line."""
    task_fixtures.write_squad(tmp_path, "1.1", n_train=160, n_dev=16)
    vocab = task_fixtures.write_vocab(tmp_path)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    command = [
        sys.executable, "-m", "bert_jax.main", "--config=squad.py:tiny", "--config.version=1.1",
        f"--config.data_dir={tmp_path}", f"--config.vocab_file={vocab}", f"--workdir={tmp_path / 'out'}",
        "--config.max_seq_length=32", "--config.max_query_length=4", "--config.doc_stride=8",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"predictions.json", "nbest_predictions.json", "results.json", "checkpoints"} <= set(
        files
    )
    assert _results(tmp_path / "out")["results"]["exact_match"] >= 95.0
    (tmp_path / "dev-v1.1.json").write_text('{"data": [{"paragraphs": [{"qas": [{"id": "x"}]}]}]}')
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data: {tmp_path}/dev-v1.1.json: question 'x' has no 'question' field"
    )


@pytest.mark.slow
def test_preempted_task_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    task_fixtures.write_conll(tmp_path, n_train=320, n_dev=48)
    config = lambda: _config(
        conll_config, "tiny", data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path),
        max_seq_length=16, num_epochs=2, global_batch_size=32,
    )  # fmt: skip
    whole = finetune.run(config(), tmp_path / "whole")

    # SIGTERM agreed at step 13 (mid epoch 2 of 10-step epochs): the run saves and stops.
    agreed = train_lib.Preemption.agreed
    monkeypatch.setattr(train_lib.Preemption, "agreed", lambda self, step: step == 13)
    with pytest.raises(run_setup.Preempted, match=r"saved step 13 \(epoch 2\)"):
        finetune.run(config(), tmp_path / "cut")
    assert not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(train_lib.Preemption, "agreed", agreed)
    resumed = finetune.run(config(), tmp_path / "cut")

    assert resumed["results"] == whole["results"] and resumed["epochs"] == whole["epochs"]
    assert resumed["files"] == {k: v.replace("whole", "cut") for k, v in whole["files"].items()}
    params = [
        checkpoint.restore_params(str(tmp_path / w / "checkpoints"))[1] for w in ("cut", "whole")
    ]
    for a, b in zip(*map(jax.tree.leaves, params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    predictions = [(tmp_path / w / "dev_predictions.txt").read_text() for w in ("cut", "whole")]
    assert predictions[0] == predictions[1]
