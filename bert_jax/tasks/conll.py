"""CoNLL-2003 NER for the fine-tuning loop: a label per word on its first word piece, entity-level P/R/F1 by seqeval,
and the dev predictions written back as CoNLL columns (dev_predictions.txt)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bert_jax import losses
from bert_jax.data import conll
from bert_jax.scoring import ner
from bert_jax.tasks import Prepared, named_metric_fields
from bert_jax.tasks import forward as _encoder_forward

HEAD = "token"
KEPT_MODULES = ("bert", "classifier")
MAIN_METRIC = "f1"
FILES = ("dev_predictions.txt",)
_DEVICE_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "label_weights")


def name(config) -> str:
    return "conll"


def read(config):
    read = lambda split: conll.read_corpus(
        split, config.data_dir, tfds_data_dir=config.tfds_data_dir
    )
    return {"train": read("train"), "dev": read("dev")}


def encode(config, raw, tokenizer, checkpoint_labels=None) -> Prepared:
    """Features with the training tags as labels; a checkpoint's own label order is kept when it has exactly
    the training tags (so its classifier rows keep their meaning)."""
    labels = conll.label_list(raw["train"])
    if checkpoint_labels is not None and set(checkpoint_labels) == set(labels):
        labels = tuple(checkpoint_labels)
    train, dev = (
        conll.encode_corpus(raw[s], tokenizer, labels, config.max_seq_length)
        for s in ("train", "dev")
    )
    info = {
        "labels": list(labels),
        "num_train_sentences": len(raw["train"]),
        "num_train_rows": len(train["input_ids"]),
        "num_dev_sentences": len(raw["dev"]),
    }
    return Prepared(
        train={k: train[k] for k in _DEVICE_KEYS},
        dev={k: dev[k] for k in _DEVICE_KEYS},
        num_labels=len(labels),
        host={"corpus": raw["dev"], "features": dev, "labels": labels},
        info=info,
    )


# The plain encoder call (the heads' outputs as they are).
forward = _encoder_forward


def loss_sums(outputs, batch):
    # Only first pieces of words count; padding rows of an eval batch have weight 0.
    weights = batch["label_weights"] * batch["weights"][:, None]
    return losses.token_classification_loss(outputs["logits"], batch["labels"], weights)


def eval_outputs(outputs, batch):
    # Label ids, not logits: [batch, length] int32 is what the host needs.
    return {
        "predictions": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32),
        "weights": batch["weights"],
    }


def score(config, prepared: Prepared, outputs, directory=None) -> tuple[dict, dict]:
    """(results, files): seqeval's micro precision/recall/F1 (and per type) on dev, dev_predictions.txt."""
    host = prepared.host
    predicted = conll.word_predictions(
        host["corpus"], host["features"], np.asarray(outputs["predictions"]), host["labels"]
    )
    gold = [list(s.tags) for s in host["corpus"].sentences]
    results = ner.entity_scores(gold, predicted)
    files = {}
    if directory is not None:
        path = f"{directory}/dev_predictions.txt"
        conll.write_predictions(path, host["corpus"], predicted)
        files["dev_predictions"] = path
    return results, files


def main_score(results) -> float:
    return results[MAIN_METRIC]


def write_test(config, prepared: Prepared, outputs, directory=None) -> dict:
    return {}  # no test set: the dev predictions are the task's files


def summary_fields(config, files: dict) -> dict:
    return named_metric_fields(MAIN_METRIC, config, files)
