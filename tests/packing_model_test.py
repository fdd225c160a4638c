"""Packed rows through the model (issue 20): block-diagonal attention, restarting positions, NSP at each [CLS].

A packed batch must give every sequence the outputs it gets alone in an unpacked row, and changing one
sequence of a row must leave the others' outputs as they were (no cross-contamination, Krell et al. 2021).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import pretrain, train_lib
from bert_jax import program as program_lib
from bert_jax.configs import bert_tiny
from bert_jax.data import packing
from bert_jax.models import attention, bert

CFG = dict(
    vocab_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_dropout_prob=0.0,
)
LENGTH, MAX_PER_ROW, PREDICTIONS = 24, 4, 3


def _unpacked(n=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([20, 5, 9, 4, 11, 3])[:n]
    ids = rng.integers(5, 64, (n, LENGTH)).astype(np.int32)
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    ids[:, 0] = 2  # [CLS]
    types = ((np.arange(LENGTH)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
    positions = np.zeros((n, PREDICTIONS), np.int32)
    weights = np.zeros((n, PREDICTIONS), np.float32)
    for i, length in enumerate(lengths):
        picked = np.sort(rng.choice(np.arange(1, length), min(PREDICTIONS, length - 1), False))
        positions[i, : len(picked)], weights[i, : len(picked)] = picked, 1.0
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(5, 64, (n, PREDICTIONS)).astype(np.int32),
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.integers(0, 2, n).astype(np.int32),
    }


def _pack(feats):
    budget = MAX_PER_ROW * PREDICTIONS
    return packing.pack_features(feats, max_per_row=MAX_PER_ROW, predictions_per_row=budget)


@pytest.fixture(scope="module")
def model_and_params():
    model = bert.build_model(bert.BertConfig(**CFG), "pretraining")
    feats = _unpacked()
    params = model.init(
        jax.random.key(0),
        feats["input_ids"],
        feats["token_type_ids"],
        feats["attention_mask"],
        feats["masked_lm_positions"],
    )["params"]
    return model, params


def _apply(model, params, batch, packed: bool):
    extra = {}
    if packed:
        extra = {k: batch[k] for k in ("segment_ids", "position_ids", "cls_positions")}
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        batch["masked_lm_positions"],
        **extra,
    )


def test_packed_outputs_equal_unpacked(model_and_params):
    model, params = model_and_params
    feats = _unpacked()
    packed, where = _pack(feats)
    assert len(packed["input_ids"]) < len(feats["input_ids"])  # several sequences share a row
    plain = _apply(model, params, feats, packed=False)
    out = _apply(model, params, packed, packed=True)
    row, slot, offset = where["row"], where["slot"], where["offset"]
    # Every real token's hidden state, at its place in the packed row.
    hidden = np.asarray(out["last_hidden_state"])
    for i, length in enumerate(feats["attention_mask"].sum(1)):
        mine = hidden[row[i], offset[i] : offset[i] + length]
        np.testing.assert_allclose(
            mine, np.asarray(plain["last_hidden_state"])[i, :length], rtol=1e-5, atol=1e-5
        )
    # NSP at each sequence's own [CLS].
    nsp = np.asarray(out["seq_relationship_logits"])[row, slot]
    np.testing.assert_allclose(nsp, plain["seq_relationship_logits"], rtol=1e-5, atol=1e-5)
    # MLM logits: the re-addressed predictions map back to each sequence's own.
    logits = np.asarray(out["prediction_logits"])
    for i in range(len(row)):
        for j in np.flatnonzero(feats["masked_lm_weights"][i]):
            col = offset[i] + feats["masked_lm_positions"][i, j]
            k = np.flatnonzero(packed["masked_lm_positions"][row[i]] == col)
            assert len(k) == 1 and packed["masked_lm_weights"][row[i], k[0]] == 1.0
            np.testing.assert_allclose(
                logits[row[i], k[0]], plain["prediction_logits"][i, j], rtol=1e-5, atol=1e-5
            )


def test_perturbing_one_sequence_leaves_the_others(model_and_params):
    model, params = model_and_params
    feats = _unpacked()
    packed, where = _pack(feats)
    # A row holding several sequences; change every token of its second one (after [CLS]).
    row = int(np.flatnonzero(np.bincount(where["row"]) >= 2)[0])
    victim = np.flatnonzero((where["row"] == row) & (where["slot"] == 1))[0]
    cols = packed["segment_ids"][row] == 2
    changed = {k: v.copy() for k, v in packed.items()}
    changed["input_ids"][row, cols] = (changed["input_ids"][row, cols] * 7 + 3) % 59 + 5
    changed["token_type_ids"][row, cols] = 1 - changed["token_type_ids"][row, cols]
    before = _apply(model, params, packed, packed=True)
    after = _apply(model, params, changed, packed=True)
    others = (packed["segment_ids"][row] != 0) & ~cols
    h0, h1 = np.asarray(before["last_hidden_state"]), np.asarray(after["last_hidden_state"])
    assert np.abs(h1[row, cols] - h0[row, cols]).max() > 1e-3  # the victim did change
    np.testing.assert_array_equal(h1[row, others], h0[row, others])
    np.testing.assert_array_equal(np.delete(h1, row, 0), np.delete(h0, row, 0))
    mine = (packed["masked_lm_positions"][row] >= where["offset"][victim]) & (
        packed["masked_lm_positions"][row] < where["offset"][victim] + cols.sum()
    )
    l0, l1 = np.asarray(before["prediction_logits"]), np.asarray(after["prediction_logits"])
    np.testing.assert_array_equal(l1[row, ~mine], l0[row, ~mine])
    slots = np.arange(MAX_PER_ROW) != 1
    n0, n1 = (
        np.asarray(before["seq_relationship_logits"]),
        np.asarray(after["seq_relationship_logits"]),
    )
    np.testing.assert_array_equal(n1[row, slots], n0[row, slots])


def test_one_sequence_per_row_packed_is_bitwise_unpacked(model_and_params):
    """Packing fields that describe one sequence per row change nothing a real token sees."""
    model, params = model_and_params
    feats = _unpacked()
    plain = _apply(model, params, feats, packed=False)
    one = dict(feats)
    one["segment_ids"] = feats["attention_mask"].astype(np.int32)
    one["position_ids"] = np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (6, LENGTH))
    one["cls_positions"] = np.zeros((6, 1), np.int32)
    out = _apply(model, params, one, packed=True)
    real = feats["attention_mask"].astype(bool)
    np.testing.assert_array_equal(
        np.asarray(out["last_hidden_state"])[real], np.asarray(plain["last_hidden_state"])[real]
    )
    np.testing.assert_array_equal(
        np.asarray(out["seq_relationship_logits"])[:, 0], plain["seq_relationship_logits"]
    )


def test_packed_mask_is_block_diagonal():
    seg = jnp.array([[1, 1, 2, 2, 2, 0]])
    mask = np.asarray(attention.packed_mask(seg).mask[0, 0])
    expected = np.array(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, expected)


def test_pallas_takes_segment_ids_and_matches_xla():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32) for _ in range(3))
    seg = jnp.array([[1] * 5 + [2] * 7 + [0] * 4, [1] * 16])
    packed = attention.packed_mask(seg)
    xla, _ = attention.dot_product_attention(q, k, v, packed, impl="xla")
    fused, _ = attention.dot_product_attention(q, k, v, packed, impl="pallas")
    real = np.asarray(seg) != 0
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(xla)[real], rtol=1e-5, atol=1e-5)
    auto, _ = attention.dot_product_attention(q, k, v, packed, impl="auto")
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))


def test_cudnn_refuses_packed_rows_in_one_line():
    with pytest.raises(ValueError, match=r"^model.attention_impl='cudnn' cannot take packed rows"):
        attention.check_packing("cudnn")
    for impl in attention.PACKED_IMPLS:
        attention.check_packing(impl)


def test_the_program_lowers_packed_steps_at_their_row_counts():
    """What the compile check compiles for a packed run: the packed abstract batch at a row count."""
    config = bert_tiny.get_config()
    config.model.update(hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=64)
    config.data.update(seq_length=32, max_predictions_per_seq=5, phase2_seq_length=64)
    config.data.update(phase2_max_predictions_per_seq=10, phase2_fraction=0.5)
    config.data.update(packing=True, max_sequences_per_row=4)
    config.update(num_train_steps=4, warmup_steps=1, global_batch_size=32)
    mesh = train_lib.make_mesh(config.mesh_shape, {"global_batch_size": 32}, 1)
    program = program_lib.build(config, mesh, 64)
    phase2 = program.phase("phase2")
    assert program.packed_rows(phase2) == (8, 16, 24, 32)
    batch = program.abstract_batch(phase2, rows=16)
    budget = packing.prediction_budget(64, 4, 10, config.data.masked_lm_prob)
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (16, 64), "token_type_ids": (16, 64), "attention_mask": (16, 64),
        "segment_ids": (16, 64), "position_ids": (16, 64), "cls_positions": (16, 4),
        "cls_weights": (16, 4), "next_sentence_labels": (16, 4),
        "masked_lm_positions": (16, budget), "masked_lm_ids": (16, budget),
        "masked_lm_weights": (16, budget),
    }  # fmt: skip
    text = program.lower("phase2").as_text()
    assert "tensor<32x64xi32" in text  # the default: every sequence alone in a row
    assert program.abstract_batch(program.phase("eval"))["segment_ids"].shape == (32, 32)


def test_real_flops_and_row_agreement_are_the_same_packed_or_not():
    feats = _unpacked()
    packed, _ = _pack(feats)
    cfg = bert.BertConfig(**CFG)
    assert pretrain.real_flops(cfg, packed) == pretrain.real_flops(cfg, feats) > 0
    # One host: packed rows rounded up to the devices with empty rows; unpacked batches untouched.
    [(_, padded), (_, plain)] = pretrain.agreed_rows([(0, packed), (1, feats)], 1, multiple=8)
    assert len(padded["input_ids"]) == 8 and plain is feats
    assert int(padded["attention_mask"].sum()) == int(feats["attention_mask"].sum())
    assert float(padded["cls_weights"].sum()) == 6.0


def test_eval_outputs_are_the_same_per_example_for_full_trimmed_and_bucketed_rows():
    """Fine-tuning's eval and predict run full rows (`batching.eval_batches`, whatever `batch_lengths` the
    recipe trains with); the rows cut as "trim" (each batch to its ladder rung) or "bucket" (examples sorted
    into length buckets, other companions) give every example the same logits, so dev scores and predictions
    do not depend on the choice."""
    from bert_jax.data import batching  # noqa: PLC0415

    rng = np.random.default_rng(3)
    n, width = 21, 64
    # Eval batches of 8: the first holds a 60-token example, the second at most 29 tokens, the last 15.
    lengths = np.concatenate([rng.integers(3, 30, 16), rng.integers(3, 16, 5)])
    lengths[2] = 60
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    feats = {
        "input_ids": (rng.integers(5, 64, (n, width)) * mask).astype(np.int32),
        "token_type_ids": ((np.arange(width)[None] >= lengths[:, None] // 2) * mask).astype(
            np.int32
        ),
        "attention_mask": mask,
        "example_ids": np.arange(n, dtype=np.int32),
    }
    model = bert.build_model(
        bert.BertConfig(**{**CFG, "max_position_embeddings": width}), "classification", num_labels=3
    )
    params = model.init(jax.random.key(0), feats["input_ids"][:1])["params"]
    apply = jax.jit(
        lambda b: model.apply(
            {"params": params}, b["input_ids"], b["token_type_ids"], b["attention_mask"]
        )["logits"]
    )

    def outputs(batches):
        out, widths = {}, set()
        for b in batches:
            widths.add(b["input_ids"].shape[1])
            for i, logits in zip(b["example_ids"], np.asarray(apply(b)), strict=True):
                if i >= 0:  # eval's padding rows
                    out[int(i)] = logits
        return out, widths

    ladder = batching.length_ladder(width)
    full, full_widths = outputs(batching.eval_batches(feats, 8))
    trimmed, trim_widths = outputs(
        packing.trim_batch(b, np.arange(8), batching.trimmed_length(b["attention_mask"], ladder))
        for b in batching.eval_batches(feats, 8)
    )
    buckets = packing.bucket_by_length(lengths, 8, ladder)
    bucketed, bucket_widths = outputs(packing.trim_batch(feats, m, bound) for m, bound in buckets)
    assert full_widths == {64} and trim_widths == bucket_widths == {16, 32, 64}
    assert sorted(full) == sorted(trimmed) == sorted(bucketed) == list(range(n))
    for i in range(n):
        np.testing.assert_allclose(trimmed[i], full[i], rtol=1e-5, atol=1e-6, err_msg=str(i))
        np.testing.assert_allclose(bucketed[i], full[i], rtol=1e-5, atol=1e-6, err_msg=str(i))
