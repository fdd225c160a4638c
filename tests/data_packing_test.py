"""Sequence packing: the SPFHP packer, the packed batch contract, the loader's packed steps, padding."""

import hashlib
import pathlib

import numpy as np
import pytest

from bert_jax.configs.pretraining import data_config
from bert_jax.data import loader as loader_lib
from bert_jax.data import packing, padding

BATCH = 64


def _loader(**overrides):
    cfg = data_config()
    cfg.update(dict(phase2_fraction=0.5))
    cfg.update(overrides)
    return loader_lib.make_pretraining_loader(cfg, global_batch_size=BATCH, num_train_steps=10)


@pytest.fixture(scope="module")
def packed_loader():
    return _loader(packing=True)


def _check_rows(rows, lengths, max_length, max_per_row):
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))  # every sequence exactly once
    for r in rows:
        assert sum(lengths[i] for i in r) <= max_length
        assert 1 <= len(r) <= max_per_row
        assert r == sorted(r)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_spfhp_best_fit_longest_first_on_a_worked_example():
    # 6 opens row A (room 4), 5 opens B (room 5), 4 fills A exactly, 3 joins B (room 2, now
    # holding K=2), 2 cannot join a full-count row and opens C.
    rows = packing.pack_lengths([6, 5, 4, 3, 2], 10, 2)
    assert rows == [[0, 2], [1, 3], [4]]
    assert packing.pack_lengths([6, 5, 4, 3, 2], 10, 3) == [[0, 2], [1, 3, 4]]


@pytest.mark.parametrize("seed,max_length,max_per_row", [(0, 128, 3), (1, 512, 16), (2, 64, 1)])
def test_packer_invariants_and_determinism(seed, max_length, max_per_row):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, 300)
    rows = packing.pack_lengths(lengths, max_length, max_per_row)
    _check_rows(rows, lengths, max_length, max_per_row)
    assert packing.pack_lengths(lengths.copy(), max_length, max_per_row) == rows
    if max_per_row == 1:
        assert len(rows) == 300
    else:  # close to the token lower bound on uniform lengths
        assert len(rows) <= 1.1 * np.ceil(lengths.sum() / max_length) + 2


def test_row_buckets_and_prediction_budget():
    # Multiples of 8 from ceil(256 / 3) up: 1/64 growth is under one step of 8 there.
    assert packing.row_buckets(256, 3, 8) == tuple(range(88, 257, 8))
    ladder = packing.row_buckets(256, 16)
    assert ladder[:3] == (16, 17, 18) and ladder[-4:] == (247, 251, 255, 256)
    assert all(b <= a * (1 + 1 / 64) + 1 for a, b in zip(ladder[:-1], ladder[1:], strict=True))
    assert packing.row_buckets(10, 4) == tuple(range(3, 11))
    assert packing.row_buckets(10, 4, 4) == (4, 8, 12)
    # Dynamic masks: floor(0.15 * 128 + 3) = 22 < 3 * 20; static masks: K * max_predictions.
    assert packing.prediction_budget(128, 3, 20, 0.15) == 22
    assert packing.prediction_budget(512, 16, 80, 0.15) == 92
    assert packing.prediction_budget(128, 1, 20, 0.15) == 20
    assert packing.prediction_budget(128, 3, 20, 0.5) == 60  # capped at K * M
    assert packing.prediction_budget(16, 2, 8, 0.15) == 8  # one sequence's M always fits


def test_packer_keeps_rows_within_the_prediction_budget():
    assert packing.pack_lengths([10, 10, 10, 10], 40, 4) == [[0, 1, 2, 3]]
    rows = packing.pack_lengths([10, 10, 10, 10], 40, 4, [5, 5, 5, 5], 10)
    assert rows == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="a sequence has 11 predictions, a packed row holds 10"):
        packing.pack_lengths([10, 10], 40, 4, [11, 1], 10)


@pytest.mark.parametrize("whole_word", [False, True])
def test_dynamic_masks_never_bind_the_budget(whole_word):
    # The budget's bound is a proof for masks drawn by the loader: the constrained packing is the
    # plain length packing on every step.
    loader = _loader(packing=True, whole_word_mask=whole_word)
    for step in range(0, 10, 3):
        feats = loader.unpacked_batch(step)
        shapes = loader.packing_shapes(step)
        lengths, length = feats["attention_mask"].sum(1), feats["input_ids"].shape[1]
        preds = (feats["masked_lm_weights"] > 0).sum(1)
        k, budget = shapes["max_per_row"], shapes["predictions_per_row"]
        assert packing.pack_lengths(lengths, length, k, preds, budget) == packing.pack_lengths(
            lengths, length, k
        )


