"""The one fine-tuning loop (finetune.py) over the task protocol (bert_jax.tasks): every task module has the
protocol's names, the mode names reach their task, and the three things the second loop had lost stay fixed:
signal handlers restored after a run, the unwritable workdir refused before anything heavy, batches
prefetched to the devices."""

import signal
import typing

import pytest
import task_fixtures

from bert_jax import finetune, run_setup, sharding, tasks, train_lib, warm_start
from bert_jax.configs import conll as conll_config
from bert_jax.configs import glue as glue_config
from bert_jax.run_setup import SetupError


def _conll_config(tmp_path, **overrides):
    task_fixtures.write_conll(tmp_path, n_train=32, n_dev=8)
    config = conll_config.get_config("tiny")
    with config.unlocked():
        config.update(
            data_dir=str(tmp_path), vocab_file=task_fixtures.write_vocab(tmp_path),
            max_seq_length=16, num_epochs=2, global_batch_size=16, eval_batch_size=16,
        )  # fmt: skip
        config.update(overrides)
    return config


def test_every_task_module_has_the_protocol_and_every_mode_a_task():
    names = set(typing.get_type_hints(tasks.Task)) | {
        n for n in vars(tasks.Task) if not n.startswith("_")
    }
    assert names == {
        "HEAD", "KEPT_MODULES", "MAIN_METRIC", "FILES", "name", "read", "encode", "forward",
        "loss_sums", "eval_outputs", "score", "main_score", "write_test", "summary_fields",
    }  # fmt: skip
    for key, module in tasks.TASKS.items():
        missing = sorted(n for n in names if not hasattr(module, n))
        assert not missing, f"tasks.{key} lacks {missing}"
    assert {mode: tasks.task_of(mode).__name__ for mode in tasks.MODES} == {
        "finetune": "bert_jax.tasks.glue",
        "glue_suite": "bert_jax.tasks.glue",
        "squad": "bert_jax.tasks.squad",
        "swag": "bert_jax.tasks.swag",
        "conll": "bert_jax.tasks.conll",
    }
    with pytest.raises(ValueError, match=r"'glue' is not one of \('finetune', 'glue_suite'"):
        tasks.task_of("glue")
    # GLUE's run name is its task's; AX is only predicted.
    assert tasks.glue.name(glue_config.get_config("tiny")) == "mrpc"


@pytest.mark.slow
def test_handlers_restored_and_batches_prefetched_to_the_devices(tmp_path, monkeypatch):
    """The task loop used to leave its SIGINT handler installed (the next Ctrl-C of a live process was
    swallowed) and copied each batch to the devices only when its step was due."""
    prefetched = []
    real_prefetch = sharding.prefetch_to_device

    def spy(items, mesh, size=2, **kwargs):
        for item, device_batch in real_prefetch(items, mesh, size, **kwargs):
            prefetched.append((size, type(device_batch["input_ids"]).__name__))
            yield item, device_batch

    monkeypatch.setattr(sharding, "prefetch_to_device", spy)
    sentinel = lambda signum, frame: None
    previous = {s: signal.signal(s, sentinel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = finetune.run(_conll_config(tmp_path), tmp_path / "out")
        # 32 rows at batch 16 for 2 epochs: every one of the 4 steps' batches came through the prefetcher,
        # already global device arrays.
        assert summary["config"]["num_train_steps"] == 4
        assert prefetched == [(2, "ArrayImpl")] * 4
        assert signal.getsignal(signal.SIGINT) is sentinel
        assert signal.getsignal(signal.SIGTERM) is sentinel

        # A preempted run restores them too.
        monkeypatch.setattr(train_lib.Preemption, "agreed", lambda self, step: step == 1)
        with pytest.raises(run_setup.Preempted, match=r"saved step 1 \(epoch 1\)"):
            finetune.run(_conll_config(tmp_path), tmp_path / "cut")
        assert signal.getsignal(signal.SIGINT) is sentinel
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_unwritable_workdir_is_one_line_before_anything_heavy(tmp_path, monkeypatch):
    def heavy(*args, **kwargs):
        raise AssertionError("data or weights loaded before the workdir was checked")

    for module in tasks.TASKS.values():
        monkeypatch.setattr(module, "read", heavy)
    monkeypatch.setattr(warm_start, "load", heavy)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = _conll_config(tmp_path)
    with pytest.raises(SetupError, match=rf"^workdir: {blocker} is a file, not a directory$"):
        finetune.run(config, blocker)
    # Below a file: no directory can be made there, whoever runs it (root passes permission checks).
    with pytest.raises(SetupError, match=r"^workdir: .*Not a directory"):
        finetune.run(config, blocker / "out")
    glue = glue_config.get_config("tiny")
    with pytest.raises(SetupError, match=rf"^workdir: {blocker} is a file, not a directory$"):
        finetune.run(glue, blocker)


def test_gradient_accumulation_reaches_fine_tuning(tmp_path):
    # Dropout off and GLUE's equal example weights: 2 micro-batches of 16 make the same updates as one of 32.
    import jax
    import numpy as np
    from finetune_test import tiny_config, write_sst2_rule

    from bert_jax import checkpoint

    write_sst2_rule(tmp_path / "glue", tmp_path / "vocab.txt", np.random.default_rng(0))
    params = {}
    for k in (1, 2):
        config = tiny_config(
            task="sst2", data_dir=str(tmp_path / "glue"), vocab_file=str(tmp_path / "vocab.txt"),
            max_seq_length=16, global_batch_size=32, eval_batch_size=32, learning_rate=3e-3,
            grad_accum_steps=k, predict_test=False,
        )  # fmt: skip
        config.model.update(hidden_dropout_prob=0.0, attention_dropout_prob=0.0)
        finetune.run(config, tmp_path / f"k{k}")
        _, params[k], _ = checkpoint.restore_params(str(tmp_path / f"k{k}" / "checkpoints"))
    leaves = zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[2]), strict=True)
    # Float32 sums in another order only; a different update would move the weights by ~lr = 3e-3.
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in leaves) < 1e-4


def test_a_batch_that_does_not_split_into_micro_batches_is_one_line(tmp_path):
    config = _conll_config(tmp_path, grad_accum_steps=3)
    with pytest.raises(
        SetupError, match=r"^global_batch_size: 16 does not split into grad_accum_steps=3"
    ):
        finetune.run(config, tmp_path / "out")
