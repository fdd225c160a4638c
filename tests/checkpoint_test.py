"""Orbax checkpoints: resharding restores, keep-last-K, size mismatch, corrupt fallback, failed async save."""

import concurrent.futures
import json
import logging

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bert_jax import checkpoint, optim, sharding
from bert_jax.models import bert as model_lib

OPTIM = ml_collections.ConfigDict(
    dict(learning_rate=1e-3, warmup_steps=1, num_train_steps=10, adam_b1=0.9, adam_b2=0.999,
         adam_epsilon=1e-6, weight_decay=0.01, max_grad_norm=1.0, optimizer="adamw")
)  # fmt: skip
TX = optim.make_optimizer(OPTIM)


def _tiny(hidden=32, layers=2):
    config = model_lib.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return model_lib.build_model(config, "pretraining")


def _abstract(mesh, hidden=32, layers=2):
    model = _tiny(hidden, layers)
    boxed = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    return optim.TrainState.abstract(boxed, sharding.logical_shardings(boxed, mesh), TX)


def _state(mesh, step=1, seed=0):
    """A sharded train state of the tiny model's structure filled with random values (nothing to compile)."""
    rng = np.random.default_rng(seed)

    def fill(x):
        value = rng.normal(size=x.shape) if x.dtype == np.float32 else rng.integers(1, 99, x.shape)
        return jax.device_put(np.asarray(value, x.dtype), x.sharding)

    state = jax.tree.map(fill, _abstract(mesh))
    return state.replace(step=jax.device_put(np.int32(step), state.step.sharding))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def data8_state():
    return _state(sharding.make_mesh((8, 1, 1)))


@pytest.mark.parametrize("target", [(1, 8, 1), (2, 2, 2)])
def test_restore_onto_another_mesh(tmp_path, data8_state, target):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_interval_steps=1)
    config = {"learning_rate": 1e-4, "mesh_shape": (8, 1, 1), "model": {"hidden_size": 32}}
    data_state = {"step": 1, "seed": 0, "epoch": 3}
    assert ckpt.save(1, data8_state, data_state=data_state, config=config)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 1

    ckpt.close()

    # A fresh Checkpointer, as in a restarted process, restores what another instance saved.
    abstract = _abstract(sharding.make_mesh(target))
    restarted = checkpoint.Checkpointer(str(tmp_path), keep=3, save_interval_steps=1)
    state, data, saved_config = restarted.restore(None, abstract)
    restarted.close()
    assert data == data_state
    assert saved_config == {**config, "mesh_shape": [8, 1, 1]}  # JSON: tuples come back as lists
    assert jax.tree.structure(state) == jax.tree.structure(data8_state)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert got.sharding == want.sharding
        assert got.shape == want.shape and got.dtype == want.dtype
    for got, want in zip(_leaves(state), _leaves(data8_state), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(state.step) == 1
    # The embedding really is split on the new mesh (fsdp over the hidden dimension).
    embedding = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    hidden_block = 32 // (8 if target == (1, 8, 1) else 2)
    assert embedding.addressable_shards[0].data.shape[1] == hidden_block


def test_interval_keep_last_and_force(tmp_path, data8_state):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_interval_steps=2)
    saved = [ckpt.save(s, data8_state, data_state={"step": s}, config={}) for s in range(1, 7)]
    assert saved == [False, True, False, True, False, True]
    assert ckpt.save(7, data8_state, data_state={"step": 7}, config={}, force=True)
    # The final forced save of a run that just saved this step periodically: nothing to do.
    assert not ckpt.save(7, data8_state, data_state={"step": 7}, config={}, force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [6, 7]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["6", "7"]
    assert ckpt.latest_step() == 7
    _, data, _ = ckpt.restore(6, _abstract(sharding.make_mesh((8, 1, 1))))
    assert data == {"step": 6}
    with pytest.raises(ValueError, match=r"no checkpoint at step 4 .*have \[6, 7\]"):
        ckpt.restore(4, _abstract(sharding.make_mesh((8, 1, 1))))
    ckpt.close()
    # A new Checkpointer on the same directory (a restarted run) sees the same steps.
    again = checkpoint.Checkpointer(str(tmp_path), keep=2, save_interval_steps=2)
    assert again.latest_step() == 7
    again.close()


def test_empty_directory(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "new"), keep=1, save_interval_steps=1)
    assert ckpt.latest_step() is None
    with pytest.raises(ValueError, match="no checkpoints in"):
        ckpt.restore(None, _abstract(sharding.make_mesh((8, 1, 1))))
    ckpt.close()


@pytest.mark.parametrize(
    "hidden, layers, words",
    [
        (
            48,
            2,
            "'params/bert/embeddings/layer_norm/bias' has shape (32,) but the model wants (48,)",
        ),
        (32, 3, "has no 'params/bert/layer_2/attention/key/bias' (the model wants (2, 16))"),
        (32, 1, "arrays the state lacks, e.g. 'opt_state/"),
    ],
)
def test_another_model_size_is_a_one_line_error(tmp_path, data8_state, hidden, layers, words):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, save_interval_steps=1)
    ckpt.save(3, data8_state, data_state={}, config={})
    ckpt.wait_until_finished()
    with pytest.raises(checkpoint.CheckpointMismatchError) as error:
        ckpt.restore(None, _abstract(sharding.make_mesh((8, 1, 1)), hidden, layers))
    message = str(error.value)
    assert words in message, message
    assert "\n" not in message and str(tmp_path / "3") in message
    ckpt.close()


