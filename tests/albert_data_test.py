"""`--original_rng --spm_model_file`: identical output to google-research/albert's create_pretraining_data.py.

The golden albert_*.tfrecord files in tests/golden were written by the original ALBERT tool itself, after
`np.random.seed(numpy_seed)` (see the README there); these tests rebuild them with bert_jax and compare every
feature of every instance, then feed one to the albert recipe's loader and MLM + SOP objective.
"""

import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from flax import linen as nn

from bert_jax.data import albert_vocab, original_albert, tfrecord
from bert_jax.data import create_pretraining_data as cpd

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
SPM = str(
    pathlib.Path(__file__).resolve().parent.parent / "bert_jax/assets/albert_sample_spm.model"
)
CORPUS = ",".join(str(GOLDEN / f) for f in ("corpus_a.txt", "corpus_b.txt", "albert_extra.txt"))
# The flags of tests/golden/make_golden.py's ALBERT_RUNS (numpy_seed: the seed put before the original's main).
RUNS = {
    "albert_ngram": [
        "--max_seq_length=64",
        "--max_predictions_per_seq=10",
        "--dupe_factor=3",
        "--short_seq_prob=0.3",
        "--random_seed=7",
        "--numpy_seed=7",
    ],
    "albert_short": [
        "--do_whole_word_mask=False",
        "--favor_shorter_ngram=False",
        "--max_seq_length=24",
        "--max_predictions_per_seq=6",
        "--masked_lm_prob=0.25",
        "--dupe_factor=2",
        "--random_seed=12345",
        "--numpy_seed=99",
    ],
    "albert_permute": [
        "--do_permutation=True",
        "--random_next_sentence=True",
        "--do_lower_case=False",
        "--ngram=2",
        "--max_seq_length=40",
        "--max_predictions_per_seq=5",
        "--dupe_factor=1",
        "--random_seed=3",
        "--numpy_seed=5",
    ],
}
OUTPUTS = {
    "albert_ngram": ["albert_ngram.tfrecord"],
    "albert_short": ["albert_short-0.tfrecord", "albert_short-1.tfrecord"],
    "albert_permute": ["albert_permute.tfrecord"],
}


def _flags(argv):
    values = flags.FlagValues()
    cpd.define_flags(values)
    values(["create_pretraining_data", *argv])
    return values


def _examples(path) -> list[dict[str, np.ndarray]]:
    return [tfrecord.parse_example(blob) for blob in tfrecord.TFRecordFile(path)]


def _run(tmp_path, run, extra=()):
    outputs = [tmp_path / name for name in OUTPUTS[run]]
    argv = [
        "--original_rng",
        f"--input_file={CORPUS}",
        f"--spm_model_file={SPM}",
        f"--output_file={','.join(map(str, outputs))}",
        *RUNS[run],
        *extra,
    ]
    return cpd.run(_flags(argv)), outputs


@pytest.mark.parametrize("run", sorted(RUNS))
def test_original_rng_equals_the_original_albert_tool(tmp_path, run):
    counts, outputs = _run(tmp_path, run)
    assert (
        counts["instances"] == {"albert_ngram": 156, "albert_short": 153, "albert_permute": 72}[run]
    )
    for out in outputs:  # same instances, same order, same file of the round-robin, every feature
        got, want = _examples(out), _examples(GOLDEN / out.name)
        assert len(got) == len(want) > 0
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert sorted(g) == sorted(w) == sorted(original_albert.FEATURES)  # map order varies
            for name in w:
                np.testing.assert_array_equal(g[name], w[name], err_msg=f"{out.name} {i} {name}")
                assert g[name].dtype == w[name].dtype


def test_golden_covers_ngrams_sentence_order_truncation_and_permutation():
    rows = _examples(GOLDEN / "albert_ngram.tfrecord")
    labels = np.array([r["next_sentence_labels"][0] for r in rows])
    assert (
        0.3 < labels.mean() < 0.8
    )  # sentence order: about half swapped (plus one-sentence chunks)
    # n-grams of whole words: some masked run of consecutive positions spans 2+ words.
    spans = 0
    for r in rows:
        k = int(r["masked_lm_weights"].sum())
        pos = r["masked_lm_positions"][:k]
        runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
        spans += sum(int(r["token_boundary"][run].sum()) >= 2 for run in runs)
        n = int(r["input_mask"].sum())
        assert r["input_ids"][0] == 2 and r["input_ids"][n - 1] == 3 and 1 <= k <= 10
        assert r["token_boundary"][0] == 1 and r["token_boundary"][n:].sum() == 0
    assert spans >= 20
    short = _examples(GOLDEN / "albert_short-0.tfrecord")
    assert (
        sum(int(r["input_mask"].sum()) == 24 for r in short) >= 50
    )  # truncated to the short length
    permuted = _examples(GOLDEN / "albert_permute.tfrecord")
    assert {len(r["masked_lm_positions"]) for r in permuted} == {10}  # do_permutation: 2 x 5 slots
    assert max(int(r["masked_lm_weights"].sum()) for r in permuted) > 5


