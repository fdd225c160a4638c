"""GLUE: the task table, readers (official TSV layout or TFDS) and featurisation (batching: data/batching.py).

Splits are named after the official files: `train`, `dev`, `test`; MNLI has `dev_matched`,
`dev_mismatched`, `test_matched`, `test_mismatched`; AX has only `test`. Label ids index
`Task.labels`, whose strings are the ones in the TSV files and the ones the GLUE server expects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath


@dataclasses.dataclass(frozen=True)
class Task:
    """One GLUE task: where its files are, which columns hold what, and how it is scored."""

    name: str  # the key configs use (`--config.task=mrpc`) and the TFDS config name
    glue_name: str  # GLUE's own spelling: folder name and leaderboard column
    files: Mapping[str, tuple[str, ...]]  # split -> candidate file names in the task folder
    text_columns: tuple[str, ...]  # TSV columns of text_a (and text_b)
    label_column: str | None  # TSV column of the label (absent from test files)
    labels: tuple[str, ...]  # label strings in id order; empty for regression (STS-B)
    metrics: tuple[str, ...]  # metric names as in bert_jax.metrics
    tfds_features: tuple[str, ...]  # TFDS feature names of text_a (and text_b)
    leaderboard_files: Mapping[str, str]  # test split -> submission file name
    folders: tuple[str, ...] = ()  # candidate folder names; default (glue_name,)
    index_column: str = "index"  # id column where a file has one; else the row number
    no_header: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    skip_malformed: bool = False  # the released QQP has broken rows every reader must drop

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        """Width of the classifier head: 1 for regression."""
        return 1 if self.is_regression else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("dev"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("test"))

    def entry(self, split: str) -> str:
        """Result name of a split, as in `eval/<entry>/accuracy`: MNLI's two sets are separate."""
        if split.endswith("_mismatched"):
            return f"{self.name}_mm"
        if split.endswith("_matched"):
            return f"{self.name}_m"
        return self.name


_STANDARD = {"train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",)}
_BINARY = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
# CoLA's train/dev files have no header: source, label, the original author's mark, sentence.
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")

# fmt: off
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "cola", "CoLA", _STANDARD, ("sentence",), "label", _BINARY, ("matthews_corr",),
            ("sentence",), {"test": "CoLA.tsv"},
            no_header={"train": _COLA_COLUMNS, "dev": _COLA_COLUMNS},
        ),
        Task(
            "sst2", "SST-2", _STANDARD, ("sentence",), "label", _BINARY, ("accuracy",),
            ("sentence",), {"test": "SST-2.tsv"},
        ),
        Task(
            "mrpc", "MRPC", _STANDARD, ("#1 String", "#2 String"), "Quality", _BINARY,
            ("f1", "accuracy"), ("sentence1", "sentence2"), {"test": "MRPC.tsv"},
        ),
        Task(
            "stsb", "STS-B", _STANDARD, ("sentence1", "sentence2"), "score", (),
            ("pearson", "spearman"), ("sentence1", "sentence2"), {"test": "STS-B.tsv"},
        ),
        Task(
            "qqp", "QQP", _STANDARD, ("question1", "question2"), "is_duplicate", _BINARY,
            ("f1", "accuracy"), ("question1", "question2"), {"test": "QQP.tsv"},
            index_column="id", skip_malformed=True,
        ),
        Task(
            "mnli", "MNLI",
            {
                "train": ("train.tsv",),
                "dev_matched": ("dev_matched.tsv",),
                "dev_mismatched": ("dev_mismatched.tsv",),
                "test_matched": ("test_matched.tsv",),
                "test_mismatched": ("test_mismatched.tsv",),
            },
            ("sentence1", "sentence2"), "gold_label", _NLI3, ("accuracy",),
            ("premise", "hypothesis"),
            {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        ),
        Task(
            "qnli", "QNLI", _STANDARD, ("question", "sentence"), "label", _NLI2, ("accuracy",),
            ("question", "sentence"), {"test": "QNLI.tsv"},
        ),
        Task(
            "rte", "RTE", _STANDARD, ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",),
            ("sentence1", "sentence2"), {"test": "RTE.tsv"},
        ),
        Task(
            "wnli", "WNLI", _STANDARD, ("sentence1", "sentence2"), "label", _BINARY,
            ("accuracy",), ("sentence1", "sentence2"), {"test": "WNLI.tsv"},
        ),
        # The diagnostic set is predicted with the MNLI model; the server scores it with R3,
        # the multi-class Matthews correlation.
        Task(
            "ax", "AX", {"test": ("diagnostic.tsv", "AX.tsv")}, ("sentence1", "sentence2"), None,
            _NLI3, ("matthews_corr",), ("premise", "hypothesis"), {"test": "AX.tsv"},
            folders=("diagnostic", "AX"),
        ),
    )
}
# fmt: on


