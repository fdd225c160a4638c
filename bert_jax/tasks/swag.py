"""SWAG for the fine-tuning loop: four [CLS] context [SEP] ending [SEP] rows per example (RoBERTa's
`<s> context </s></s> ending </s>`), one score per row from the pooled [CLS] (the multiple-choice head: a classifier
with one output, as transformers' *ForMultipleChoice), softmax over the four; accuracy; predictions.csv."""

from __future__ import annotations

import csv
import io

import jax
import numpy as np
from etils import epath

from bert_jax import losses
from bert_jax.data import swag
from bert_jax.scoring import choice
from bert_jax.tasks import Prepared, named_metric_fields

# BERT's is its classification head of one output (`layouts.build_model`); RoBERTa's is not its sequence
# classification head, so exports name the right transformers class.
HEAD = "multiple_choice"
KEPT_MODULES = ("bert",)
MAIN_METRIC = "accuracy"
FILES = ("predictions.csv",)
_DEVICE_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels")


def name(config) -> str:
    return "swag"


def read(config):
    return {split: swag.read_examples(split, config.data_dir) for split in ("train", "dev")}


def encode(config, raw, tokenizer, checkpoint_labels=None) -> Prepared:
    train, dev = (swag.encode_examples(raw[s], tokenizer, config.max_seq_length) for s in raw)
    return Prepared(
        train={k: train[k] for k in _DEVICE_KEYS},
        dev={k: dev[k] for k in _DEVICE_KEYS},
        num_labels=1,
        host={"examples": raw["dev"]},
        info={"num_train_examples": len(raw["train"]), "num_dev_examples": len(raw["dev"])},
    )


def forward(model, params, batch, rng, deterministic: bool):
    """Scores [batch, 4]: the four choices run as rows of one [batch * 4, length] encoder call."""
    batch_size, num_choices, length = batch["input_ids"].shape
    flat = lambda x: x.reshape(batch_size * num_choices, length)
    outputs = model.apply(
        {"params": params},
        flat(batch["input_ids"]),
        flat(batch["token_type_ids"]),
        flat(batch["attention_mask"]),
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
    return {"logits": outputs["logits"].reshape(batch_size, num_choices)}


def loss_sums(outputs, batch):
    return losses.classification_loss(outputs["logits"], batch["labels"], batch["weights"])


def eval_outputs(outputs, batch):
    return {"logits": outputs["logits"], "labels": batch["labels"], "weights": batch["weights"]}


def score(config, prepared: Prepared, outputs, directory=None) -> tuple[dict, dict]:
    """(results, files): accuracy, and predictions.csv (id, predicted ending, gold, four probabilities)."""
    logits, labels = np.asarray(outputs["logits"]), np.asarray(outputs["labels"])
    results = {"accuracy": choice.accuracy(logits, labels)}
    files = {}
    if directory is not None:
        probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["id", "prediction", "label", *(f"p{i}" for i in range(swag.NUM_CHOICES))])
        for i, example_id in enumerate(prepared.host["examples"].ids):
            row = [f"{p:.6f}" for p in probabilities[i]]
            writer.writerow([example_id, int(logits[i].argmax()), int(labels[i]), *row])
        path = epath.Path(directory) / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.getvalue())
        files["predictions"] = str(path)
    return results, files


def main_score(results) -> float:
    return results[MAIN_METRIC]


def write_test(config, prepared: Prepared, outputs, directory=None) -> dict:
    return {}  # no test set: the dev predictions are the task's files


def summary_fields(config, files: dict) -> dict:
    return named_metric_fields(MAIN_METRIC, config, files)
