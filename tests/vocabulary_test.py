"""One config vocabulary across pretraining and fine-tuning (issue 19 item 5): every recipe names the batch, the
run length, the warmup, the tokenizer and dropout the same way; exactly one field of each pair is set; the
previous release's names work for one release on the command line (one deprecation line) and in stored configs;
no recipe is built by deleting fields."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import task_fixtures

from bert_jax import configs, finetune, pretrain, run_setup, workdir
from bert_jax.configs import (
    bert_base,
    bert_large,
    bert_medium,
    bert_mini,
    bert_small,
    bert_tiny,
    conll,
    glue,
    squad,
    swag,
)

REPO = Path(__file__).resolve().parents[1]

PRETRAINING = {m.__name__.split(".")[-1]: m.get_config() for m in (
    bert_tiny, bert_mini, bert_small, bert_medium, bert_base, bert_large
)}  # fmt: skip
FINE_TUNING = {
    "glue": glue.get_config(), "glue:tiny": glue.get_config("tiny"),
    "squad": squad.get_config(), "squad:2.0": squad.get_config("2.0"),
    "squad:tiny": squad.get_config("tiny"), "squad:tiny,2.0": squad.get_config("tiny,2.0"),
    "swag": swag.get_config(), "swag:tiny": swag.get_config("tiny"),
    "conll": conll.get_config(), "conll:tiny": conll.get_config("tiny"),
}  # fmt: skip
# The five concepts, by their one name.
VOCABULARY = (
    "global_batch_size", "num_train_steps", "num_epochs", "warmup_steps", "warmup_fraction", "vocab_file",
    "do_lower_case", "model.hidden_dropout_prob", "model.attention_dropout_prob",
)  # fmt: skip


def _flat(config):
    return run_setup.flat_config(config)


@pytest.mark.parametrize("name", [*PRETRAINING, *FINE_TUNING])
def test_every_recipe_speaks_the_one_vocabulary(name):
    config = {**PRETRAINING, **FINE_TUNING}[name]
    flat = _flat(config)
    assert [field for field in VOCABULARY if field not in flat] == []
    assert sorted(set(configs.RENAMED) & set(flat)) == []
    assert "batch_size" not in flat and "dropout" not in flat and "data.vocab_file" not in flat
    assert (flat["model.hidden_dropout_prob"], flat["model.attention_dropout_prob"]) == (0.1, 0.1)
    if name in PRETRAINING:
        steps = 800 if name == "bert_tiny" else 1_000_000
        warmup = 80 if name == "bert_tiny" else 10_000
        assert (flat["num_train_steps"], flat["num_epochs"]) == (steps, None)
        assert (flat["warmup_steps"], flat["warmup_fraction"]) == (warmup, None)
    else:
        epochs = 2 if name.endswith("2.0") else 3
        assert (flat["num_train_steps"], flat["num_epochs"]) == (None, epochs)
        assert (flat["warmup_steps"], flat["warmup_fraction"]) == (None, 0.1)


def test_the_fine_tuning_batches_keep_their_values():
    got = {name: c.global_batch_size for name, c in FINE_TUNING.items()}
    assert got == {
        "glue": 32, "glue:tiny": 16, "squad": 32, "squad:2.0": 48, "squad:tiny": 16, "squad:tiny,2.0": 16,
        "swag": 16, "swag:tiny": 8, "conll": 32, "conll:tiny": 16,
    }  # fmt: skip


def test_no_recipe_is_built_by_deleting_fields():
    sources = {p.name: p.read_text() for p in (REPO / "bert_jax" / "configs").glob("*.py")}
    assert "finetuning.py" in sources and "tasks.py" not in sources
    assert sorted(n for n, text in sources.items() if re.search(r"\bdel\b|\.pop\(", text)) == [
        "__init__.py"  # configs.translate moves an old stored field to its new name
    ]
    # The task recipes share the base's fields and only add their own.
    base = set(_flat(FINE_TUNING["glue"])) - {
        "task", "sweep", "sweep_batch_sizes", "sweep_learning_rates", "sweep_num_epochs", "sweep_seeds",
        "suite_tasks", "suite_from_mnli", "predict_test",
    }  # fmt: skip
    for name in ("squad", "swag", "conll"):
        assert base <= set(_flat(FINE_TUNING[name])), name
    assert sorted(set(_flat(FINE_TUNING["swag"])) - base) == []


def test_run_length_of_both_loops():
    assert run_setup.run_length(bert_base.get_config()) == (1_000_000, 10_000)
    assert run_setup.run_length(glue.get_config(), steps_per_epoch=115) == (345, 34)
    steps = glue.get_config()
    steps.num_epochs, steps.num_train_steps = None, 50
    assert run_setup.run_length(steps, steps_per_epoch=115) == (50, 5)
    fraction = bert_tiny.get_config()
    fraction.warmup_steps, fraction.warmup_fraction = None, 0.25
    assert run_setup.run_length(fraction) == (800, 200)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_train_steps": 10}, "num_train_steps, num_epochs: set exactly one of them (both are set)"),
        ({"num_epochs": None}, "num_train_steps, num_epochs: set exactly one of them (neither is set)"),
        ({"warmup_steps": 10}, "warmup_steps, warmup_fraction: set exactly one of them (both are set)"),
        ({"warmup_fraction": None}, "warmup_steps, warmup_fraction: set exactly one of them (neither is set)"),
    ],
)  # fmt: skip
def test_exactly_one_of_each_pair_is_one_line(changes, message):
    config = glue.get_config("tiny")
    config.update(changes)
    with pytest.raises(run_setup.SetupError) as check:
        run_setup.check_config(config)
    assert str(check.value) == message
    with pytest.raises(run_setup.SetupError) as run:
        run_setup.run_length(config, steps_per_epoch=4)
    assert str(run.value) == message


def test_pretraining_has_no_epochs():
    config = bert_tiny.get_config()
    config.num_train_steps, config.num_epochs = None, 3
    message = "num_epochs: pretraining streams have no epochs; set num_train_steps instead"
    for check in (run_setup.check_config, run_setup.run_length):
        with pytest.raises(run_setup.SetupError) as error:
            check(config)
        assert str(error.value) == message


# An old fine-tuning run's stored config (the previous release's names), as results.json keeps it.
def _old_fine_tuning_fields(config, num_train_steps, warmup_steps):
    new, _, _ = run_setup.fine_tuning_optimizer(config, num_train_steps, warmup_steps)
    old = {k: v for k, v in new.items() if k != "global_batch_size"}
    return json.loads(
        json.dumps({**old, "batch_size": config.global_batch_size, "dropout": 0.1})
    ), new


def test_an_old_stored_config_is_read_through_the_renames(tmp_path):
    old, new = _old_fine_tuning_fields(glue.get_config("tiny"), 12, 1)
    assert "batch_size" in old and "global_batch_size" not in old
    translated = configs.translate(old)
    assert translated["global_batch_size"] == 16 and "batch_size" not in translated
    assert "dropout" not in translated and translated["model"]["hidden_dropout_prob"] == 0.1
    assert old["batch_size"] == 16  # the stored dict itself is left as it was
    assert run_setup.config_changes(old, json.loads(json.dumps(new)), ()) == ([], [])
    # A pretraining run of the previous release named its tokenizer under data.
    pre = json.loads(json.dumps(bert_tiny.get_config().to_dict()))
    data = {**pre["data"], "vocab_file": "/corpus/vocab.txt", "do_lower_case": False}
    old_pre = {k: v for k, v in pre.items() if k not in ("vocab_file", "do_lower_case")}
    old_pre["data"] = data
    assert workdir.tokenizer_spec(old_pre) == {"path": "/corpus/vocab.txt", "do_lower_case": False}
    current = bert_tiny.get_config()
    current.update(vocab_file="/corpus/vocab.txt", do_lower_case=False)
    pretrain.check_resume(old_pre, current, step=10)
    assert run_setup.config_changes(old_pre, current, ()) == ([], [])


def test_an_old_finished_fine_tuning_workdir_is_reported_not_refused(tmp_path):
    config = glue.get_config("tiny")
    old, new = _old_fine_tuning_fields(config, 12, 1)
    (tmp_path / "config.json").write_text(json.dumps(old))
    results = {"task": "mrpc", "score": 0.75, "config": old}
    (tmp_path / "results.json").write_text(json.dumps(results))
    finished = run_setup.reuse_workdir(
        run_setup.absolute_workdir(tmp_path), json.loads(json.dumps(new)), False,
        safe_changes=finetune.SAFE_CHANGES, run_files=finetune.RUN_FILES,
    )  # fmt: skip
    assert finished == {**results, "workdir": str(tmp_path)}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_old_command_line_names_are_renamed_with_one_deprecation_line():
    code = (
        "import sys; sys.argv = ['main']\n"
        "from bert_jax import main\n"
        "print(main.rename_overrides(['m', '--config.batch_size=8', '--config.dropout', '0.2',\n"
        "    '--config.data.vocab_file=v.txt', '--config.data.do_lower_case=False', '--config.seed=1']))\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.strip().splitlines()[-1]) == [
        "m", "--config.global_batch_size=8", "--config.model.hidden_dropout_prob=0.2",
        "--config.model.attention_dropout_prob=0.2", "--config.vocab_file=v.txt", "--config.do_lower_case=False",
        "--config.seed=1",
    ]  # fmt: skip
    warned = [line for line in out.stderr.splitlines() if line.startswith("warning: --config.")]
    assert warned == [
        "warning: --config.batch_size is deprecated and will be removed in the next release; use "
        "--config.global_batch_size",
        "warning: --config.dropout is deprecated and will be removed in the next release; use "
        "--config.model.hidden_dropout_prob and --config.model.attention_dropout_prob",
        "warning: --config.data.vocab_file is deprecated and will be removed in the next release; use "
        "--config.vocab_file",
        "warning: --config.data.do_lower_case is deprecated and will be removed in the next release; use "
        "--config.do_lower_case",
    ]


@pytest.mark.parametrize(
    "args, last",
    [
        (["--config.batch_size=0"], "error: global_batch_size: 0 must be > 0"),
        (["--config.dropout=1.5"], "error: model.attention_dropout_prob: 1.5 must be in [0, 1]"),
        (["--config=glue:tiny", "--config.dropout=1.5"], "error: model.attention_dropout_prob: 1.5 must be in [0, 1]"),
        ([f"--config.data.vocab_file={REPO / 'README.md'}"], f"error: data: {REPO / 'README.md'}: not a WordPiece vocab.txt"),
        (["--config=glue:tiny", "--config.num_train_steps=5", "--config.num_epochs=2"],
         "error: num_train_steps, num_epochs: set exactly one of them (both are set)"),
        (["--config.num_epochs=2"], "error: num_epochs: pretraining streams have no epochs; set num_train_steps instead"),
    ],
)  # fmt: skip
def test_an_old_name_on_the_command_line_sets_the_new_field(tmp_path, args, last):
    """The run takes the old name's value under the new field: a bad value is refused naming the new field."""
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.main", f"--workdir={tmp_path / 'run'}", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith(last), result.stderr[-2000:]
    old = [a.partition("=")[0][len("--config.") :] for a in args]
    warned = [line for line in lines if "is deprecated" in line]
    assert len(warned) == sum(name in configs.RENAMED for name in old)


