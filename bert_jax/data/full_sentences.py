"""RoBERTa's FULL-SENTENCES inputs (Liu et al. 2019, section 4.2): whole sentences, contiguous, across documents.

"Each input is packed with full sentences sampled contiguously from one or more documents, such that the total
length is at most 512 tokens. Inputs may cross document boundaries. When we reach the end of one document, we
begin sampling sentences from the next document and add an extra separator token between documents."

Two layouts of such rows (`sentence_eos`), both `<s>` first, sentences in corpus order, never split across rows,
then padding; no NSP, no segments (token types all 0):
* True, fairseq's own pipeline, what the roberta data path reads: fairseq-preprocess binarizes each line of
  one-sentence-per-line text as its ids then `</s>`, a blank line as a lone `</s>` (the extra separator between
  documents), and the masked_lm task packs these items with `TokenBlockDataset(break_mode="complete")` into
  blocks of at most `tokens_per_sample - 1` tokens, then prepends `<s>`: `<s> s1 </s> s2 </s> </s> t1 </s>`.
  `row_spans` packs the same items the same way (an item that does not fit starts the next row, a separator
  included), so the rows are fairseq's blocks (tests/roberta_fairseq_test.py compares them with fairseq's
  output). One difference: fairseq makes a line longer than a block a block of its own, past
  `tokens_per_sample`; here it is cut to its first `seq_length - 2` ids and its `</s>`, so every row fits.
* False, the paper's wording: `<s> s1 s2 ... </s> t1 t2 ... </s>`: a `</s>` only where a document ends inside
  the row, and one last; a sentence longer than a row is cut to fit.

The rows are fixed by the corpus; the pretraining loader reads them through `FullSentenceStream` (a fresh order
each epoch, as fairseq shuffles its blocks each epoch) and masks each row as fairseq masks that block
(`bert_jax.data.fairseq_replay`, from the `_epoch` and `_block` each row carries). Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data.instances import TokenizedCorpus
from bert_jax.data.streams import keyed_rng


def row_spans(
    corpus: TokenizedCorpus, seq_length: int, *, sentence_eos: bool = False
) -> list[list[tuple[int, int]]]:
    """Each row's pieces, in order: `(start, end)` token ranges of `corpus.tokens`, and `(-1, -1)` for a document
    separator. Each row holds at most `seq_length - 2` tokens and separators (its `<s>` and final `</s>` aside);
    with `sentence_eos`, fairseq's blocks: at most `seq_length - 1` items' tokens, each range followed by `</s>`."""
    if seq_length - 2 < 1:
        raise ValueError(f"seq_length {seq_length} leaves no room between <s> and </s>")
    if sentence_eos:
        return _complete_blocks(corpus, seq_length - 1)
    budget = seq_length - 2
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


def _complete_blocks(corpus: TokenizedCorpus, block_size: int) -> list[list[tuple[int, int]]]:
    """fairseq's `complete` break mode over the binarized lines: a sentence (its ids + `</s>`) or a document
    separator (`</s>` alone, before every document but the first) joins the block while the block stays within
    `block_size` tokens, else starts the next one. A sentence longer than a block is cut to fit one."""
    starts = corpus.sentence_starts
    items = []
    for doc in range(corpus.num_documents):
        if doc:
            items.append((-1, -1))
        for sentence in range(corpus.document_starts[doc], corpus.document_starts[doc + 1]):
            lo, hi = int(starts[sentence]), int(starts[sentence + 1])
            items.append((lo, min(hi, lo + block_size - 1)))
    rows, row, used = [], [], 0
    for lo, hi in items:
        size = 1 if lo < 0 else hi - lo + 1
        if row and used + size > block_size:
            rows.append(row)
            row, used = [], 0
        row.append((lo, hi))
        used += size
    if row:
        rows.append(row)
    return rows


def assemble(
    corpus: TokenizedCorpus,
    rows: list[list[tuple[int, int]]],
    seq_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    sentence_eos: bool = False,
) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `token_type_ids` (zeros), `attention_mask` [len(rows), seq_length] from `row_spans`
    (made with the same `sentence_eos`)."""
    ids = np.full((len(rows), seq_length), pad_id, np.int32)
    mask = np.zeros((len(rows), seq_length), np.int32)
    for i, row in enumerate(rows):
        pieces = [[cls_id]]
        for lo, hi in row:
            pieces.append([sep_id] if lo < 0 else corpus.tokens[lo:hi])
            if sentence_eos and lo >= 0:
                pieces.append([sep_id])
        if not sentence_eos:
            pieces.append([sep_id])
        values = np.concatenate(pieces)
        ids[i, : len(values)] = values
        mask[i, : len(values)] = 1
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def full_sentences(
    corpus: TokenizedCorpus,
    seq_length: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    sentence_eos: bool = False,
) -> dict[str, np.ndarray]:
    """The corpus (documents in its order) as FULL-SENTENCES rows of `seq_length`: `row_spans` + `assemble`."""
    rows = row_spans(corpus, seq_length, sentence_eos=sentence_eos)
    ids = {"cls_id": cls_id, "sep_id": sep_id, "pad_id": pad_id}
    return assemble(corpus, rows, seq_length, **ids, sentence_eos=sentence_eos)


class FullSentenceStream:
    """This host's endless stream of FULL-SENTENCES rows of one tokenized corpus: epoch e is every row once, in
    a permutation keyed by (seed, key, e); `rows(start, count)` is a pure function of its arguments, so any step
    can be rebuilt on a fresh process (exact resume). Rows are unmasked; the loader masks them per step.
    `sentence_eos`: the layout (module docstring); the roberta data path reads fairseq's (True)."""

    def __init__(
        self, corpus, seq_length, seed, key, *, cls_id, sep_id, pad_id, sentence_eos=False
    ):
        self.corpus, self.seq_length, self.seed, self.key = corpus, seq_length, seed, key
        self.ids = {
            "cls_id": cls_id,
            "sep_id": sep_id,
            "pad_id": pad_id,
            "sentence_eos": sentence_eos,
        }
        self.spans = row_spans(corpus, seq_length, sentence_eos=sentence_eos)
        self._perm: dict[int, np.ndarray] = {}

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Rows [start, start + count) of the stream: `input_ids`, `token_type_ids` (0), `attention_mask`, and
        each row's epoch and block index (`_epoch`, `_block`; bookkeeping for the masks, not model inputs)."""
        size = len(self.spans)
        r = np.arange(start, start + count)
        epochs, k = r // size, r % size
        blocks = np.empty(count, np.int64)
        for j, (e, i) in enumerate(zip(epochs.tolist(), k.tolist(), strict=True)):
            if e not in self._perm:
                if len(self._perm) >= 2:  # a batch spans at most two epochs
                    self._perm.pop(min(self._perm))
                self._perm[e] = keyed_rng(self.seed, self.key, e).permutation(size)
            blocks[j] = self._perm[e][i]
        rows = assemble(self.corpus, [self.spans[b] for b in blocks], self.seq_length, **self.ids)
        # Which block of which epoch each row is: fairseq seeds a block's masks with them (family_data).
        rows["_epoch"], rows["_block"] = epochs, blocks
        return rows
