"""google-research/bert's create_pretraining_data.py, replayed draw for draw (`--original_rng`).

Same corpus, vocab, flags and seed give the same instances as the original tool, in the same
order: every random decision comes from one `random.Random(random_seed)` in the original's
sequence of calls:

1. `shuffle` of the documents (lines read across all files, a blank line between documents;
   a file that does not end in a blank line continues its last document into the next file);
2. per duplicate pass, per document: `random() < short_seq_prob`, then `randint(2, max - 3)`;
   per chunk `randint(1, n - 1)` for A's sentences (n >= 2), `random() < 0.5` for NotNext
   (n >= 2 only), up to ten `randint` for a random document other than this one, `randint` for
   its first sentence; one `random()` per token removed by truncation (front or back); masking:
   `shuffle` of the candidate words, per masked piece `random() < 0.8` ([MASK]), else
   `random() < 0.5` (keep), else `randint` over the WHOLE vocabulary (in the vocab file's order);
3. a final `shuffle` of all instances.

Unlike the fast NumPy path (`create_pretraining_data` without the flag) this holds the whole
corpus and all instances in memory, as the original does; it exists to reproduce published
data exactly. Token ids come from bert_jax's WordPiece tokenizer, which equals the original's
`FullTokenizer` on the same vocab and casing (tests/golden proves it on a small corpus).
"""

from __future__ import annotations

import random

import numpy as np
from etils import epath

from bert_jax.data import corpus as corpus_lib


def load_vocab_order(path) -> dict[str, int]:
    """The original's `load_vocab`: line -> stripped token -> line number, in file order.

    A repeated token keeps its first position in the order and its last line number, as an
    OrderedDict assignment does; the random replacement indexes this order.
    """
    text = epath.Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the remainder after the final newline is not a line
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        vocab[token.strip()] = index
    return vocab


def read_documents(input_pattern: str, tokenizer, prepare=str.strip) -> list[list[list]]:
    """Documents (lists of tokenized lines) read as the original reads them, before shuffling.

    Each line is `prepare`d (BERT: stripped; ALBERT: `original_albert.preprocess_text`); one that
    comes out empty starts a new document; `tokenizer.encode_batch` tokenizes the lines. Raises `ValueError` naming file and line for input the original would crash on (invalid
    UTF-8).
    """
    documents: list[list[list]] = [[]]
    for path in corpus_lib.expand_pattern(input_pattern):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ValueError(
                f"{path}:{line}: invalid UTF-8 (the original tool stops here)"
            ) from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        lines = [prepare(line) for line in lines]
        encoded = tokenizer.encode_batch(lines) if lines else []
        for line, ids in zip(lines, encoded, strict=True):
            if not line:
                documents.append([])
            if ids:
                documents[-1].append(list(ids))
    return [d for d in documents if d]


def truncate_pair(a: list, b: list, max_tokens: int, rng: random.Random) -> None:
    """The original's truncate_seq_pair: one `random() < 0.5` (front, else back) per token removed
    from the longer of the two (B on a tie)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _mask(tokens, masked_lm_prob, max_predictions, vocab_ids, specials, is_cont, whole_word, rng):
    """The original's create_masked_lm_predictions on ids: (tokens, positions, labels)."""
    cls_id, sep_id, mask_id = specials
    cand: list[list[int]] = []
    for i, tok in enumerate(tokens):
        if tok == cls_id or tok == sep_id:
            continue
        # As the original: a "##" piece joins the previous candidate, even across a [SEP].
        if whole_word and cand and is_cont[tok]:
            cand[-1].append(i)
        else:
            cand.append([i])
    rng.shuffle(cand)
    output = list(tokens)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked: list[tuple[int, int]] = []
    covered: set[int] = set()
    for index_set in cand:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(i in covered for i in index_set):
            continue
        for i in index_set:
            covered.add(i)
            if rng.random() < 0.8:
                new = mask_id
            elif rng.random() < 0.5:
                new = tokens[i]
            else:
                new = vocab_ids[rng.randint(0, len(vocab_ids) - 1)]
            output[i] = new
            masked.append((i, tokens[i]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


def pairs_from_document(documents, d, max_seq_length, short_seq_prob, rng, sentence_order=False):
    """The original's create_instances_from_document up to the masking: yields each instance's (A, B, label),
    truncated, making the original's draws in its order (a caller masks each pair before asking for the next, as
    the original does). BERT's pairs (label 1: B is from a random other document) or, with `sentence_order`,
    ALBERT's (label 1: the two segments swapped; a one-sentence chunk still takes B from another document,
    label 1, as google-research/albert's tool does)."""
    document = documents[d]
    max_tokens = max_seq_length - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_tokens)
    chunk: list[list] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for seg in chunk[:a_end] for t in seg]
            b: list = []
            label = 1
            if len(chunk) == 1 or (not sentence_order and rng.random() < 0.5):
                target_b = target - len(a)
                for _ in range(10):
                    r = rng.randint(0, len(documents) - 1)
                    if r != d:
                        break
                other = documents[r]
                for j in range(rng.randint(0, len(other) - 1), len(other)):
                    b.extend(other[j])
                    if len(b) >= target_b:
                        break
                i -= len(chunk) - a_end  # the unused sentences go back
            elif sentence_order and rng.random() < 0.5:
                a, b = [t for seg in chunk[a_end:] for t in seg], a  # sentence order swapped
            else:
                label = 0
                b = [t for seg in chunk[a_end:] for t in seg]
            truncate_pair(a, b, max_tokens, rng)
            yield a, b, label
            chunk, length = [], 0
        i += 1