def test_one_field_of_a_pair_on_the_command_line_unsets_the_other():
    code = (
        "import sys; sys.argv = ['main']\n"
        "from bert_jax import main, run_setup, train_lib\n"
        "from bert_jax.configs import glue, bert_tiny\n"
        # What config_flags made of the override, then the pair's other field unset.
        "c = glue.get_config(); c.num_train_steps = 7\n"
        "main.unset_other_of_pair(c, ['--config.num_train_steps=7'])\n"
        "p = bert_tiny.get_config(); p.warmup_fraction = 0.5\n"
        "main.unset_other_of_pair(p, ['--config.warmup_fraction=0.5'])\n"
        "print((c.num_epochs, run_setup.run_length(c, 3), p.warmup_steps, run_setup.run_length(p)))\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "(None, (7, 1), None, (800, 400))"


@pytest.mark.slow
def test_fine_tuning_for_a_number_of_steps(tmp_path):
    """num_train_steps instead of num_epochs: 3 steps of 2-step epochs end one step into epoch 2."""
    task_fixtures.write_conll(tmp_path, n_train=32, n_dev=8)
    config = conll.get_config("tiny")
    with config.unlocked():
        config.update(
            data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path), max_seq_length=16,
            global_batch_size=16, eval_batch_size=16, num_epochs=None, num_train_steps=3, log_every_steps=1,
        )  # fmt: skip
    summary = finetune.run(config, tmp_path / "out")
    assert [(e["epoch"], e["step"]) for e in summary["epochs"]] == [(1, 2), (2, 3)]
    assert (summary["config"]["num_train_steps"], summary["config"]["warmup_steps"]) == (3, 0)
    assert summary["epoch"] is None


