"""Entity-level NER precision, recall and F1, computed by seqeval (as conlleval computes them).

seqeval's default mode follows conlleval: a chunk starts at B-X, or at I-X after a tag of another
type or O, so IOB1 (the original CoNLL-2003 tags) and IOB2 both score correctly without
conversion. `strict=True` uses seqeval's strict IOB2 mode (an I-X without a B-X is no entity).
"""

from __future__ import annotations

from collections.abc import Sequence


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], *, strict: bool = False
) -> dict:
    """Micro precision/recall/F1 over entities (fractions) plus per-type F1 and support."""
    # Imported here: only NER scoring needs seqeval, and a pretraining host (a GPU image) may lack it.
    import seqeval.metrics
    from seqeval.scheme import IOB2

    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    if [len(s) for s in gold] != [len(s) for s in predicted]:
        raise ValueError("gold and predicted sentences differ in number or length")
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = seqeval.metrics.classification_report(
        gold, predicted, output_dict=True, zero_division=0, **kwargs
    )
    micro = report["micro avg"]
    out = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "num_entities": int(micro["support"]),
    }
    for name, values in report.items():
        if not name.endswith(" avg"):
            out[f"{name}/f1"] = float(values["f1-score"])
            out[f"{name}/support"] = int(values["support"])
    return out
