"""Pretraining objectives: what a family's pretraining model computes from a batch, as loss sums.

An objective owns the model's loss inputs (t5x's `BaseModel` habit), so the pretraining step sees only
`loss(params, batch, rng) -> (loss, sums)`, `eval_sums(params, batch)` and `summarize(sums)`; a family with
another objective (MLM alone, replaced-token detection) adds a class here and a name in OBJECTIVES. Sums come
with their denominators so the host adds them over steps and devices and divides once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from bert_jax import losses


def divide(a: float, b: float) -> float:
    """a / b, or NaN when there is no weight (a window of skipped steps); as `reporting.divide`, which imports
    the trainer library and so cannot be imported from a model module."""
    return a / b if b > 0 else math.nan


# The model inputs a packed batch adds (`bert_jax.data.packing`); `cls_weights` weigh the NSP loss.
PACKED_INPUTS = ("segment_ids", "position_ids", "cls_positions")


class _Objective:
    """What every objective derives from its `loss_sums(params, batch, rng, deterministic)`."""

    def loss(self, params, batch, rng):
        """The training loss and its sums, with dropout (the function to differentiate)."""
        return self.loss_sums(params, batch, rng, deterministic=False)

    def eval_sums(self, params, batch):
        """Held-out sums, dropout off."""
        return self.loss_sums(params, batch, None, deterministic=True)[1]


@dataclasses.dataclass(frozen=True)
class MlmNsp(_Objective):
    """The paper's objective: mean MLM cross entropy over the masked positions + mean NSP cross entropy.

    `model`: the family's "pretraining" head module (outputs `prediction_logits` at `masked_lm_positions` and
    `seq_relationship_logits`). Batch: `input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_positions`,
    `masked_lm_ids`, `masked_lm_weights`, `next_sentence_labels`. A packed batch (`bert_jax.data.packing`)
    adds `segment_ids`, `position_ids`, `cls_positions` and `cls_weights` [rows, K]: MLM is unchanged (its
    positions are re-addressed into the row), NSP is read at each sequence's own [CLS] and weighted by
    `cls_weights` (0 for an empty slot), so the loss is the same mean over the same sequences as unpacked.
    """

    model: Any
    # The head the model is built with (registry.build(config, head)).
    head: ClassVar[str] = "pretraining"
    # The sentence-pair task: its name in the sums and summaries, and the model output holding its logits.
    pair: ClassVar[str] = "nsp"
    pair_logits: ClassVar[str] = "seq_relationship_logits"
    # The compact progress line and the eval line: (label, summary key, format).
    progress: ClassVar[tuple] = (
        ("mlm_acc", "mlm_accuracy", ".3f"),
        ("nsp_acc", "nsp_accuracy", ".3f"),
    )

    def loss_sums(self, params, batch, rng, deterministic: bool):
        """(the training loss, the MLM and pair-task sums keyed `mlm_*` and e.g. `nsp_*`); dropout on unless
        `deterministic`."""
        outputs = self.model.apply(
            {"params": params},
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            batch["masked_lm_positions"],
            **{k: batch[k] for k in PACKED_INPUTS if k in batch},
            deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        mlm = losses.mlm_loss(
            outputs["prediction_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
        )
        # A two-way classification of each sequence's [CLS] (NSP's; SOP's in MlmSop), the label in
        # `next_sentence_labels`.
        pair = losses.nsp_loss(
            outputs[self.pair_logits],
            batch["next_sentence_labels"],
            batch.get("cls_weights"),
        )
        loss = (
            mlm["loss_sum"] / jnp.maximum(mlm["weight_sum"], 1e-5)
            + pair["loss_sum"] / pair["count"]
        )
        sums = {
            **{f"mlm_{k}": v for k, v in mlm.items()},
            **{f"{self.pair}_{k}": v for k, v in pair.items()},
        }
        return loss, sums

    @classmethod
    def summarize(cls, sums: dict[str, float]) -> dict[str, float]:
        """Means and accuracies from summed MLM and pair-task metrics (the host divides once)."""
        p = cls.pair
        return {
            "mlm_loss": divide(sums["mlm_loss_sum"], sums["mlm_weight_sum"]),
            "mlm_accuracy": divide(sums["mlm_correct_sum"], sums["mlm_weight_sum"]),
            f"{p}_loss": divide(sums[f"{p}_loss_sum"], sums[f"{p}_count"]),
            f"{p}_accuracy": divide(sums[f"{p}_correct_sum"], sums[f"{p}_count"]),
        }


@dataclasses.dataclass(frozen=True)
class Mlm(_Objective):
    """Masked LM alone (RoBERTa, Liu et al. 2019: no NSP): mean cross entropy over the masked positions.

    `model`: the family's "pretraining" head module, outputting `logits` at `masked_lm_positions`
    (transformers' name for a *ForMaskedLM). Batch: `input_ids`, `attention_mask`, `masked_lm_positions`,
    `masked_lm_ids`, `masked_lm_weights`, and `token_type_ids` when the data has them (else all zero).
    """

    model: Any
    head: ClassVar[str] = "pretraining"
    progress: ClassVar[tuple] = (("mlm_acc", "mlm_accuracy", ".3f"),)

    def loss_sums(self, params, batch, rng, deterministic: bool):
        """(the training loss, the MLM sums keyed `mlm_*`); dropout on unless `deterministic`."""
        outputs = self.model.apply(
            {"params": params},
            batch["input_ids"],
            batch.get("token_type_ids"),
            batch["attention_mask"],
            batch["masked_lm_positions"],
            deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        mlm = losses.mlm_loss(outputs["logits"], batch["masked_lm_ids"], batch["masked_lm_weights"])
        loss = mlm["loss_sum"] / jnp.maximum(mlm["weight_sum"], 1e-5)
        return loss, {f"mlm_{k}": v for k, v in mlm.items()}

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        """Mean loss and accuracy from summed MLM metrics."""
        return {
            "mlm_loss": divide(sums["mlm_loss_sum"], sums["mlm_weight_sum"]),
            "mlm_accuracy": divide(sums["mlm_correct_sum"], sums["mlm_weight_sum"]),
        }


@dataclasses.dataclass(frozen=True)
class MlmSop(MlmNsp):
    """ALBERT's objective (Lan et al. 2020): mean MLM cross entropy over the masked positions + mean
    sentence-order-prediction cross entropy on the pooled [CLS] (label 1 = the two segments swapped).

    `model`: the family's "pretraining" head module (outputs `prediction_logits` at `masked_lm_positions` and
    `sop_logits`). Batch: BERT's pretraining batch; the SOP label travels under BERT's feature name
    `next_sentence_labels`, as google-research/albert keeps it. Packed batches as `MlmNsp`.
    """

    pair: ClassVar[str] = "sop"
    pair_logits: ClassVar[str] = "sop_logits"
    progress: ClassVar[tuple] = (
        ("mlm_acc", "mlm_accuracy", ".3f"),
        ("sop_acc", "sop_accuracy", ".3f"),
    )


def sigmoid_cross_entropy(logits, labels):
    """Binary cross entropy with logits, stable for large |logits| (TensorFlow's
    `sigmoid_cross_entropy_with_logits`: max(z, 0) - z y + log(1 + exp(-|z|)))."""
    logits = logits.astype(jnp.float32)
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def rank_auc_sums(logits, labels, weights):
    """(concordant pairs, pairs) over the (replaced, original) pairs of real tokens (`weights` > 0) in one batch:
    a pair is concordant when the replaced token has the higher logit, half when tied (Mann-Whitney's U).
    Their ratio is the batch's exact ROC AUC; summed over batches, the pair-weighted mean of the batches' AUCs
    (the AUC over the pairs that share a batch: an unbiased estimate of the pooled AUC, however narrow the
    spread of the logits)."""
    z = logits.astype(jnp.float32).reshape(-1)
    real = weights.reshape(-1) > 0
    replaced = (labels.reshape(-1) > 0) & real
    original = (labels.reshape(-1) <= 0) & real
    count = jnp.sum(original)
    # Replaced tokens and padding become +inf, which sorts last and is never below a finite logit.
    originals = jnp.sort(jnp.where(original, z, jnp.inf))
    below = jnp.minimum(jnp.searchsorted(originals, z, side="left"), count)
    at_or_below = jnp.minimum(jnp.searchsorted(originals, z, side="right"), count)
    # float32: the pair count overflows int32 from 2**31 pairs (a 256 x 512 batch has ~2e9).
    concordant = jnp.sum(jnp.where(replaced, (below + at_or_below).astype(jnp.float32) / 2, 0.0))
    pairs = jnp.sum(replaced).astype(jnp.float32) * count.astype(jnp.float32)
    return concordant, pairs


@dataclasses.dataclass(frozen=True)
class Rtd(_Objective):
    """Replaced-token detection (ELECTRA, Clark et al. 2020): the generator's mean MLM cross entropy over the
    masked positions + `disc_weight` x the discriminator's mean sigmoid cross entropy over every real token
    (google-research/electra's `gen_weight` 1 and `disc_weight` 50).

    `model`: the family's "rtd" head module (`generator_logits`, discriminator `logits`, their `labels`,
    `sampled_ids`). Batch: `input_ids` (masked), `token_type_ids`, `attention_mask`, `masked_lm_positions`,
    `masked_lm_ids`, `masked_lm_weights`. The generator's draws take the "sample" rng: split from the step's rng
    in training, a fixed key in evaluation (so held-out sums are reproducible).

    Metrics, as electra's `metric_fn` (over real tokens; a token is predicted replaced when its logit > 0): the
    generator's `mlm_loss`, `mlm_accuracy` and `mlm_sampled_accuracy` (its draws equal to the original), and
    the discriminator's `disc_loss`, `disc_accuracy`, `disc_precision`, `disc_recall`, `replaced_fraction`
    and `disc_auc` (`rank_auc_sums`: exact within each batch, pair-weighted over batches; electra's
    tf.metrics.auc counts 200 probability thresholds instead, which reads 0.5 for a discriminator whose logits
    all lie within one threshold's width, as electra_tiny's do while it learns).
    """

    model: Any
    # electra's disc_weight: the discriminator's loss is ~50x smaller than the generator's.
    disc_weight: float = 50.0
    head: ClassVar[str] = "rtd"
    progress: ClassVar[tuple] = (
        ("mlm_acc", "mlm_accuracy", ".3f"),
        ("disc_acc", "disc_accuracy", ".3f"),
        ("disc_auc", "disc_auc", ".3f"),
    )

    def outputs(self, params, batch, rng, deterministic: bool):
        """The model's outputs on a batch; `rng` None draws with a fixed key."""
        if rng is None:
            rngs = {"sample": jax.random.key(0)}
        else:
            dropout_rng, sample_rng = jax.random.split(rng)
            rngs = {"sample": sample_rng, "dropout": dropout_rng}
        return self.model.apply(
            {"params": params},
            batch["input_ids"],
            batch.get("token_type_ids"),
            batch["attention_mask"],
            batch["masked_lm_positions"],
            batch["masked_lm_ids"],
            batch["masked_lm_weights"],
            deterministic=deterministic,
            rngs=rngs,
        )

    def loss_sums(self, params, batch, rng, deterministic: bool):
        """(the training loss, the sums keyed `mlm_*` and `disc_*`); dropout on unless `deterministic`."""
        outputs = self.outputs(params, batch, rng, deterministic)
        mlm = losses.mlm_loss(
            outputs["generator_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
        )
        mlm["sampled_correct_sum"] = jnp.sum(
            (outputs["sampled_ids"] == batch["masked_lm_ids"]) * batch["masked_lm_weights"]
        )
        logits, labels = outputs["logits"], outputs["labels"].astype(jnp.float32)
        weights = (batch["attention_mask"] > 0).astype(jnp.float32)
        predicted = (logits > 0).astype(jnp.float32)
        disc = {
            "loss_sum": jnp.sum(sigmoid_cross_entropy(logits, labels) * weights),
            "correct_sum": jnp.sum((predicted == labels) * weights),
            "count": jnp.sum(weights),
            "replaced_sum": jnp.sum(labels * weights),
            "predicted_sum": jnp.sum(predicted * weights),
            "true_positive_sum": jnp.sum(predicted * labels * weights),
        }
        disc["auc_concordant_sum"], disc["auc_pairs"] = rank_auc_sums(logits, labels, weights)
        loss = mlm["loss_sum"] / jnp.maximum(mlm["weight_sum"], 1e-5) + self.disc_weight * (
            disc["loss_sum"] / jnp.maximum(disc["count"], 1e-5)
        )
        sums = {
            **{f"mlm_{k}": v for k, v in mlm.items()},
            **{f"disc_{k}": v for k, v in disc.items()},
        }
        return loss, sums

    @staticmethod
    def summarize(sums: dict[str, float]) -> dict[str, float]:
        """The generator's MLM loss/accuracy and its draws' accuracy; the discriminator's loss, accuracy,
        precision, recall (NaN when it marks no token replaced; tf.metrics reports 0) and AUC; the fraction of
        tokens replaced."""
        return {
            "mlm_loss": divide(sums["mlm_loss_sum"], sums["mlm_weight_sum"]),
            "mlm_accuracy": divide(sums["mlm_correct_sum"], sums["mlm_weight_sum"]),
            "mlm_sampled_accuracy": divide(sums["mlm_sampled_correct_sum"], sums["mlm_weight_sum"]),
            "disc_loss": divide(sums["disc_loss_sum"], sums["disc_count"]),
            "disc_accuracy": divide(sums["disc_correct_sum"], sums["disc_count"]),
            "disc_precision": divide(sums["disc_true_positive_sum"], sums["disc_predicted_sum"]),
            "disc_recall": divide(sums["disc_true_positive_sum"], sums["disc_replaced_sum"]),
            "disc_auc": divide(sums["disc_auc_concordant_sum"], sums["disc_auc_pairs"]),
            "replaced_fraction": divide(sums["disc_replaced_sum"], sums["disc_count"]),
        }


# The objectives by the name a recipe's `objective` field gives.
OBJECTIVES = {"mlm_nsp": MlmNsp, "mlm": Mlm, "mlm_sop": MlmSop, "rtd": Rtd}
