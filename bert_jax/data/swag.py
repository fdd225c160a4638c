"""SWAG multiple choice: the official CSV files, and [CLS] context [SEP] ending [SEP] per choice.

The CSVs (train.csv, val.csv, test.csv) have the columns video-id, fold-ind, startphrase, sent1,
sent2, gold-source, ending0..ending3 and (not in test.csv) label. As the paper (section 4.4),
each of the four endings makes one sequence: sentence A is `sent1`, sentence B is `sent2` followed
by the ending (`startphrase` is sent1 + sent2, and the endings continue sent2). The installed
TFDS has no `swag` data set (only HellaSwag), so SWAG is read from the CSVs only.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
from etils import epath

NUM_CHOICES = 4
FILES = {"train": "train.csv", "dev": "val.csv", "test": "test.csv"}
COLUMNS = ("video-id", "fold-ind", "sent1", "sent2", *(f"ending{i}" for i in range(NUM_CHOICES)))


@dataclasses.dataclass
class Examples:
    """One split: contexts, the start of each ending, the four endings and the gold choice."""

    split: str
    source: str
    ids: list[str]  # "<video-id>/<fold-ind>"
    contexts: list[str]
    starts: list[str]
    endings: list[tuple[str, ...]]
    labels: np.ndarray | None  # int32 [n] in [0, 4); None for test.csv

    def __len__(self) -> int:
        return len(self.contexts)


def read_examples(split: str, data_dir: str) -> Examples:
    """`train`, `dev` or `test` from DATA_DIR/{train,val,test}.csv (local or gs://)."""
    if split not in FILES:
        raise ValueError(f"SWAG split {split!r} is not one of {tuple(FILES)}")
    if data_dir is None:
        raise ValueError("SWAG is read from the official CSV files: set data_dir")
    path = epath.Path(data_dir) / FILES[split]
    if not path.exists():
        raise FileNotFoundError(f"SWAG {split} file not found: {path}")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    has_label = "label" in header
    if missing:
        raise ValueError(f"{path}:1: missing columns {missing} in header {header}")
    if split != "test" and not has_label:
        raise ValueError(f"{path}:1: no 'label' column")
    ids, contexts, starts, endings, labels = [], [], [], [], []
    for row in reader:
        line = reader.line_num
        if None in row or any(row[c] is None for c in COLUMNS):
            raise ValueError(f"{path}:{line}: expected {len(header)} columns")
        ids.append(f"{row['video-id']}/{row['fold-ind']}")
        contexts.append(row["sent1"])
        starts.append(row["sent2"])
        endings.append(tuple(row[f"ending{i}"] for i in range(NUM_CHOICES)))
        if has_label and split != "test":
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                label = -1
            if not 0 <= label < NUM_CHOICES:
                raise ValueError(f"{path}:{line}: label {row['label']!r} is not one of 0..3")
            labels.append(label)
    if not contexts:
        raise ValueError(f"{path}: no examples")
    label_array = np.asarray(labels, np.int32) if split != "test" else None
    return Examples(split, str(path), ids, contexts, starts, endings, label_array)


def encode_examples(examples: Examples, tokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `token_type_ids`, `attention_mask` [n, 4, L] and `labels` [n] (-1 on
    test). Pairs longer than `max_seq_length` lose tokens from the longer side first."""
    firsts = [c for c in examples.contexts for _ in range(NUM_CHOICES)]
    seconds = [
        f"{start} {ending}".strip()
        for start, endings in zip(examples.starts, examples.endings, strict=True)
        for ending in endings
    ]
    encoded = tokenizer(
        firsts, pairs=seconds, max_length=max_seq_length, padding="max_length", truncation=True
    )
    n = len(examples)
    out = {
        key: np.asarray(encoded[key], np.int32).reshape(n, NUM_CHOICES, max_seq_length)
        for key in ("input_ids", "token_type_ids", "attention_mask")
    }
    labels = examples.labels
    out["labels"] = np.full(n, -1, np.int32) if labels is None else labels.astype(np.int32)
    out["example_ids"] = np.arange(n, dtype=np.int32)
    return out