def test_original_tfrecords_with_static_masks_pack_and_unpack():
    golden = pathlib.Path(__file__).resolve().parent / "golden" / "pieces.tfrecord"
    cfg = data_config()
    cfg.update(
        dict(
            source="instances",
            input_pattern=str(golden),
            eval_input_pattern=str(golden),
            phase2_fraction=0.0,
            # The file's 64-token instances (mostly full) in 128-token rows: about two per row.
            seq_length=128,
            max_predictions_per_seq=10,
            masking="static",
            packing=True,
            max_sequences_per_row=4,
        )
    )
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=100)
    feats, packed, where = _pack(loader, 0)
    assert len(packed["input_ids"]) <= 5
    assert packed["masked_lm_positions"].shape[1] == packing.prediction_budget(128, 4, 10, 0.15)
    back = packing.unpack_features(packed, where, 10)
    for k in feats:
        np.testing.assert_array_equal(back[k], feats[k], err_msg=k)
    for k, v in loader.batch(0).items():
        np.testing.assert_array_equal(v, packed[k], err_msg=k)


def _pack(loader, step):
    feats = loader.unpacked_batch(step)
    packed, where = packing.pack_features(feats, **loader.packing_shapes(step))
    return feats, packed, where


@pytest.mark.parametrize("step", [0, 7])  # phase 1 (128) and phase 2 (512)
def test_round_trip_and_every_token_lands_where_claimed(packed_loader, step):
    feats, packed, where = _pack(packed_loader, step)
    shapes = packed_loader.packing_shapes(step)
    length = feats["input_ids"].shape[1]
    rows = len(packed["input_ids"])
    assert rows in shapes["buckets"] and rows < BATCH
    assert packed["masked_lm_positions"].shape == (rows, shapes["predictions_per_row"])
    back = packing.unpack_features(packed, where, feats["masked_lm_ids"].shape[1])
    assert sorted(back) == sorted(feats)
    for k in feats:
        np.testing.assert_array_equal(back[k], feats[k], err_msg=k)
        assert back[k].dtype == feats[k].dtype
    # Token by token: sequence i, column j sits at (row, offset + j) with segment slot+1, position j.
    n_tok = feats["attention_mask"].sum(1)
    for i in range(BATCH):
        r, s, o = where["row"][i], where["slot"][i], where["offset"][i]
        cols = slice(o, o + n_tok[i])
        np.testing.assert_array_equal(
            packed["input_ids"][r, cols], feats["input_ids"][i, : n_tok[i]]
        )
        assert (packed["segment_ids"][r, cols] == s + 1).all()
        np.testing.assert_array_equal(packed["position_ids"][r, cols], np.arange(n_tok[i]))
    # Padding is exactly the columns no sequence claims.
    assert packed["attention_mask"].sum() == n_tok.sum()
    assert ((packed["segment_ids"] > 0) == (packed["attention_mask"] == 1)).all()
    assert packed["input_ids"][packed["attention_mask"] == 0].max(initial=0) == 0
    assert packed["segment_ids"].max() <= shapes["max_per_row"]
    assert packed["attention_mask"].shape[1] == length


def test_masked_lm_positions_are_readdressed_into_the_row(packed_loader):
    feats, packed, where = _pack(packed_loader, 1)
    w = packed["masked_lm_weights"] > 0
    assert w.sum() == (feats["masked_lm_weights"] > 0).sum()
    rows = np.broadcast_to(np.arange(len(w))[:, None], w.shape)
    pos = packed["masked_lm_positions"]
    # Each prediction points at a real token of the row, in increasing order per row.
    assert (packed["attention_mask"][rows[w], pos[w]] == 1).all()
    for r in range(len(w)):
        assert (np.diff(pos[r][w[r]]) > 0).all()
    # The packed prediction at (row, col) is the unpacked one of the sequence owning col.
    got = {
        (int(r), int(c)): int(t)
        for r, c, t in zip(rows[w], pos[w], packed["masked_lm_ids"][w], strict=True)
    }
    want = {}
    for i, k in zip(*np.nonzero(feats["masked_lm_weights"] > 0), strict=True):
        col = int(where["offset"][i] + feats["masked_lm_positions"][i, k])
        want[(int(where["row"][i]), col)] = int(feats["masked_lm_ids"][i, k])
    assert got == want


