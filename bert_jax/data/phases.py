"""The pretraining phase rule, in one place: which steps train at which batch shape.

The paper trains 90% of the steps at 128 tokens (20 predictions) and the last 10% at 512 (80): phase 2 starts at
step `round(num_train_steps * (1 - data.phase2_fraction))`, and there is no phase 2 when that rounds to the end.
The held-out batches are built once, at phase 1's shape, and evaluated at every eval step of both phases.

The loader (`loader.make_pretraining_loader`), the program builder (`bert_jax.program`) and through it the compile
check read their phases from here. Pure Python (data/ imports no JAX).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Phase:
    """One batch shape of a pretraining run: global steps [start_step, the next phase's) train at it."""

    # "phase1", "phase2" or "eval".
    name: str
    # The first global step at this shape (0 for eval: its batches are fixed).
    start_step: int
    # Tokens per sequence.
    seq_length: int
    # Masked positions per sequence (the MLM targets' width).
    max_predictions: int
    # Sequences per step over all hosts; every phase trains at the config's one global batch.
    global_batch_size: int


def pretraining_phases(
    data_config, *, num_train_steps: int, global_batch_size: int
) -> tuple[Phase, ...]:
    """The training phases of a run of `num_train_steps`, in step order (phase 1, then phase 2 if it has steps)."""
    cfg = data_config
    phase2_start = round(num_train_steps * (1 - cfg.phase2_fraction))
    phases = [Phase("phase1", 0, cfg.seq_length, cfg.max_predictions_per_seq, global_batch_size)]
    if phase2_start < num_train_steps:
        phases.append(
            Phase(
                "phase2",
                phase2_start,
                cfg.phase2_seq_length,
                cfg.phase2_max_predictions_per_seq,
                global_batch_size,
            )
        )
    return tuple(phases)


def eval_phase(data_config, *, global_batch_size: int) -> Phase:
    """The held-out batches' shape: phase 1's (one fixed set, evaluated in both phases)."""
    cfg = data_config
    return Phase("eval", 0, cfg.seq_length, cfg.max_predictions_per_seq, global_batch_size)
