"""SQuAD post-processing: window logits -> answer texts, n-best lists and null odds, as run_squad.py.

For each question, the `n_best` highest start and end logits of every window propose spans; a
span survives when both ends are context tokens, its start token has its maximum context in this
window, end >= start and it is at most `max_answer_length` tokens long. Spans are ranked by
start + end logit; the word pieces of a span are mapped back to the original text through the
basic-tokenized context (the original's get_final_text), which also undoes lower-casing and accent
stripping. The returned text is the context's own characters (whitespace included).
v2.0: the null answer's score is the smallest [CLS] start + end logit over the windows; a
question is answered "" when null score - best span score > `null_score_diff_threshold`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from bert_jax.data.squad import Example


@dataclasses.dataclass(frozen=True)
class Answers:
    """Post-processed predictions, keyed by question id."""

    predictions: dict[str, str]  # the answer (v2.0: "" when the null answer wins)
    nbest: dict[str, list[dict]]  # text, probability, start_logit, end_logit; best first
    null_odds: dict[str, float]  # v2.0: null score minus the best span's score
    best_span: dict[str, str]  # the best non-null text (v2.0 re-thresholding needs it)


def _strip_spaces(text: str) -> tuple[str, list[int]]:
    """`text` without spaces, and the position in `text` of each kept character."""
    kept = [(i, c) for i, c in enumerate(text) if c != " "]
    return "".join(c for _, c in kept), [i for i, _ in kept]


def final_text_span(pred_text: str, orig_text: str, basic_tokenize) -> tuple[int, int]:
    """[start, end) of `pred_text`'s characters in `orig_text` (the span's words joined by one
    space), as the original's get_final_text; the whole of `orig_text` when they cannot be
    aligned (e.g. normalization changed the length, or [UNK] pieces)."""
    whole = (0, len(orig_text))
    tok_text = " ".join(basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1 or not pred_text:
        return whole
    end = start + len(pred_text) - 1
    orig_ns, orig_ns_to_s = _strip_spaces(orig_text)
    tok_ns, tok_ns_to_s = _strip_spaces(tok_text)
    # Normalization kept the characters one to one (apart from spaces) only when the lengths agree.
    if len(orig_ns) != len(tok_ns):
        return whole
    tok_s_to_ns = {s: ns for ns, s in enumerate(tok_ns_to_s)}
    if start not in tok_s_to_ns or end not in tok_s_to_ns:
        return whole
    return orig_ns_to_s[tok_s_to_ns[start]], orig_ns_to_s[tok_s_to_ns[end]] + 1


def pieces_text(pieces: Sequence[str]) -> str:
    """Word pieces as text: "##" continuations glued to the piece before, spaces normalized."""
    text = " ".join(pieces).replace(" ##", "").replace("##", "")
    return " ".join(text.split())


def _context_slice(example: Example, first_word: int, last_word: int, basic_tokenize, pred: str):
    """The answer as the original computes it (on words joined by single spaces) and as the
    context's own characters (multiple spaces and all)."""
    words = example.words[first_word : last_word + 1]
    orig_text = " ".join(words)
    start, end = final_text_span(pred, orig_text, basic_tokenize)
    # Position in the joined text -> (word, offset in word) -> position in the context.
    joined_to_context = []
    for w, word in enumerate(words):
        begin = example.word_starts[first_word + w]
        joined_to_context.extend(range(begin, begin + len(word)))
        if w < len(words) - 1:
            joined_to_context.append(begin + len(word))  # the joining space
    exact = example.context[joined_to_context[start] : joined_to_context[end - 1] + 1]
    return orig_text[start:end], exact


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _best_indexes(logits: np.ndarray, n: int) -> list[int]:
    # Stable, as Python's sorted(..., reverse=True) in the original: ties keep position order.
    return [int(i) for i in np.argsort(-logits, kind="stable")[:n]]