def _truncate_data_files(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[:7])


def _delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


# TensorStore's reader leaves an asyncio callback behind when a read fails; harmless, and not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corrupt", [_truncate_data_files, _delete_metadata])
def test_corrupt_latest_falls_back_to_the_previous(tmp_path, caplog, corrupt):
    mesh = sharding.make_mesh((8, 1, 1))
    first, second = _state(mesh, step=1, seed=1), _state(mesh, step=2, seed=2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_interval_steps=1)
    ckpt.save(1, first, data_state={"step": 1}, config={})
    ckpt.save(2, second, data_state={"step": 2}, config={})
    ckpt.wait_until_finished()
    corrupt(tmp_path / "2")

    with caplog.at_level(logging.WARNING):
        state, data, _ = ckpt.restore(None, _abstract(mesh))
    assert data == {"step": 1} and int(state.step) == 1
    for got, want in zip(_leaves(state), _leaves(first), strict=True):
        np.testing.assert_array_equal(got, want)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "2") in w and "unreadable" in w for w in warnings), warnings
    # The damaged step is gone once an older one restored, so the run saves it again when it gets there.
    assert ckpt.all_steps() == [1]

    corrupt(tmp_path / "1")
    with pytest.raises(ValueError) as error:
        ckpt.restore(None, _abstract(mesh))
    message = str(error.value)
    assert message.startswith(f"no usable checkpoint in {tmp_path}: step 1: ")
    assert "\n" not in message
    ckpt.close()


@pytest.mark.parametrize("surfaces_in", ["wait_until_finished", "next_save", "close"])
def test_failed_async_save_raises(tmp_path, data8_state, monkeypatch, surfaces_in):
    original = ocp.StandardCheckpointHandler.async_save

    async def failing_async_save(self, *args, **kwargs):
        futures = list(await original(self, *args, **kwargs) or [])
        broken = concurrent.futures.Future()
        broken.set_exception(OSError("No space left on device"))
        return [*futures, broken]

    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, save_interval_steps=1)
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_async_save)
    assert ckpt.save(1, data8_state, data_state={}, config={})  # returns before the write fails
    with pytest.raises(
        checkpoint.CheckpointSaveError, match=r"^saving step 1 to .* No space left on device$"
    ):
        if surfaces_in == "next_save":
            ckpt.save(2, data8_state, data_state={}, config={})
        else:
            getattr(ckpt, surfaces_in)()
    monkeypatch.undo()
    assert ckpt.latest_step() is None  # never committed
    if surfaces_in != "close":
        ckpt.close()


def test_gs_paths_take_the_same_code_path(monkeypatch):
    """A gs:// directory goes to Orbax as an epath.Path, like a local one (no GCS access here)."""
    seen = {}

    def fake_manager(directory, *, options, item_handlers):
        seen.update(directory=directory, options=options, item_names=tuple(item_handlers))
        return object()

    monkeypatch.setattr(ocp, "CheckpointManager", fake_manager)
    ckpt = checkpoint.Checkpointer(
        "gs://bucket/run1", keep=5, save_interval_steps=100, async_save=False
    )
    assert str(seen["directory"]) == "gs://bucket/run1"
    assert str(ckpt.directory / "3") == "gs://bucket/run1/3"
    assert seen["options"].max_to_keep == 5 and ckpt.save_interval_steps == 100
    assert seen["options"].enable_async_checkpointing is False
    assert seen["item_names"] == ("state", "data", "config", "manifest")


def test_params_only_restore_verifies_the_manifest_and_names_the_step_used(tmp_path, caplog):
    """Fine-tuning reads a pretraining workdir's parameters only; a step whose arrays do not match its
    manifest's checksums is skipped with one warning naming the file, and the step actually read is returned
    (so results.json records the source that was used)."""
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_interval_steps=1, async_save=False)
    for step, seed in ((1, 0), (2, 1)):
        ckpt.save(step, _state(mesh, step, seed), data_state={}, config={"mode": "x"}, force=True)
    ckpt.close()
    step, params, _ = checkpoint.restore_params(str(tmp_path))
    assert step == 2
    # A bit flip in step 2's data shows as a checksum mismatch: simulated by changing the recorded checksum.
    manifest = tmp_path / "2" / "manifest" / "metadata"
    recorded = json.loads(manifest.read_text())
    name = next(n for n in recorded["checksums"] if n.startswith("params/"))
    recorded["checksums"][name] ^= 1
    manifest.write_text(json.dumps(recorded))
    with caplog.at_level(logging.WARNING):
        step, params, _ = checkpoint.restore_params(str(tmp_path))
    assert step == 1
    assert f"{tmp_path / '2' / 'state'}: {name!r} does not match its checksum" in caplog.text
    want = _state(mesh, 1, 0).params
    for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