def get_task(name: str) -> Task:
    """Looks a task up by config name or GLUE spelling (`sst2`, `SST-2`, `STS-B`...)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]


@dataclasses.dataclass(frozen=True)
class Examples:
    """One split of one task, column-wise."""

    task: str
    split: str
    idx: np.ndarray  # int64 [n]: the file's id column (what leaderboard files need) or row number
    text_a: list[str]
    text_b: list[str] | None  # None for single-sentence tasks
    labels: np.ndarray | None  # int32 label ids or float32 scores; None on test splits
    num_skipped: int = 0  # malformed rows dropped (QQP only)

    def __len__(self) -> int:
        return len(self.text_a)


def read_examples(
    task: str, split: str, data_dir: str | None = None, *, tfds_data_dir: str | None = None
) -> Examples:
    """Reads a split from GLUE_DIR in the official layout (local or gs://), else from TFDS."""
    t = get_task(task)
    if split not in t.files:
        raise ValueError(f"{t.name} has no split {split!r}; valid splits: {', '.join(t.splits)}")
    if data_dir is None:
        return _read_tfds(t, split, tfds_data_dir)
    return _read_tsv(t, split, _find_file(t, split, epath.Path(data_dir)))


def _find_file(task: Task, split: str, root: epath.Path) -> epath.Path:
    folders = [root / f for f in task.folders or (task.glue_name,)]
    existing = [f for f in folders if f.is_dir()]
    if not existing:
        raise FileNotFoundError(f"GLUE task folder not found: {' or '.join(map(str, folders))}")
    candidates = [f / name for f in existing for name in task.files[split]]
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"GLUE {split} file not found: {' or '.join(map(str, candidates))}")


def _read_tsv(task: Task, split: str, path: epath.Path) -> Examples:
    is_test = split.startswith("test")
    columns = task.no_header.get(split)
    where = None if columns is None else _column_positions(task, columns, is_test, path)
    idx, text_a, text_b, labels, skipped = [], [], [], [], []
    row_number = 0
    # Binary lines split on "\n" only: the texts hold characters (U+2028, \x85) that text-mode
    # line splitting would treat as line ends. QUOTE_NONE semantics: quotes are plain text.
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not UTF-8 ({e.reason})") from None
            if line_number == 1:
                line = line.removeprefix("\ufeff")  # MRPC's source files start with a BOM
            if not line:
                continue
            fields = line.split("\t")
            if columns is None:
                columns = tuple(fields)
                where = _column_positions(task, columns, is_test, path)
                continue
            row = row_number  # counts malformed rows too, as TFDS's idx does
            row_number += 1
            try:
                if len(fields) != len(columns):
                    raise ValueError(
                        f"expected {len(columns)} tab-separated fields, got {len(fields)}"
                    )
                label = None if is_test else _parse_label(task, fields[where["label"]])
                row_idx = int(fields[where["index"]]) if "index" in where else row
            except ValueError as e:
                if not task.skip_malformed:
                    raise ValueError(f"{path}:{line_number}: {e}") from None
                skipped.append(line_number)
                continue
            idx.append(row_idx)
            text_a.append(fields[where["text_a"]])
            if "text_b" in where:
                text_b.append(fields[where["text_b"]])
            labels.append(label)
    if columns is None:
        raise ValueError(f"{path}: empty file")
    if skipped:
        logging.warning(
            "%s: skipped %d malformed rows (lines %s)", path, len(skipped), _shorten(skipped)
        )
    text_b = text_b if len(task.text_columns) == 2 else None
    return _examples(task, split, idx, text_a, text_b, None if is_test else labels, len(skipped))


