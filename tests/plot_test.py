"""`python -m bert_jax.plot`: the panels and their data from a metrics.jsonl the test writes, the PNG, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bert_jax import plot


def write_pretraining_metrics(workdir):
    """Six train windows and two evals, as pretrain.py logs them; steps 30-40 written twice (a resume)."""
    lines = []
    for step in (10, 20, 30, 40, 30, 40, 50, 60):
        lines.append(
            {
                "step": step,
                "train/loss": 10.0 - step / 10,
                "train/mlm_loss": 9.0 - step / 10,
                "train/nsp_loss": 0.7,
                "train/mlm_accuracy": step / 100,
                "train/nsp_accuracy": 0.5,
                "train/learning_rate": 1e-3 * min(step, 20) / 20,
                "train/grad_norm": 1.0,
                "perf/sequences_per_sec": 100.0 + step,
                "perf/mfu": 0.01 * step / 10,
            }
        )
    # The resumed run's values for 30 and 40 differ: the last written one must win.
    lines[4]["train/loss"], lines[5]["train/loss"] = 6.5, 5.5
    lines[2]["train/mlm_accuracy"] = None
    lines.insert(4, {"step": 40, "eval/mlm_accuracy": 0.3, "eval/mlm_loss": 6.0})
    lines.append({"step": 60, "eval/mlm_accuracy": 0.45, "eval/mlm_loss": 5.0})
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_reads_metrics_last_write_wins_and_null_is_nan(tmp_path):
    write_pretraining_metrics(tmp_path)
    metrics = plot.read_metrics(tmp_path)
    steps, loss = metrics["train/loss"]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert loss == [9.0, 8.0, 6.5, 5.5, 5.0, 4.0]
    # Step 30's first value was null, its second 0.3: the second stands.
    assert metrics["train/mlm_accuracy"][1][2] == pytest.approx(0.3)
    assert metrics["eval/mlm_accuracy"] == ([40, 60], [0.3, 0.45])


def test_panels_group_keys_for_pretraining_and_finetuning():
    pretraining = [
        "train/loss", "train/mlm_loss", "train/nsp_loss", "train/mlm_accuracy", "train/nsp_accuracy",
        "train/learning_rate", "train/grad_norm", "perf/sequences_per_sec", "perf/mfu",
        "perf/step_time", "eval/mlm_accuracy", "eval/mlm_loss",
    ]  # fmt: skip
    assert plot.panels(pretraining) == {
        "loss": ["eval/mlm_loss", "train/loss", "train/mlm_loss", "train/nsp_loss"],
        "accuracy": ["eval/mlm_accuracy", "train/mlm_accuracy", "train/nsp_accuracy"],
        "learning rate": ["train/learning_rate"],
        "throughput": ["perf/mfu", "perf/sequences_per_sec"],
    }
    finetuning = ["train/loss", "train/accuracy", "eval/mrpc/f1", "eval/mrpc/accuracy"]
    assert plot.panels(finetuning) == {
        "loss": ["train/loss"],
        "accuracy": ["eval/mrpc/accuracy", "eval/mrpc/f1", "train/accuracy"],
    }


def test_draws_every_curve_with_its_data(tmp_path):
    write_pretraining_metrics(tmp_path)
    figure = plot.draw(tmp_path)
    axes = {a.get_title(): a for a in figure.axes if a.get_title()}
    assert sorted(axes) == ["accuracy", "learning rate", "loss", "throughput"]
    lines = {line.get_label(): line for a in figure.axes for line in a.get_lines()}
    np.testing.assert_allclose(lines["train/loss"].get_ydata(), [9.0, 8.0, 6.5, 5.5, 5.0, 4.0])
    np.testing.assert_array_equal(lines["eval/mlm_loss"].get_xdata(), [40, 60])
    # MFU is drawn in percent on the throughput panel's twin axis.
    np.testing.assert_allclose(lines["perf/mfu"].get_ydata(), [1, 2, 3, 4, 5, 6])
    twin = [a for a in figure.axes if a.get_ylabel() == "MFU (%)"]
    assert len(twin) == 1 and lines["perf/mfu"].axes is twin[0]
    assert lines["train/learning_rate"].get_ydata()[-1] == pytest.approx(1e-3)


def test_command_writes_a_png(tmp_path):
    write_pretraining_metrics(tmp_path / "run")
    out = tmp_path / "plots" / "curves.png"
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.plot", str(tmp_path / "run"), f"--out={out}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"wrote {out}"
    from matplotlib import image

    pixels = image.imread(str(out))
    # Two panels across, two down at 100 dpi: 1200 x 720 pixels, not blank.
    assert pixels.shape[:2] == (720, 1200)
    assert float(np.std(pixels[..., :3])) > 0.05
    # Without --out: WORKDIR/curves.png.
    assert plot.main([str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "metrics.jsonl: no such file"),
        ("", "metrics.jsonl: no metrics yet"),
        ('{"step": 1, "train/loss": 2.0}\n{"loss": 1.0}\n', "metrics.jsonl:2: not a metrics line"),
    ],
)
def test_bad_workdir_is_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(SystemExit) as raised:
        plot.main([str(tmp_path)])
    text = str(raised.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text


def _write(tmp_path, lines):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def test_squad_scores_in_percent_get_their_own_panel(tmp_path):
    run = _write(tmp_path, [
        {"step": 10, "train/loss": 3.0}, {"step": 20, "train/loss": 2.0},
        {"step": 20, "eval/squad/exact_match": 61.5, "eval/squad/f1": 72.25},
        {"step": 40, "train/loss": 1.5}, {"step": 40, "eval/squad/exact_match": 70.0, "eval/squad/f1": 80.0},
    ])  # fmt: skip
    figure = plot.draw(run)
    axes = {a.get_title(): a for a in figure.axes}
    assert sorted(axes) == ["loss", "score (%)"]
    lines = {line.get_label(): line for line in axes["score (%)"].get_lines()}
    assert sorted(lines) == ["eval/squad/exact_match", "eval/squad/f1"]
    np.testing.assert_allclose(lines["eval/squad/exact_match"].get_ydata(), [61.5, 70.0])


def test_one_point_curves_are_values_under_the_title(tmp_path):
    run = _write(tmp_path, [
        {"step": 8, "train/loss": 0.7, "train/learning_rate": 1e-3},
        {"step": 16, "train/loss": 0.5, "train/learning_rate": 5e-4},
        {"step": 16, "eval/sst2/accuracy": 0.9375},
    ])  # fmt: skip
    figure = plot.draw(run)
    assert sorted(a.get_title() for a in figure.axes) == ["learning rate", "loss"]
    assert figure._suptitle.get_text() == f"{run.name}\neval/sst2/accuracy 0.9375 at step 16"
