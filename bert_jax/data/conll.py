"""CoNLL-2003 NER: column files or TFDS `conll2003`, first-sub-token labels, CoNLL output.

The column format: one word per line with its columns separated by spaces (the word first, the
NER tag last), a blank line after each sentence, and `-DOCSTART-` lines between documents. Tags
may be IOB1 (the original release) or IOB2; both are kept as they are and scored by seqeval
(`bert_jax.scoring.ner`). As the paper (section 5.3), each word is WordPiece-tokenized and only its
first sub-token carries the label: the others have weight 0 in the loss and are ignored in
prediction. A sentence longer than one sequence is split at word boundaries into several, so no
word goes unpredicted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from etils import epath

# The file names of the usual distribution: our split -> candidates.
FILES = {"train": ("train.txt", "eng.train"), "dev": ("valid.txt", "dev.txt", "eng.testa")}
FILES["test"] = ("test.txt", "eng.testb")
TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words, gold tags and every column of its lines (for writing back)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]
    document: int  # index of the document (-DOCSTART- block) it belongs to


@dataclasses.dataclass
class Corpus:
    """One split, with where it came from (error messages name it)."""

    split: str
    source: str
    sentences: list[Sentence]

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def tag_set(self) -> set[str]:
        return {t for s in self.sentences for t in s.tags}


def read_columns(path) -> list[Sentence]:
    """Sentences of a CoNLL column file; a line without a tag column raises naming file:line."""
    path = epath.Path(path)
    sentences, lines, document, width = [], [], 0, None

    def flush():
        if lines:
            columns = tuple(lines)
            words = tuple(c[0] for c in columns)
            sentences.append(Sentence(words, tuple(c[-1] for c in columns), columns, document))
            lines.clear()

    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{number}: not UTF-8 ({e.reason})") from None
            if not line:
                flush()
                continue
            fields = tuple(line.split())
            if fields[0] == "-DOCSTART-":
                flush()
                document += 1 if sentences else 0
                continue
            width = width or len(fields)
            if len(fields) < 2 or len(fields) != width:
                raise ValueError(
                    f"{path}:{number}: expected {max(width, 2)} space-separated columns (word ... "
                    f"NER tag), got {len(fields)}: {line!r}"
                )
            lines.append(fields)
    flush()
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


def read_corpus(split: str, data_dir: str | None = None, *, tfds_data_dir=None) -> Corpus:
    """`train`, `dev` or `test` from DATA_DIR (train.txt/valid.txt/test.txt or eng.train/
    eng.testa/eng.testb; local or gs://), or TFDS `conll2003` when `data_dir` is None."""
    if split not in FILES:
        raise ValueError(f"CoNLL-2003 split {split!r} is not one of {tuple(FILES)}")
    if data_dir is None:
        return Corpus(split, f"tfds conll2003 {split}", _read_tfds(split, tfds_data_dir))
    candidates = [epath.Path(data_dir) / name for name in FILES[split]]
    for path in candidates:
        if path.exists():
            return Corpus(split, str(path), read_columns(path))
    raise FileNotFoundError(
        f"CoNLL-2003 {split} file not found: {' or '.join(map(str, candidates))}"
    )


def _read_tfds(split: str, tfds_data_dir) -> list[Sentence]:
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.conll2003  # noqa: F401  (registers conll2003)

    builder = tfds.builder("conll2003", data_dir=tfds_data_dir)
    names = {key: builder.info.features[key].feature.names for key in ("pos", "chunks", "ner")}
    source = tfds.data_source("conll2003", split=TFDS_SPLITS[split], data_dir=tfds_data_dir)
    sentences = []
    for number, row in enumerate(source):
        words = tuple(w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in row["tokens"])
        tags = {key: [names[key][int(i)] for i in row[key]] for key in names}
        lengths = {"tokens": len(words), **{key: len(value) for key, value in tags.items()}}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tfds conll2003 {split} row {number}: lengths differ {lengths}")
        columns = tuple(zip(words, tags["pos"], tags["chunks"], tags["ner"], strict=True))
        sentences.append(Sentence(words, tuple(tags["ner"]), columns, 0))
    return sentences


def label_list(train: Corpus) -> tuple[str, ...]:
    """The training tags in a fixed order: "O" first, then sorted by entity type and prefix."""
    tags = train.tag_set
    return tuple(sorted(tags, key=lambda t: (t != "O", t[2:], t[:2])))


def check_labels(corpus: Corpus, labels: Sequence[str]) -> None:
    """Raises naming the split when it has a tag the training data did not have."""
    unknown = sorted(corpus.tag_set - set(labels))
    if unknown:
        raise ValueError(
            f"{corpus.source}: tags {unknown} do not occur in the training data {list(labels)}"
        )


def encode_corpus(
    corpus: Corpus, tokenizer, labels: Sequence[str], max_seq_length: int = 128
) -> dict[str, np.ndarray]:
    """`[CLS] word pieces [SEP]` rows (RoBERTa: `<s> ... </s>`); labels on each word's first piece.

    Returns int32 `input_ids`, `token_type_ids`, `attention_mask`, `labels` [F, L],
    float32 `label_weights` [F, L] (1 on first pieces), `word_index` [F, L] (the word a
    first piece starts, -1 elsewhere) and `sentence_index` [F].
    """
    check_labels(corpus, labels)
    label_id = {t: i for i, t in enumerate(labels)}
    budget = max_seq_length - 2
    rows = []  # (sentence, [(word index, piece ids)])
    for s, sentence in enumerate(corpus.sentences):
        # Every word follows a space, the first too (a sentence in running text), as transformers'
        # RoBERTa tokenizer with add_prefix_space for words: byte-level BPE's pieces carry it.
        pieces = tokenizer.encode_words(sentence.words, space_before_first=True)
        chunk, used = [], 0
        for w, ids in enumerate(pieces):
            # A word the tokenizer drops entirely (e.g. only control characters) still needs a
            # position to carry its label.
            ids = (ids or [tokenizer.unk_id])[:budget]
            if chunk and used + len(ids) > budget:
                rows.append((s, chunk))
                chunk, used = [], 0
            chunk.append((w, ids))
            used += len(ids)
        rows.append((s, chunk))
    n = len(rows)
    out = {
        "input_ids": np.full((n, max_seq_length), tokenizer.pad_id, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "attention_mask": np.zeros((n, max_seq_length), np.int32),
        "labels": np.zeros((n, max_seq_length), np.int32),
        "label_weights": np.zeros((n, max_seq_length), np.float32),
        "word_index": np.full((n, max_seq_length), -1, np.int32),
        "sentence_index": np.zeros(n, np.int32),
    }
    for r, (s, chunk) in enumerate(rows):
        tags = corpus.sentences[s].tags
        ids, position = [tokenizer.cls_id], 1
        for w, piece_ids in chunk:
            out["labels"][r, position] = label_id[tags[w]]
            out["label_weights"][r, position] = 1.0
            out["word_index"][r, position] = w
            ids.extend(piece_ids)
            position += len(piece_ids)
        ids.append(tokenizer.sep_id)
        out["input_ids"][r, : len(ids)] = ids
        out["attention_mask"][r, : len(ids)] = 1
        out["sentence_index"][r] = s
    return out


def word_predictions(
    corpus: Corpus, features, predicted_ids: np.ndarray, labels: Sequence[str]
) -> list[list[str]]:
    """Per-sentence predicted tags from per-token label ids [F, L] (first pieces only)."""
    out = [[None] * len(s.words) for s in corpus.sentences]
    rows, cols = np.nonzero(features["word_index"] >= 0)
    for r, c in zip(rows, cols, strict=True):
        s, w = int(features["sentence_index"][r]), int(features["word_index"][r, c])
        out[s][w] = labels[int(predicted_ids[r, c])]
    missing = sum(tag is None for tags in out for tag in tags)
    if missing:
        raise ValueError(f"{corpus.source}: {missing} words got no prediction (features mismatch)")
    return out


def write_predictions(path, corpus: Corpus, predictions: Sequence[Sequence[str]]) -> None:
    """CoNLL columns of every word plus the predicted tag (conlleval's input: `... gold pred`);
    a blank line after each sentence and -DOCSTART- between documents."""
    lines, document = [], None
    for sentence, tags in zip(corpus.sentences, predictions, strict=True):
        if sentence.document != document:
            document = sentence.document
            width = len(sentence.columns[0])
            lines += [" ".join(["-DOCSTART-", *["-X-"] * (width - 2), "O"]), ""]
        lines += [" ".join((*cols, tag)) for cols, tag in zip(sentence.columns, tags, strict=True)]
        lines.append("")
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
