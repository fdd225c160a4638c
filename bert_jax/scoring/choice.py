"""Multiple-choice accuracy (SWAG): the highest-scoring choice against the gold one."""

from __future__ import annotations

import numpy as np


def accuracy(logits, labels) -> float:
    """Fraction of rows of `logits` [n, choices] whose argmax is `labels` [n]."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} do not fit labels {labels.shape}")
    return float(np.mean(logits.argmax(-1) == labels))
