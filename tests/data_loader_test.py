"""Pretraining loader: determinism, resume across epochs, multi-host split, phases, eval, TFDS."""

import json

import numpy as np
import pytest

from bert_jax.configs.pretraining import data_config
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import loader as loader_lib
from bert_jax.data.phases import Phase, eval_phase, pretraining_phases

NUM_DOCS = 120
FILLER = [f"w{i}" for i in range(40)]


def _config(pattern, **overrides):
    cfg = data_config()
    cfg.update(
        dict(
            input_pattern=pattern,
            seq_length=48,
            max_predictions_per_seq=8,
            phase2_seq_length=96,
            phase2_max_predictions_per_seq=16,
        )
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """A corpus where every sentence starts with its document's tag d<k>, in 4 files."""
    d = tmp_path_factory.mktemp("tagged")
    vocab = d / "vocab.txt"
    words = [f"d{k}" for k in range(NUM_DOCS)] + FILLER + ["."]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    rng = np.random.default_rng(0)
    docs = []
    for k in range(NUM_DOCS):
        sents = [
            " ".join([f"d{k}", *rng.choice(FILLER, rng.integers(3, 9))]) + " ."
            for _ in range(rng.integers(3, 9))
        ]
        docs.append("\n".join(sents))
    for f in range(4):
        (d / f"part-{f}.txt").write_text("\n\n".join(docs[f::4]) + "\n")
    return d, str(vocab)


def _tags(batch, segment=None, vocab_offset=5):
    """Document tags present in each row (ids 5 .. 5 + NUM_DOCS are d0 ...), after unmasking."""
    ids = batch["input_ids"].copy()
    valid = batch["masked_lm_weights"] > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], valid.shape)
    ids[rows[valid], batch["masked_lm_positions"][valid]] = batch["masked_lm_ids"][valid]
    if segment is not None:
        ids = np.where(batch["token_type_ids"] == segment, ids, 0)
    return [set((r[(r >= vocab_offset) & (r < vocab_offset + NUM_DOCS)] - 5).tolist()) for r in ids]


def _assert_equal_batches(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_across_epoch_boundary_matches_uninterrupted(tagged):
    d, vocab = tagged
    cfg = _config(f"{d}/part-*.txt")
    make = lambda: loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=16, num_train_steps=1000, seed=3
    )
    first = make()
    ref = [b for _, b in zip(range(60), first.iterate(0), strict=False)]
    epoch_sizes = first._phases[0][1].epoch_sizes
    assert 16 * 10 < epoch_sizes[0] < 16 * 30  # resume inside epoch 0, then cross epoch boundaries
    assert len(epoch_sizes) >= 3
    state = json.loads(json.dumps(first.get_state(10)))
    resumed = make()
    resumed.set_state(state)
    for (step, batch), want in zip(resumed.iterate(), ref[10:], strict=False):
        _assert_equal_batches(batch, want[1])
        if step == 59:
            break
    _assert_equal_batches(make().batch(55), ref[55][1])  # fresh, no state: same pure function
    other = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=16, num_train_steps=1000, seed=4
    )
    assert not np.array_equal(other.batch(0)["input_ids"], ref[0][1]["input_ids"])
    assert ref[0][0] == 0 and ref[59][0] == 59
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