def test_numpy_seed_drives_the_ngram_draws(tmp_path):
    _, (out,) = _run(tmp_path, "albert_ngram", ["--numpy_seed=8"])
    got, want = _examples(out), _examples(GOLDEN / "albert_ngram.tfrecord")
    differ = sum(
        not np.array_equal(g["masked_lm_positions"], w["masked_lm_positions"])
        for g, w in zip(got, want, strict=True)
    )
    assert len(got) == len(want) and differ > len(want) // 2


def test_original_word_rule_text_preprocessing_and_digit_comma_pieces():
    start = albert_vocab.is_word_start
    # "€"/"£" are bytes in the original's set: alone a foreign piece (a start), beside letters not punctuation.
    cases = {
        "\u2581a": True,
        "b": False,
        "~^": False,
        ",": True,
        "<unk>": True,
        "\u98db": True,
        "a\u20ac": True,
    }
    assert {p: start(p) for p in cases} == cases
    assert original_albert.preprocess_text("  \uff23\uff41f\u00e9\u00a0X\t ", True) == "cafe x"
    assert (
        original_albert.preprocess_text("\u0301\u0308", True) == ""
    )  # marks only: a document break

    class Model:  # a model with a "1990," piece: re-encoded without "▁", the "," split off
        def EncodeAsPieces(self, text):
            return {
                "in 1990, x": ["\u2581in", "\u25811990,", "\u2581x"],
                "1990": ["\u2581", "1990"],
            }[text]

    pieces = original_albert.SentencePieces(SPM)
    pieces._sp = Model()
    assert pieces.encode("in 1990, x") == ["\u2581in", "\u2581", "1990", ",", "\u2581x"]


def test_albert_flags_and_defaults():
    values = _flags(["--original_rng", f"--spm_model_file={SPM}", "--max_seq_length=64"])
    assert [
        cpd._albert(values, n) for n in ("do_whole_word_mask", "dupe_factor", "max_seq_length")
    ] == [
        True,
        40,
        64,
    ]
    bad = [
        (
            ["--ngram=2", "--input_file=x", "--vocab_file=v", "--output_file=o"],
            "--ngram is a flag of ALBERT's tool",
        ),
        (
            [f"--spm_model_file={SPM}", "--output_file=o.array_record", "--input_file=x"],
            "written as TFRecords",
        ),
        ([f"--spm_model_file={SPM}", "--input_file=x"], "--output_file is required"),
    ]
    for argv, message in bad:
        with pytest.raises(ValueError, match=message):
            cpd.run(_flags(["--original_rng", *argv]))
    with pytest.raises(
        ValueError, match="--spm_model_file replays ALBERT's tool: it needs --original_rng"
    ):
        cpd.run(_flags([f"--spm_model_file={SPM}", "--input_file=x", "--output_file=o"]))


def test_albert_recipe_reads_the_original_s_instances_into_mlm_sop():
    """The albert recipe's loader on the original's file: static masks and the order label arrive as the file
    holds them, and MLM + SOP's sentence-order term is the one that reads the label."""
    from bert_jax.configs import albert_tiny
    from bert_jax.data.loader import make_pretraining_loader
    from bert_jax.models import registry

    path = GOLDEN / "albert_ngram.tfrecord"
    c = albert_tiny.get_config()
    c.data.update(source="instances", input_pattern=str(path), masking="static", seq_length=64)
    c.data.max_predictions_per_seq = 10
    loader = make_pretraining_loader(
        c.data, global_batch_size=8, num_train_steps=4, vocab_file=c.vocab_file, family=c.family
    )
    batch = loader.batch(0)
    rows = {tuple(r["input_ids"]): r for r in _examples(path)}
    for i in range(8):
        row = rows[tuple(batch["input_ids"][i])]
        for ours, theirs in [
            ("next_sentence_labels", "next_sentence_labels"),
            ("token_type_ids", "segment_ids"),
            ("attention_mask", "input_mask"),
            ("masked_lm_positions", "masked_lm_positions"),
            ("masked_lm_ids", "masked_lm_ids"),
        ]:
            np.testing.assert_array_equal(np.ravel(batch[ours][i]), row[theirs], err_msg=ours)
    assert set(batch["next_sentence_labels"].tolist()) == {0, 1}
    c.model.update(
        hidden_size=32, intermediate_size=64, embedding_size=16, vocab_size=1000, num_layers=2
    )
    model = registry.build(registry.config_from_fields(dict(c.model), "albert"), "pretraining")
    objective = registry.objective(c.objective, model)
    params = nn.unbox(registry.init_params(model, jax.random.key(0)))
    sums = jax.jit(lambda b: objective.loss_sums(params, b, None, True)[1])
    same, flipped = (
        sums(batch),
        sums({**batch, "next_sentence_labels": 1 - batch["next_sentence_labels"]}),
    )
    assert float(same["sop_count"]) == 8
    assert float(same["sop_correct_sum"]) + float(flipped["sop_correct_sum"]) == 8
    assert float(same["mlm_loss_sum"]) == float(flipped["mlm_loss_sum"])
    assert float(same["sop_loss_sum"]) != float(flipped["sop_loss_sum"])
