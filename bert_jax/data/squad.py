"""SQuAD v1.1 / v2.0: readers (official JSON, local or gs://, or TFDS) and windowed featurisation.

The recipe is the original run_squad.py's: the context is split on whitespace into words (each
with its character offset, so answers map back to the exact original text), every word is
WordPiece-tokenized on its own (token -> word alignment), questions are cut to
`max_query_length` tokens, and contexts longer than one window become several windows
`[CLS] question [SEP] context piece [SEP]` that start `doc_stride` tokens apart. A token seen in
several windows is answered only from the window where it has the most context on both sides
(`max_context`). A training answer outside a window (and every v2.0 unanswerable question)
points at [CLS]. Post-processing lives in `squad_answers.py`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath

VERSIONS = ("1.1", "2.0")
SPLITS = {"train": "train", "dev": "validation"}  # our split name -> TFDS split


@dataclasses.dataclass(frozen=True)
class Example:
    """One question on one context; `words` are the context's whitespace-separated words."""

    qas_id: str
    question: str
    context: str
    words: tuple[str, ...]
    word_starts: tuple[int, ...]  # character offset of each word in `context`
    answers: tuple[str, ...]  # every gold answer text (dev: several; empty when unanswerable)
    is_impossible: bool = False
    start_word: int = -1  # training target: first and last word of the answer; -1 = none
    end_word: int = -1


@dataclasses.dataclass
class Examples:
    """A split's examples plus the count of training answers that did not match their context."""

    version: str
    split: str
    examples: list[Example]
    num_skipped: int = 0

    def __len__(self) -> int:
        return len(self.examples)


def is_whitespace(c: str) -> bool:
    # The original's rule: Python's str.isspace() misses none of these, but U+202F (narrow
    # no-break space) is not a separator for str.split(), so it is listed explicitly.
    return c in " \t\r\n" or ord(c) == 0x202F


def split_words(context: str) -> tuple[list[str], list[int], list[int]]:
    """Whitespace words of `context`, each word's start offset, and char -> word index."""
    words, starts, char_to_word = [], [], []
    previous_is_space = True
    for i, c in enumerate(context):
        if is_whitespace(c):
            previous_is_space = True
        else:
            if previous_is_space:
                words.append(c)
                starts.append(i)
            else:
                words[-1] += c
            previous_is_space = False
        char_to_word.append(len(words) - 1)
    return words, starts, char_to_word


def make_example(
    qas_id: str,
    question: str,
    context: str,
    answers: Sequence[tuple[str, int]],
    *,
    is_impossible: bool,
    training: bool,
    where: str,
) -> Example | None:
    """Builds an Example; None when a training answer is not at its `answer_start` (logged).

    `answers` are (text, answer_start) pairs; training uses the first. `where` names the file
    for error messages.
    """
    if not context.strip():
        raise ValueError(f"{where}: question {qas_id!r} has no context")
    if not question.strip():
        raise ValueError(f"{where}: question {qas_id!r} has empty question text")
    words, starts, char_to_word = split_words(context)
    texts = tuple(text for text, _ in answers)
    example = Example(qas_id, question, context, tuple(words), tuple(starts), texts, is_impossible)
    if not training or is_impossible:
        return example
    if not answers:
        raise ValueError(f"{where}: training question {qas_id!r} has no answer")
    text, start = answers[0]
    end = start + len(text) - 1
    if start < 0 or end >= len(context) or not text.strip():
        logging.warning("%s: question %r: answer %r not at %d; skipped", where, qas_id, text, start)
        return None
    start_word, end_word = char_to_word[start], char_to_word[end]
    # As the original: the answer's words must contain the answer text (whitespace-normalized);
    # a mismatch means a bad answer_start, and the question is skipped, not trained on.
    actual = " ".join(words[start_word : end_word + 1])
    if actual.find(" ".join(text.split())) == -1:
        logging.warning(
            "%s: question %r: answer %r not found at %d (there: %r); skipped",
            *(where, qas_id, text, start, actual),
        )
        return None
    return dataclasses.replace(example, start_word=start_word, end_word=end_word)


