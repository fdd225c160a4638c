"""The pretraining loop on 8 fake CPU devices with a tiny model: mesh equivalence, accumulation, non-finite
losses, LAMB and bfloat16, FLOP counting. The data comes from `FakeLoader` (the real loader's interface), whose
global batch does not depend on the number of processes, so different meshes and hosts see the same examples.
"""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from bert_jax import checkpoint, flops, pretrain, sharding, train_lib
from bert_jax.models.bert import BertConfig, BertForPreTraining, dummy_inputs

VOCAB = 101


class FakeLoader:
    """`make_pretraining_loader`'s interface over random token batches, a pure function of (seed, step).

    The global batch is generated whole and each process takes its rows, so 1 and 2 processes see the same
    global batch. Phase 2 (longer sequences) starts at `round(steps * (1 - phase2_fraction))`.
    """

    def __init__(self, data_config, *, global_batch_size, num_train_steps, process_index=0,
                 process_count=1, seed=0, nan_from_step=None, vocab_file="", do_lower_case=True,
                 family="bert"):  # fmt: skip
        self.cfg, self.global_batch, self.seed = data_config, global_batch_size, seed
        self.rows = slice(
            process_index * global_batch_size // process_count,
            (process_index + 1) * global_batch_size // process_count,
        )
        self.switch = round(num_train_steps * (1 - data_config.phase2_fraction))
        self.nan_from_step, self.next_step = nan_from_step, 0
        self.tokenizer = type("Tokenizer", (), {"vocab_size": VOCAB})()

    def seq_length(self, step):
        return self.cfg.seq_length if step < self.switch else self.cfg.phase2_seq_length

    def max_predictions(self, step):
        key = "max_predictions_per_seq" if step < self.switch else "phase2_max_predictions_per_seq"
        return self.cfg[key]

    def batch(self, step):
        rng = np.random.default_rng([self.seed, step])
        b, length, preds = self.global_batch, self.seq_length(step), self.max_predictions(step)
        ids = rng.integers(5, VOCAB, (b, length), dtype=np.int32)
        valid = rng.integers(length // 2, length + 1, b)
        mask = (np.arange(length)[None] < valid[:, None]).astype(np.int32)
        positions = np.stack([rng.choice(np.arange(1, v), preds, replace=False) for v in valid])
        weights = np.ones((b, preds), np.float32)
        if not self.cfg.get("full_weights", False):
            weights[:, preds - preds // 4 :] = 0.0  # some padding predictions
        if self.nan_from_step is not None and step >= self.nan_from_step:
            weights[:] = np.nan  # a corrupt batch: the loss is NaN
        out = {
            "input_ids": ids * mask,
            "token_type_ids": (np.arange(length)[None] >= valid[:, None] // 2).astype(np.int32)
            * mask,
            "attention_mask": mask,
            "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": np.take_along_axis(ids, positions, 1).astype(np.int32),
            "masked_lm_weights": weights,
            "next_sentence_labels": rng.integers(0, 2, b, dtype=np.int32),
        }
        return {k: v[self.rows] for k, v in out.items()}

    def iterate(self, start_step=None):
        step = self.next_step if start_step is None else start_step
        while True:
            yield step, self.batch(step)
            step += 1

    def get_state(self, step):
        return {"next_step": int(step), "seed": self.seed}

    def set_state(self, state):
        assert state["seed"] == self.seed
        self.next_step = state["next_step"]


def fake_eval_batches(data_config, *, global_batch_size, num_batches, process_index=0,
                      process_count=1, seed=0, **unused):  # fmt: skip
    loader = FakeLoader(data_config, global_batch_size=global_batch_size, num_train_steps=1,
                        process_index=process_index, process_count=process_count, seed=seed + 1)  # fmt: skip
    return [loader.batch(i) for i in range(num_batches)]


def use_fake_data(monkeypatch, **loader_kwargs):
    monkeypatch.setattr(
        pretrain, "make_pretraining_loader", lambda *a, **k: FakeLoader(*a, **k, **loader_kwargs)
    )
    monkeypatch.setattr(pretrain, "make_eval_batches", fake_eval_batches)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny model on the paper's recipe, with short sequences, shrunk to seconds."""

    from bert_jax.configs import bert_tiny

    config = bert_tiny.get_config()
    config.model.update(
        vocab_size=VOCAB,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    config.data.update(seq_length=16, max_predictions_per_seq=4, phase2_seq_length=32)
    config.data.phase2_max_predictions_per_seq = 8
    config.update(
        num_train_steps=10, global_batch_size=16, learning_rate=1e-3, warmup_steps=2,
        log_every_steps=1, eval_every_steps=5, eval_batches=2, checkpoint_every_steps=5,
        async_checkpoints=False,
    )  # fmt: skip
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    config.lock()
    return config


def read_metrics(workdir, prefix="train/loss"):
    """{step: value} of one metric from WORKDIR/metrics.jsonl (the last line for a step wins)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if prefix in record:
            out[record["step"]] = record[prefix]
    return out


def run(config, workdir, devices=None, monkeypatch=None):
    if devices is not None:
        make_mesh = sharding.make_mesh
        monkeypatch.setattr(
            sharding, "make_mesh", lambda shape, **kw: make_mesh(shape, devices=devices, **kw)
        )
    state = pretrain.run(config, str(workdir))
    return jax.device_get(state), read_metrics(workdir)


@pytest.mark.slow
def test_meshes_match_one_device(tmp_path, monkeypatch):
    """data=8, fsdp=8, 2x2x2 and tensor=4 give one device's losses and parameters within 1e-5 over 10 steps,
    across the phase switch (step 9 runs at length 32), and each parameter is sharded as the rules say."""
    use_fake_data(monkeypatch)
    config = tiny_config(**{"mesh_shape": (1, 1, 1)})
    with monkeypatch.context() as m:
        reference, ref_losses = run(config, tmp_path / "one", jax.devices()[:1], m)
    assert sorted(ref_losses) == list(range(1, 11))
    assert int(reference.step) == 10
    for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (2, 1, 4)]:
        workdir = tmp_path / "x".join(map(str, shape))
        state = pretrain.run(tiny_config(mesh_shape=shape), str(workdir))
        mesh = sharding.make_mesh(shape)
        boxed = jax.eval_shape(
            lambda r: BertForPreTraining(state_config()).init(r, **dummy_inputs(1, 8))["params"],
            jax.random.key(0),
        )
        expected = sharding.logical_shardings(boxed, mesh)
        same = jax.tree.map(
            lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), state.params, expected
        )
        assert jax.tree.all(same)
        if shape == (1, 8, 1):  # fsdp really shards: the word embeddings' hidden dimension is split
            kernel = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
            assert kernel.sharding.shard_shape(kernel.shape) == (VOCAB, 4)
        losses = read_metrics(workdir)
        np.testing.assert_allclose([losses[s] for s in range(1, 11)], [ref_losses[s] for s in range(1, 11)], atol=1e-5)  # fmt: skip
        for a, b in zip(
            jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(reference), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def state_config():
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_position_embeddings=32)  # fmt: skip


def test_grad_accumulation_equals_one_big_batch(tmp_path, monkeypatch):
    """Without dropout and with full prediction weights, 2 micro-batches give the 1-batch update."""
    use_fake_data(monkeypatch)
    common = {
        "model.hidden_dropout_prob": 0.0, "model.attention_dropout_prob": 0.0, "num_train_steps": 4,
        "eval_every_steps": 0, "data.phase2_fraction": 0.0, "global_batch_size": 16,
    }  # fmt: skip
    monkeypatch.setattr(FakeLoader, "batch", _full_weights(FakeLoader.batch))
    one, losses_one = run(tiny_config(**common), tmp_path / "k1")
    four, losses_four = run(tiny_config(grad_accum_steps=2, **common), tmp_path / "k2")
    np.testing.assert_allclose(list(losses_four.values()), list(losses_one.values()), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)
    assert not np.allclose(
        four.params["nsp"]["kernel"], pretrain_init(tiny_config(**common))["nsp"]["kernel"]
    )


def _full_weights(batch_fn):
    def batch(self, step):
        out = batch_fn(self, step)
        out["masked_lm_weights"][:] = 1.0
        return out

    return batch


def pretrain_init(config):
    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    model = BertForPreTraining(state_config())
    return jax.device_get(nn.unbox(model.init(init_rng, **dummy_inputs(1, 8))["params"]))


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    """Steps 6.. have NaN losses: updates are skipped (params stay at step 6's), counted, and the third in a
    row stops the run with a clear error; the checkpoint at step 5 is the last one."""
    use_fake_data(monkeypatch, nan_from_step=6)
    config = tiny_config(max_consecutive_nonfinite=3, num_train_steps=20, eval_every_steps=0)
    with pytest.raises(
        train_lib.NonFiniteLossError, match="3 non-finite losses in a row at step 9"
    ):
        pretrain.run(config, str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=3, save_interval_steps=5)
    assert ckpt.all_steps() == [5]
    nonfinite = read_metrics(tmp_path, "train/nonfinite_steps")
    losses = read_metrics(tmp_path)
    assert [nonfinite[s] for s in range(5, 10)] == [0, 0, 1, 2, 3]
    assert losses[7] is None and np.isfinite(
        losses[6]
    )  # a window of only skipped steps has no loss


def test_lamb_and_bfloat16_train(tmp_path, monkeypatch):
    """LAMB with bfloat16 compute: params and optimizer state stay float32 and the loss falls."""
    use_fake_data(monkeypatch)
    config = tiny_config(optimizer="lamb", dtype="bfloat16", num_train_steps=30, learning_rate=0.05,
                         eval_every_steps=0, **{"data.phase2_fraction": 0.0})  # fmt: skip
    state, losses = run(config, tmp_path)
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim}
    assert dtypes == {np.dtype("float32")}
    assert (
        np.mean([losses[s] for s in range(26, 31)])
        < np.mean([losses[s] for s in range(1, 6)]) - 0.3
    )


def test_model_flops_match_xla_count():
    """The MFU numerator (6 x the forward matmul FLOPs) against XLA's own count of the forward pass."""
    cfg = BertConfig(
        vocab_size=1000, hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024
    )
    model = BertForPreTraining(cfg)
    params = jax.eval_shape(
        lambda r: model.init(r, **dummy_inputs(1, 8))["params"], jax.random.key(0)
    )
    batch, length, preds = 4, 128, 20
    inputs = dummy_inputs(batch, length)
    positions = jax.numpy.zeros((batch, preds), jax.numpy.int32)
    forward = jax.jit(lambda p: model.apply({"params": p}, **inputs, masked_lm_positions=positions))
    xla_flops = forward.lower(params).compile().cost_analysis()["flops"]
    ours = batch * flops.model_flops_per_sequence(cfg, length, preds) / 3
    assert abs(ours - xla_flops) / xla_flops < 0.05, (ours, xla_flops)
