"""ELECTRA's data path: build_pretraining_dataset.py's examples (`bert_jax.data.electra_examples`).

The golden TFRecords in tests/golden (electra_*.tfrecord) were written by the original tool itself (see the README
there); the first test rebuilds them with bert_jax and compares every feature of every example, in order.
"""

import pathlib
import random

import numpy as np
import pytest

from bert_jax.configs import electra_tiny
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import electra_examples, tfrecord
from bert_jax.data import loader as loader_lib
from bert_jax.data.instances import TokenizedCorpus
from bert_jax.data.tokenizer import load_tokenizer

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
PAIR = f"{GOLDEN / 'corpus_a.txt'},{GOLDEN / 'corpus_b.txt'}"
# name -> (corpus, max_seq_length, seed of `random`, do_lower_case, what the run covers: (examples, random
# target lengths drawn, examples without a second segment, examples whose second segment is not one run)).
RUNS = {
    "electra_pair": (PAIR, 48, 7, True, (29, 1, 11, 0)),
    "electra_cased": (PAIR, 24, 3, False, (46, 3, 16, 0)),
    "electra_mixed": (str(GOLDEN / "electra_corpus.txt"), 64, 2020, True, (71, 3, 29, 7)),
    "electra_long": (str(corpus_lib.SAMPLE_EVAL_CORPUS), 32, 12345, True, (250, 15, 74, 0)),
}
# The original's feature names -> bert_jax's.
NAMES = {"input_ids": "input_ids", "input_mask": "attention_mask", "segment_ids": "token_type_ids"}


class CountingRandom(random.Random):
    """`random.Random` counting its `randint` calls (the builder's random target lengths)."""

    randints = 0

    def randint(self, a, b):
        self.randints += 1
        return super().randint(a, b)


def _golden(name):
    f = tfrecord.TFRecordFile(GOLDEN / f"{name}.tfrecord")
    records = [tfrecord.parse_example(blob) for blob in f.read(range(len(f)))]
    return {key: np.stack([r[key] for r in records]) for key in NAMES}


def test_original_examples_equal_the_original_tool():
    """Every feature of every example, in the original's writing order, for four runs of
    build_pretraining_dataset.py (two files shuffled, cased, mixed line lengths, a longer corpus); and what the
    runs cover, counted on the replay's own draws."""
    for name, (pattern, length, seed, lower, covers) in RUNS.items():
        tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB), lower)
        got = electra_examples.original_examples(pattern, tok, length, seed)
        want = _golden(name)
        assert got["input_ids"].shape == want["input_ids"].shape == (covers[0], length), name
        for theirs, ours in NAMES.items():
            np.testing.assert_array_equal(got[ours], want[theirs], err_msg=f"{name} {theirs}")
        # The same corpus through the builder with a counting generator, to show what the run exercises.
        rng = CountingRandom(seed)
        files = sorted(corpus_lib.expand_pattern(pattern), key=lambda p: p.name)
        rng.shuffle(files)
        stats = corpus_lib.CorpusStats()
        docs = (d for p in files for d in corpus_lib.read_text_documents(p, stats))
        corpus = TokenizedCorpus.from_documents(docs, tok)
        examples, second = electra_examples.build_examples(corpus, length, rng)
        split = sum(
            bool(np.any(second[lo : hi - 1] & ~second[lo + 1 : hi])) for lo, hi, *_ in examples
        )
        one = sum(not second[lo:hi].any() for lo, hi, *_ in examples)
        assert (len(examples), rng.randints, one, split) == covers, name


@pytest.fixture(scope="module")
def sample():
    """The bundled corpus as ELECTRA examples of 64 tokens (the loader's build, seed 0)."""
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB), True)
    docs = corpus_lib.iter_text_documents(str(corpus_lib.SAMPLE_CORPUS), corpus_lib.CorpusStats())
    corpus = TokenizedCorpus.from_documents(docs, tok)
    ids = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id}
    return electra_examples.ElectraExampleStream(corpus, 64, 0, 0, **ids), tok


