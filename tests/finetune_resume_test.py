"""Fine-tuning workdirs: a preempted run resumes to the same result as an uninterrupted one; a rerun of a finished
run reports it; another run's workdir is refused unless overwrite, which starts over completely; a relative workdir
works (Orbax needs absolute paths)."""

import json
import logging

import jax
import numpy as np
import pytest
from etils import epath
from finetune_test import tiny_config, write_sst2_rule

from bert_jax import checkpoint, finetune, run_setup, sharding, train_lib
from bert_jax.run_setup import SetupError


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
    with pytest.raises(run_setup.Preempted, match="saved step 13 \\(epoch 2\\)"):
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
    caplog.set_level(logging.INFO)  # "already complete" is a line for the person (reporting.say)
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
    reuse = lambda stored, overwrite=False: run_setup.reuse_workdir(
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


def _reuse(workdir, stored, overwrite=False):
    return run_setup.reuse_workdir(
        epath.Path(workdir), stored, overwrite, safe_changes=("log_every_steps",),
        run_files=("checkpoints", "results.json", "metrics.jsonl"),
    )  # fmt: skip


def test_a_run_killed_before_its_first_save_finished_starts_again(tmp_path):
    # Issue 24 row 1: Orbax made checkpoints/ (and a save's temporary folder) but no step finished.
    (tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1733500000").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "train/loss": 0.7}\n')
    assert _reuse(tmp_path, {"lr": 1}) is None
    assert _reuse(tmp_path, {"lr": 2}) is None  # nothing stored to differ from
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "metrics.jsonl"]


def test_overwrite_starts_clean_whatever_the_workdir_holds(tmp_path):
    # Issue 24 row 11: a finished run of the same config, a damaged checkpoint, a torn results.json.
    (tmp_path / "checkpoints" / "10" / "state").mkdir(parents=True)
    (tmp_path / "checkpoints" / "10" / "state" / "garbage").write_text("x")
    (tmp_path / "results.json").write_text('{"config": {"lr"')
    (tmp_path / "events.out.tfevents.1.host").write_text("")
    (tmp_path / "run.lock").write_text("{}")  # not a run file: the lock belongs to the live run
    assert _reuse(tmp_path, {"lr": 1}, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]


def test_a_torn_results_json_is_one_warning_and_the_checkpoints_decide(tmp_path, caplog):
    (tmp_path / "results.json").write_text('{"config": {"lr": 1}, "sco')
    assert _reuse(tmp_path, {"lr": 1}) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{tmp_path / 'results.json'} is torn or incomplete; the run's checkpoints decide"
    ]


def test_a_longer_run_in_a_finished_workdir_says_why_and_what_to_do(tmp_path):
    stored = {"num_epochs": 2, "num_train_steps": 20, "warmup_steps": 2, "lr": 1}
    (tmp_path / "results.json").write_text(json.dumps({"config": stored, "score": 0.5}))
    longer = {**stored, "num_epochs": 3, "num_train_steps": 30, "warmup_steps": 3}
    with pytest.raises(ValueError) as error:
        _reuse(tmp_path, longer)
    assert str(error.value) == (
        f"{tmp_path} holds a run of another length (num_epochs: 2 -> 3; num_train_steps: 20 -> 30; "
        "warmup_steps: 2 -> 3): the learning rate decays to 0 over num_train_steps (warmup a fraction of "
        "it), so a fine-tuning run cannot be extended or shortened in place; to train on, use another "
        f"--workdir with --config.init_checkpoint={tmp_path} (its final weights, a fresh schedule), or "
        "--config.overwrite=True to retrain from the start"
    )
    # Another length and another setting: the plain refusal.
    with pytest.raises(ValueError, match=r"holds another run \(lr: 1 -> 2; num_epochs: 2 -> 3"):
        _reuse(tmp_path, {**longer, "lr": 2})


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    # Issue 24 row 11: two checkpoints kept; the newest one's state is damaged.
    mesh = sharding.make_mesh((8, 1, 1))
    from checkpoint_test import _abstract, _state

    stored = {"lr": 1}
    ckpt = checkpoint.Checkpointer(
        str(tmp_path / "checkpoints"), keep=run_setup.FINE_TUNING_KEEP, save_interval_steps=1
    )
    for step in (10, 20, 30):
        ckpt.save(step, _state(mesh, step), data_state={"epoch": step // 10}, config=stored)
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [20, 30]
    manifest = tmp_path / "checkpoints" / "30" / "manifest" / "metadata"
    data = json.loads(manifest.read_text())
    data["checksums"] = {k: (v + 1) % 2**32 for k, v in data["checksums"].items()}
    manifest.write_text(json.dumps(data))

    _, ckpt, (restored, position) = run_setup.open_fine_tuning_run(
        epath.Path(tmp_path), stored, False, _abstract(mesh),
        safe_changes=(), run_files=("checkpoints",),
    )  # fmt: skip
    ckpt.close()
    assert int(restored.step) == 20 and position == {"epoch": 2}
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [20]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and str(tmp_path / "checkpoints" / "30") in warnings[0]


def test_a_missing_init_checkpoint_leaves_no_checkpoints_folder(sst2, tmp_path):
    # Issue 23: the loop's own path (main.check_init_checkpoint aside), into a workdir that exists.
    (tmp_path / "out").mkdir()
    config = config_for(sst2, init_checkpoint=str(tmp_path / "missing"))
    with pytest.raises(SetupError, match=r"^init_checkpoint: "):
        finetune.run(config, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_sweep_reuses_complete_members_only(tmp_path):
    from bert_jax import sweep

    member = epath.Path(tmp_path)
    assert sweep._finished(member) is None  # never started
    (tmp_path / "results.json").write_text(
        '{"score": 0.9, "results": {"sst2"'
    )  # killed while writing
    assert sweep._finished(member) is None
    (tmp_path / "results.json").write_text(json.dumps({"score": 0.9, "results": {"a": 1}}))
    assert sweep._finished(member) == {"score": 0.9, "results": {"a": 1}, "workdir": str(tmp_path)}