def _from_document(documents, d, max_seq_length, short_seq_prob, masking, rng):
    """The original's create_instances_from_document: a list of instance tuples."""
    cls_id, sep_id, _ = masking["specials"]
    out = []
    for a, b, is_random_next in pairs_from_document(
        documents, d, max_seq_length, short_seq_prob, rng
    ):
        tokens = [cls_id, *a, sep_id, *b, sep_id]
        segment_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        tokens, positions, labels = _mask(tokens, rng=rng, **masking)
        out.append((tokens, segment_ids, positions, labels, is_random_next))
    return out


def create_instances(
    input_pattern: str,
    tokenizer,
    vocab_file,
    *,
    max_seq_length: int,
    max_predictions: int,
    masked_lm_prob: float,
    short_seq_prob: float,
    dupe_factor: int,
    seed: int,
    whole_word: bool,
) -> list[tuple]:
    """All instances, shuffled, as (tokens, segment_ids, positions, labels, next_sentence_label)."""
    rng = random.Random(seed)
    documents = read_documents(input_pattern, tokenizer)
    rng.shuffle(documents)
    vocab = load_vocab_order(vocab_file)
    for token, i in vocab.items():
        if tokenizer.token_to_id(token) != i:
            raise ValueError(f"{vocab_file}: token {token!r} on line {i + 1} is ambiguous")
    masking = {
        "masked_lm_prob": masked_lm_prob,
        "max_predictions": max_predictions,
        "vocab_ids": list(vocab.values()),
        "specials": (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id),
        "is_cont": tokenizer.is_continuation,
        "whole_word": whole_word,
    }
    instances = []
    for _ in range(dupe_factor):
        for d in range(len(documents)):
            instances.extend(
                _from_document(documents, d, max_seq_length, short_seq_prob, masking, rng)
            )
    rng.shuffle(instances)
    return instances


def to_features(instances, max_seq_length: int, max_predictions: int) -> dict[str, np.ndarray]:
    """Padded feature arrays of instances, zero-padded as the original pads them."""
    n = len(instances)
    out = {
        "input_ids": np.zeros((n, max_seq_length), np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "attention_mask": np.zeros((n, max_seq_length), np.int32),
        "masked_lm_positions": np.zeros((n, max_predictions), np.int32),
        "masked_lm_ids": np.zeros((n, max_predictions), np.int32),
        "masked_lm_weights": np.zeros((n, max_predictions), np.float32),
        "next_sentence_labels": np.zeros(n, np.int32),
    }
    for k, (tokens, segments, positions, labels, nsp) in enumerate(instances):
        out["input_ids"][k, : len(tokens)] = tokens
        out["token_type_ids"][k, : len(segments)] = segments
        out["attention_mask"][k, : len(tokens)] = 1
        out["masked_lm_positions"][k, : len(positions)] = positions
        out["masked_lm_ids"][k, : len(labels)] = labels
        out["masked_lm_weights"][k, : len(labels)] = 1.0
        out["next_sentence_labels"][k] = nsp
    return out
