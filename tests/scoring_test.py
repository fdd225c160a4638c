"""SQuAD EM/F1 (v1.1 and v2.0 scripts' definitions), seqeval NER scores and multiple-choice accuracy."""

import string

import numpy as np
import pytest
import seqeval.metrics

from bert_jax.scoring import choice, ner
from bert_jax.scoring import squad as sq


def test_normalize_answer():
    assert sq.normalize_answer("  The  Eiffel-Tower, (Paris)! ") == "eiffeltower paris"
    assert sq.normalize_answer("an apple a day") == "apple day"
    assert sq.normalize_answer("Théâtre") == "théâtre"  # non-ASCII letters stay


def test_v1_hand_computed():
    gold = {
        "q1": ["The Eiffel Tower", "Eiffel tower"],
        "q2": ["1889"],
        "q3": ["in Paris, France"],
        "q4": ["x"],
    }
    predictions = {"q1": "eiffel Tower!", "q2": "in 1889", "q3": "Paris"}
    # q1 exact; q2 P 1/2 R 1 -> F1 2/3; q3 P 1 R 1/3 -> F1 1/2; q4 unanswered counts 0.
    got = sq.evaluate_v1(gold, predictions)
    assert got["exact_match"] == pytest.approx(100 * 1 / 4)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 / 2) / 4)


def test_v2_hand_computed():
    gold = {"h1": ["Bob"], "h2": ["the cat sat"], "n1": [], "n2": []}
    predictions = {"h1": "Bob", "h2": "cat", "n1": "", "n2": "dog"}
    na_probs = {"h1": 0.1, "h2": 0.6, "n1": 0.3, "n2": 0.9}
    got = sq.evaluate_v2(gold, predictions, na_probs)
    assert got == pytest.approx(
        {
            "exact": 50.0,
            "f1": 100 * (1 + 2 / 3 + 1 + 0) / 4,
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 100 * (1 + 2 / 3) / 2,
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
            # Running sums from 2 (all null): h1 +1 (0.1), n1 +0, h2 +2/3 (0.6), n2 -1.
            "best_exact": 75.0,
            "best_exact_thresh": 0.1,
            "best_f1": 100 * (3 + 2 / 3) / 4,
            "best_f1_thresh": 0.6,
        }
    )
    # Above na_prob_thresh a prediction counts as "no answer": h2 -> 0, n2 -> 1.
    thresholded = sq.evaluate_v2(gold, predictions, na_probs, na_prob_thresh=0.5)
    assert (thresholded["exact"], thresholded["f1"]) == (75.0, 75.0)


# An independent transcription of the official definitions, token-based rather than regex-based.
def _ref_tokens(text):
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return [t for t in text.split() if t not in ("a", "an", "the")]


def _ref_f1(pred, gold, v2):
    p, g = _ref_tokens(pred), _ref_tokens(gold)
    if v2 and (not p or not g):
        return float(p == g)
    same = sum(min(p.count(t), g.count(t)) for t in set(p))
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))


WORDS = ["The", "cat", "cat.", "dog,", "a", "An", "sat", "on", "mat!", "Paris", "the", "1889"]


def _random_text(rng, max_words=4):
    return " ".join(rng.choice(WORDS, size=rng.integers(0, max_words + 1)))


def test_random_predictions_match_reference():
    rng = np.random.default_rng(0)
    gold = {f"q{i}": [_random_text(rng) for _ in range(rng.integers(1, 4))] for i in range(300)}
    predictions = {q: _random_text(rng) for q in gold}
    # v1.1: every question has a non-empty gold answer.
    gold_v1 = {q: [a or "cat" for a in answers] for q, answers in gold.items()}
    ref_em = np.mean(
        [max(_ref_tokens(predictions[q]) == _ref_tokens(a) for a in gold_v1[q]) for q in gold]
    )
    ref_f1 = np.mean([max(_ref_f1(predictions[q], a, False) for a in gold_v1[q]) for q in gold])
    got = sq.evaluate_v1(gold_v1, predictions)
    assert got["exact_match"] == pytest.approx(100 * ref_em)
    assert got["f1"] == pytest.approx(100 * ref_f1)

    # v2.0: some questions have no answers; others only answers that normalize to nothing.
    gold = {q: answers if rng.random() < 0.8 else [] for q, answers in gold.items()}
    na_probs = {q: float(rng.uniform(0.01, 1.0)) for q in gold}
    has = {q: bool(gold[q]) for q in gold}
    golds = {q: [a for a in gold[q] if _ref_tokens(a)] or [""] for q in gold}
    exact = {
        q: max(float(_ref_tokens(predictions[q]) == _ref_tokens(a)) for a in golds[q]) for q in gold
    }
    f1 = {q: max(_ref_f1(predictions[q], a, True) for a in golds[q]) for q in gold}
    got = sq.evaluate_v2(gold, predictions, na_probs)
    assert got["exact"] == pytest.approx(100 * np.mean(list(exact.values())))
    assert got["f1"] == pytest.approx(100 * np.mean(list(f1.values())))
    assert got["HasAns_total"] == sum(has.values())

    def brute_force(scores):
        # Threshold t: questions with prob <= t keep their answer, others are "no answer".
        best, best_t = sum(not h for h in has.values()), 0.0
        for t in sorted(na_probs.values()):
            total = sum(
                (scores[q] if has[q] else float(not predictions[q])) if na_probs[q] <= t
                else float(not has[q])
                for q in gold
            )  # fmt: skip
            if total > best + 1e-12:
                best, best_t = total, t
        return 100 * best / len(gold), best_t

    assert (got["best_exact"], got["best_exact_thresh"]) == pytest.approx(brute_force(exact))
    assert (got["best_f1"], got["best_f1_thresh"]) == pytest.approx(brute_force(f1))


def test_gold_answers_from_json():
    data = [{"paragraphs": [{"qas": [{"id": "a", "answers": [{"text": "x"}]}, {"id": "b"}]}]}]
    assert sq.gold_answers(data) == {"a": ["x"], "b": []}


def test_ner_iob1_and_iob2_hand_computed():
    gold2 = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred2 = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    to_iob1 = lambda s: [["I" + t[1:] if t != "O" else t for t in x] for x in s]
    for gold, pred in ((gold2, pred2), (to_iob1(gold2), to_iob1(pred2))):
        got = ner.entity_scores(gold, pred)
        # Gold PER, LOC, ORG; predicted PER, ORG, ORG: 2 of 3 right both ways.
        assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
        assert got["f1"] == pytest.approx(2 / 3) and got["num_entities"] == 3
        assert got["LOC/f1"] == 0.0 and got["PER/f1"] == 1.0 and got["ORG/support"] == 1
    # IOB1: B- separates two adjacent entities of one type; one long prediction gets neither.
    got = ner.entity_scores([["I-PER", "B-PER"]], [["I-PER", "I-PER"]])
    assert (got["precision"], got["recall"], got["num_entities"]) == (0.0, 0.0, 2)
    # Strict IOB2: an I- without a B- is no entity.
    assert ner.entity_scores([["B-PER"]], [["I-PER"]], strict=True)["f1"] == 0.0
    assert ner.entity_scores([["B-PER"]], [["I-PER"]])["f1"] == 1.0


def _chunks(tags):
    """Entities as conlleval finds them: (type, start, end)."""
    out, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        begins = prefix == "B" or (prefix == "I" and t != kind)
        if kind is not None and (prefix == "O" or begins):
            out.add((kind, start, i))
            kind = None
        if prefix != "O" and (begins or kind is None):
            start, kind = i, t
    return out


def test_ner_random_predictions_match_conlleval_chunks():
    rng = np.random.default_rng(1)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    gold = [list(rng.choice(tags, size=rng.integers(1, 12))) for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in s] for s in gold]
    g = [{(s, *c) for c in _chunks(x)} for s, x in enumerate(gold)]
    p = [{(s, *c) for c in _chunks(x)} for s, x in enumerate(pred)]
    g, p = set().union(*g), set().union(*p)
    precision, recall = len(g & p) / len(p), len(g & p) / len(g)
    got = ner.entity_scores(gold, pred)
    assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert got["f1"] == pytest.approx(seqeval.metrics.f1_score(gold, pred))
    with pytest.raises(ValueError, match="differ"):
        ner.entity_scores(gold, pred[:-1])


def test_choice_accuracy():
    logits = np.array([[0.1, 0.9, 0, 0], [1, 0, 0, 0], [0, 0, 0, 2]])
    assert choice.accuracy(logits, [1, 2, 3]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        choice.accuracy(logits, [1, 2])
