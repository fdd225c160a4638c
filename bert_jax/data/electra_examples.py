"""ELECTRA's pretraining examples, as google-research/electra's build_pretraining_dataset.py builds them.

Its `ExampleBuilder` reads a document's sentences in order and gathers them until they reach a target length
(`max_seq_length` tokens, or for the example after one of 5% a uniform `randint(5, max_seq_length)`); a
document's end also closes an example, so an example never spans two documents. The gathered sentences are
split into two segments: 10% of the time everything goes into the first (one segment, as in a classification
input); otherwise a sentence joins the first segment while the first is empty or stays under
`(target - 3) // 2` tokens with it, and one that would cross that budget joins it anyway half the time when the
second segment is still empty; every other sentence joins the second. So the segments are not always contiguous
runs (a short sentence after the second segment has begun can still fit into the first), there is no random
next segment and no NSP label. The first segment is cut to `max_seq_length - 2` tokens, the second to what is
left after three specials; the row is `[CLS] A [SEP]` (+ `B [SEP]` when B is not empty), token types 0 then 1.

Examples are kept as sentence ranges: int64 [N, 5] rows (first sentence, end sentence, len A, len B, target
length) of a `TokenizedCorpus` plus a per-sentence flag (in the second segment), each sentence belonging to one
example.

`original_examples` replays the original tool draw for draw (one `random.Random(seed)`, which is what the
original's global `random` is after `random.seed(seed)`; it shuffles the sorted file names first), for identical
output on the same corpus, vocab and flags (tests/golden). `ElectraExampleStream` is the loader's stream: the
examples made once per host (a keyed NumPy generator: the original also builds its data set once), read in a
fresh permutation each epoch. Pure NumPy.
"""

from __future__ import annotations

import random

import numpy as np

from bert_jax.data import corpus as corpus_lib
from bert_jax.data.instances import TokenizedCorpus
from bert_jax.data.streams import keyed_rng

# The original's constants (build_pretraining_dataset.py has no flags for them).
ONE_SEGMENT_PROB = 0.1
RANDOM_LENGTH_PROB = 0.05
MIN_RANDOM_LENGTH = 5
# Its "no budget" first-segment target of a one-segment example.
NO_BUDGET = 100_000


class NumpyDraws:
    """`random.Random`'s two calls the builder makes, from a NumPy generator (the loader's keyed one)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def random(self) -> float:
        return float(self.rng.random())

    def randint(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi], both ends included, as `random.randint`."""
        return int(self.rng.integers(lo, hi + 1))


def build_examples(
    corpus: TokenizedCorpus, max_length: int, draws
) -> tuple[np.ndarray, np.ndarray]:
    """The corpus (documents in its order) as ExampleBuilder's examples: (int64 [N, 5] rows of (first sentence,
    end sentence, len A, len B, the target length it was gathered to), bool [num_sentences] in-the-second-segment
    flags). `draws` has `random()` and `randint(lo, hi)`: a `random.Random` replays the original, `NumpyDraws` is
    the loader's."""
    if max_length < MIN_RANDOM_LENGTH:
        raise ValueError(
            f"max_seq_length {max_length}: ELECTRA's examples need at least {MIN_RANDOM_LENGTH}"
        )
    sizes = np.diff(corpus.sentence_starts).tolist()
    second = np.zeros(len(sizes), bool)
    examples: list[tuple[int, int, int, int, int]] = []
    target = max_length

    def emit(lo: int, hi: int) -> None:
        nonlocal target
        budget = NO_BUDGET if draws.random() < ONE_SEGMENT_PROB else (target - 3) // 2
        len_a = len_b = 0
        for s in range(lo, hi):
            n = sizes[s]
            # `and` short-circuits as the original's `or`/`and` chain: the 50% draw is made only when the
            # sentence would cross the budget of a first segment still under it, with the second still empty.
            if (
                len_a == 0
                or len_a + n < budget
                or (len_b == 0 and len_a < budget and draws.random() < 0.5)
            ):
                len_a += n
            else:
                len_b += n
                second[s] = True
        len_a = min(len_a, max_length - 2)
        len_b = min(len_b, max(0, max_length - len_a - 3))
        examples.append((lo, hi, len_a, len_b, target))
        # The next example's target: 5% of the time a random length (with document ends, its short examples).
        if draws.random() < RANDOM_LENGTH_PROB:
            target = draws.randint(MIN_RANDOM_LENGTH, max_length)
        else:
            target = max_length

    doc_starts = corpus.document_starts.tolist()
    for doc in range(corpus.num_documents):
        lo, gathered = doc_starts[doc], 0
        for s in range(doc_starts[doc], doc_starts[doc + 1]):
            gathered += sizes[s]
            if gathered >= target:
                emit(lo, s + 1)
                lo, gathered = s + 1, 0
        if gathered:  # the document's end (the original's blank line) closes what is gathered
            emit(lo, doc_starts[doc + 1])
    return np.asarray(examples, np.int64).reshape(-1, 5), second