def _column_positions(
    task: Task, columns: Sequence[str], is_test: bool, path: epath.Path
) -> dict[str, int]:
    wanted = dict(zip(("text_a", "text_b"), task.text_columns, strict=False))
    if not is_test:
        wanted["label"] = task.label_column
    where = {}
    for key, name in wanted.items():
        if name not in columns:
            raise ValueError(f"{path}:1: no column {name!r} in header {list(columns)}")
        where[key] = columns.index(name)
    if task.index_column in columns:
        where["index"] = columns.index(task.index_column)
    return where


def _parse_label(task: Task, raw: str) -> int | float:
    if task.is_regression:
        return float(raw)
    if raw not in task.labels:
        raise ValueError(f"label {raw!r} not in {list(task.labels)}")
    return task.labels.index(raw)


def _shorten(numbers: list[int], limit: int = 10) -> str:
    head = ", ".join(map(str, numbers[:limit]))
    return head + (f", ... ({len(numbers) - limit} more)" if len(numbers) > limit else "")


def _examples(
    task: Task,
    split: str,
    idx: list[int],
    text_a: list[str],
    text_b: list[str] | None,
    labels: list | None,
    num_skipped: int,
) -> Examples:
    dtype = np.float32 if task.is_regression else np.int32
    return Examples(
        task=task.name,
        split=split,
        idx=np.asarray(idx, np.int64),
        text_a=text_a,
        text_b=text_b,
        labels=None if labels is None else np.asarray(labels, dtype),
        num_skipped=num_skipped,
    )


def _read_tfds(task: Task, split: str, tfds_data_dir: str | None) -> Examples:
    # Imported here so that the task table (used by metrics.py) does not pull TFDS in.
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.glue  # noqa: F401  (registers glue/* without TensorFlow)

    tfds_split = split.replace("dev", "validation", 1)  # dev_matched -> validation_matched
    try:
        # Nothing downloads at run time: an unprepared data set is an error naming what to do.
        source = tfds.data_source(
            f"glue/{task.name}", split=tfds_split, data_dir=tfds_data_dir, download=False
        )
    except Exception as error:  # noqa: BLE001 -- TFDS raises several kinds for "not prepared"
        where = tfds_data_dir or "TFDS's default data directory"
        raise ValueError(
            f"no data_dir given and TFDS glue/{task.name} ({tfds_split}) is not prepared in {where} "
            f"({type(error).__name__}); pass --config.data_dir=GLUE_DIR (the official GLUE layout) or "
            "prepare the TFDS data set beforehand"
        ) from error
    idx, texts, labels = [], [[] for _ in task.tfds_features], []
    for row in source:
        idx.append(int(row["idx"]))
        for column, feature in zip(texts, task.tfds_features, strict=True):
            value = row[feature]
            column.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        labels.append(row["label"])
    # TFDS label ids use the same order as Task.labels; its test labels are -1 placeholders.
    is_test = split.startswith("test")
    text_b = texts[1] if len(texts) == 2 else None
    return _examples(task, split, idx, texts[0], text_b, None if is_test else labels, 0)


def encode_examples(examples: Examples, tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Tokenizes to fixed-length int32 features plus `labels` and `example_ids`.

    `labels` is int32 (float32 for STS-B); on test splits it holds -1 (NaN for STS-B).
    """
    task = get_task(examples.task)
    encoded = tokenizer(
        examples.text_a,
        pairs=examples.text_b,
        max_length=max_length,
        padding="max_length",
        truncation=True,
    )
    n = len(examples)
    out = {}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        out[key] = np.asarray(encoded[key], np.int32)
        if out[key].shape != (n, max_length):
            raise ValueError(
                f"tokenizer gave {key} of shape {out[key].shape}, want {(n, max_length)}"
            )
    if examples.labels is not None:
        out["labels"] = examples.labels
    elif task.is_regression:
        out["labels"] = np.full(n, np.nan, np.float32)
    else:
        out["labels"] = np.full(n, -1, np.int32)
    out["example_ids"] = examples.idx.astype(np.int32)
    return out
