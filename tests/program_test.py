"""The one pretraining program builder (`bert_jax.program`): the loop trains the program the compile check
compiles, on 8 fake CPU devices with a tiny model and the bundled corpus."""

import dataclasses

import jax
import pytest

from bert_jax import compile as compile_lib
from bert_jax import flops, pretrain, run_setup, train_lib
from bert_jax import program as program_lib
from bert_jax.configs import bert_tiny
from bert_jax.data.phases import Phase


def _config(**overrides):
    config = bert_tiny.get_config()
    config.model.update(
        hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    config.data.update(seq_length=32, max_predictions_per_seq=5, phase2_seq_length=64)
    config.data.update(phase2_max_predictions_per_seq=10, phase2_fraction=0.5)
    config.update(
        num_train_steps=2, warmup_steps=1, global_batch_size=8, log_every_steps=1, eval_every_steps=2, eval_batches=1,
        checkpoint_every_steps=2, async_checkpoints=False,
    )  # fmt: skip
    config.update(overrides)
    return config


def _spec(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), tree)


def test_the_loop_trains_the_program_the_compile_check_compiles(tmp_path, monkeypatch):
    built, fed = [], []
    build = program_lib.build

    def recording_build(*args, **kwargs):
        program = build(*args, **kwargs)
        built.append(program)

        def train_step(state, batch, rng):
            fed.append(("train", _spec(batch)))
            return program.train_step(state, batch, rng)

        def eval_step(params, batch):
            fed.append(("eval", _spec(batch)))
            return program.eval_step(params, batch)

        return dataclasses.replace(program, train_step=train_step, eval_step=eval_step)

    monkeypatch.setattr(program_lib, "build", recording_build)
    config = _config()
    pretrain.run(config, str(tmp_path))
    monkeypatch.undo()  # the compile check below builds with the real builder
    (program,) = built
    assert program.phases == (Phase("phase1", 0, 32, 5, 8), Phase("phase2", 1, 64, 10, 8))
    assert program.eval_phase == Phase("eval", 0, 32, 5, 8)
    # The loop fed its steps exactly the program's abstract batches: shapes, dtypes and shardings.
    assert fed == [
        ("train", _spec(program.abstract_batch(program.phases[0]))),
        ("train", _spec(program.abstract_batch(program.phases[1]))),
        ("eval", _spec(program.abstract_batch(program.eval_phase))),
    ]
    # The compile check builds the same program from the same config: the same lowered program (so the same
    # compiled one: the same FLOPs), step by step.
    vocab_size = program.model_config.vocab_size
    # model.vocab_size -1 takes the tokenizer's: the bundled sample vocab's 2,152 ids.
    assert vocab_size == 2152
    reports = compile_lib.compile_steps(config, jax.devices(), 2**40, vocab_size=vocab_size)
    assert [(r["step"], r["seq_length"]) for r in reports] == [
        ("train phase 1", 32), ("train phase 2", 64), ("eval", 32),
    ]  # fmt: skip
    for report, name in zip(reports, ("phase1", "phase2", "eval"), strict=True):
        lowered = program.lower(name)
        assert report["hlo_fingerprint"] == compile_lib.hlo_fingerprint(lowered.as_text())
        cost = lowered.compile().cost_analysis()
        assert report["compiled_flops"] == cost["flops"] > 0
    assert len({r["hlo_fingerprint"] for r in reports}) == 3


def test_a_run_without_phase_2_compiles_phase_1_and_eval():
    config = _config(num_train_steps=100)
    # 0.004 of 100 steps rounds to none: the loader has one phase, so the compile check compiles no second.
    config.data.phase2_fraction = 0.004
    reports = compile_lib.compile_steps(config, jax.devices(), 2**40, vocab_size=1000)
    assert [(r["step"], r["seq_length"], r["sequences_per_chip"]) for r in reports] == [
        ("train phase 1", 32, 1), ("eval", 32, 1),
    ]  # fmt: skip
    mesh = train_lib.make_mesh(config.mesh_shape, {"global_batch_size": 8})
    program = program_lib.build(
        config,
        mesh,
        1000,
    )
    with pytest.raises(KeyError, match=r"'phase2': this run's phases are \['eval', 'phase1'\]"):
        program.phase("phase2")
    assert program.model_flops(program.phase("phase1")) == 8 * flops.model_flops_per_sequence(
        program.model_config, 32, 5
    )


def test_a_phase_longer_than_the_positions_is_a_model_setup_error():
    config = _config()
    config.data.phase2_seq_length = 128
    with pytest.raises(
        run_setup.SetupError, match=r"^model: seq_length 128 > max_position_embeddings 64$"
    ):
        program_lib.model_config(config, 1000)
