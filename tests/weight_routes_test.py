"""The same weights reached by any route (a bert_jax pretraining workdir, its transformers, TF1 and bert_jax
exports; absolute or relative paths) start every task's fine-tuning from the same arrays, keep the pretrained
encoder whatever the head, and give the same fine-tuning result; a workdir carries its tokenizer and works after
it is moved; bad paths are one line naming the field."""

import json
import shutil

import jax
import numpy as np
import pytest
import task_fixtures
from export_test import tiny_pretraining_run
from finetune_test import tiny_config, write_sst2_rule
from flax import traverse_util

from bert_jax import checkpoint, convert, export, finetune, predict, warm_start
from bert_jax.configs import conll as conll_config
from bert_jax.configs import glue as glue_config
from bert_jax.configs import squad as squad_config
from bert_jax.configs import swag as swag_config
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.run_setup import SetupError
from bert_jax.tasks import conll, squad, swag

# A tiny pretraining run, its three exports and a short fine-tune each take seconds to tens of seconds of CPU.
pytestmark = pytest.mark.slow

# task: (recipe, head, the modules a workdir gives, label count).
TASKS = {
    "glue": (lambda: glue_config.get_config("tiny"), "classification", ("bert", "classifier"), 3),
    "squad": (lambda: squad_config.get_config("tiny"), squad.HEAD, squad.KEPT_MODULES, 2),
    "conll": (lambda: conll_config.get_config("tiny"), conll.HEAD, conll.KEPT_MODULES, 5),
    "swag": (lambda: swag_config.get_config("tiny"), swag.HEAD, swag.KEPT_MODULES, 1),
}
ROUTES = ("workdir", "relative workdir", "transformers", "tf1", "bert_jax export")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A two-step pretraining workdir (bert_tiny, pooler and MLM/NSP heads) and its three exports."""
    root = tmp_path_factory.mktemp("routes")
    tiny_pretraining_run(root / "run")
    export.convert_checkpoint(root / "run", root / "transformers", "transformers")
    export.convert_checkpoint(root / "run", root / "tf1", "tf1")
    export.convert_checkpoint(root / "run", root / "bert_jax export", "bert_jax")
    return root


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _initial(task: str, init_checkpoint: str):
    recipe, head, kept, num_labels = TASKS[task]
    config = recipe()
    config.init_checkpoint = init_checkpoint
    weights = warm_start.load(config, head=head, heads=kept)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
    _, _, params = warm_start.initial_params(
        weights, head, num_labels, mesh, jax.random.key(7), task=task
    )
    return weights, _flat(params)


@pytest.mark.parametrize("task", TASKS)
def test_every_route_gives_bitwise_equal_initial_params_and_keeps_the_encoder(
    root, task, monkeypatch
):
    _, stored, _ = checkpoint.restore_params(str(root / "run" / "checkpoints"))
    encoder = {f"bert/{k}": v for k, v in _flat(stored["bert"]).items()}
    reference = None
    for route in ROUTES:
        if route == "relative workdir":
            monkeypatch.chdir(root.parent)
            path = f"{root.name}/run"
        else:
            monkeypatch.chdir(root)
            path = str(root / route.replace("workdir", "run"))
        weights, params = _initial(task, path)
        if reference is None:
            reference = (weights, params)
            # Every encoder parameter the head has is the pretrained one, bit for bit (the span and token
            # heads have no pooler: the rest of the encoder is kept all the same).
            in_model = [k for k in params if k.startswith("bert/")]
            pooler = task in ("glue", "swag")
            assert len(in_model) == len(encoder) - (0 if pooler else 2)
            for key in in_model:
                assert params[key].tobytes() == np.asarray(encoder[key]).tobytes(), key
            continue
        assert weights.model_config == reference[0].model_config, route
        assert weights.tokenizer.vocab_size == reference[0].tokenizer.vocab_size
        assert weights.tokenizer.vocab_size == len(SAMPLE_VOCAB.read_text().split("\n")) - 1
        assert sorted(params) == sorted(reference[1]), route
        for key, value in params.items():
            want = reference[1][key]
            assert value.dtype == want.dtype and value.tobytes() == want.tobytes(), (route, key)


def test_the_same_weights_by_workdir_and_by_transformers_fine_tune_to_the_same_scores(
    root, tmp_path
):
    task_fixtures.write_squad(tmp_path, "1.1", n_train=24, n_dev=8)
    results = []
    for route in ("run", "transformers"):
        config = squad_config.get_config("tiny")
        config.update(
            init_checkpoint=str(root / route), data_dir=str(tmp_path), max_seq_length=32,
            max_query_length=4, doc_stride=8, num_epochs=1, global_batch_size=8, eval_batch_size=8,
        )  # fmt: skip
        finetune.run(config, tmp_path / f"out_{route}")
        results.append(json.loads((tmp_path / f"out_{route}" / "results.json").read_text()))
    assert results[0]["results"] == results[1]["results"]
    assert set(results[0]["results"]) == {"exact_match", "f1"}
    # And the fine-tuned models themselves, bit for bit.
    trained = [
        _flat(checkpoint.restore_params(str(tmp_path / f"out_{r}" / "checkpoints"))[1])
        for r in ("run", "transformers")
    ]
    assert sorted(trained[0]) == sorted(trained[1]) and "qa_outputs/kernel" in trained[0]
    for key, value in trained[0].items():
        assert value.tobytes() == trained[1][key].tobytes(), key


def test_a_pretraining_workdir_carries_its_tokenizer(root):
    copy = root / "run" / "tokenizer" / SAMPLE_VOCAB.name
    assert copy.read_bytes() == SAMPLE_VOCAB.read_bytes()
    assert (root / "bert_jax export" / "tokenizer" / "vocab.txt").read_text().split() == (
        SAMPLE_VOCAB.read_text().split()
    )


def test_a_moved_fine_tuning_workdir_with_a_relative_vocab_predicts_converts_and_fine_tunes(
    tmp_path, monkeypatch
):
    source = tmp_path / "made_here"
    source.mkdir()
    rows = write_sst2_rule(source / "glue", source / "vocab.txt", np.random.default_rng(0))
    monkeypatch.chdir(source)
    config = tiny_config(
        task="sst2", data_dir="glue", vocab_file="vocab.txt", max_seq_length=16, global_batch_size=32,
        num_epochs=1,
    )  # fmt: skip
    finetune.run(config, "run")
    words = (source / "vocab.txt").read_text().split()
    _, want, _ = checkpoint.restore_params(str(source / "run" / "checkpoints"))

    # Moved, its vocabulary gone, and read from another directory.
    shutil.copytree(source / "run", tmp_path / "moved")
    shutil.rmtree(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    classifier = predict.load_classifier("../moved")
    assert [classifier.tokenizer.id_to_token(i) for i in range(len(words))] == words
    logits = predict.predict(classifier, [s for s, _ in rows["test"][:4]], None, batch_size=8)
    assert np.asarray(logits).shape == (4, 2)

    convert.run(["--from=../moved", "--to=hf", "--format=transformers"])
    assert (elsewhere / "hf" / "vocab.txt").read_text().split() == words

    again = tiny_config(task="sst2", init_checkpoint="../moved")
    weights = warm_start.load(again)
    assert weights.tokenizer_spec["path"] == str(tmp_path / "moved" / "tokenizer" / "vocab.txt")
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
    _, _, params = warm_start.initial_params(
        weights, "classification", 2, mesh, jax.random.key(0), task="sst2"
    )
    for key, value in _flat(params).items():  # the fine-tuned model, classifier included
        assert value.tobytes() == np.asarray(_flat(want)[key]).tobytes(), key


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "init_checkpoint",
            "nowhere/run",
            r"^init_checkpoint: /.*/nowhere/run: no such file or directory; give",
        ),
        (
            "vocab_file",
            "missing.txt",
            r"^vocab_file: /.*/missing.txt: no such file or directory; give a vocab.txt",
        ),
        (
            "vocab_file",
            "binary.txt",
            r"^vocab_file: /.*/binary.txt: not a WordPiece vocab.txt \(byte \d+ is not UTF-8 text\); give",
        ),
    ],
)
def test_bad_paths_are_one_line_naming_the_field(tmp_path, monkeypatch, field, value, message):
    task_fixtures.write_conll(tmp_path, n_train=20, n_dev=4)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 8)
    monkeypatch.chdir(tmp_path)
    config = conll_config.get_config("tiny")
    config.update(data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path))
    config[field] = value
    with pytest.raises(SetupError, match=message) as error:
        finetune.run(config, tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