def test_fine_tuning_from_a_checkpoint_takes_the_recipes_dropout():
    """Dropout is an EXECUTION field: the recipe's model.*_dropout_prob, not the checkpoint's 0.1; the
    architecture is the checkpoint's."""
    from bert_jax import warm_start

    config = glue.get_config("tiny")
    config.init_checkpoint = str(
        REPO / "tests" / "testdata" / "tf1_uncased_L-2_H-36_A-3" / "bert_model.ckpt"
    )
    config.model.update(hidden_dropout_prob=0.3, attention_dropout_prob=0.2)
    model = warm_start.load(config).model_config
    assert (model.hidden_dropout_prob, model.attention_dropout_prob) == (0.3, 0.2)
    assert (model.hidden_size, model.num_layers, model.vocab_size) == (36, 2, 99)
    assert {"hidden_dropout_prob", "attention_dropout_prob"} <= set(warm_start.EXECUTION)
    assert not set(warm_start.EXECUTION) & set(warm_start.ARCHITECTURE)


def test_a_recipe_of_the_previous_release_with_data_vocab_file_is_one_line():
    """A user's own recipe that still sets data.vocab_file would be silently ignored: the loader names the new
    field instead."""
    from bert_jax.configs.pretraining import data_config
    from bert_jax.data import loader

    for old in ("vocab_file", "do_lower_case"):
        cfg = data_config()
        cfg[old] = "" if old == "vocab_file" else True
        with pytest.raises(ValueError) as error:
            loader.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=10)
        assert str(error.value) == f"data.{old} is now the recipe's top-level {old}"
