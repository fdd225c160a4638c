"""Documents -> `[CLS] A [SEP] B [SEP]` instances with NSP labels. Pure NumPy.

The algorithm is the one the BERT paper and its create_pretraining_data tool document:
* per document, a target length of `max_seq_length - 3` tokens, or with `short_seq_prob` a
  uniform one in [2, max - 3]; sentences are gathered into a chunk until it reaches the target;
* A is the first 1..n-1 sentences of the chunk; B is the rest (IsNext, label 0) or, with
  probability 1/2 (always for a one-sentence chunk), sentences from a random other document
  (NotNext, label 1), in which case the chunk's unused sentences go back to the document;
* the longer of A and B loses tokens one at a time, each from the front or back with equal odds.

Masking lives in `bert_jax.data.masking`; `bert_jax.data.original_rng` replays the original
tool's own random stream when identical output is needed.

Because A and B are runs of consecutive sentences, an instance is five integers into the flat
token array of a `TokenizedCorpus`: (a_start, a_end, b_start, b_end, next_sentence_label).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class TokenizedCorpus:
    """Documents as flat arrays: tokens, sentence offsets, and per-document sentence offsets."""

    tokens: np.ndarray  # int32 [num_tokens]
    sentence_starts: np.ndarray  # int64 [num_sentences + 1], offsets into `tokens`
    document_starts: np.ndarray  # int64 [num_documents + 1], offsets into `sentence_starts`

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1

    @classmethod
    def from_documents(cls, documents, tokenizer, stats=None, batch_size=2048) -> TokenizedCorpus:
        """Tokenizes documents (lists of sentences) with the batched encoder.

        Sentences that tokenize to nothing are dropped and counted in `stats.empty_sentences`;
        documents left empty are dropped and counted in `stats.empty_documents`.
        """
        pieces, sent_lens, doc_sizes = [], [], []
        pending, pending_docs = [], []

        def flush():
            encoded = tokenizer.encode_batch(pending)
            pos = 0
            for n in pending_docs:
                kept = [e for e in encoded[pos : pos + n] if e]
                pos += n
                if stats is not None:
                    stats.empty_sentences += n - len(kept)
                if not kept:
                    if stats is not None:
                        stats.empty_documents += 1
                    continue
                pieces.extend(kept)
                sent_lens.extend(len(e) for e in kept)
                doc_sizes.append(len(kept))
            pending.clear()
            pending_docs.clear()

        for doc in documents:
            pending.extend(doc)
            pending_docs.append(len(doc))
            if len(pending) >= batch_size:
                flush()
        flush()
        tokens = np.fromiter((t for p in pieces for t in p), np.int32, sum(sent_lens))
        return cls(
            tokens=tokens,
            sentence_starts=np.concatenate([[0], np.cumsum(sent_lens, dtype=np.int64)]),
            document_starts=np.concatenate([[0], np.cumsum(doc_sizes, dtype=np.int64)]),
        )


def create_instance_specs(
    corpus: TokenizedCorpus,
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    counters: dict | None = None,
    sentence_order: bool = False,
) -> np.ndarray:
    """One pass over all documents: int64 [N, 5] rows (a_start, a_end, b_start, b_end, label).

    Ranges index `corpus.tokens` and are already truncated to fit `max_seq_length`. `counters`,
    if given, receives `forced_random_next` (one-sentence chunks, always NotNext) and
    `truncated_instances`.

    `sentence_order`: ALBERT's sentence-order pairs (google-research/albert's create_pretraining_data
    with its default random_next_sentence=False): a chunk of two or more sentences gives A and B in
    order (label 0) or, with probability 1/2, swapped (B first, label 1); a one-sentence chunk still
    takes B from a random other document (label 1), as the original does. Truncation comes after
    the swap, as there.
    """
    if corpus.num_documents < 2:
        raise ValueError("need at least 2 documents to draw random next sentences")
    max_tokens = max_seq_length - 3
    starts, doc_starts = corpus.sentence_starts.tolist(), corpus.document_starts.tolist()
    n_docs = corpus.num_documents
    out, forced = [], 0
    for d in range(n_docs):
        s0, s1 = doc_starts[d], doc_starts[d + 1]
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        chunk_start, length, i = s0, 0, s0
        while i < s1:
            length += starts[i + 1] - starts[i]
            if i == s1 - 1 or length >= target:
                n_sent = i + 1 - chunk_start
                a_sents = int(rng.integers(1, n_sent)) if n_sent >= 2 else 1
                a_lo, a_hi = starts[chunk_start], starts[chunk_start + a_sents]
                forced += n_sent == 1
                if n_sent == 1 or (not sentence_order and rng.random() < 0.5):
                    label = 1
                    target_b = max(target - (a_hi - a_lo), 1)
                    r = int(rng.integers(0, n_docs - 1))
                    r += r >= d  # any document but this one
                    r0, r1 = doc_starts[r], doc_starts[r + 1]
                    j = int(rng.integers(r0, r1))
                    b_lo = b_hi = starts[j]
                    while j < r1 and b_hi - b_lo < target_b:
                        j += 1
                        b_hi = starts[j]
                    i = chunk_start + a_sents - 1  # the unused sentences go back
                elif sentence_order and rng.random() < 0.5:
                    # Swapped: the chunk's second part first.
                    label = 1
                    a_lo, a_hi, b_lo, b_hi = a_hi, starts[i + 1], a_lo, a_hi
                else:
                    label = 0
                    b_lo, b_hi = a_hi, starts[i + 1]
                out.append((a_lo, a_hi, b_lo, b_hi, label))
                chunk_start, length = i + 1, 0
            i += 1
    specs = np.asarray(out, np.int64).reshape(-1, 5)
    if counters is not None:
        counters["forced_random_next"] = counters.get("forced_random_next", 0) + forced
        over = (specs[:, 1] - specs[:, 0] + specs[:, 3] - specs[:, 2]) > max_tokens
        counters["truncated_instances"] = counters.get("truncated_instances", 0) + int(over.sum())
    return truncate_specs(specs, max_tokens, rng)


def truncate_specs(specs: np.ndarray, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Truncates every pair to `max_tokens`, the longer side first, each cut front or back.

    Removing one token at a time from the longer side (B on ties) ends in closed form; which end
    each removed token comes from is a fair coin, so the front count is Binomial(k, 1/2).
    """
    a_len, b_len = specs[:, 1] - specs[:, 0], specs[:, 3] - specs[:, 2]
    excess = np.maximum(a_len + b_len - max_tokens, 0)
    # Remove from the longer until equal, then alternate; B loses on ties.
    diff = np.abs(a_len - b_len)
    first = np.minimum(excess, diff)
    rest = excess - first
    cut_a = np.where(a_len > b_len, first, 0) + rest // 2
    cut_b = np.where(a_len > b_len, 0, first) + rest - rest // 2
    front_a = rng.binomial(cut_a, 0.5)
    front_b = rng.binomial(cut_b, 0.5)
    out = specs.copy()
    out[:, 0] += front_a
    out[:, 1] -= cut_a - front_a
    out[:, 2] += front_b
    out[:, 3] -= cut_b - front_b
    return out


def assemble(tokens: np.ndarray, specs: np.ndarray, seq_length: int, cls_id: int, sep_id: int):
    """Builds padded `input_ids`, `token_type_ids`, `attention_mask` [N, seq_length] from specs."""
    a_lo, a_len = specs[:, 0:1], specs[:, 1:2] - specs[:, 0:1]
    b_lo, b_len = specs[:, 2:3], specs[:, 3:4] - specs[:, 2:3]
    j = np.arange(seq_length)[None, :]
    in_a = (j >= 1) & (j <= a_len)
    b_first = a_len + 2
    in_b = (j >= b_first) & (j < b_first + b_len)
    src = np.where(in_a, a_lo + j - 1, np.where(in_b, b_lo + j - b_first, 0))
    ids = np.where(in_a | in_b, tokens[src], 0).astype(np.int32)
    total = a_len + b_len + 3
    ids[:, 0] = cls_id
    rows = np.arange(len(specs))
    ids[rows, a_len[:, 0] + 1] = sep_id
    ids[rows, total[:, 0] - 1] = sep_id
    return {
        "input_ids": ids,
        "token_type_ids": ((j >= b_first) & (j < total)).astype(np.int32),
        "attention_mask": (j < total).astype(np.int32),
    }
