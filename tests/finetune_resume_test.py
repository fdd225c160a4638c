"""Fine-tuning workdirs: a preempted run resumes to the same result as an uninterrupted one; a rerun of a finished
run reports it; another run's workdir is refused unless overwrite, which starts over completely; a relative workdir
works (Orbax needs absolute paths)."""

import json

import jax
import numpy as np
import pytest
from etils import epath
from finetune_test import tiny_config, write_sst2_rule

from bert_jax import checkpoint, finetune, train_lib
from bert_jax.train_lib import SetupError


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    root = tmp_path_factory.mktemp("sst2")
    write_sst2_rule(root / "glue", root / "vocab.txt", np.random.default_rng(0))
    return root


def config_for(root, **overrides):
    fields = dict(
        task="sst2", data_dir=str(root / "glue"), vocab_file=str(root / "vocab.txt"),
        max_seq_length=16, global_batch_size=32, learning_rate=3e-3, num_epochs=2, log_every_steps=5,
    )  # fmt: skip
    return tiny_config(**{**fields, **overrides})


def params_of(workdir):
    return checkpoint.restore_params(str(workdir / "checkpoints"))[1]


@pytest.mark.slow
def test_preempted_run_resumes_to_the_same_result(sst2, tmp_path, monkeypatch):
    whole = finetune.run(config_for(sst2), tmp_path / "whole")

    # SIGTERM agreed at step 13 (mid epoch 2 of 10-step epochs): the run saves and stops.
    agreed = train_lib.Preemption.agreed
    monkeypatch.setattr(train_lib.Preemption, "agreed", lambda self, step: step == 13)
    with pytest.raises(train_lib.Preempted, match="saved step 13 \\(epoch 2\\)"):
        finetune.run(config_for(sst2), tmp_path / "cut")
    assert not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(train_lib.Preemption, "agreed", agreed)
    resumed = finetune.run(config_for(sst2), tmp_path / "cut")

    assert resumed["results"] == whole["results"] and resumed["epochs"] == whole["epochs"]
    for a, b in zip(
        jax.tree.leaves(params_of(tmp_path / "cut")),
        jax.tree.leaves(params_of(tmp_path / "whole")),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert len(steps) == len(set((s, i) for i, s in enumerate(steps)))
    leaderboard = (tmp_path / "cut" / "leaderboard" / "SST-2.tsv").read_text()
    assert leaderboard == (tmp_path / "whole" / "leaderboard" / "SST-2.tsv").read_text()


@pytest.mark.slow
def test_used_workdir_finished_refused_or_overwritten(sst2, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    # A relative workdir (the README's --workdir=OUT) trains, checkpoints and writes its files.
    first = finetune.run(config_for(sst2, num_epochs=1), "out")
    assert (tmp_path / "out" / "results.json").exists() and (
        tmp_path / "out" / "checkpoints"
    ).is_dir()

    # The same command again: already complete, the same summary, nothing retrained.
    again = finetune.run(config_for(sst2, num_epochs=1), "out")
    assert again["results"] == first["results"] and "already complete" in caplog.text

    # Another setting in the same workdir: refused, naming what differs; nothing touched.
    with pytest.raises(
        SetupError, match=r"workdir: .*holds another run \(.*learning_rate: 0.003 -> 0.0001"
    ):
        finetune.run(config_for(sst2, num_epochs=1, learning_rate=1e-4, seed=1), "out")
    # With overwrite: the old run's files go, the new run's leaderboard comes from the new model.
    new = finetune.run(
        config_for(sst2, num_epochs=1, learning_rate=1e-4, seed=1, overwrite=True), "out"
    )
    fresh = finetune.run(
        config_for(sst2, num_epochs=1, learning_rate=1e-4, seed=1), tmp_path / "fresh"
    )
    assert new["results"] == fresh["results"]
    assert (tmp_path / "out" / "leaderboard" / "SST-2.tsv").read_text() == (
        tmp_path / "fresh" / "leaderboard" / "SST-2.tsv"
    ).read_text()
    stored = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert stored["learning_rate"] == 1e-4
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert len({line["step"] for line in lines if "train/loss" in line}) == len(
        [line for line in lines if "train/loss" in line]
    )


def test_reuse_workdir_without_checkpoints(tmp_path):
    # The rule both fine-tuning loops use, on results.json alone (no checkpoint to read).
    reuse = lambda stored, overwrite=False: train_lib.reuse_workdir(
        workdir, stored, overwrite, safe_changes=("log_every_steps",),
        run_files=("results.json", "metrics.jsonl"),
    )  # fmt: skip
    workdir = epath.Path(tmp_path)
    assert reuse({"lr": 1}) is None  # a fresh workdir
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert reuse({"lr": 1}) is None  # killed before its first checkpoint: the same run starts again
    (tmp_path / "results.json").write_text(json.dumps({"config": {"lr": 1}, "score": 0.5}))
    # This very run, complete (a safe change aside): its summary stands.
    summary = reuse({"lr": 1, "log_every_steps": 7})
    assert summary == {"config": {"lr": 1}, "score": 0.5, "workdir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"holds another run \(lr: 1 -> 2\)"):
        reuse({"lr": 2})
    assert reuse({"lr": 2}, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []
