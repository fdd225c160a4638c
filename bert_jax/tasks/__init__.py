"""The fine-tuning tasks: one module each, plugged into the one loop (`bert_jax.finetune`): GLUE (`glue`),
SQuAD v1.1/v2.0 (`squad`), SWAG (`swag`) and CoNLL-2003 NER (`conll`). A new task is one module with the
`Task` protocol's names, and one line in `TASKS`.

What every task shares lives here too: `Prepared` (a task's features), the plain encoder call `forward`, the
eval step `eval_step` and `predict` (every row through it, in fixed-shape batches), used by the loop and by
`bert_jax.predict` alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import numpy as np

from bert_jax import train_lib
from bert_jax.data import batching


@dataclasses.dataclass
class Prepared:
    """A task's features: what goes to the devices (`train`, `dev`, `test`) and what stays on the host."""

    # Device features of every training row (inputs and targets).
    train: dict[str, np.ndarray]
    # Device features of every dev row, in the order `score` expects its outputs.
    dev: dict[str, np.ndarray]
    # The head's output width (labels; 1 for multiple choice and regression; 2 for spans).
    num_labels: int
    # Examples and alignments the scores need (host only).
    host: dict
    # Counts and labels worth recording in results.json.
    info: dict
    # Sets the final model predicts after training (GLUE's unlabelled test splits), by name -> features.
    test: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    """What the loop reads from a task module (each of glue, squad, swag, conll has exactly these names)."""

    # The head `warm_start` builds: "classification", "span" or "token".
    HEAD: str
    # The top-level modules a bert_jax workdir's checkpoint gives the model (the rest is initialised).
    KEPT_MODULES: tuple[str, ...]
    # The dev metric a history entry's "score" is, as logged ("glue_score" for GLUE: its metrics' mean).
    MAIN_METRIC: str
    # Files the task writes into the workdir: removed with the run when `overwrite` starts over.
    FILES: tuple[str, ...]

    def name(self, config) -> str:
        """The run's name in metric keys and results ("sst2", "squad_v1.1", ...); ValueError if the config
        names no valid task."""

    def read(self, config) -> Any:
        """Every split's examples (files first, so a bad path fails before weights load)."""

    def encode(self, config, raw, tokenizer, checkpoint_labels: list[str] | None) -> Prepared: ...

    def forward(
        self, model, params, batch, rng, deterministic: bool
    ) -> Mapping[str, jax.Array]: ...

    def loss_sums(self, outputs, batch) -> Mapping[str, jax.Array]:
        """`loss_sum` and `weight_sum` (plus e.g. `correct_sum`) of a batch: the host divides."""

    def eval_outputs(self, outputs, batch) -> Mapping[str, jax.Array]:
        """What the host needs of a dev batch, with its `weights` (padding rows are 0)."""

    def score(self, config, prepared: Prepared, outputs, directory) -> tuple[dict, dict]:
        """(results, files written into `directory`; none when it is None) of the dev outputs."""

    def main_score(self, results) -> float:
        """The one number a history entry is selected by (higher is better)."""

    def write_test(self, config, prepared: Prepared, outputs: Mapping, directory) -> dict:
        """Files of the final model's predictions of `prepared.test` (name -> outputs); {} for no test sets."""

    def summary_fields(self, config, files: dict) -> dict:
        """What results.json records beside the fields every task has."""


def forward(model, params, batch, rng, deterministic: bool):
    """The model on a batch's `input_ids`, `token_type_ids` and `attention_mask`; dropout from `rng` unless
    `deterministic`. GLUE's, SQuAD's and CoNLL's `forward`."""
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )


def eval_step(params, batch, *, task: Task, model):
    """The task's outputs of a (padded) batch, with its weights, for the host's scores."""
    return task.eval_outputs(task.forward(model, params, batch, None, deterministic=True), batch)


def predict(
    p_eval_step: Callable, params, features, batch_size: int, mesh
) -> dict[str, np.ndarray]:
    """Every row of `features` through the jitted eval step, in order, in fixed-shape batches of the global
    `batch_size` (the last one padded; padding rows removed)."""
    batches = batching.eval_batches(
        features,
        batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return train_lib.predict(p_eval_step, params, batches, mesh)


def named_metric_fields(metric: str, config, files: dict) -> dict:
    """The results.json fields of a task scored by one metric (SQuAD, SWAG, CoNLL): the metric, the final
    epoch (None for a run of `num_train_steps`: its history has each evaluation's epoch) and the files written."""
    return {"metric": metric, "epoch": config.get("num_epochs"), "files": files}


# The task modules import the names above: the table comes last.
from bert_jax.tasks import conll, glue, squad, swag  # noqa: E402

# Task name -> module. A config picks one with `task_of(config.mode)`.
TASKS: dict[str, Task] = {"glue": glue, "squad": squad, "swag": swag, "conll": conll}
# bert_jax.main's mode names -> task: GLUE's one run ("finetune") and its suite's runs ("glue_suite").
MODES = {
    "finetune": "glue",
    "glue_suite": "glue",
    "squad": "squad",
    "swag": "swag",
    "conll": "conll",
}


def task_of(mode: str) -> Task:
    """The task module of a config's `mode`; ValueError naming the valid modes."""
    if mode not in MODES:
        raise ValueError(f"{mode!r} is not one of {tuple(MODES)}")
    return TASKS[MODES[mode]]
