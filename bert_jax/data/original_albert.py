"""google-research/albert's create_pretraining_data.py, replayed draw for draw (`--original_rng
--spm_model_file=...`).

Same corpus, SentencePiece model, flags and seeds give the same instances as the original tool, in
the same order. Two random sources, as in the original:

* one `random.Random(random_seed)` in BERT's order (`bert_jax.data.original_rng`: document
  shuffle, target lengths, A/B split, random documents, truncation, 80/10/10 replacement, final
  shuffle), plus ALBERT's draws: with sentence order (`random_next_sentence=False`, the default)
  a chunk of two or more sentences draws `random() < 0.5` to swap A and B (label 1; a one-sentence
  chunk still takes B from a random document, also label 1); masking shuffles the n-gram
  candidates, and shuffles them once more after masking (always, a draw that only moves the
  stream on); with `do_permutation` it also shuffles the permuted positions;
* NumPy's GLOBAL RandomState for the n-gram lengths: one `np.random.choice(ngrams, p)` per
  candidate looked at (p proportional to 1/n with `favor_shorter_ngram`). The original never
  seeds it, so its output is only reproducible when `np.random.seed(S)` runs before its `main`;
  the replay draws the same calls from `np.random.RandomState(S)` (`numpy_seed`).

Text is read as the original reads it with `--spm_model_file`: each line through
`preprocess_text` (whitespace collapsed, NFKD, combining marks dropped, lower-cased with
`do_lower_case`), then SentencePiece pieces with the original's `encode_pieces` rule for pieces
ending in digit + ","; masking works on the piece strings (whole words by `_is_start_piece_sp`)
and ids are the model's `PieceToId` of each piece. Whole corpus and all instances in memory.
"""

from __future__ import annotations

import dataclasses
import random
import unicodedata

import numpy as np

from bert_jax.data import albert_vocab, original_rng, tfrecord, tokenizer

_UNDERLINE = "\u2581"
# The feature names and order of the original's tf.train.Example.
FEATURES = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "token_boundary",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


def preprocess_text(line: str, lower: bool) -> str:
    """The original's `preprocess_text`: whitespace runs to one space, NFKD without combining marks."""
    out = unicodedata.normalize("NFKD", " ".join(line.strip().split()))
    out = "".join(c for c in out if not unicodedata.combining(c))
    return out.lower() if lower else out


class SentencePieces:
    """The original's FullTokenizer with `spm_model_file`: pieces (str) of a preprocessed line, ids."""

    def __init__(self, path):
        self._sp = tokenizer.load_sentencepiece(path)
        # The original's `tokenizer.vocab` keys: every piece in id order (random replacements).
        self.vocab_words = [self._sp.IdToPiece(i) for i in range(self._sp.GetPieceSize())]
        self._ids: dict[str, int] = {}

    def encode(self, text: str) -> list[str]:
        """`encode_pieces`: a piece "<digits>," is re-encoded without "▁" and its "," split off.

        (The original's check for a leading "▁" compares a str with bytes under Python 3, so it
        never strips one; the replay does the same.)
        """
        out: list[str] = []
        for piece in self._sp.EncodeAsPieces(text):
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                out.extend(self._sp.EncodeAsPieces(piece[:-1].replace(_UNDERLINE, "")))
                out.append(piece[-1])
            else:
                out.append(piece)
        return out

    def encode_batch(self, lines) -> list[list[str]]:
        return [self.encode(line) for line in lines]

    def to_ids(self, pieces) -> list[int]:
        """`convert_tokens_to_ids`: `PieceToId` (unknown pieces give the model's <unk> id)."""
        for p in pieces:
            if p not in self._ids:
                self._ids[p] = self._sp.PieceToId(p)
        return [self._ids[p] for p in pieces]


@dataclasses.dataclass(frozen=True)
class MaskingOptions:
    """The original's masking flags."""

    masked_lm_prob: float
    max_predictions: int
    whole_word: bool
    ngram: int
    favor_shorter_ngram: bool
    permutation: bool


def _pick_ngram(cand_index_set, used, num_to_predict, ngrams, pvals, np_rng):
    """One n-gram of candidate words (or None): drawn n, shortened until it fits the budget."""
    k = len(cand_index_set)
    n = np_rng.choice(ngrams[:k], p=pvals[:k] / pvals[:k].sum(keepdims=True))
    index_set = sum(cand_index_set[n - 1], [])
    n -= 1
    while used + len(index_set) > num_to_predict:
        if n == 0:
            break
        index_set = sum(cand_index_set[n - 1], [])
        n -= 1
    return None if used + len(index_set) > num_to_predict else index_set


