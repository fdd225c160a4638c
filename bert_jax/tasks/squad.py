"""SQuAD v1.1 / v2.0 for the fine-tuning loop: windows in, start/end logits out, answers scored by the official
definitions and written as predictions.json, nbest_predictions.json and (v2.0) null_odds.json."""

from __future__ import annotations

import jax.numpy as jnp

from bert_jax import losses
from bert_jax.data import squad, squad_answers
from bert_jax.scoring import squad as scoring
from bert_jax.tasks import Prepared, named_metric_fields
from bert_jax.tasks import forward as _encoder_forward

HEAD = "span"
KEPT_MODULES = ("bert", "qa_outputs")
MAIN_METRIC = "f1"
FILES = ("predictions.json", "nbest_predictions.json", "null_odds.json")
# Model inputs and targets; the alignments (token_to_word, max_context, example_index) stay on the host.
_DEVICE_KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")


def name(config) -> str:
    return f"squad_v{config.version}"


def read(config):
    version = str(config.version)
    read = lambda split: squad.read_examples(
        version, split, config.data_dir, tfds_data_dir=config.tfds_data_dir
    )
    return {"train": read("train"), "dev": read("dev")}


def encode(config, raw, tokenizer, checkpoint_labels=None) -> Prepared:
    window = dict(
        max_seq_length=config.max_seq_length,
        doc_stride=config.doc_stride,
        max_query_length=config.max_query_length,
    )
    train = squad.encode_examples(raw["train"], tokenizer, training=True, **window)
    dev = squad.encode_examples(raw["dev"], tokenizer, training=False, **window)
    info = {
        "num_train_examples": len(raw["train"]),
        "num_train_windows": len(train["input_ids"]),
        "num_train_skipped": raw["train"].num_skipped,
        "num_dev_examples": len(raw["dev"]),
        "num_dev_windows": len(dev["input_ids"]),
    }
    return Prepared(
        train={k: train[k] for k in _DEVICE_KEYS},
        dev={k: dev[k] for k in _DEVICE_KEYS},
        num_labels=2,
        host={"examples": raw["dev"].examples, "features": dev, "tokenizer": tokenizer},
        info=info,
    )


# The plain encoder call (the heads' outputs as they are).
forward = _encoder_forward


def loss_sums(outputs, batch):
    return losses.span_loss(
        outputs["start_logits"],
        outputs["end_logits"],
        batch["start_positions"],
        batch["end_positions"],
        batch["weights"],
    )


def eval_outputs(outputs, batch):
    return {
        "start_logits": outputs["start_logits"].astype(jnp.float32),
        "end_logits": outputs["end_logits"].astype(jnp.float32),
        "weights": batch["weights"],
    }


def score(config, prepared: Prepared, outputs, directory=None) -> tuple[dict, dict]:
    """(results, files written): v1.1 exact_match/f1; v2.0 the script's dict at the null threshold used
    (`config.null_score_diff_threshold`, or the dev-selected best-F1 one when None) plus best_* and the
    scores at threshold 0 (the original's default)."""
    host = prepared.host
    answers = squad_answers.compute_answers(
        host["examples"],
        host["features"],
        outputs["start_logits"],
        outputs["end_logits"],
        host["tokenizer"],
        n_best=config.n_best_size,
        max_answer_length=config.max_answer_length,
        version_2=str(config.version) == "2.0",
    )
    gold = {e.qas_id: list(e.answers) for e in host["examples"]}
    if str(config.version) == "1.1":
        predictions = answers.predictions
        results = scoring.evaluate_v1(gold, predictions)
    else:
        # The threshold sweep scores every question's best span against the null answer.
        sweep = scoring.evaluate_v2(gold, answers.best_span, answers.null_odds)
        threshold = config.null_score_diff_threshold
        if threshold is None:
            threshold = sweep["best_f1_thresh"]
        predictions = squad_answers.apply_threshold(answers, threshold)
        results = scoring.evaluate_v2(gold, predictions)
        at_zero = scoring.evaluate_v2(gold, squad_answers.apply_threshold(answers, 0.0))
        results.update({k: sweep[k] for k in sweep if k.startswith("best_")})
        results["null_score_diff_threshold"] = float(threshold)
        results["exact_at_threshold_0"], results["f1_at_threshold_0"] = (
            at_zero["exact"],
            at_zero["f1"],
        )
    files = {}
    if directory is not None:
        files = squad_answers.write_prediction_files(directory, answers, predictions)
    return results, files


def main_score(results) -> float:
    return results[MAIN_METRIC]


def write_test(config, prepared: Prepared, outputs, directory=None) -> dict:
    return {}  # no test set: the dev predictions are the task's files


def summary_fields(config, files: dict) -> dict:
    return named_metric_fields(MAIN_METRIC, config, files)