def test_next_sentence_labels_sit_at_each_sequence_cls(packed_loader):
    feats, packed, where = _pack(packed_loader, 2)
    cls_id = packed_loader.tokenizer.cls_id
    filled = packed["cls_weights"] > 0
    assert filled.sum() == BATCH
    rows = np.broadcast_to(np.arange(len(filled))[:, None], filled.shape)
    cls = packed["cls_positions"]
    assert (packed["input_ids"][rows[filled], cls[filled]] == cls_id).all()
    assert (packed["position_ids"][rows[filled], cls[filled]] == 0).all()
    # Slot k's [CLS] starts segment k + 1.
    slots = np.broadcast_to(np.arange(filled.shape[1])[None, :], filled.shape)
    assert (packed["segment_ids"][rows[filled], cls[filled]] == slots[filled] + 1).all()
    np.testing.assert_array_equal(
        packed["next_sentence_labels"][where["row"], where["slot"]], feats["next_sentence_labels"]
    )
    assert packed["next_sentence_labels"][~filled].max(initial=0) == 0


def test_packed_steps_are_pure_functions_of_the_step(packed_loader):
    fresh = _loader(packing=True)
    for step in (0, 3, 6):
        a, b, c = packed_loader.batch(step), packed_loader.batch(step), fresh.batch(step)
        assert sorted(a) == sorted(c)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])
    it = fresh.iterate(4)
    step, batch = next(it)
    it.close()
    assert step == 4
    np.testing.assert_array_equal(batch["segment_ids"], packed_loader.batch(4)["segment_ids"])


def test_unpacked_batches_are_byte_identical_when_off():
    # The digest of today's batches (verified against the loader before packing existed).
    cfg = data_config()
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=8, num_train_steps=10)
    h = hashlib.sha256()
    for step in (0, 9):
        b = loader.batch(step)
        for k in sorted(b):
            h.update(k.encode())
            h.update(np.ascontiguousarray(b[k]).tobytes())
    assert h.hexdigest() == "d765e2528a728e3f971986fca72f94e2371b6323e9466cf1c78a5b58238bedc3"
    assert sorted(loader.batch(0)) == [
        "attention_mask",
        "input_ids",
        "masked_lm_ids",
        "masked_lm_positions",
        "masked_lm_weights",
        "next_sentence_labels",
        "token_type_ids",
    ]


def test_bad_packing_settings_are_one_line_naming_the_field():
    with pytest.raises(ValueError, match=r"^data\.max_sequences_per_row=0: must be >= 1$"):
        _loader(packing=True, max_sequences_per_row=0)
    with pytest.raises(
        ValueError, match=r"^data\.seq_length=8: a packed row cannot hold .* 9 tokens$"
    ):
        packing.pack_lengths([3, 9], 8, 2)
    feats = {"input_ids": np.ones((4, 8), np.int32), "attention_mask": np.ones((4, 8), np.int32)}
    feats["token_type_ids"] = np.zeros((4, 8), np.int32)
    with pytest.raises(ValueError, match="4 sequences need 4 packed rows, more than 2"):
        packing.pack_features(feats, max_per_row=2, num_rows=2)


def test_pad_rows_appends_empty_rows(packed_loader):
    packed = packed_loader.batch(0)
    wider = packing.pad_rows(packed, len(packed["input_ids"]) + 3)
    for k, v in packed.items():
        np.testing.assert_array_equal(wider[k][: len(v)], v)
        assert not wider[k][len(v) :].any()


def test_padding_fractions_before_and_after_packing():
    # The paper's 256 sequences per step (fewer sequences pack less tightly).
    cfg = data_config()
    cfg.update(dict(phase2_fraction=0.5))
    loader = loader_lib.make_pretraining_loader(cfg, global_batch_size=256, num_train_steps=8)
    table = padding.padding_table(loader, (0, 4), batch_size=256, steps=4, max_per_row=16)
    got = {row[0]: row[1:4] for row in table}
    assert got["bundled corpus, phase 1"][0] == 128 and got["bundled corpus, phase 2"][0] == 512
    # The numbers before packing: ~48% at 128 on the bundled corpus, ~50% for Wikipedia.
    assert 0.40 < got["bundled corpus, phase 1"][1] < 0.55
    assert got["bundled corpus, phase 2"][1] > 0.8
    assert 0.45 < got["Wikipedia-like documents"][1] < 0.56
    assert got["GLUE-like sentence pairs"][1] > 0.6
    for name in got:  # the target: <= 5% after packing
        assert got[name][2] <= 0.05, name


def test_eval_batches_pack_like_training_batches():
    cfg = data_config()
    cfg.update(dict(packing=True))
    packed = loader_lib.make_eval_batches(cfg, global_batch_size=BATCH, num_batches=2)
    cfg.packing = False
    plain = loader_lib.make_eval_batches(cfg, global_batch_size=BATCH, num_batches=2)
    for p, u in zip(packed, plain, strict=True):
        assert p["cls_weights"].sum() == BATCH and len(p["input_ids"]) < BATCH
        assert p["attention_mask"].sum() == u["attention_mask"].sum()
        assert p["masked_lm_weights"].sum() == u["masked_lm_weights"].sum()


