"""The paper's other benchmarks as pieces the task loop (`bert_jax.finetune_tasks`) plugs in: SQuAD v1.1/v2.0
(`squad`), SWAG (`swag`) and CoNLL-2003 NER (`conll`).

Each module has the same functions: `read(config)` (files first, so a bad path fails before weights load),
`encode(config, raw, tokenizer, checkpoint_labels)` -> `Prepared`, `forward(model, params, batch, rng,
deterministic)`, `loss_sums(outputs, batch)`, `eval_outputs(outputs, batch)` and `score(config, prepared,
outputs, directory)`; and the constants `HEAD`, `KEPT_MODULES` (what a bert_jax workdir gives) and
`MAIN_METRIC`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Prepared:
    """A task's features: what goes to the devices (`train`, `dev`) and what stays on the host."""

    # Device features of every training row (inputs and targets).
    train: dict[str, np.ndarray]
    # Device features of every dev row, in the order `score` expects its outputs.
    dev: dict[str, np.ndarray]
    # The head's output width (labels; 1 for multiple choice; 2 for spans).
    num_labels: int
    # Examples and alignments the scores need (host only).
    host: dict
    # Counts and labels worth recording in results.json.
    info: dict


def forward(model, params, batch, rng, deterministic: bool):
    """The model on a batch's `input_ids`, `token_type_ids` and `attention_mask`; dropout from `rng` unless
    `deterministic`. SQuAD's and CoNLL's `forward`, and GLUE's."""
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