@pytest.mark.parametrize(
    "files,process_count", [("part-0.txt", 2), ("part-*.txt", 2), ("part-0.txt,part-1.txt", 4)]
)
def test_multi_host_split_is_disjoint_and_complete(tagged, files, process_count):
    d, vocab = tagged
    pattern = ",".join(f"{d}/{f}" for f in files.split(","))
    cfg = _config(pattern)
    hosts = [
        loader_lib.make_pretraining_loader(
            cfg,
            vocab_file=vocab,
            global_batch_size=8,
            num_train_steps=1000,
            process_index=p,
            process_count=process_count,
        )
        for p in range(process_count)
    ]
    seen = []
    for h in hosts:
        tags = set()
        for step in range(40):
            b = h.batch(step)
            assert b["input_ids"].shape == (8 // process_count, 48)
            for t in _tags(b):
                tags |= t
        seen.append(tags)
    for i in range(process_count):
        for j in range(i + 1, process_count):
            assert not seen[i] & seen[j]  # hosts read disjoint documents
    # 40 steps cover more than an epoch: every held-in document of these files shows up.
    assert set().union(*seen) == _doc_tags(pattern, held_out=False)


def _doc_tags(pattern, held_out, modulus=50):
    out = set()
    for path in corpus_lib.expand_pattern(pattern):
        for doc in corpus_lib.read_text_documents(path, corpus_lib.CorpusStats()):
            if loader_lib._held_out(doc, modulus) == held_out:
                out.add(int(doc[0].split()[0][1:]))
    return out


def test_nsp_labels_match_document_tags(tagged):
    d, vocab = tagged
    cfg = _config(f"{d}/part-*.txt", short_seq_prob=0.0)
    loader = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=32, num_train_steps=100
    )
    n_next = n_rows = 0
    for step in range(30):
        b = loader.batch(step)
        for tags_a, tags_b, label in zip(
            _tags(b, 0), _tags(b, 1), b["next_sentence_labels"], strict=True
        ):
            n_rows += 1
            # IsNext: B continues A's document; NotNext: B comes from another document.
            if label == 0:
                assert len(tags_a | tags_b) == 1
                n_next += 1
            else:
                assert not tags_a & tags_b
    assert 0.3 < n_next / n_rows < 0.6


def test_phases_switch_length_at_the_configured_step(tagged):
    d, vocab = tagged
    cfg = _config(f"{d}/part-*.txt")
    loader = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=4, num_train_steps=50
    )
    assert [loader.seq_length(s) for s in (0, 44, 45, 49)] == [48, 48, 96, 96]
    assert [loader.max_predictions(s) for s in (44, 45)] == [8, 16]
    b = loader.batch(45)
    assert b["input_ids"].shape == (4, 96) and b["masked_lm_positions"].shape == (4, 16)
    assert b["masked_lm_weights"].dtype == np.float32 and b["next_sentence_labels"].shape == (4,)
    lengths = lambda steps: np.concatenate(
        [loader.batch(s)["attention_mask"].sum(1) for s in steps]
    )
    assert lengths(range(45, 50)).max() > 48  # phase-2 instances may exceed phase 1's length
    no_phase2 = _config(f"{d}/part-*.txt", phase2_fraction=0.0)
    loader = loader_lib.make_pretraining_loader(
        no_phase2, vocab_file=vocab, global_batch_size=4, num_train_steps=50
    )
    assert loader.seq_length(49) == 48


def test_the_phase_rule_is_the_paper_split_and_the_loaders(tagged):
    cfg = _config("unused")
    assert pretraining_phases(cfg, num_train_steps=50, global_batch_size=8) == (
        Phase("phase1", 0, 48, 8, 8), Phase("phase2", 45, 96, 16, 8),
    )  # fmt: skip
    # The switch is round(steps * (1 - fraction)): 0.9 of 1,000,000 steps at 128 tokens, as the recipe.
    paper = _config("unused", seq_length=128, max_predictions_per_seq=20,
                    phase2_seq_length=512, phase2_max_predictions_per_seq=80)  # fmt: skip
    assert pretraining_phases(paper, num_train_steps=10**6, global_batch_size=256)[1] == Phase(
        "phase2", 900_000, 512, 80, 256
    )
    # A fraction that rounds to no steps leaves no phase 2 (the compile check used to compile one anyway).
    for fraction in (0.0, 0.005):
        short = _config("unused", phase2_fraction=fraction)
        assert pretraining_phases(short, num_train_steps=50, global_batch_size=8) == (
            Phase("phase1", 0, 48, 8, 8),
        )
    # The held-out batches are phase 1's shape, in both phases.
    assert eval_phase(cfg, global_batch_size=8) == Phase("eval", 0, 48, 8, 8)
    d, vocab = tagged
    cfg = _config(f"{d}/part-*.txt", phase2_fraction=0.3, eval_holdout_modulus=10)
    loader = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=4, num_train_steps=10
    )
    assert loader.get_state(0)["phases"] == [
        [p.start_step, p.seq_length, p.max_predictions]
        for p in pretraining_phases(cfg, num_train_steps=10, global_batch_size=4)
    ] == [[0, 48, 8], [7, 96, 16]]  # fmt: skip
    (batch,) = loader_lib.make_eval_batches(
        cfg, vocab_file=vocab, global_batch_size=4, num_batches=1
    )
    assert batch["input_ids"].shape == (4, 48) and batch["masked_lm_ids"].shape == (4, 8)