def _finetune_like(n=40, length=32, seed=0):
    """A CoNLL/SQuAD-like feature dict: per-token labels (word_index padded with -1), an answer
    span per sequence and a float label."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(4, length + 1, n)
    j = np.arange(length)[None, :]
    real = j < lens[:, None]
    start = rng.integers(0, lens)
    return {
        "input_ids": np.where(real, rng.integers(5, 99, (n, length)), 0).astype(np.int32),
        "token_type_ids": (real & (j >= lens[:, None] // 2)).astype(np.int32),
        "attention_mask": real.astype(np.int32),
        "labels": np.where(real, rng.integers(0, 9, (n, length)), 0).astype(np.int32),
        "word_index": np.where(real, j, -1).astype(np.int32),
        "start_positions": start.astype(np.int32),
        "end_positions": np.minimum(start + 2, lens - 1).astype(np.int32),
        "label": rng.random(n).astype(np.float32),
    }


def test_fine_tuning_features_pack_and_unpack():
    feats = _finetune_like()
    packed, where = packing.pack_features(
        feats,
        max_per_row=4,
        position_keys=("start_positions", "end_positions"),
        pad_values={"word_index": -1},
    )
    assert len(packed["input_ids"]) < len(feats["input_ids"])
    assert (
        packed["label"].shape == packed["cls_weights"].shape and packed["label"].dtype == np.float32
    )
    assert (packed["word_index"][packed["segment_ids"] == 0] == -1).all()
    # An answer span points at the same token in the packed row as in its own sequence.
    r, s = where["row"], where["slot"]
    rows_ids = packed["input_ids"][r, packed["start_positions"][r, s]]
    own_ids = feats["input_ids"][np.arange(40), feats["start_positions"]]
    np.testing.assert_array_equal(rows_ids, own_ids)
    back = packing.unpack_features(packed, where)
    assert sorted(back) == sorted(feats)
    for k in feats:
        np.testing.assert_array_equal(back[k], feats[k], err_msg=k)
        assert back[k].dtype == feats[k].dtype
    with pytest.raises(ValueError, match=r"^choices: shape \(40, 4\) cannot be packed"):
        packing.pack_features({**feats, "choices": np.zeros((40, 4))}, max_per_row=4)


def test_bucket_by_length_groups_similar_lengths():
    lengths = padding.glue_like_lengths(1000)
    batches = packing.bucket_by_length(lengths, 32, (32, 64, 96, 128), seed=3)
    seen = np.concatenate([i for i, _ in batches])
    assert sorted(seen.tolist()) == list(range(1000))  # every example once
    for idx, bound in batches:
        assert len(idx) <= 32 and lengths[idx].max() <= bound
        assert bound == 32 or lengths[idx].min() > bound - 32  # the smallest bucket that holds it
    again = packing.bucket_by_length(lengths, 32, (32, 64, 96, 128), seed=3)
    assert all((a == b).all() and x == y for (a, x), (b, y) in zip(batches, again, strict=True))
    tokens = sum(int(lengths[i].sum()) for i, _ in batches)
    slots = sum(len(i) * b for i, b in batches)
    assert 1 - tokens / slots < 0.3  # 65% padding at a fixed 128
    full = packing.bucket_by_length(lengths, 32, (32, 64, 96, 128), drop_remainder=True)
    assert all(len(i) == 32 for i, _ in full) and [b for _, b in full] == sorted(b for _, b in full)
    with pytest.raises(ValueError, match="a sequence of 129 tokens exceeds the longest bucket 128"):
        packing.bucket_by_length([3, 129], 8, (64, 128))


def test_trim_batch_cuts_per_token_fields():
    feats = _finetune_like()
    feats["choice_ids"] = np.ones((40, 4, 32), np.int32)  # SWAG-like [N, choices, L]
    idx, bound = packing.bucket_by_length(feats["attention_mask"].sum(1), 8, (16, 32))[0]
    out = packing.trim_batch(feats, idx, bound)
    assert out["input_ids"].shape == (len(idx), 16) and out["choice_ids"].shape == (len(idx), 4, 16)
    np.testing.assert_array_equal(out["label"], feats["label"][idx])
    np.testing.assert_array_equal(out["input_ids"], feats["input_ids"][idx, :16])
    assert out["attention_mask"].sum() == feats["attention_mask"][idx].sum()  # nothing real cut
