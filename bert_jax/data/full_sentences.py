"""RoBERTa's FULL-SENTENCES inputs (Liu et al. 2019, section 4.2): whole sentences, contiguous, across documents.

"Each input is packed with full sentences sampled contiguously from one or more documents, such that the total
length is at most 512 tokens. Inputs may cross document boundaries. When we reach the end of one document, we
begin sampling sentences from the next document and add an extra separator token between documents."

So a row is `<s> s1 s2 ... </s> t1 t2 ... </s>`: sentences in corpus order, a `</s>` where a document ends inside
the row, one `<s>` first and one `</s>` last, then padding. A sentence never splits across rows; one longer than
a whole row is cut to fit (the paper does not say; fairseq's `complete` break mode would make it a row of its own
past the length). No NSP, no segments: token types are all 0. The rows are fixed by the corpus; the pretraining
loader reads them through `FullSentenceStream` (a fresh order each epoch, as fairseq shuffles its blocks each
epoch) and masks them per step with `bert_jax.data.masking.mask_tokens_fairseq`. Pure NumPy.

fairseq's own pipeline (`--sample-break-mode complete`, RoBERTa's pretraining README) differs in one detail: its
binarized lines each end with `</s>`, so a corpus of one sentence per line gets a `</s>` after every sentence and
a second one at a blank line. Here a sentence is not followed by a separator, only a document is, as the paper
describes it.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data.instances import TokenizedCorpus
from bert_jax.data.streams import keyed_rng


def row_spans(corpus: TokenizedCorpus, seq_length: int) -> list[list[tuple[int, int]]]:
    """Each row's pieces, in order: `(start, end)` token ranges of `corpus.tokens`, and `(-1, -1)` for a document
    separator. Each row holds at most `seq_length - 2` tokens and separators (its `<s>` and final `</s>` aside)."""
    budget = seq_length - 2
    if budget < 1:
        raise ValueError(f"seq_length {seq_length} leaves no room between <s> and </s>")
    starts = corpus.sentence_starts
    rows, row, used = [], [], 0

    def flush():
        # A document that ends with the row needs no separator of its own: the row's </s> ends both.
        rows.append(row[:-1] if row[-1] == (-1, -1) else row)

    for doc in range(corpus.num_documents):
        if row:  # the extra separator between documents
            if used + 1 > budget:
                flush()
                row, used = [], 0
            else:
                row.append((-1, -1))
                used += 1
        first, last = corpus.document_starts[doc], corpus.document_starts[doc + 1]
        for sentence in range(first, last):
            lo, hi = int(starts[sentence]), int(starts[sentence + 1])
            hi = min(hi, lo + budget)
            if row and used + hi - lo > budget:
                flush()
                row, used = [], 0
            row.append((lo, hi))
            used += hi - lo
    if row:
        flush()
    return rows


def assemble(
    corpus: TokenizedCorpus,
    rows: list[list[tuple[int, int]]],
    seq_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `token_type_ids` (zeros), `attention_mask` [len(rows), seq_length] from `row_spans`."""
    ids = np.full((len(rows), seq_length), pad_id, np.int32)
    mask = np.zeros((len(rows), seq_length), np.int32)
    for i, row in enumerate(rows):
        pieces = [[cls_id]]
        pieces += [[sep_id] if lo < 0 else corpus.tokens[lo:hi] for lo, hi in row]
        pieces.append([sep_id])
        values = np.concatenate(pieces)
        ids[i, : len(values)] = values
        mask[i, : len(values)] = 1
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def full_sentences(
    corpus: TokenizedCorpus, seq_length: int, *, cls_id: int, sep_id: int, pad_id: int
) -> dict[str, np.ndarray]:
    """The corpus (documents in its order) as FULL-SENTENCES rows of `seq_length`: `row_spans` + `assemble`."""
    rows = row_spans(corpus, seq_length)
    return assemble(corpus, rows, seq_length, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)


class FullSentenceStream:
    """This host's endless stream of FULL-SENTENCES rows of one tokenized corpus: epoch e is every row once, in
    a permutation keyed by (seed, key, e); `rows(start, count)` is a pure function of its arguments, so any step
    can be rebuilt on a fresh process (exact resume). Rows are unmasked; the loader masks them per step."""

    def __init__(self, corpus, seq_length, seed, key, *, cls_id, sep_id, pad_id):
        self.corpus, self.seq_length, self.seed, self.key = corpus, seq_length, seed, key
        self.ids = {"cls_id": cls_id, "sep_id": sep_id, "pad_id": pad_id}
        self.spans = row_spans(corpus, seq_length)
        self._perm: dict[int, np.ndarray] = {}

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Rows [start, start + count) of the stream: `input_ids`, `token_type_ids` (0), `attention_mask`."""
        size = len(self.spans)
        r = np.arange(start, start + count)
        epochs, k = r // size, r % size
        picked = []
        for e, i in zip(epochs.tolist(), k.tolist(), strict=True):
            if e not in self._perm:
                if len(self._perm) >= 2:  # a batch spans at most two epochs
                    self._perm.pop(min(self._perm))
                self._perm[e] = keyed_rng(self.seed, self.key, e).permutation(size)
            picked.append(self.spans[self._perm[e][i]])
        return assemble(self.corpus, picked, self.seq_length, **self.ids)
