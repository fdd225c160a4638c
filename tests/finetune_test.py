"""The GLUE fine-tuning loop on 8 fake CPU devices with tiny models: every task end to end on mock TFDS
data (the suite), learning a clear rule (a sweep over seeds), starting exactly from transformers and bert_jax
checkpoints, and bad input.
"""

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert_jax import (
    checkpoint,
    finetune,
    layouts,
    metrics,
    optim,
    sharding,
    sweep,
    tasks,
    warm_start,
)
from bert_jax.configs import bert_tiny
from bert_jax.configs import glue as glue_config
from bert_jax.data import glue
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.models.bert import BertConfig, build_model, init_params
from bert_jax.run_setup import SetupError

REPO = Path(finetune.__file__).parents[1]

WORDS = [w for w in SAMPLE_VOCAB.read_text().split() if w.isalpha() and len(w) > 2][:300]
TINY_MODEL = dict(
    num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64
)


def tiny_config(**overrides):
    config = glue_config.get_config("tiny")
    config.model.update(TINY_MODEL)
    config.update(max_seq_length=32, global_batch_size=8, eval_batch_size=8, num_epochs=1)
    config.update(overrides)
    return config


def mock_source(num_examples):
    """`as_data_source` for `tfds.testing.mock_data`: sentences of sample-vocab words, unique `idx`
    (TFDS's own mock repeats them, which no leaderboard file allows), labels of the task's kind."""

    def as_data_source(builder, split, **unused):
        name = builder.builder_config.name
        task = glue.get_task(name)
        rng = np.random.default_rng([len(name), len(split)])
        ids = rng.permutation(10 * num_examples)[:num_examples]
        rows = []
        for i in ids:
            row = {"idx": int(i)}
            for feature in task.tfds_features:
                row[feature] = " ".join(rng.choice(WORDS, rng.integers(3, 12))).encode()
            if split.startswith("test"):
                row["label"] = -1.0 if task.is_regression else -1
            elif task.is_regression:
                row["label"] = float(rng.uniform(0, 5))
            else:
                row["label"] = int(rng.integers(task.num_labels))
            rows.append(row)
        return rows

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


