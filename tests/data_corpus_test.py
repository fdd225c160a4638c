"""Corpus readers and bad input: each case handled by a documented rule and counted."""

import numpy as np
import pytest

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import instances
from bert_jax.data.tokenizer import load_tokenizer


def test_original_format_and_counters(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(
        b"\n"  # leading blank line: an empty document
        b"First doc one.\nFirst doc two.\n"
        b"\n\n\n"  # two extra blank lines: two empty documents
        b"Bad \xff\xfe bytes here.\n   \t\n"  # whitespace-only line separates documents
        b"Third doc.\n"
    )
    stats = corpus_lib.CorpusStats()
    docs = list(corpus_lib.read_text_documents(path, stats))
    assert docs == [
        ["First doc one.", "First doc two."],
        ["Bad \ufffd\ufffd bytes here."],
        ["Third doc."],
    ]
    assert (stats.documents, stats.sentences, stats.empty_documents) == (3, 4, 3)
    assert stats.invalid_utf8_lines == 1 and stats.files == 1


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "one.txt").write_text("a b.\nc d.\n\ne f.\n")
    stats = corpus_lib.CorpusStats()
    docs = list(corpus_lib.iter_text_documents(f"{tmp_path}/*.txt", stats))
    assert len(docs) == 2 and stats.empty_files == 1 and stats.files == 2
    # Wildcards in a directory component, and comma-separated lists, expand in order.
    for sub in ("sub2", "sub1", "other"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.txt").write_text("x.\n")
    pattern = f"{tmp_path}/su*/x.txt,{tmp_path}/empty.txt"
    got = [str(p) for p in corpus_lib.expand_pattern(pattern)]
    assert got == [f"{tmp_path}/sub1/x.txt", f"{tmp_path}/sub2/x.txt", f"{tmp_path}/empty.txt"]
    with pytest.raises(FileNotFoundError, match="nothing-here-\\*.txt: no file matches"):
        list(corpus_lib.iter_text_documents(f"{tmp_path}/nothing-here-*.txt", stats))
    with pytest.raises(FileNotFoundError, match="missing.txt: file not found"):
        list(corpus_lib.iter_text_documents(f"{tmp_path}/one.txt,{tmp_path}/missing.txt", stats))


def test_document_sharding_round_robin(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(f"doc {i}." for i in range(10)))
    got = [
        [
            d[0]
            for d in corpus_lib.iter_text_documents(
                str(tmp_path / "a.txt"), corpus_lib.CorpusStats(), p, 3
            )
        ]
        for p in range(3)
    ]
    assert got == [
        ["doc 0.", "doc 3.", "doc 6.", "doc 9."],
        ["doc 1.", "doc 4.", "doc 7."],
        ["doc 2.", "doc 5.", "doc 8."],
    ]


def test_tokenized_corpus_counts_empty_sentences_and_long_lines():
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB))
    stats = corpus_lib.CorpusStats()
    long_line = " ".join(["river"] * 600)
    docs = [["the town .", "\u200b\u200b"], ["\u200b"], ["a fox .", long_line, "the town ."]]
    corpus = instances.TokenizedCorpus.from_documents(docs, tok, stats)
    assert stats.empty_sentences == 2 and stats.empty_documents == 1
    assert corpus.num_documents == 2
    assert np.diff(corpus.sentence_starts).tolist() == [3, 3, 600, 3]
    specs = instances.create_instance_specs(corpus, 32, 0.0, np.random.default_rng(0))
    lengths = (specs[:, 1] - specs[:, 0]) + (specs[:, 3] - specs[:, 2])
    assert (lengths <= 29).all()  # the over-long line is truncated like any long pair


def test_split_sentences():
    text = 'It rained. "Really?" he asked! 3 ducks swam.\nNew paragraph e.g. here'
    assert corpus_lib.split_sentences(text) == [
        "It rained.",
        '"Really?" he asked!',
        "3 ducks swam.",
        "New paragraph e.g. here",
    ]