def read_examples(
    version: str,
    split: str,
    data_dir: str | None = None,
    *,
    training: bool | None = None,
    tfds_data_dir: str | None = None,
) -> Examples:
    """Reads `train` or `dev` of SQuAD `version` from DATA_DIR/{train,dev}-v{version}.json (local
    or gs://), or from TFDS `squad/v{version}` when `data_dir` is None."""
    if version not in VERSIONS:
        raise ValueError(f"SQuAD version {version!r} is not one of {VERSIONS}")
    if split not in SPLITS:
        raise ValueError(f"SQuAD split {split!r} is not one of {tuple(SPLITS)}")
    training = split == "train" if training is None else training
    if data_dir is None:
        rows, where = _tfds_rows(version, split, tfds_data_dir), f"tfds squad/v{version} {split}"
    else:
        path = epath.Path(data_dir) / f"{split}-v{version}.json"
        if not path.exists():
            raise FileNotFoundError(f"SQuAD file not found: {path}")
        rows, where = _json_rows(path), str(path)
    examples, skipped = [], 0
    for qas_id, question, context, answers, impossible in rows:
        example = make_example(
            qas_id, question, context, answers,
            is_impossible=impossible, training=training, where=where,
        )  # fmt: skip
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if skipped:
        logging.warning("%s: skipped %d questions whose answer was not found", where, skipped)
    return Examples(version, split, examples, skipped)