@pytest.mark.slow
def test_suite_every_task_end_to_end_on_mock_tfds(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = tiny_config(suite_from_mnli=True)
    with mock_source(24):
        table = sweep.run_suite(config, tmp_path)
        test_rows = {
            (t, s): glue.read_examples(t, s)
            for t in [*glue.TASKS]
            for s in glue.TASKS[t].test_splits
        }

    summary = json.loads((tmp_path / "results.json").read_text())
    assert sorted(summary) == ["config", "glue_table", "results", "split"]
    assert set(summary["results"]) == set(metrics.ENTRIES) - {"ax"}
    for entry, values in summary["results"].items():
        assert sorted(values) == sorted(glue.get_task(entry.split("_")[0]).metrics)
    assert table == summary["glue_table"] == metrics.format_glue_table(summary["results"])
    assert "(9/9 tasks" in table and (tmp_path / "glue_table.txt").read_text() == table + "\n"

    mnli_workdir = str(tmp_path / "mnli")
    for name in glue.TASKS:
        if name == "ax":
            continue
        task = glue.TASKS[name]
        result = json.loads((tmp_path / name / "results.json").read_text())
        assert sorted(result) == sorted(
            ["task", "split", "results", "score", "best_epoch_on_dev", "epochs", "leaderboard_files",
             "init_checkpoint", "num_train_examples", "config"]
        )  # fmt: skip
        assert result["task"] == name and result["num_train_examples"] == 24
        assert set(result["results"]) == {task.entry(s) for s in task.dev_splits}
        # One task's score: the mean of its metrics (MNLI: of matched and mismatched accuracy).
        by_hand = np.mean([v for entry in result["results"].values() for v in entry.values()])
        assert result["score"] == pytest.approx(by_hand)
        # 24 examples at batch 8: 3 steps, one epoch; the only checkpoint kept is that epoch's.
        assert result["epochs"][0]["step"] == 3
        assert [p.name for p in (tmp_path / name / "checkpoints").iterdir()] == ["3"]
        from_mnli = name in sweep.FROM_MNLI
        assert result["init_checkpoint"].startswith(mnli_workdir) == from_mnli
        if from_mnli:
            assert f"but {name} needs {task.num_labels}: re-initialising it" in caplog.text

    # The eleven leaderboard files: names, header, every test example once, the server's label strings.
    board = tmp_path / "leaderboard"
    assert sorted(p.name for p in board.iterdir()) == sorted(metrics.LEADERBOARD_FILES)
    for (name, split), examples in test_rows.items():
        header, rows = read_tsv(board / glue.TASKS[name].leaderboard_files[split])
        assert header == "index\tprediction"
        assert [int(r[0]) for r in rows] == sorted(examples.idx.tolist())
        if name == "stsb":
            assert all(0.0 <= float(r[1]) <= 5.0 and len(r[1].split(".")[1]) == 3 for r in rows)
        else:
            assert {r[1] for r in rows} <= set(glue.TASKS[name].labels)


def write_sst2_rule(root, vocab_file, rng):
    """An SST-2-layout task with a clear rule: label 1 iff the word "good" appears."""
    fillers = ["the", "movie", "plot", "was", "a", "film", "actor", "very", "long", "story", "bad"]
    vocab_file.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", *fillers])
    )
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    sentences = {}
    for split, n in (("train", 320), ("dev", 96), ("test", 48)):
        labels = rng.permutation(np.arange(n) % 2)
        rows = []
        for label in labels:
            words = list(rng.choice(fillers, rng.integers(3, 9)))
            if label:
                words.insert(rng.integers(len(words) + 1), "good")
            rows.append((" ".join(words), int(label)))
        sentences[split] = rows
        header = "index\tsentence" if split == "test" else "sentence\tlabel"
        lines = [f"{i}\t{s}" if split == "test" else f"{s}\t{y}" for i, (s, y) in enumerate(rows)]
        (folder / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n")
    return sentences


def test_learns_a_clear_rule_over_seeds_and_predicts_test(tmp_path):
    data = tmp_path / "glue"
    sentences = write_sst2_rule(data, tmp_path / "vocab.txt", np.random.default_rng(0))
    config = tiny_config(
        task="sst2", data_dir=str(data), vocab_file=str(tmp_path / "vocab.txt"), max_seq_length=16,
        sweep=True, sweep_batch_sizes=(32,), sweep_learning_rates=(3e-3,), sweep_num_epochs=(4,),
        sweep_seeds=(0, 1, 2), log_every_steps=5,
    )  # fmt: skip
    summary = sweep.run(config, tmp_path / "out")

    result = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = result["settings"][0]["runs"]
    accuracies = [r["results"]["sst2"]["accuracy"] for r in runs]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert min(accuracies) >= 0.95, accuracies
    assert result["median_over_seeds"]["median_score"] == pytest.approx(np.median(accuracies))
    assert result["median_over_seeds"]["median_results"]["sst2"]["accuracy"] == pytest.approx(
        np.median(accuracies)
    )
    assert result["score"] == max(accuracies) == summary["score"]
    best = result["best_run"]["workdir"]
    assert summary["workdir"] == best and Path(best).parent == tmp_path / "out" / "runs"
    # The final epoch is the run's result (the original protocol); its checkpoint is the only one kept and
    # made the leaderboard file; the best epoch is reported apart.
    run = json.loads((Path(best) / "results.json").read_text())
    assert run["results"] == run["epochs"][-1]["results"] and len(run["epochs"]) == 4
    assert run["best_epoch_on_dev"]["score"] == max(e["score"] for e in run["epochs"])
    assert [p.name for p in (Path(best) / "checkpoints").iterdir()] == [
        str(run["epochs"][-1]["step"])
    ]
    assert (
        run["config"]["num_train_steps"] == 4 * (320 // 32) and run["config"]["warmup_steps"] == 4
    )
    header, rows = read_tsv(tmp_path / "out" / "leaderboard" / "SST-2.tsv")
    assert header == "index\tprediction" and [int(r[0]) for r in rows] == list(range(48))
    predicted = np.array([int(r[1]) for r in rows])
    assert np.mean(predicted == [y for _, y in sentences["test"]]) >= 0.95
    # The kept checkpoint, read back as a start (classifier kept: same label count), predicts the same.
    config.init_checkpoint = best
    mesh = sharding.make_mesh(config.mesh_shape)
    start = warm_start.load(config)
    model, _, params = glue_initial_params(start, "sst2", mesh, jax.random.key(9))
    features = glue.encode_examples(
        glue.read_examples("sst2", "test", str(data)), start.tokenizer, 16
    )
    step = jax.jit(functools.partial(tasks.eval_step, task=tasks.glue, model=model))
    out = tasks.predict(step, params, features, 8, mesh)
    np.testing.assert_array_equal(out["logits"].argmax(-1), predicted)
    # A restarted sweep reuses finished runs instead of training them again.
    (Path(best) / "checkpoints").rename(tmp_path / "moved")
    again = sweep.run(config, tmp_path / "out")
    assert again["score"] == summary["score"] and not (Path(best) / "checkpoints").exists()


def transformers_checkpoint(directory, num_labels):
    """A random-weight `BertForSequenceClassification` saved by transformers, with a vocab.txt."""
    import torch
    import transformers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS[:95]]
    hf_config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(hf_config).eval()
    model.save_pretrained(directory)
    (Path(directory) / "vocab.txt").write_text("\n".join(words) + "\n")
    return model, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_starts_exactly_from_a_transformers_checkpoint(tmp_path, caplog):
    import torch

    torch_model, torch_weights = transformers_checkpoint(tmp_path / "hf", num_labels=2)
    config = tiny_config(task="mrpc", init_checkpoint=str(tmp_path / "hf"))
    mesh = sharding.make_mesh(config.mesh_shape)
    start = warm_start.load(config)
    model, shardings, params = glue_initial_params(start, "mrpc", mesh, jax.random.key(1))
    assert model.config.hidden_dropout_prob == model.config.attention_dropout_prob == 0.1
    # Every tensor of the checkpoint, and nothing else, before any update; placed as the rules say.
    ours = layouts.flat_params_to_hf(params, model.config, "classification")
    assert sorted(ours) == sorted(k for k in torch_weights if not k.endswith("position_ids"))
    for name, value in ours.items():
        np.testing.assert_array_equal(value, torch_weights[name], err_msg=name)
    np.testing.assert_array_equal(
        params["classifier"]["kernel"], torch_weights["classifier.weight"].T
    )
    assert jax.tree.map(lambda x: x.sharding, params) == shardings

    # The first logits, through the loop's jitted eval step, are transformers' logits.
    pairs = [(" ".join(WORDS[i : i + 5]), " ".join(WORDS[i + 9 : i + 12])) for i in range(0, 80, 5)]
    tokens = start.tokenizer(
        [a for a, _ in pairs], pairs=[b for _, b in pairs], max_length=32, padding="max_length"
    )
    batch = {k: np.asarray(v, np.int32) for k, v in tokens.items()}
    batch.update(labels=np.zeros(16, np.int32), weights=np.ones(16, np.float32))
    batch["example_ids"] = np.arange(16, dtype=np.int32)
    step = jax.jit(functools.partial(tasks.eval_step, task=tasks.glue, model=model))
    logits = step(params, sharding.host_to_global(batch, mesh))["logits"]
    with torch.no_grad():
        want = torch_model(**{k: torch.as_tensor(v).long() for k, v in tokens.items()}).logits
    np.testing.assert_allclose(np.asarray(logits), want.numpy(), atol=2e-5, rtol=1e-4)

    # A classifier with another label count (2 -> MNLI's 3) is re-initialised, with a log line.
    caplog.set_level(logging.INFO)
    config.task = "mnli"
    _, _, mnli_params = glue_initial_params(
        warm_start.load(config), "mnli", mesh, jax.random.key(1)
    )
    assert "classifier has 2 outputs but mnli needs 3: re-initialising it" in caplog.text
    assert mnli_params["classifier"]["kernel"].shape == (32, 3)
    np.testing.assert_array_equal(
        mnli_params["bert"]["pooler"]["kernel"], torch_weights["bert.pooler.dense.weight"].T
    )


def test_starts_from_a_pretraining_workdir(tmp_path, caplog):
    pre = bert_tiny.get_config()
    pre.model.update(TINY_MODEL)
    vocab = len(SAMPLE_VOCAB.read_text().split("\n")) - 1
    fields = {k: v for k, v in pre.model.to_dict().items() if k != "vocab_size"}
    model = build_model(BertConfig(vocab_size=vocab, **fields), "pretraining")
    tx = optim.make_optimizer(pre)
    state = optim.TrainState.create(init_params(model, jax.random.key(3)), tx)
    ckpt = checkpoint.Checkpointer(
        str(tmp_path / "pre" / "checkpoints"), keep=1, save_interval_steps=1
    )
    ckpt.save(7, state, data_state={"next_step": 7}, config=pre, force=True)
    ckpt.close()

    caplog.set_level(logging.INFO)
    config = tiny_config(task="stsb", init_checkpoint=str(tmp_path / "pre"))
    mesh = sharding.make_mesh(config.mesh_shape)
    start = warm_start.load(config)
    assert start.model_config.vocab_size == vocab and start.tokenizer.vocab_size == vocab
    _, _, params = glue_initial_params(start, "stsb", mesh, jax.random.key(1))
    assert "dropped heads ['mlm', 'nsp']" in caplog.text
    assert "has no classifier: initialised one with 1 outputs" in caplog.text
    assert params["classifier"]["kernel"].shape == (32, 1)
    for got, want in zip(
        jax.tree.leaves(params["bert"]), jax.tree.leaves(state.params["bert"]), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_bad_input_fails_before_training_with_one_line(tmp_path):
    with pytest.raises(
        SetupError, match=r"unknown GLUE task 'mprc'; valid tasks: cola, sst2, mrpc"
    ):
        sweep.run(tiny_config(task="mprc"), tmp_path / "a")
    with pytest.raises(SetupError, match=r"ax is not trained: it is predicted by the MNLI model"):
        sweep.run(tiny_config(task="ax"), tmp_path / "b")
    missing = tmp_path / "glue" / "RTE"
    with pytest.raises(SetupError, match=f"GLUE task folder not found: {missing}$"):
        sweep.run(tiny_config(task="rte", data_dir=str(missing.parent)), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SetupError, match="neither a bert_jax workdir .* nor a transformers-layout"):
        with mock_source(16):
            config = tiny_config(task="rte", init_checkpoint=str(tmp_path / "empty"))
            sweep.run(config, tmp_path / "c")
    with pytest.raises(SetupError, match="not divisible by the 8 batch shards"):
        sweep.run(tiny_config(global_batch_size=12), tmp_path / "d")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_command_line_names_the_valid_tasks(tmp_path):
    command = [sys.executable, "-m", "bert_jax.main", "--config=configs/glue.py:tiny",
               "--config.task=bogus", f"--workdir={tmp_path}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: task: unknown GLUE task 'bogus'; valid tasks: "
        "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax"
    )


def glue_initial_params(weights, task_name, mesh, rng):
    """The GLUE loop's model and parameters for `task_name` (as finetune.run builds them)."""
    task = glue.TASKS[task_name]
    return warm_start.initial_params(
        weights, "classification", task.num_labels, mesh, rng, task=task.name
    )
