"""Packing's proof of no cross-contamination (issue 20 item 3): with dropout 0 in float32, a packed pretraining
run's per-step losses equal the unpacked run's on the same data, step for step, across the phase switch, on
8 fake CPU devices (a data-parallel mesh), through `pretrain.run` and the real loader over the bundled corpus.
"""

import json

import pytest

from bert_jax import pretrain
from bert_jax.configs import bert_tiny
from bert_jax.data import packing
from bert_jax.data.loader import make_pretraining_loader

STEPS = 6


def _config(packed: bool):
    config = bert_tiny.get_config()
    config.model.update(
        hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
    )  # fmt: skip
    # Short sequences (short_seq_prob 1) so that rows really hold several; phase 2 from step 3.
    config.data.update(seq_length=64, max_predictions_per_seq=10, phase2_seq_length=128)
    config.data.update(phase2_max_predictions_per_seq=20, phase2_fraction=0.5, short_seq_prob=1.0)
    config.data.update(packing=packed, max_sequences_per_row=4)
    config.update(
        num_train_steps=STEPS, warmup_steps=1, global_batch_size=32, log_every_steps=1,
        eval_every_steps=STEPS, eval_batches=1, checkpoint_every_steps=100, async_checkpoints=False,
    )  # fmt: skip
    return config


def _metrics(workdir):
    """{step: the train record, with the eval record's keys merged in where one was written}."""
    out = {}
    for record in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
        if "train/loss" in record or "eval/mlm_loss" in record:
            out.setdefault(record["step"], {}).update(record)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for packed in (False, True):
        workdir = tmp_path_factory.mktemp("packed" if packed else "unpacked")
        pretrain.run(_config(packed), str(workdir))
        out[packed] = _metrics(workdir)
    return out


def test_packed_rows_hold_several_sequences():
    """The test's data really packs: every step has fewer rows than sequences, in both phases."""
    loader = make_pretraining_loader(
        _config(True).data, global_batch_size=32, num_train_steps=STEPS, row_multiple=8
    )
    batches = [loader.batch(step) for step in range(STEPS)]
    assert [len(b["input_ids"]) for b in batches] == [24, 24, 24, 16, 16, 16]
    assert all(int(b["segment_ids"].max()) >= 2 for b in batches)
    assert all(int(b["cls_weights"].sum()) == 32 for b in batches)
    lengths = [loader.seq_length(step) for step in range(STEPS)]
    assert lengths == [64] * 3 + [128] * 3


def test_packed_losses_equal_unpacked_step_for_step(runs):
    unpacked, packed = runs[False], runs[True]
    assert sorted(unpacked) == sorted(packed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("train/loss", "train/mlm_loss", "train/nsp_loss", "train/grad_norm"):
            assert packed[step][key] == pytest.approx(unpacked[step][key], rel=1e-5), (step, key)
        # The same sequences and predictions went into each step.
        assert packed[step]["train/nsp_accuracy"] == unpacked[step]["train/nsp_accuracy"]
        assert packed[step]["train/mlm_accuracy"] == unpacked[step]["train/mlm_accuracy"]
    # The held-out batch (packed too, its rows padded to the 8 devices) at the end.
    for key in ("eval/mlm_loss", "eval/nsp_loss", "eval/mlm_accuracy", "eval/nsp_accuracy"):
        assert packed[STEPS][key] == pytest.approx(unpacked[STEPS][key], rel=1e-5), key


def test_packing_lowers_the_padding_and_keeps_the_real_tokens(runs):
    unpacked, packed = runs[False], runs[True]
    for step in range(1, STEPS + 1):
        assert packed[step]["perf/padding_fraction"] < unpacked[step]["perf/padding_fraction"]
        # Real tokens per step are the same sequences' tokens: equal shares of each window's time.
        real = lambda r: r["perf/real_tokens_per_sec"] * r["perf/step_time"]  # noqa: E731
        assert real(packed[step]) == pytest.approx(real(unpacked[step]), rel=1e-6)
        assert unpacked[step]["perf/real_tokens_per_sec"] <= unpacked[step]["perf/tokens_per_sec"]


def test_bad_packing_settings_are_one_line(tmp_path):
    config = _config(True)
    config.data.max_sequences_per_row = 0
    with pytest.raises(Exception, match=r"^data: data.max_sequences_per_row=0: must be >= 1$"):
        pretrain.run(config, str(tmp_path / "a"))
    config = _config(True)
    config.model.attention_impl = "cudnn"
    with pytest.raises(Exception, match=r"attention_impl='cudnn' cannot take packed rows"):
        pretrain.run(config, str(tmp_path / "b"))
    assert packing.row_buckets(32, 4, 8) == (8, 16, 24, 32)
