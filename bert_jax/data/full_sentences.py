"""RoBERTa's FULL-SENTENCES inputs (Liu et al. 2019, section 4.2): whole sentences, contiguous, across documents.

"Each input is packed with full sentences sampled contiguously from one or more documents, such that the total
length is at most 512 tokens. Inputs may cross document boundaries. When we reach the end of one document, we
begin sampling sentences from the next document and add an extra separator token between documents."

So a row is `<s> s1 s2 ... </s> t1 t2 ... </s>`: sentences in corpus order, a `</s>` where a document ends inside
the row, one `<s>` first and one `</s>` last, then padding. A sentence never splits across rows; one longer than
a whole row is cut to fit (the paper does not say; fairseq's `complete` break mode would make it a row of its own
past the length). No NSP, no segments: token types are all 0. Masking is `bert_jax.data.masking`, per step.
Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data.instances import TokenizedCorpus


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
