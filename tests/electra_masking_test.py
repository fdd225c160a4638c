"""ELECTRA's dynamic masking (`masking.mask_tokens_electra`, the electra family's `electra_masks`) against
google-research/electra's own `pretrain_helpers.mask`, run under TensorFlow on a CPU over the same rows
(tests/golden/electra_masking.json / .npz, written by tests/golden/make_electra_masking.py; README there).

TF's random draws cannot be replayed, so what is compared is what the rules fix: the per-row prediction count
(deterministic: exactly equal, row by row and over every real length of three recipes), the set of positions ever
chosen (exactly equal, on probe rows with [UNK], [MASK], [PAD], [CLS] and [SEP] inside the text), the layout, and
the rates (draws with replacement, 85% [MASK], uniform over the candidates) within statistical tolerance.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from bert_jax.configs import electra_tiny
from bert_jax.data import family_data, masking

GOLDEN = pathlib.Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location(
    "make_electra_masking", GOLDEN / "make_electra_masking.py"
)
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

MASKING_CFG = {"masked_lm_prob": 0.15, "whole_word": False, "mask_token_fraction": 0.85}
# Statistics that are rules, not rates: equal exactly.
EXACT = [
    "draws", "rows", "count_is_deterministic", "count_rule_max_1_min_N_round_half_even_f32", "valid_slots_first",
    "padding_slots_position_0_id_0", "ids_are_the_originals", "chosen_outside_candidates",
    "changed_outside_chosen", "chosen_neither_mask_nor_kept", "slots",
]  # fmt: skip


@pytest.fixture(scope="module")
def golden():
    stats = json.loads((GOLDEN / "electra_masking.json").read_text())
    with np.load(GOLDEN / "electra_masking.npz") as arrays:
        return stats, dict(arrays)


def draw(ids, mask, tok, seeds, max_predictions):
    """bert_jax's ELECTRA masks of the rows, one draw per seed, stacked as the golden's [draws, rows, ...]."""
    feats = {"input_ids": ids, "attention_mask": mask}
    outs = [
        family_data.electra_masks(
            feats, np.random.default_rng(s), max_predictions, tok, MASKING_CFG
        )
        for s in seeds
    ]
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def within(ours, theirs, sd, sigmas=5.0):
    return abs(ours - theirs) <= sigmas * sd


def test_masks_follow_the_original_rules_and_rates(golden):
    stats, arrays = golden
    rows, tok = make.electra_rows()
    assert make.fingerprint(rows["input_ids"], rows["attention_mask"]) == stats["rows_sha256"]
    n_pred, special = (
        stats["max_predictions"],
        {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "mask_id": tok.mask_id},
    )
    out = draw(rows["input_ids"], rows["attention_mask"], tok, range(len(stats["seeds"])), n_pred)
    ours = make.summarize(
        rows["input_ids"],
        rows["attention_mask"],
        out,
        max_predictions=n_pred,
        mask_prob=0.15,
        **special,
    )
    theirs = stats["rows"]
    assert {k: ours[k] for k in EXACT} == {k: theirs[k] for k in EXACT}
    np.testing.assert_array_equal(ours["arrays"]["count_per_row"], arrays["rows_count_per_row"])
    # Draws with replacement: distinct positions as expected for independent draws (7,662 fewer than slots in
    # the original), not one per slot as without replacement.
    slots, dups = theirs["slots"], theirs["slots"] - theirs["distinct_positions"]
    assert dups > 7000 and ours["slots"] - ours["distinct_positions"] > 7000
    for s in (ours, theirs):
        assert within(
            s["distinct_positions"], s["expected_distinct_with_replacement"], np.sqrt(dups)
        )
    assert within(ours["distinct_positions"], theirs["distinct_positions"], np.sqrt(2 * dups))
    draws = theirs["draws"] * theirs["rows"]
    p = theirs["rows_with_a_repeated_position"] / draws
    sd = np.sqrt(2 * p * (1 - p) * draws)
    assert within(
        ours["rows_with_a_repeated_position"], theirs["rows_with_a_repeated_position"], sd
    )
    # 85% of the slots [MASK], the rest kept; a position drawn twice is [MASK] if either draw says so.
    for key in ("mask_share_single_slot_positions", "mask_share_all_positions"):
        assert within(ours[key], theirs[key], np.sqrt(2 * 0.85 * 0.15 / slots))
    assert within(theirs["mask_share_single_slot_positions"], 0.85, np.sqrt(0.85 * 0.15 / slots))
    # Slots in draw order: a row of several slots is almost never increasing.
    assert (
        ours["multi_slot_rows_strictly_increasing"] < 0.01
        and theirs["multi_slot_rows_strictly_increasing"] < 0.01
    )
    # Uniform over the candidates: selections per position against the expectation, and against each other.
    expected = arrays["rows_expected_by_position"]
    np.testing.assert_allclose(ours["arrays"]["expected_by_position"], expected)
    live = expected > 0
    assert not live[0] and arrays["rows_selections_by_position"][0] == 0  # [CLS]
    dof = live.sum() - 1
    bound = dof + 6 * np.sqrt(2 * dof)
    for counts in (ours["arrays"]["selections_by_position"], arrays["rows_selections_by_position"]):
        assert ((counts[live] - expected[live]) ** 2 / expected[live]).sum() < bound
    a, b = (
        ours["arrays"]["selections_by_position"][live],
        arrays["rows_selections_by_position"][live],
    )
    assert ((a - b) ** 2 / (a + b)).sum() < bound


def test_candidates_and_counts_equal_the_originals(golden):
    stats, arrays = golden
    tok = _tokenizer()
    ids, mask = arrays["probe_input_ids"], arrays["probe_attention_mask"].astype(np.int32)
    n_pred, special = (
        stats["max_predictions"],
        {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "mask_id": tok.mask_id},
    )
    out = draw(
        np.tile(ids, (stats["probe_repeats"], 1)),
        np.tile(mask, (stats["probe_repeats"], 1)),
        tok,
        [0],
        n_pred,
    )
    out = {k: v.reshape(-1, len(ids), v.shape[-1]) for k, v in out.items()}
    ours = make.summarize(ids, mask, out, max_predictions=n_pred, mask_prob=0.15, **special)
    assert {k: ours[k] for k in EXACT} == {k: stats["probe"][k] for k in EXACT}
    # Every position the original ever chose, and no other: real tokens but [CLS], [SEP], [MASK]; [UNK] and the
    # [PAD] id inside the text are candidates.
    ever = arrays["probe_ever_chosen"]
    np.testing.assert_array_equal(ours["arrays"]["ever_chosen"], ever)
    np.testing.assert_array_equal(
        ever, (mask > 0) & ~np.isin(ids, [tok.cls_id, tok.sep_id, tok.mask_id])
    )
    assert ever[ids == tok.unk_id].all() and ever[(ids == tok.pad_id) & (mask > 0)].all()
    # One candidate, two predictions ([CLS] w [MASK] x 11 [SEP]): both slots draw it, it is predicted twice.
    one = out["masked_lm_positions"][:, 14, :2]
    assert (one == 1).all() and (out["masked_lm_weights"][:, 14].sum(1) == 2).all()
    # The count over every real length of electra's small, base and large recipes (the original's weights).
    for name, sweep in stats["sweeps"].items():
        lengths = np.arange(sweep["first_length"], sweep["seq_length"] + 1)
        counts = masking.electra_num_predictions(
            lengths, sweep["mask_prob"], sweep["max_predictions"]
        )
        np.testing.assert_array_equal(counts, sweep["count_by_length"], err_msg=name)
    assert stats["sweeps"]["small"]["count_by_length"][10 - 3] == 2  # 1.5 rounds to 2 ...
    assert (
        stats["sweeps"]["small"]["count_by_length"][30 - 3] == 4
    )  # ... and 4.5 to 4: half to even


def _tokenizer():
    from bert_jax.data import corpus as corpus_lib
    from bert_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(str(corpus_lib.SAMPLE_VOCAB), True)


def test_electra_path_masks_as_the_original_and_refuses_other_masking():
    assert family_data.data_path("electra")["mask"] is family_data.electra_masks
    data = electra_tiny.get_config().data
    family_data.check_family(data, "electra")
    for field, value, message in [
        (
            "whole_word_mask",
            True,
            "data.whole_word_mask=True: ELECTRA's pretrain_helpers.mask masks single tokens",
        ),
        ("max_ngram", 3, "data.max_ngram=3: ELECTRA's pretrain_helpers.mask masks single tokens"),
        (
            "random_token_fraction",
            0.1,
            "data.random_token_fraction=0.1: ELECTRA's pretrain_helpers.mask makes no",
        ),
    ]:
        cfg = data.copy_and_resolve_references()
        with cfg.unlocked():
            cfg[field] = value
        with pytest.raises(ValueError, match="^" + message.replace(".", r"\.")) as err:
            family_data.check_family(cfg, "electra")
        assert "\n" not in str(err.value)
    # A row without candidates ([CLS] [SEP]) gets padding slots only (the original divides by zero there).
    ids, mask = np.array([[2, 3, 0, 0], [2, 7, 3, 0]]), np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    out = masking.mask_tokens_electra(
        ids,
        mask,
        np.random.default_rng(0),
        max_predictions=2,
        mask_prob=0.15,
        cls_id=2,
        sep_id=3,
        mask_id=4,
    )
    assert (
        out["masked_lm_weights"].tolist() == [[0, 0], [1, 0]]
        and out["masked_lm_positions"].tolist()[1][0] == 1
    )