def _json_rows(path: epath.Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a SQuAD JSON file ({type(e).__name__}: {e})") from None
    for article in data:
        for paragraph in article.get("paragraphs", ()):
            context = paragraph.get("context") or ""
            for qa in paragraph.get("qas", ()):
                qas_id = str(qa.get("id", "?"))
                if "question" not in qa:
                    raise ValueError(f"{path}: question {qas_id!r} has no 'question' field")
                answers = [(a["text"], int(a["answer_start"])) for a in qa.get("answers", ())]
                yield qas_id, qa["question"], context, answers, bool(qa.get("is_impossible"))


def _tfds_rows(version: str, split: str, tfds_data_dir: str | None):
    import tensorflow_datasets as tfds
    import tensorflow_datasets.question_answering.squad  # noqa: F401  (registers squad/*)

    source = tfds.data_source(f"squad/v{version}", split=SPLITS[split], data_dir=tfds_data_dir)
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    for row in source:
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        if len(texts) != len(starts):
            raise ValueError(
                f"tfds squad/v{version} {split}: question {text(row['id'])!r} has "
                f"{len(texts)} answer texts but {len(starts)} answer starts"
            )
        answers = [(text(t), int(s)) for t, s in zip(texts, starts, strict=True)]
        impossible = bool(row.get("is_impossible", False))
        yield text(row["id"]), text(row["question"]), text(row["context"]), answers, impossible


# --------------------------------------------------------------------------------------------------
# Featurisation: windows over the context.
# --------------------------------------------------------------------------------------------------
def window_starts(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `num_tokens` context tokens, as the original."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, window)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, stride)
    return spans or [(0, 0)]


def is_max_context(spans: Sequence[tuple[int, int]], index: int, position: int) -> bool:
    """Whether window `index` gives token `position` the most context (min of left and right
    context, plus a 0.01-per-token tie break for the longer window) among the windows with it."""
    best, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best is None or score > best:
            best, best_index = score, i
    return best_index == index


def _improve_span(doc_ids, start: int, end: int, answers_ids) -> tuple[int, int]:
    """The tightest sub-span of word pieces whose pieces are one of the answer's encodings (e.g.
    "1895" inside "(1895-1943)."), the first encoding first; the whole words' span when none
    matches."""
    for answer_ids in answers_ids:
        for new_start in range(start, end + 1):
            for new_end in range(end, new_start - 1, -1):
                if doc_ids[new_start : new_end + 1] == answer_ids:
                    return new_start, new_end
    return start, end


def _answer_encodings(tokenizer, answer: str, after_space: bool) -> list[list[int]]:
    """The answer's pieces as whole words of the context (a byte-level BPE marks the space before
    them), then as the text alone (an answer that starts inside a word)."""
    words = answer.split()
    whole = [
        i for ids in tokenizer.encode_words(words, space_before_first=after_space) for i in ids
    ]
    alone = tokenizer.encode(answer)
    return [whole] if whole == alone else [whole, alone]


def encode_examples(
    examples: Examples,
    tokenizer,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    training: bool,
) -> dict[str, np.ndarray]:
    """Windows of every example as fixed-length int32 arrays.

    Model inputs `input_ids`, `token_type_ids`, `attention_mask` [F, L]; targets
    `start_positions`, `end_positions` [F] (0 = [CLS]: no answer in the window); and for
    post-processing `example_index` [F], `token_to_word` [F, L] (context word of each token, -1
    elsewhere) and `max_context` [F, L] (bool).
    """
    if max_query_length + 2 + getattr(tokenizer, "pair_separators", 1) >= max_seq_length:
        raise ValueError(f"max_query_length {max_query_length} leaves no room for the context")
    # Contexts repeat (several questions per paragraph): tokenize each once.
    word_ids: dict[str, list[list[int]]] = {}
    questions = tokenizer.encode_batch([e.question for e in examples.examples])
    rows = []
    for index, (example, query) in enumerate(zip(examples.examples, questions, strict=True)):
        if example.context not in word_ids:
            # As the context's own encoding: a byte-level BPE's words after the first follow a space.
            word_ids[example.context] = tokenizer.encode_words(
                example.words, space_before_first=False
            )
        query = query[:max_query_length]
        doc_ids, tok_to_word, word_to_tok = [], [], []
        for w, ids in enumerate(word_ids[example.context]):
            word_to_tok.append(len(doc_ids))
            doc_ids.extend(ids)
            tok_to_word.extend([w] * len(ids))
        answer = None
        if training and not example.is_impossible:
            start = word_to_tok[example.start_word]
            last_word = example.end_word == len(example.words) - 1
            end = len(doc_ids) - 1 if last_word else word_to_tok[example.end_word + 1] - 1
            encodings = _answer_encodings(tokenizer, example.answers[0], example.start_word > 0)
            answer = _improve_span(doc_ids, start, end, encodings)
        # [CLS] query [SEP] ... [SEP]; RoBERTa's pairs have two separators: <s> query </s></s> ... </s>.
        separators = getattr(tokenizer, "pair_separators", 1)
        spans = window_starts(
            len(doc_ids), max_seq_length - len(query) - 2 - separators, doc_stride
        )
        for span_index, (span_start, span_length) in enumerate(spans):
            offset = len(query) + 1 + separators
            ids = [tokenizer.cls_id, *query, *[tokenizer.sep_id] * separators]
            ids += doc_ids[span_start : span_start + span_length] + [tokenizer.sep_id]
            to_word = np.full(max_seq_length, -1, np.int32)
            max_context = np.zeros(max_seq_length, bool)
            for i in range(span_length):
                to_word[offset + i] = tok_to_word[span_start + i]
                max_context[offset + i] = is_max_context(spans, span_index, span_start + i)
            start_position = end_position = 0
            if answer is not None:
                inside = span_start <= answer[0] and answer[1] < span_start + span_length
                if inside:
                    start_position = answer[0] - span_start + offset
                    end_position = answer[1] - span_start + offset
            rows.append((index, ids, offset, to_word, max_context, start_position, end_position))
    n = len(rows)
    out = {
        "input_ids": np.full((n, max_seq_length), tokenizer.pad_id, np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), np.int32),
        "attention_mask": np.zeros((n, max_seq_length), np.int32),
        "start_positions": np.zeros(n, np.int32),
        "end_positions": np.zeros(n, np.int32),
        "example_index": np.zeros(n, np.int32),
        "token_to_word": np.full((n, max_seq_length), -1, np.int32),
        "max_context": np.zeros((n, max_seq_length), bool),
    }
    for f, (index, ids, offset, to_word, max_context, start, end) in enumerate(rows):
        out["input_ids"][f, : len(ids)] = ids
        # The context's token type: 1, or RoBERTa's one type 0.
        out["token_type_ids"][f, offset : len(ids)] = getattr(tokenizer, "second_type", 1)
        out["attention_mask"][f, : len(ids)] = 1
        out["start_positions"][f], out["end_positions"][f] = start, end
        out["example_index"][f] = index
        out["token_to_word"][f] = to_word
        out["max_context"][f] = max_context
    return out