def test_examples_follow_the_builders_rules(sample):
    """On the bundled corpus: every sentence in one example, in order, never across documents; gathered up to the
    target; 5% random targets, uniform in [5, 64]; 10% one-segment examples and the 50% rule at the first
    segment's budget; segments trimmed to fit; rows laid out as [CLS] A [SEP] (B [SEP])."""
    stream, tok = sample
    corpus, examples, second = stream.corpus, stream.examples, stream.second
    lo, hi, len_a, len_b, target = examples.T
    sizes = np.diff(corpus.sentence_starts)
    assert lo[0] == 0 and hi[-1] == len(sizes) and np.array_equal(hi[:-1], lo[1:])
    doc_of = np.searchsorted(corpus.document_starts, np.arange(len(sizes)), side="right") - 1
    assert np.array_equal(doc_of[lo], doc_of[hi - 1])
    gathered = np.add.reduceat(sizes, lo)
    ends_doc = np.isin(hi, corpus.document_starts)
    # Mid-document, an example closes at the first sentence that reaches its target.
    assert np.all(gathered[~ends_doc] >= target[~ends_doc])
    assert np.all(gathered - sizes[hi - 1] < target)
    n = len(examples)
    assert n > 1500
    picked = target[1:][target[1:] != 64]
    assert abs(len(picked) / n - 0.05 * 59 / 60) < 0.015 and picked.min() >= 5
    assert abs(picked.mean() - 34) < 6  # uniform in [5, 63] (a draw of 64 is no change)
    # Where the budget (target - 3) // 2 is crossed by a middle sentence, the draws show: 10% keep one segment;
    # of the others, the crossing sentence joins the first half the time.
    one, joined, two = 0, 0, 0
    for a, b, _, _, t in examples.tolist():
        budget = (t - 3) // 2
        before = np.concatenate([[0], np.cumsum(sizes[a:b])])
        cross = np.nonzero(before[1:] >= budget)[0]
        if not len(cross) or cross[0] in (0, b - a - 1):
            continue
        if not second[a:b].any():
            one += 1
        else:
            two += 1
            joined += not second[a + cross[0]]
    assert one + two > 800
    assert abs(one / (one + two) - 0.1) < 0.03 and abs(joined / two - 0.5) < 0.06
    # Trimmed: A to 62 tokens, B to what is left after three specials.
    raw_a = np.array([sizes[a:b][~second[a:b]].sum() for a, b, *_ in examples.tolist()])
    assert np.array_equal(len_a, np.minimum(raw_a, 62)) and raw_a.max() > 62
    assert np.all(len_b <= np.maximum(0, 61 - len_a))
    rows = stream.rows(0, n)
    length = rows["attention_mask"].sum(1)
    order = stream._perm[0]
    a_len, b_len = len_a[order], len_b[order]
    assert np.array_equal(length, a_len + 2 + np.where(b_len > 0, b_len + 1, 0))
    assert np.all(rows["input_ids"][:, 0] == tok.cls_id)
    r = np.arange(n)
    assert np.all(rows["input_ids"][r, a_len + 1] == tok.sep_id)
    assert np.all(rows["input_ids"][r, length - 1] == tok.sep_id)
    assert np.array_equal(rows["token_type_ids"].sum(1), np.where(b_len > 0, b_len + 1, 0))
    assert rows["token_type_ids"][r, a_len + 1].sum() == 0


def test_loader_is_step_pure_and_refuses_what_electra_has_not():
    """The electra data path: no NSP labels, ELECTRA's 85/15 masks, the same batch from a fresh loader at any step
    (across an epoch boundary too), disjoint hosts; packing, instance files and NSP-pair fields refused."""
    data = electra_tiny.get_config().data
    make = lambda **kw: loader_lib.make_pretraining_loader(
        data, global_batch_size=32, num_train_steps=300, family="electra", **kw
    )
    loader = make()
    stream = loader._phases[0][1]
    assert isinstance(stream, electra_examples.ElectraExampleStream)
    per_epoch = len(stream.examples)
    step = per_epoch // 32  # this step's rows span the end of epoch 0 and the start of epoch 1
    assert per_epoch % 32
    batch = loader.batch(step)
    assert sorted(batch) == [
        "attention_mask", "input_ids", "masked_lm_ids", "masked_lm_positions", "masked_lm_weights",
        "token_type_ids",
    ]  # fmt: skip
    assert batch["input_ids"].shape == (32, 64) and batch["masked_lm_positions"].shape == (32, 9)
    again = make().batch(step)
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[key])
    # Epoch 1 is another order of the same examples.
    both = stream.rows(0, 2 * per_epoch)
    first, second = (both["input_ids"][i * per_epoch : (i + 1) * per_epoch] for i in (0, 1))
    assert not np.array_equal(first, second)
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))
    # ELECTRA's shares: of the chosen tokens 85% [MASK], the rest unchanged.
    masks = [loader.batch(s) for s in range(10)]
    now = np.concatenate(
        [np.take_along_axis(b["input_ids"], b["masked_lm_positions"], 1) for b in masks]
    )
    weights = np.concatenate([b["masked_lm_weights"] for b in masks]) > 0
    labels = np.concatenate([b["masked_lm_ids"] for b in masks])
    as_mask = (now[weights] == loader.tokenizer.mask_id).mean()
    assert abs(as_mask - 0.85) < 0.04 and np.all(
        (now == labels)[weights] | (now == loader.tokenizer.mask_id)[weights]
    )
    # Two hosts: half the batch each, from their own documents.
    hosts = [make(process_index=p, process_count=2).batch(3)["input_ids"] for p in (0, 1)]
    assert hosts[0].shape == (16, 64) and not set(map(bytes, hosts[0])) & set(map(bytes, hosts[1]))
    for field, value, message in [
        (
            "packing",
            True,
            r"^data.packing=True: the electra family's rtd model reads one example per row",
        ),
        ("source", "instances", r"^data.source='instances': the electra family reads text or TFDS"),
        (
            "short_seq_prob",
            0.1,
            r"^data.short_seq_prob: the electra family's examples take build_pretraining",
        ),
    ]:
        bad = electra_tiny.get_config().data
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            loader_lib.make_pretraining_loader(
                bad, global_batch_size=32, num_train_steps=10, family="electra"
            )
    # The recipe has no NSP-pair field: setting one is the locked config's error.
    tiny = electra_tiny.get_config()
    tiny.lock()
    with pytest.raises(AttributeError, match="short_seq_prob"):
        tiny.data.short_seq_prob = 0.05
