"""RoBERTa's data path against fairseq's own output (tests/golden/README.md, "fairseq's TokenBlockDataset and
MaskTokensDataset"): the same line ids, FULL-SENTENCES rows equal to fairseq's `complete` blocks, and
`fairseq_replay` giving fairseq's masked inputs and targets exactly, for both of fairseq's generators."""

import numpy as np
import pytest
from etils import epath

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import fairseq_replay, full_sentences
from bert_jax.data.instances import TokenizedCorpus
from bert_jax.data.tokenizer import ByteLevelBPETokenizer

GOLDEN = epath.Path(__file__).parent / "golden"
BOS, PAD, EOS, MASK, VOCAB = 0, 1, 2, 4, 2048
# make_roberta_golden.py's runs: tokens_per_sample, seeds, epochs.
RUNS = [(64, (1, 7), (1, 2)), (32, (1,), (1, 3))]
# The fairseq source each golden file was made from, and the generator its MaskTokensDataset seeds.
FAIRSEQ = {"v0.12.2": "numpy_seed", "main": "default_rng"}


def _golden(name):
    return np.load(GOLDEN / f"roberta_fairseq_{name}.npz")


def _split(flat, lengths):
    return np.split(flat.astype(np.int64), np.cumsum(lengths)[:-1])


@pytest.fixture(scope="module")
def corpus():
    tok = ByteLevelBPETokenizer(
        corpus_lib.SAMPLE_BPE / "vocab.json", corpus_lib.SAMPLE_BPE / "merges.txt"
    )
    stats = corpus_lib.CorpusStats()
    docs = list(corpus_lib.read_text_documents(GOLDEN / "roberta_corpus.txt", stats))
    return TokenizedCorpus.from_documents(docs, tok)


def test_rows_are_fairseqs_complete_blocks(corpus):
    """bert_jax reads the corpus into the ids fairseq was given (blank lines: documents), and its FULL-SENTENCES
    rows are fairseq's blocks, <s> first; the one block longer than tokens_per_sample is cut to fit."""
    golden = _golden("v0.12.2")
    lines = golden["line_lengths"]
    np.testing.assert_array_equal(corpus.tokens, golden["line_ids"])
    np.testing.assert_array_equal(np.diff(corpus.sentence_starts), lines[lines > 0])
    assert corpus.num_documents == (lines == 0).sum() + 1 == 27
    for length, want_rows, long_row, break_first in [(64, 39, 18, 1), (32, 86, 41, 0)]:
        rows = full_sentences.full_sentences(
            corpus, length, cls_id=BOS, sep_id=EOS, pad_id=PAD, sentence_eos=True
        )
        blocks = _split(golden[f"tps{length}_blocks"], golden[f"tps{length}_block_lengths"])
        sizes = rows["attention_mask"].sum(1)
        assert len(blocks) == len(sizes) == want_rows
        assert [i for i, b in enumerate(blocks) if len(b) > length] == [long_row]
        assert len(blocks[long_row]) == 93  # <s>, a 91-id sentence, </s>
        for i, block in enumerate(blocks):
            # fairseq's over-long block: here its first length - 1 tokens and the sentence's </s>.
            want = np.append(block[: length - 1], EOS) if i == long_row else block
            np.testing.assert_array_equal(rows["input_ids"][i, : sizes[i]], want)
        assert np.all(rows["input_ids"][sizes[:, None] <= np.arange(length)] == PAD)
        # A document break that does not fit starts the next block, as in fairseq: `<s> </s> ...`.
        assert (
            (rows["input_ids"][:, 1] == EOS).sum()
            == sum(b[1] == EOS for b in blocks)
            == break_first
        )
    # fairseq's </s>: one per sentence (164) and per document break (26). The paper's layout (full_sentences'
    # default) has one per row (37) and per document break inside a row (25; one break falls at a row's end).
    assert (golden["tps64_blocks"] == EOS).sum() == len(corpus.sentence_starts) - 1 + 26 == 190
    paper = full_sentences.full_sentences(corpus, 64, cls_id=BOS, sep_id=EOS, pad_id=PAD)
    assert len(paper["input_ids"]) == 37 and (paper["input_ids"] == EOS).sum() == 37 + 25


