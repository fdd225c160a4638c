"""GLUE scoring: task metrics (scikit-learn/scipy), the GLUE score and table, leaderboard files.

Metric values are fractions as scikit-learn/scipy return them; the table prints them x100.
Results are keyed by entry, the leaderboard's columns: `cola`, ..., `mnli_m`, `mnli_mm`, ..., `ax`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import scipy.stats
import sklearn.metrics
from etils import epath

from bert_jax.data import glue

METRICS = {
    "matthews_corr": lambda p, y: sklearn.metrics.matthews_corrcoef(y, p),
    "accuracy": lambda p, y: sklearn.metrics.accuracy_score(y, p),
    "f1": lambda p, y: sklearn.metrics.f1_score(y, p),  # positive class 1: paraphrase/duplicate
    "pearson": lambda p, y: scipy.stats.pearsonr(p, y).statistic,
    "spearman": lambda p, y: scipy.stats.spearmanr(p, y).statistic,
}

# Leaderboard columns, in the leaderboard's order.
ENTRIES = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli_m": "MNLI-m",
    "mnli_mm": "MNLI-mm",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
    "ax": "AX",
}
# The tasks the GLUE score averages: AX is a diagnostic, not part of it.
SCORE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")

# BERT-base test scores, BERT paper (Devlin et al. 2019) Table 1, in percent. The paper reports
# one metric per task and leaves WNLI out; its average counts MNLI-m and MNLI-mm separately.
BERT_BASE_TEST = {
    "cola": 52.1,
    "sst2": 93.5,
    "mrpc": 88.9,
    "stsb": 85.8,
    "qqp": 71.2,
    "mnli_m": 84.6,
    "mnli_mm": 83.4,
    "qnli": 90.5,
    "rte": 66.4,
}
BERT_BASE_TEST_AVERAGE = 79.6
BERT_PAPER_METRIC = {
    "cola": "matthews_corr",
    "sst2": "accuracy",
    "mrpc": "f1",
    "stsb": "spearman",
    "qqp": "f1",
    "mnli_m": "accuracy",
    "mnli_mm": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
}

Results = Mapping[str, Mapping[str, float]]  # entry -> metric name -> value


def _task_of(entry: str) -> glue.Task:
    return glue.get_task(entry.split("_")[0])


def predictions_from_outputs(task: glue.Task, outputs) -> np.ndarray:
    """Label ids (classification) or scores (regression) from predictions or logits [n, labels]."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2:
        return outputs[:, 0].astype(np.float32) if task.is_regression else outputs.argmax(-1)
    return outputs


def task_metrics(task: glue.Task, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics, name -> value; predictions may be label ids, scores or logits."""
    t = task
    p = predictions_from_outputs(t, predictions)
    y = np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"{t.name}: predictions {p.shape} and labels {y.shape} differ")
    return {name: float(METRICS[name](p, y)) for name in t.metrics}


def glue_score(results: Results) -> float:
    """The GLUE leaderboard score of the tasks present in `results`.

    Each task's metrics are averaged first (MRPC's F1 and accuracy; MNLI's matched and mismatched
    accuracy), then the tasks are; AX is left out. This reproduces the leaderboard's scores.
    """
    per_task: dict[str, list[float]] = {}
    for entry, metrics in results.items():
        task = _task_of(entry)
        if task.name in SCORE_TASKS:
            missing = [m for m in task.metrics if m not in metrics]
            if missing:
                raise ValueError(f"results[{entry!r}] lacks {missing}")
            per_task.setdefault(task.name, []).extend(metrics[m] for m in task.metrics)
    if not per_task:
        raise ValueError(f"no GLUE task in results {sorted(results)}")
    return float(np.mean([np.mean(values) for values in per_task.values()]))


def bert_paper_average(results: Results) -> float:
    """The average as the BERT paper computes it, over the entries present: comparable to 79.6."""
    values = [results[e][m] for e, m in BERT_PAPER_METRIC.items() if e in results]
    if not values:
        raise ValueError(f"no entry of the BERT paper's table in results {sorted(results)}")
    return float(np.mean(values))


def format_glue_table(results: Results, split: str = "dev") -> str:
    """Per-task scores beside BERT-base's published test scores, and both averages.

    `split` names what our column is, e.g. "dev" or "dev, dev-selected"."""
    header = f"ours ({split})"
    lines = [f"{'task':<8} {'metric':<17} {header:>13} {'BERT-base (test)':>17}"]
    for entry, name in ENTRIES.items():
        metric_names = _task_of(entry).metrics
        ours = "-"
        if entry in results:
            ours = "/".join(f"{100 * results[entry][m]:.1f}" for m in metric_names)
        ref = f"{BERT_BASE_TEST[entry]:.1f}" if entry in BERT_BASE_TEST else "-"
        lines.append(f"{name:<8} {'/'.join(metric_names):<17} {ours:>13} {ref:>17}")
    tasks = {_task_of(e).name for e in results} & set(SCORE_TASKS)
    score = f"{100 * glue_score(results):.1f}" if tasks else "-"
    lines.append(
        f"{'GLUE score':<26} {score:>13} {'-':>17}  ({len(tasks)}/9 tasks; metrics averaged per"
        " task, MNLI = mean of m and mm, AX left out)"
    )
    paper = [e for e in BERT_PAPER_METRIC if e in results]
    average = f"{100 * bert_paper_average(results):.1f}" if paper else "-"
    lines.append(
        f"{'BERT paper average':<26} {average:>13} {BERT_BASE_TEST_AVERAGE:>17.1f}  "
        f"({len(paper)}/9 entries; F1 for MRPC/QQP, Spearman for STS-B, no WNLI)"
    )
    return "\n".join(lines)


LEADERBOARD_FILES = tuple(f for t in glue.TASKS.values() for f in t.leaderboard_files.values())


def write_leaderboard_file(
    out_dir: str | os.PathLike, task: glue.Task, split: str, example_ids, predictions
) -> epath.Path:
    """Writes one GLUE server submission file (`index<TAB>prediction`, by index); returns its path.

    `predictions` are label ids, STS-B scores (clipped to [0, 5]) or logits; `example_ids` are
    `Examples.idx` of the test split, padding rows removed.
    """
    t = task
    if split not in t.leaderboard_files:
        raise ValueError(
            f"{t.name} {split!r} has no leaderboard file; use {list(t.leaderboard_files)}"
        )
    p = predictions_from_outputs(t, predictions)
    ids = np.asarray(example_ids)
    if p.shape != ids.shape:
        raise ValueError(f"{t.name}: {p.shape} predictions for {ids.shape} example ids")
    if ids.size and (ids.min() < 0 or len(np.unique(ids)) != len(ids)):
        raise ValueError(f"{t.name}: example ids must be unique and >= 0 (padding rows left in?)")
    if t.is_regression:
        values = [f"{v:.3f}" for v in np.clip(p, 0.0, 5.0)]
    else:
        if p.size and (p.min() < 0 or p.max() >= t.num_labels):
            raise ValueError(f"{t.name}: label ids outside [0, {t.num_labels})")
        values = [t.labels[i] for i in p]
    order = np.argsort(ids, kind="stable")
    path = epath.Path(out_dir) / t.leaderboard_files[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("index\tprediction\n" + "".join(f"{ids[i]}\t{values[i]}\n" for i in order))
    return path