def compute_answers(
    examples: Sequence[Example],
    features: Mapping[str, np.ndarray],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    tokenizer,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> Answers:
    """Answers of every example from its windows' logits ([F, L], rows as `features`)."""
    basic_tokenize = getattr(tokenizer, "basic_tokenize", str.split)
    # A byte-level BPE decodes its pieces itself; WordPiece's "##" pieces are glued here.
    span_text = getattr(tokenizer, "span_text", None) or (
        lambda ids: pieces_text([tokenizer.id_to_token(int(i)) for i in ids])
    )
    by_example: dict[int, list[int]] = {}
    for f, index in enumerate(features["example_index"]):
        by_example.setdefault(int(index), []).append(f)
    predictions, nbest_out, null_odds, best_span = {}, {}, {}, {}
    for index, example in enumerate(examples):
        prelim, null = [], None  # null: (score, feature, start logit, end logit)
        for f in by_example.get(index, []):
            starts, ends = start_logits[f], end_logits[f]
            to_word, max_context = features["token_to_word"][f], features["max_context"][f]
            if version_2:
                score = float(starts[0] + ends[0])
                if null is None or score < null[0]:
                    null = (score, f, float(starts[0]), float(ends[0]))
            for s in _best_indexes(starts, n_best):
                for e in _best_indexes(ends, n_best):
                    if to_word[s] < 0 or to_word[e] < 0 or not max_context[s]:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append((float(starts[s]) + float(ends[e]), f, s, e))
        if null is not None:
            prelim.append((null[2] + null[3], null[1], 0, 0))
        prelim.sort(key=lambda p: p[0], reverse=True)  # stable: ties keep proposal order
        entries, seen = [], set()
        for _, f, s, e in prelim:
            if len(entries) >= n_best:
                break
            if s > 0:
                ids = features["input_ids"][f][s : e + 1]
                pred = span_text(ids)
                to_word = features["token_to_word"][f]
                joined, text = _context_slice(
                    example, int(to_word[s]), int(to_word[e]), basic_tokenize, pred
                )
            else:
                joined = text = ""
            # Duplicates are judged on the original's single-spaced text, as the original.
            if joined in seen:
                continue
            seen.add(joined)
            entries.append(
                {
                    "text": text,
                    "start_logit": float(start_logits[f][s]),
                    "end_logit": float(end_logits[f][e]),
                }
            )
        if null is not None and "" not in seen:
            entries.append({"text": "", "start_logit": null[2], "end_logit": null[3]})
        if not entries:
            # No window gave a valid span (e.g. an empty context window): the original's fallback.
            entries.append({"text": "empty", "start_logit": 0.0, "end_logit": 0.0})
        probabilities = _softmax([x["start_logit"] + x["end_logit"] for x in entries])
        nbest_out[example.qas_id] = [
            {**x, "probability": p} for x, p in zip(entries, probabilities, strict=True)
        ]
        best = next((x for x in entries if x["text"]), None)
        best_span[example.qas_id] = "" if best is None else best["text"]
        if not version_2:
            predictions[example.qas_id] = entries[0]["text"]
            continue
        if best is None:
            # Only the null answer was proposed: its odds are +inf in spirit; a large finite value
            # keeps null_odds.json valid JSON.
            null_odds[example.qas_id] = 1e6
            predictions[example.qas_id] = ""
            continue
        diff = null[0] - best["start_logit"] - best["end_logit"]
        null_odds[example.qas_id] = diff
        predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best["text"]
    return Answers(predictions, nbest_out, null_odds, best_span)


def apply_threshold(answers: Answers, threshold: float) -> dict[str, str]:
    """v2.0 predictions for another null score-difference threshold."""
    return {
        qid: "" if answers.null_odds[qid] > threshold else answers.best_span[qid]
        for qid in answers.predictions
    }


def write_prediction_files(directory, answers: Answers, predictions: Mapping[str, str]) -> dict:
    """Writes predictions.json, nbest_predictions.json and (v2.0) null_odds.json in the layout the
    official evaluation scripts read; returns {name: path}."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"predictions": predictions, "nbest_predictions": answers.nbest}
    if answers.null_odds:
        files["null_odds"] = answers.null_odds
    written = {}
    for name, value in files.items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        written[name] = str(path)
    return written
