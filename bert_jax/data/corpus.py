"""Text sources for pretraining: documents as lists of sentences.

Plain text in the original BERT format (one sentence per line, a blank line between documents)
from local paths, globs or gs:// (etils epath), and TFDS text datasets. Bad input follows fixed
rules, each counted in `CorpusStats` and logged, never dropped silently:

* invalid UTF-8 in a line: decoded with U+FFFD replacement, counted (`invalid_utf8_lines`),
  first occurrence logged with file and line;
* empty documents (several blank lines in a row): skipped, counted (`empty_documents`);
* empty files: skipped, counted (`empty_files`); a pattern that matches no file raises
  `FileNotFoundError` naming it;
* whitespace-only lines are blank lines (document separators).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterator

from absl import logging
from etils import epath

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets"
SAMPLE_CORPUS = ASSETS / "sample_corpus.txt"
SAMPLE_EVAL_CORPUS = ASSETS / "sample_corpus_eval.txt"
SAMPLE_VOCAB = ASSETS / "sample_vocab.txt"
# RoBERTa's bundled byte-level BPE (vocab.json + merges.txt), trained on SAMPLE_CORPUS by make_sample_bpe.py.
SAMPLE_BPE = ASSETS / "sample_bpe"
# The bundled vocabulary of each model family: what a recipe's `vocab_file` "" names (others: SAMPLE_VOCAB).
SAMPLE_VOCABS = {"bert": SAMPLE_VOCAB, "roberta": SAMPLE_BPE}


def sample_vocab(family: str = "bert") -> pathlib.Path:
    """The bundled vocabulary a recipe of `family` tokenizes with when its `vocab_file` is ""."""
    return SAMPLE_VOCABS.get(family, SAMPLE_VOCAB)


# TFDS articles are paragraphs, not sentences; this splits after . ! ? before a capital/digit/quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


@dataclasses.dataclass
class CorpusStats:
    """Counters for everything the readers skip or repair."""

    files: int = 0
    empty_files: int = 0
    documents: int = 0
    sentences: int = 0
    empty_documents: int = 0
    empty_sentences: int = 0
    invalid_utf8_lines: int = 0
    long_sentences: int = 0

    def log(self, what: str) -> None:
        logging.info("%s: %s", what, dataclasses.asdict(self))


def expand_pattern(pattern: str) -> list[epath.Path]:
    """Files for a comma-separated list of paths/globs, sorted per glob; raises if none match."""
    if not pattern:
        pattern = str(SAMPLE_CORPUS)
    files = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        wild = min((part.find(c) for c in "*?[" if c in part), default=-1)
        if wild >= 0:
            # epath globs relative to a directory: split at the last "/" before the first
            # wildcard, on the string so that "gs://bucket/..." stays intact.
            cut = part.rfind("/", 0, wild)
            base = epath.Path(part[:cut] or "/") if cut >= 0 else epath.Path(".")
            matches = sorted(base.glob(part[cut + 1 :]))
            if not matches:
                raise FileNotFoundError(f"{part}: no file matches this pattern")
            files.extend(matches)
        else:
            path = epath.Path(part)
            if not path.is_file():
                raise FileNotFoundError(f"{part}: file not found")
            files.append(path)
    if not files:
        raise FileNotFoundError(f"{pattern!r}: no input files given")
    return files


def read_text_documents(path: epath.Path, stats: CorpusStats) -> Iterator[list[str]]:
    """Yields the documents of one file in the original format, applying the module's rules."""
    stats.files += 1
    doc: list[str] = []
    seen_any = False
    blank_run = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            seen_any = True
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                if stats.invalid_utf8_lines == 0:
                    logging.warning("%s:%d: invalid UTF-8, replaced with U+FFFD", path, line_no)
                stats.invalid_utf8_lines += 1
                line = raw.decode("utf-8", errors="replace")
            line = line.strip()
            if line:
                doc.append(line)
                blank_run = 0
                continue
            blank_run += 1
            if doc:
                stats.documents += 1
                stats.sentences += len(doc)
                yield doc
                doc = []
            elif blank_run > 1 or line_no == 1:
                stats.empty_documents += 1
    if doc:
        stats.documents += 1
        stats.sentences += len(doc)
        yield doc
    if not seen_any:
        stats.empty_files += 1
        logging.warning("%s: empty file, skipped", path)


def split_sentences(text: str) -> list[str]:
    """Splits an article (paragraphs separated by newlines) into sentences."""
    out = []
    for paragraph in text.split("\n"):
        out.extend(s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip())
    return out


def iter_text_documents(
    pattern: str, stats: CorpusStats, shard_index: int = 0, shard_count: int = 1
) -> Iterator[list[str]]:
    """Documents from text files; with `shard_count` > 1 only this shard's share.

    Whole files are dealt round-robin when there are at least `shard_count` files (so each
    process reads only its files); otherwise documents are dealt round-robin.
    """
    files = expand_pattern(pattern)
    by_file = len(files) >= shard_count
    if by_file:
        files = files[shard_index::shard_count]
    index = 0
    for path in files:
        for doc in read_text_documents(path, stats):
            if by_file or index % shard_count == shard_index:
                yield doc
            index += 1


def iter_tfds_documents(
    name: str,
    split: str,
    text_key: str,
    stats: CorpusStats,
    shard_index: int = 0,
    shard_count: int = 1,
    data_dir: str | None = None,
) -> Iterator[list[str]]:
    """Documents from a TFDS text dataset (random-access `data_source`, no TensorFlow needed).

    Each example's `text_key` field is one document, split into sentences by `split_sentences`.
    Examples are dealt round-robin over shards, reading only this shard's indices.
    """
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=data_dir)
    for i in range(shard_index, len(source), shard_count):
        text = source[i][text_key]
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                stats.invalid_utf8_lines += 1
                text = text.decode("utf-8", errors="replace")
        sentences = split_sentences(text)
        if not sentences:
            stats.empty_documents += 1
            continue
        stats.documents += 1
        stats.sentences += len(sentences)
        yield sentences
