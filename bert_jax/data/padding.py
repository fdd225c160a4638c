"""Padding fractions before and after packing, for three kinds of corpus.

* the bundled corpus through the real loader, phase 1 (128) and phase 2 (512);
* Wikipedia-like documents at 512: a synthetic tokenized corpus whose documents have lognormal
  sentence counts (median 10, sigma 1.0: many stubs, a long tail of long articles) and lognormal
  sentence lengths (median 24 WordPieces, sigma 0.5, clipped to [3, 200]), cut into instances by
  the loader's own instance maker; these parameters give ~49% padding at 512, the ~50% Krell et
  al. (2021) measured for Wikipedia at 512;
* GLUE-like sentence pairs at 128: lognormal lengths, median 40 tokens with [CLS]/[SEP] (about
  MNLI's premise + hypothesis), sigma 0.5, clipped to [4, 128].

`padding_table` returns the rows that `python -m bert_jax.data.benchmark --packing` prints.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data import instances, packing
from bert_jax.data.streams import CorpusStream


def wikipedia_like_corpus(num_documents: int = 4000, seed: int = 0) -> instances.TokenizedCorpus:
    """A tokenized corpus with Wikipedia-like document and sentence lengths (module docstring)."""
    rng = np.random.default_rng(seed)
    sentences = np.maximum(1, np.rint(rng.lognormal(np.log(10), 1.0, num_documents))).astype(int)
    lengths = np.rint(rng.lognormal(np.log(24), 0.5, sentences.sum()))
    lengths = np.clip(lengths, 3, 200).astype(np.int64)
    tokens = rng.integers(5, 30000, lengths.sum()).astype(np.int32)
    return instances.TokenizedCorpus(
        tokens=tokens,
        sentence_starts=np.concatenate([[0], np.cumsum(lengths)]),
        document_starts=np.concatenate([[0], np.cumsum(sentences)]),
    )


def glue_like_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Sentence-pair lengths (with [CLS]/[SEP]) like GLUE's at 128 (module docstring)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(40), 0.5, count)), 4, 128).astype(np.int64)


def packed_padding(
    length_batches, seq_length: int, max_per_row: int, multiple: int = 1
) -> tuple[float, float, float, int]:
    """(padding before, padding after, mean rows, distinct row counts) over batches of sequence
    lengths, each batch packed by SPFHP into its row bucket (`packing.row_buckets`), as the
    loader packs a step."""
    tokens = slots_before = slots_after = 0
    counts = []
    for lengths in length_batches:
        need = len(packing.pack_lengths(lengths, seq_length, max_per_row))
        buckets = packing.row_buckets(len(lengths), max_per_row, multiple)
        counts.append(next(b for b in buckets if b >= need))
        tokens += int(np.sum(lengths))
        slots_before += len(lengths) * seq_length
        slots_after += counts[-1] * seq_length
    before, after = 1 - tokens / slots_before, 1 - tokens / slots_after
    return before, after, float(np.mean(counts)), len(set(counts))


def padding_table(
    loader, phase_starts, *, batch_size: int, steps: int, max_per_row: int, multiple: int = 1
) -> list[tuple]:
    """Rows (corpus, seq_length, *`packed_padding`) with rows in multiples of `multiple`.

    `loader` is a pretraining loader over the bundled corpus whose phases start at `phase_starts`
    (`steps` unpacked batches are read from the start of each); the synthetic corpora use the same
    batch size.
    """
    out = []
    for phase, first in enumerate(phase_starts):
        name = f"bundled corpus, phase {phase + 1}"
        length = loader.seq_length(first)
        batches = [loader.unpacked_batch(first + s)["attention_mask"].sum(1) for s in range(steps)]
        out.append((name, length, *packed_padding(batches, length, max_per_row, multiple)))
    stream = CorpusStream(wikipedia_like_corpus(), 512, 0.1, 0, 0, 2, 3)
    batches = [
        stream.rows(s * batch_size, batch_size)["attention_mask"].sum(1) for s in range(steps)
    ]
    out.append(
        ("Wikipedia-like documents", 512, *packed_padding(batches, 512, max_per_row, multiple))
    )
    glue = glue_like_lengths(steps * batch_size).reshape(steps, batch_size)
    out.append(
        ("GLUE-like sentence pairs", 128, *packed_padding(list(glue), 128, max_per_row, multiple))
    )
    return out
