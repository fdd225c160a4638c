"""train/loss is the mean over every step since the last log line, whatever the eval and checkpoint frequencies
(an eval or a save restarts only the throughput clock); Orbax's partial-restore warning is dropped."""

import logging
import math

import numpy as np

from bert_jax import checkpoint, reporting  # noqa: F401 -- checkpoint installs the Orbax filter


def _step(loss):
    return {"loss": np.float32(loss), "grad_norm": np.float32(1.0), "learning_rate": np.float32(1e-3),
            "nonfinite": np.int32(0)}  # fmt: skip


def test_a_save_between_log_lines_keeps_the_loss_window():
    window = reporting.MetricWindow()
    window.add(_step(4.0), sequences=8, tokens=64)
    window.restart()  # a save or an eval: not train time
    window.add(_step(2.0), sequences=8, tokens=64)
    sums, scalars = window.flush()
    assert scalars["train/loss"] == 3.0 and sums["loss"] == 6.0
    # Throughput counts only the steps timed since the save.
    # (64 tokens / elapsed) x (elapsed / 1 step): one step of 64 tokens.
    assert math.isclose(
        scalars["perf/tokens_per_sec"] * scalars["perf/step_time"], 64.0, rel_tol=1e-6
    )
    window.add(_step(1.0), sequences=8, tokens=64)
    assert window.flush()[1]["train/loss"] == 1.0


def test_orbax_partial_restore_warning_is_dropped(caplog):
    absl_logger = logging.getLogger("absl")
    with caplog.at_level(logging.WARNING):
        absl_logger.warning(
            'Item "manifest" was found in the checkpoint, but could not be restored. Please provide a '
            "`CheckpointHandlerRegistry`"
        )
        absl_logger.warning("a checkpoint save failed")
    assert [r.getMessage() for r in caplog.records] == ["a checkpoint save failed"]
