"""SQuAD exact match and F1 as the official evaluation scripts define them (v1.1 and v2.0).

Both normalize an answer by lower-casing, removing ASCII punctuation and the articles a/an/the,
and collapsing whitespace; F1 is over the bag of normalized tokens; a question scores the
maximum over its gold answers. They differ where it matters:
- v1.1 counts a question without a prediction as 0 (and in the total); v2.0 leaves it out.
- v2.0 scores empty answers: a question with no (non-empty) gold answer has gold [""], and an
  empty prediction or gold scores 1 only when both are empty.
- v2.0 reports HasAns_*/NoAns_* and, given null odds, the best threshold for EM and F1.
Values are percentages, as the scripts print them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

from absl import logging

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (the scripts' order)."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1_v1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_v2(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # No-answer questions: right only when both are empty.
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def evaluate_v1(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """{"exact_match", "f1"} over every question of `gold` (question id -> gold answer texts)."""
    exact = f1 = 0.0
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        logging.warning("%d of %d questions unanswered: they score 0", len(missing), len(gold))
    for qid, answers in gold.items():
        if qid in predictions:
            exact += max(_exact(predictions[qid], a) for a in answers)
            f1 += max(_f1_v1(predictions[qid], a) for a in answers)
    total = len(gold)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def raw_scores_v2(
    gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> tuple[dict, dict]:
    """Per-question exact and F1 (0/1 and [0, 1]) of the answered questions, as the v2.0 script."""
    exact, f1 = {}, {}
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        logging.warning("%d of %d questions unanswered: left out", len(missing), len(gold))
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact[qid] = max(_exact(predictions[qid], a) for a in answers)
        f1[qid] = max(_f1_v2(predictions[qid], a) for a in answers)
    return exact, f1


def _mean(scores: Mapping[str, float], qids) -> float:
    return 100.0 * sum(scores[q] for q in qids) / len(qids)


def best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """(best score in %, its threshold): predicting "no answer" above each threshold in turn."""
    score = best = sum(1 for qid in has_answer if not has_answer[qid])
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        else:
            score += -1 if predictions[qid] else 0
        if score > best:
            best, threshold = score, na_probs[qid]
    return 100.0 * best / len(scores), threshold


def evaluate_v2(
    gold: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict:
    """The v2.0 script's dict: exact, f1, total, HasAns_*, NoAns_* and, with `na_probs` (its
    --na-prob-file), best_exact, best_exact_thresh, best_f1, best_f1_thresh."""
    # As the script: "has an answer" means the answer list is non-empty (even if an answer
    # normalizes to nothing, which then scores against "").
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw = raw_scores_v2(gold, predictions)
    probs = na_probs if na_probs is not None else {qid: 0.0 for qid in predictions}
    # Above the threshold the script treats the prediction as "no answer".
    threshold = lambda s: {
        q: float(not has_answer[q]) if probs[q] > na_prob_thresh else v for q, v in s.items()
    }
    exact, f1 = threshold(exact_raw), threshold(f1_raw)
    out = {"exact": _mean(exact, exact), "f1": _mean(f1, f1), "total": len(exact)}
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q in exact if has_answer[q] == wanted]
        if qids:
            out[f"{name}_exact"] = _mean(exact, qids)
            out[f"{name}_f1"] = _mean(f1, qids)
            out[f"{name}_total"] = len(qids)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(
            predictions, exact_raw, na_probs, has_answer
        )
        out["best_f1"], out["best_f1_thresh"] = best_threshold(
            predictions, f1_raw, na_probs, has_answer
        )
    return out


def gold_answers(dataset: Sequence[Mapping]) -> dict[str, list[str]]:
    """Question id -> gold answer texts from the official JSON's `data` list."""
    return {
        qa["id"]: [a["text"] for a in qa.get("answers", ())]
        for article in dataset
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