def test_eval_batches_are_fixed_and_held_out(tagged, tmp_path):
    d, vocab = tagged
    cfg = _config(f"{d}/part-*.txt", eval_holdout_modulus=10)
    held = _doc_tags(f"{d}/part-*.txt", held_out=True, modulus=10)
    assert 5 < len(held) < 25
    a = loader_lib.make_eval_batches(cfg, vocab_file=vocab, global_batch_size=8, num_batches=3)
    b = loader_lib.make_eval_batches(cfg, vocab_file=vocab, global_batch_size=8, num_batches=3)
    for x, y in zip(a, b, strict=True):
        _assert_equal_batches(x, y)
    eval_tags = set().union(*[t for batch in a for t in _tags(batch)])
    assert eval_tags <= held
    train = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=32, num_train_steps=100
    )
    train_tags = set().union(*[t for s in range(20) for t in _tags(train.batch(s))])
    assert not train_tags & held
    with pytest.raises(ValueError, match="not divisible"):
        loader_lib.make_eval_batches(
            cfg, vocab_file=vocab, global_batch_size=9, num_batches=1, process_count=2
        )


def test_bundled_defaults_and_prefetch_equals_direct():
    cfg, vocab = _config("", seq_length=128, max_predictions_per_seq=20), ""
    loader = loader_lib.make_pretraining_loader(
        cfg, vocab_file=vocab, global_batch_size=8, num_train_steps=10
    )
    it = loader.iterate(3)
    got = [next(it) for _ in range(3)]
    it.close()
    assert [s for s, _ in got] == [3, 4, 5]
    _assert_equal_batches(got[2][1], loader.batch(5))
    assert loader.batch(0)["input_ids"].max() < 2200  # ids within the bundled ~2k vocab
    eval_batches = loader_lib.make_eval_batches(
        cfg, vocab_file=vocab, global_batch_size=8, num_batches=2
    )
    assert eval_batches[0]["input_ids"].shape == (8, 128)


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.wikipedia  # noqa: F401 - registers the builder for the mock

    articles = [
        {
            "title": f"t{k}",
            "text": f"Town {k} is old. It has a river.\nPeople live there. "
            f"They fish! Do they farm? Yes.",
        }
        for k in range(40)
    ]
    fn = lambda builder, split, *a, **kw: articles
    cfg, vocab = (
        _config(
            "",
            source="tfds",
            tfds_name="wikipedia/20230601.en",
            tfds_split="train",
            seq_length=32,
            max_predictions_per_seq=5,
        ),
        "",
    )
    stats = corpus_lib.CorpusStats()
    with tfds.testing.mock_data(as_data_source_fn=fn, policy=tfds.testing.MockPolicy.USE_CODE):
        docs = list(
            corpus_lib.iter_tfds_documents("wikipedia/20230601.en", "train", "text", stats, 1, 2)
        )
        assert len(docs) == 20 and docs[0] == [
            "Town 1 is old.",
            "It has a river.",
            "People live there.",
            "They fish!",
            "Do they farm?",
            "Yes.",
        ]
        loader = loader_lib.make_pretraining_loader(
            cfg, vocab_file=vocab, global_batch_size=4, num_train_steps=10
        )
        b = loader.batch(0)
    assert stats.documents == 20 and stats.sentences == 120
    assert b["input_ids"].shape == (4, 32) and (b["masked_lm_weights"].sum(1) >= 1).all()
