"""GLUE for the fine-tuning loop: one task of `config.task` (cola ... wnli) per run, a classifier on the pooled
[CLS] (cross entropy; squared error for STS-B), dev scored by the GLUE metrics (bert_jax.metrics), and the final
model's test predictions written as the leaderboard files WORKDIR/leaderboard/*.tsv (with MNLI also AX).
The grid and the suite are in bert_jax/sweep.py; the task table and readers in bert_jax/data/glue.py."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from etils import epath

from bert_jax import losses, metrics
from bert_jax.data import glue
from bert_jax.tasks import Prepared
from bert_jax.tasks import forward as _encoder_forward

HEAD = "classification"
KEPT_MODULES = ("bert", "classifier")
# The task's GLUE metrics averaged (MRPC's F1 and accuracy; MNLI's matched and mismatched accuracy).
MAIN_METRIC = "glue_score"
FILES = ("leaderboard",)


def name(config) -> str:
    task = glue.get_task(config.task)
    if task.name == "ax":
        raise ValueError("ax is not trained: it is predicted by the MNLI model (task=mnli)")
    return task.name


def read(config) -> dict:
    """Every split the run needs: train, the dev split(s) and, with `predict_test`, the test split(s) (with
    MNLI also AX's), keyed "train", "dev_matched", ..., "mnli/test_matched", "ax/test"."""
    task = glue.get_task(config.task)
    read = lambda name, split: glue.read_examples(
        name, split, config.data_dir, tfds_data_dir=config.tfds_data_dir
    )
    examples = {split: read(task.name, split) for split in ("train", *task.dev_splits)}
    if config.predict_test:
        tests = [(task.name, split) for split in task.test_splits]
        tests += [("ax", "test")] if task.name == "mnli" else []
        examples.update({f"{name}/{split}": read(name, split) for name, split in tests})
    return examples


def encode(config, raw, tokenizer, checkpoint_labels=None) -> Prepared:
    """Fixed-length features; the dev splits (MNLI: matched, then mismatched) run as one set, which `score`
    splits again by their lengths."""
    task = glue.get_task(config.task)
    encode = lambda examples: glue.encode_examples(examples, tokenizer, config.max_seq_length)
    train = encode(raw["train"])
    dev = [encode(raw[split]) for split in task.dev_splits]
    return Prepared(
        # Example ids only name test rows in the leaderboard files.
        train={k: v for k, v in train.items() if k != "example_ids"},
        dev={k: np.concatenate([d[k] for d in dev]) for k in dev[0]},
        num_labels=task.num_labels,
        host={
            "task": task,
            "dev_entries": [(task.entry(s), len(raw[s])) for s in task.dev_splits],
        },
        info={"num_train_examples": len(raw["train"])},
        test={key: encode(examples) for key, examples in raw.items() if "/" in key},
    )


# The plain encoder call (the classifier's logits).
forward = _encoder_forward


def loss_sums(outputs, batch):
    # STS-B's labels are float scores: squared error; the other tasks' are label ids.
    regression = jnp.issubdtype(batch["labels"].dtype, jnp.floating)
    loss = losses.regression_loss if regression else losses.classification_loss
    return loss(outputs["logits"], batch["labels"], batch["weights"])


def eval_outputs(outputs, batch):
    return {
        "logits": outputs["logits"],
        **{k: batch[k] for k in ("labels", "weights", "example_ids")},
    }


def score(config, prepared: Prepared, outputs, directory=None) -> tuple[dict, dict]:
    """({entry: {metric: value}} of each dev split, no files): the dev predictions are not written."""
    task, results, start = prepared.host["task"], {}, 0
    for entry, count in prepared.host["dev_entries"]:
        rows = slice(start, start + count)
        results[entry] = metrics.task_metrics(
            task, outputs["logits"][rows], outputs["labels"][rows]
        )
        start += count
    return results, {}


def main_score(results) -> float:
    """The GLUE score of the run's entries (-inf when undefined, e.g. a constant CoLA prediction)."""
    value = metrics.glue_score(results)
    return value if math.isfinite(value) else -math.inf


def write_test(config, prepared: Prepared, outputs, directory=None) -> dict:
    """The leaderboard files ("mnli/test_matched" -> "MNLI-m.tsv", ...) in DIRECTORY/leaderboard/."""
    if directory is None:
        return {}
    written = {}
    for key, out in outputs.items():
        task_name, split = key.split("/")
        path = metrics.write_leaderboard_file(
            epath.Path(directory) / "leaderboard",
            glue.get_task(task_name),
            split,
            out["example_ids"],
            out["logits"],
        )
        written[key] = path.name
    return written


def summary_fields(config, files: dict) -> dict:
    return {"leaderboard_files": files}