def assemble(
    corpus: TokenizedCorpus,
    examples: np.ndarray,
    second: np.ndarray,
    seq_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `token_type_ids`, `attention_mask` [len(examples), seq_length]: `[CLS] A [SEP]`,
    `+ B [SEP]` when B is not empty, then `pad_id`."""
    n = len(examples)
    ids = np.full((n, seq_length), pad_id, np.int32)
    types = np.zeros((n, seq_length), np.int32)
    mask = np.zeros((n, seq_length), np.int32)
    starts = corpus.sentence_starts
    for i, (lo, hi, len_a, len_b, _) in enumerate(examples.tolist()):
        pieces = ([], [])
        for s in range(lo, hi):
            pieces[int(second[s])].append(corpus.tokens[starts[s] : starts[s + 1]])
        a = np.concatenate(pieces[0])[:len_a]
        row = [[cls_id], a, [sep_id]]
        if len_b:
            row += [np.concatenate(pieces[1])[:len_b], [sep_id]]
        values = np.concatenate(row)
        ids[i, : len(values)] = values
        mask[i, : len(values)] = 1
        types[i, len_a + 2 : len(values)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def original_examples(
    input_pattern: str, tokenizer, max_seq_length: int, seed: int
) -> dict[str, np.ndarray]:
    """build_pretraining_dataset.py's examples, in its writing order, for the files of `input_pattern` (its
    `--corpus-dir`'s files, `--num-processes=1`, `--blanks-separate-docs` default) after `random.seed(seed)`:
    the file names sorted and shuffled, then each file's documents through the builder, one generator
    throughout. Token ids are bert_jax's WordPiece, equal to the original's tokenizer with strip_accents
    (its default) on the same vocab and casing."""
    rng = random.Random(seed)
    files = sorted(corpus_lib.expand_pattern(input_pattern), key=lambda p: p.name)
    rng.shuffle(files)
    stats = corpus_lib.CorpusStats()
    docs = (doc for path in files for doc in corpus_lib.read_text_documents(path, stats))
    corpus = TokenizedCorpus.from_documents(docs, tokenizer)
    examples, second = build_examples(corpus, max_seq_length, rng)
    ids = {
        "cls_id": tokenizer.cls_id,
        "sep_id": tokenizer.sep_id,
        "pad_id": 0,
    }  # the original pads with 0
    return assemble(corpus, examples, second, max_seq_length, **ids)


class ElectraExampleStream:
    """This host's endless stream of ELECTRA examples of one tokenized corpus: the examples built once from a
    generator keyed by (seed, key), epoch e every example once in a permutation keyed by (seed, key, e);
    `rows(start, count)` is a pure function of its arguments (exact resume). Rows are unmasked; the loader masks
    them per step."""

    def __init__(self, corpus, seq_length, seed, key, *, cls_id, sep_id, pad_id):
        self.corpus, self.seq_length, self.seed, self.key = corpus, seq_length, seed, key
        self.ids = {"cls_id": cls_id, "sep_id": sep_id, "pad_id": pad_id}
        # Five words, so never an epoch's (seed, key, e): SeedSequence pads a key with zeros to four words, so
        # (seed, key, e, 0) would be epoch e's generator.
        draws = NumpyDraws(keyed_rng(seed, key, 0, 0, 1))
        self.examples, self.second = build_examples(corpus, seq_length, draws)
        self._perm: dict[int, np.ndarray] = {}

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Rows [start, start + count) of the stream: `input_ids`, `token_type_ids`, `attention_mask`."""
        size = len(self.examples)
        r = np.arange(start, start + count)
        epochs, k = r // size, r % size
        picked = np.empty(count, np.int64)
        for e in np.unique(epochs).tolist():
            if e not in self._perm:
                if len(self._perm) >= 2:  # a batch spans at most two epochs
                    self._perm.pop(min(self._perm))
                self._perm[e] = keyed_rng(self.seed, self.key, e).permutation(size)
            sel = epochs == e
            picked[sel] = self._perm[e][k[sel]]
        return assemble(
            self.corpus, self.examples[picked], self.second, self.seq_length, **self.ids
        )
