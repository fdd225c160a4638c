"""Training curves of a workdir as one PNG: `python -m bert_jax.plot WORKDIR [--out=PNG]`.

Reads WORKDIR/metrics.jsonl (pretraining or fine-tuning) and draws up to four panels: losses, accuracies (and the
other dev metrics; scores in percent, as SQuAD's, get their own panel), the learning rate, and throughput with MFU
beside it. Panels without data are left out, and a panel whose every curve has one point (a one-epoch
fine-tune's dev scores) is written as values under the title instead. The
default PNG is WORKDIR/curves.png, rendered by matplotlib's Agg backend (no display needed). `draw(workdir)` returns
the figure; the notebook's live plot redraws `save(workdir)` while a run goes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from etils import epath

# Dev metrics that are not accuracies but belong beside them (GLUE's F1, Matthews, correlations; SQuAD's exact
# match, "exact_match" in v1.1 and "exact" in v2.0).
SCORE_NAMES = ("accuracy", "f1", "matthews_corr", "pearson", "spearman", "exact_match", "exact")


class PlotError(ValueError):
    """A workdir without readable metrics; the command prints it as one line."""


def read_metrics(workdir) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values) from WORKDIR/metrics.jsonl, by step. A step written twice (a run resumed from an
    earlier checkpoint redoes steps) keeps its last value; null (a non-finite value) becomes NaN."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise PlotError(f"{path}: no such file (is {workdir} a bert_jax workdir that has logged?)")
    by_key: dict[str, dict[int, float]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PlotError(f"{path}:{number}: not a metrics line ({error})") from None
        for key, value in record.items():
            value = math.nan if value is None else float(value)
            by_key.setdefault(key, {})[step] = value
    if not by_key:
        raise PlotError(f"{path}: no metrics yet")
    return {
        key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_key.items()
    }


def panels(keys: Sequence[str]) -> dict[str, list[str]]:
    """Panel title -> the metric keys drawn in it (only panels that have keys)."""
    leaf = lambda key: key.rsplit("/", 1)[-1]
    chosen = {
        "loss": [k for k in keys if leaf(k).endswith("loss")],
        "accuracy": [k for k in keys if leaf(k).endswith("accuracy") or leaf(k) in SCORE_NAMES[1:]],
        "learning rate": [k for k in keys if k == "train/learning_rate"],
        "throughput": [k for k in keys if k in ("perf/sequences_per_sec", "perf/mfu")],
    }
    return {title: sorted(found) for title, found in chosen.items() if found}


def draw(workdir, figure=None):
    """The workdir's curves on `figure` (a new one if None, cleared otherwise); returns the figure."""
    # A bare Figure, not pyplot: it renders with Agg and leaves any GUI or notebook backend alone.
    from matplotlib.figure import Figure

    figure = Figure() if figure is None else figure
    metrics = read_metrics(workdir)
    layout = panels(list(metrics))
    # Scores in percent (SQuAD's exact match and F1) would flatten the 0-1 accuracies beside them.
    percent = [k for k in layout.get("accuracy", []) if max(metrics[k][1], default=0.0) > 1.0]
    if percent:
        layout["accuracy"] = [k for k in layout["accuracy"] if k not in percent]
        layout = {title: keys for title, keys in layout.items() if keys}
        layout["score (%)"] = percent
    # A curve of one point draws as a lone dot on an empty panel: its value goes under the title instead.
    single = [
        k for keys in layout.values() if all(len(metrics[k][0]) == 1 for k in keys) for k in keys
    ]
    layout = {t: keys for t, keys in layout.items() if not set(keys) <= set(single)}
    figure.clear()
    columns = 2 if len(layout) > 1 else 1
    rows = max(1, -(-len(layout) // columns))
    figure.set_size_inches(6 * columns, 3.6 * rows)
    for i, (title, keys) in enumerate(layout.items(), start=1):
        axes = figure.add_subplot(rows, columns, i)
        axes.set_title(title)
        axes.set_xlabel("step")
        if title == "throughput":
            _throughput(axes, metrics)
            continue
        for key in keys:
            steps, values = metrics[key]
            axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        if title == "learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        else:
            axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    title = str(epath.Path(workdir).name)
    if single:
        title += "\n" + ", ".join(
            f"{k} {metrics[k][1][0]:.4g} at step {metrics[k][0][0]}" for k in sorted(single)
        )
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    return figure


def _throughput(axes, metrics) -> None:
    """Sequences/s on the left axis; MFU (percent) on a twin right axis, when logged."""
    if "perf/sequences_per_sec" in metrics:
        steps, values = metrics["perf/sequences_per_sec"]
        axes.plot(steps, values, color="tab:blue", label="perf/sequences_per_sec")
        axes.set_ylabel("sequences/s", color="tab:blue")
    axes.grid(alpha=0.3)
    if "perf/mfu" in metrics:
        twin = axes.twinx()
        steps, values = metrics["perf/mfu"]
        # Dashed: at a fixed sequence length MFU is sequences/s times a constant, and would hide that line.
        twin.plot(steps, [100 * v for v in values], "--", color="tab:orange", label="perf/mfu")
        twin.set_ylabel("MFU (%)", color="tab:orange")


def save(workdir, out=None) -> epath.Path:
    """Draws the workdir's curves into `out` (default WORKDIR/curves.png); returns the PNG's path."""
    figure = draw(workdir)
    out = epath.Path(out) if out else epath.Path(workdir) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        figure.savefig(f, format="png", dpi=100)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.plot",
        description="Draw the loss/accuracy/learning-rate/throughput curves of a workdir to a PNG.",
    )
    parser.add_argument("workdir", help="a bert_jax workdir (pretraining or fine-tuning)")
    parser.add_argument("--out", default=None, help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = save(args.workdir, args.out)
    except (PlotError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    main()