@pytest.mark.parametrize("line", sorted(FAIRSEQ))
def test_masks_replay_fairseq_exactly(line):
    """mask_block gives fairseq's MaskTokensDataset source and target for every block, seed and epoch; mask_rows
    over padded rows gives the same as masked-LM features."""
    golden, generator = _golden(line), FAIRSEQ[line]
    options = {"vocab_size": VOCAB, "mask_id": MASK, "pad_id": PAD, "generator": generator}
    counts = []
    for length, seeds, epochs in RUNS:
        lengths = golden[f"tps{length}_block_lengths"]
        blocks = _split(golden[f"tps{length}_blocks"], lengths)
        for seed in seeds:
            for epoch in epochs:
                name = f"tps{length}_seed{seed}_epoch{epoch}"
                sources = _split(golden[f"{name}_source"], lengths)
                targets = _split(golden[f"{name}_target"], lengths)
                for index, block in enumerate(blocks):
                    source, target, predicted = fairseq_replay.mask_block(
                        block, seed, epoch, index, **options
                    )
                    np.testing.assert_array_equal(source, sources[index])
                    np.testing.assert_array_equal(target, targets[index])
                    np.testing.assert_array_equal(predicted, target != PAD)
                    counts.append(predicted.sum() - np.floor(0.15 * len(block)))
        # mask_rows on the padded blocks of the last run: the same positions, ids and masked inputs.
        width = int(lengths.max())
        ids = np.full((len(blocks), width), PAD)
        for i, block in enumerate(blocks):
            ids[i, : len(block)] = block
        real = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
        out = fairseq_replay.mask_rows(
            ids, real, seed, epoch, range(len(blocks)), max_predictions=15, **options
        )
        for i, (block, source, target) in enumerate(zip(blocks, sources, targets, strict=True)):
            np.testing.assert_array_equal(out["input_ids"][i, : len(block)], source)
            valid = out["masked_lm_weights"][i] > 0
            np.testing.assert_array_equal(
                out["masked_lm_positions"][i, valid], np.flatnonzero(target != PAD)
            )
            np.testing.assert_array_equal(out["masked_lm_ids"][i, valid], target[target != PAD])
        assert np.all(out["input_ids"][real == 0] == PAD)
    # int(0.15 * sz + u): floor or floor + 1, both seen.
    assert set(counts) == {0, 1}
    # The two generators draw differently from the same seed: the golden files differ, their blocks do not.
    other = _golden(next(name for name in FAIRSEQ if name != line))
    assert np.array_equal(golden["tps64_blocks"], other["tps64_blocks"])
    assert not np.array_equal(
        golden["tps64_seed1_epoch1_source"], other["tps64_seed1_epoch1_source"]
    )


def test_replay_refusals():
    """A block already holding <mask>, an unknown generator and a row past max_predictions: one line each."""
    block = np.array([BOS, 10, 11, EOS])
    with pytest.raises(
        ValueError, match=r"^block 3 already holds mask_id 4 \(fairseq asserts it never does\)$"
    ):
        fairseq_replay.mask_block(
            [BOS, MASK, EOS], 1, 1, 3, vocab_size=VOCAB, mask_id=MASK, pad_id=PAD
        )
    with pytest.raises(
        ValueError, match=r"^generator 'pcg' is not one of \('numpy_seed', 'default_rng'\)$"
    ):
        fairseq_replay.mask_block(
            block, 1, 1, 0, vocab_size=VOCAB, mask_id=MASK, pad_id=PAD, generator="pcg"
        )
    rows = np.tile(np.arange(10, 74), (1, 1))
    with pytest.raises(
        ValueError, match=r"^max_predictions 1 < 10, the most fairseq's masking draws in 64 tokens$"
    ):
        fairseq_replay.mask_rows(
            rows, np.ones_like(rows), 1, 1, [0], max_predictions=1, vocab_size=VOCAB, mask_id=MASK,
            pad_id=PAD,
        )  # fmt: skip


def test_the_loaders_masks_are_fairseqs(corpus):
    """The roberta data path end to end: FullSentenceStream's rows of two epochs (in its own shuffled order),
    masked by family_data's RoBERTa masks with data seed 7, are fairseq v0.12.2's masked blocks of epochs 1 and
    2 at seed 7, row for row (the over-long block aside: it is cut here)."""
    from bert_jax.data import family_data

    golden = _golden("v0.12.2")
    lengths = golden["tps64_block_lengths"]
    tok = ByteLevelBPETokenizer(
        corpus_lib.SAMPLE_BPE / "vocab.json", corpus_lib.SAMPLE_BPE / "merges.txt"
    )
    stream = full_sentences.FullSentenceStream(
        corpus, 64, 7, 0, cls_id=BOS, sep_id=EOS, pad_id=PAD, sentence_eos=True
    )
    rows = stream.rows(0, 2 * 39)
    cfg = {"masked_lm_prob": 0.15, "seed": 7}
    out = family_data.fairseq_masks(rows, None, 10, tok, cfg)
    np.testing.assert_array_equal(rows["_epoch"], np.repeat([0, 1], 39))
    assert sorted(rows["_block"][:39]) == list(range(39)) and list(rows["_block"][:39]) != list(
        range(39)
    )
    sizes = rows["attention_mask"].sum(1)
    for r, (epoch, block) in enumerate(zip(rows["_epoch"], rows["_block"], strict=True)):
        if block == 18:  # fairseq's 93-token block
            continue
        want = _split(golden[f"tps64_seed7_epoch{epoch + 1}_source"], lengths)[block]
        np.testing.assert_array_equal(out["input_ids"][r, : sizes[r]], want)
        target = _split(golden[f"tps64_seed7_epoch{epoch + 1}_target"], lengths)[block]
        valid = out["masked_lm_weights"][r] > 0
        np.testing.assert_array_equal(out["masked_lm_ids"][r, valid], target[target != PAD])