def mask_pieces(tokens, opts: MaskingOptions, vocab_words, rng, np_rng):
    """The original's create_masked_lm_predictions: (tokens, positions, labels, token_boundary)."""
    cand: list[list[int]] = []
    boundary = [0] * len(tokens)
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            boundary[i] = 1
            continue
        start = albert_vocab.is_word_start(token)
        if opts.whole_word and cand and not start:
            cand[-1].append(i)
        else:
            cand.append([i])
            boundary[i] = int(start)
    output = list(tokens)
    if opts.masked_lm_prob == 0:
        return output, [], [], boundary
    num_to_predict = min(
        opts.max_predictions, max(1, int(round(len(tokens) * opts.masked_lm_prob)))
    )
    ngrams = np.arange(1, opts.ngram + 1, dtype=np.int64)
    pvals = 1.0 / np.arange(1, opts.ngram + 1)
    pvals /= pvals.sum(keepdims=True)
    if not opts.favor_shorter_ngram:
        pvals = pvals[::-1]
    # Per candidate word, its 1..ngram-word spans (shorter at the end of the sequence).
    ngram_indexes = [[cand[idx : idx + n] for n in ngrams] for idx in range(len(cand))]
    rng.shuffle(ngram_indexes)
    masked: list[tuple[int, str]] = []
    covered: set[int] = set()
    for cand_index_set in ngram_indexes:
        if len(masked) >= num_to_predict:
            break
        if not cand_index_set:
            continue
        index_set = _pick_ngram(cand_index_set, len(masked), num_to_predict, ngrams, pvals, np_rng)
        if index_set is None or any(i in covered for i in index_set):
            continue
        for i in index_set:
            covered.add(i)
            if rng.random() < 0.8:
                output[i] = "[MASK]"
            elif rng.random() < 0.5:
                output[i] = tokens[i]
            else:
                output[i] = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            masked.append((i, tokens[i]))
    rng.shuffle(ngram_indexes)  # the original shuffles again whether or not it permutes
    if opts.permutation:
        masked += _permute(
            output, ngram_indexes, covered, num_to_predict, ngrams, pvals, rng, np_rng
        )
    masked.sort(key=lambda m: m[0])
    return output, [p for p, _ in masked], [t for _, t in masked], boundary


def _permute(output, ngram_indexes, covered, num_to_predict, ngrams, pvals, rng, np_rng):
    """`do_permutation`: n-grams not masked get their pieces permuted among them, in place."""
    select: set[int] = set()
    for cand_index_set in ngram_indexes:
        if len(select) >= num_to_predict:
            break
        if not cand_index_set:
            continue
        index_set = _pick_ngram(cand_index_set, len(select), num_to_predict, ngrams, pvals, np_rng)
        if index_set is None or any(i in covered or i in select for i in index_set):
            continue
        select.update(index_set)
    sources = sorted(select)
    targets = list(sources)
    rng.shuffle(targets)
    before = list(output)
    for src, tgt in zip(sources, targets, strict=True):
        output[src] = before[tgt]
    return [(src, before[src]) for src in sources]


def _from_document(documents, d, max_seq_length, short_seq_prob, random_next, mask, rng):
    """The original's create_instances_from_document: (tokens, segments, positions, labels,
    boundary, sentence_order_label) per instance (BERT's tool's pairs, `original_rng.pairs_from_document`, in
    sentence order unless `random_next`)."""
    out = []
    pairs = original_rng.pairs_from_document(
        documents, d, max_seq_length, short_seq_prob, rng, sentence_order=not random_next
    )
    for a, b, label in pairs:
        tokens = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        tokens, positions, labels, boundary = mask(tokens, rng=rng)
        out.append((tokens, segments, positions, labels, boundary, label))
    return out


def create_instances(
    input_pattern: str,
    pieces: SentencePieces,
    *,
    do_lower_case: bool,
    max_seq_length: int,
    short_seq_prob: float,
    dupe_factor: int,
    seed: int,
    numpy_seed: int,
    random_next_sentence: bool,
    masking: MaskingOptions,
) -> list[tuple]:
    """All instances, shuffled, as the original makes them (pieces as strings)."""
    rng = random.Random(seed)
    np_rng = np.random.RandomState(numpy_seed)
    documents = original_rng.read_documents(
        input_pattern, pieces, prepare=lambda line: preprocess_text(line, do_lower_case)
    )
    rng.shuffle(documents)

    def mask(tokens, rng):
        return mask_pieces(tokens, masking, pieces.vocab_words, rng, np_rng)

    instances = []
    for _ in range(dupe_factor):
        for d in range(len(documents)):
            instances.extend(
                _from_document(
                    documents, d, max_seq_length, short_seq_prob, random_next_sentence, mask, rng
                )
            )
    rng.shuffle(instances)
    return instances


def to_features(instance, pieces: SentencePieces, max_seq_length: int, max_predictions: int):
    """One instance's features, named and padded as the original writes them (`max_predictions`
    already doubled for `do_permutation`)."""
    tokens, segments, positions, labels, boundary, label = instance
    pad = max_seq_length - len(tokens)
    pad_pred = max_predictions - len(positions)
    return {
        "input_ids": np.array(pieces.to_ids(tokens) + [0] * pad),
        "input_mask": np.array([1] * len(tokens) + [0] * pad),
        "segment_ids": np.array(segments + [0] * pad),
        "token_boundary": np.array(boundary + [0] * pad),
        "masked_lm_positions": np.array(positions + [0] * pad_pred),
        "masked_lm_ids": np.array(pieces.to_ids(labels) + [0] * pad_pred),
        "masked_lm_weights": np.array([1.0] * len(labels) + [0.0] * pad_pred, np.float32),
        "next_sentence_labels": np.array([label]),
    }


def write_tfrecords(instances, pieces, paths, max_seq_length: int, max_predictions: int) -> None:
    """tf.train.Examples in the original's layout, round-robin over `paths`."""
    writers = [tfrecord.TFRecordWriter(p) for p in paths]
    for k, instance in enumerate(instances):
        feats = to_features(instance, pieces, max_seq_length, max_predictions)
        writers[k % len(writers)].write(tfrecord.encode_example(feats))
    for w in writers:
        w.close()
