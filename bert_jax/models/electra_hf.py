"""The Hugging Face transformers ELECTRA layout <-> bert_jax parameters.

BERT's layer and embedding names and tensor layouts (`bert_hf`) under the `electra.` prefix, plus
`embeddings_project` and ELECTRA's heads: `discriminator_predictions.{dense,dense_prediction}` (ElectraForPreTraining),
`generator_predictions.{dense,LayerNorm}` + `generator_lm_head.bias` (ElectraForMaskedLM; the decoder weight is tied
to the word embeddings), `classifier.{dense,out_proj}` (sequence classification), `classifier` (token
classification, multiple choice), `sequence_summary.summary` (multiple choice) and `qa_outputs`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from bert_jax.models import bert_hf
from bert_jax.models.bert_hf import read_state_dict  # noqa: F401 -- the same files as BERT's
from bert_jax.models.electra import ElectraConfig

MODEL_TYPE = "electra"
# transformers' ElectraConfig field -> bert_jax ElectraConfig field.
CONFIG_FIELDS = {**bert_hf.CONFIG_FIELDS, "embedding_size": "embedding_size"}
# The SequenceSummary settings bert_jax's multiple-choice head implements (transformers' defaults).
SUMMARY = {
    "summary_type": "first",
    "summary_use_proj": True,
    "summary_activation": "gelu",
    "summary_proj_to_labels": False,
}
# transformers' class for each head.
ARCHITECTURES = {
    "none": "ElectraModel",
    "pretraining": "ElectraForPreTraining",
    "masked_lm": "ElectraForMaskedLM",
    "classification": "ElectraForSequenceClassification",
    "span": "ElectraForQuestionAnswering",
    "token": "ElectraForTokenClassification",
    "multiple_choice": "ElectraForMultipleChoice",
}
# The heads' parameters: (transformers name, bert_jax path, layout).
_HEAD_NAMES = [
    ("embeddings_project.weight", "bert/embeddings_project/kernel", "linear"),
    ("embeddings_project.bias", "bert/embeddings_project/bias", "copy"),
    ("discriminator_predictions.dense.weight", "discriminator_predictions/dense/kernel", "linear"),
    ("discriminator_predictions.dense.bias", "discriminator_predictions/dense/bias", "copy"),
    (
        "discriminator_predictions.dense_prediction.weight",
        "discriminator_predictions/dense_prediction/kernel",
        "linear",
    ),
    (
        "discriminator_predictions.dense_prediction.bias",
        "discriminator_predictions/dense_prediction/bias",
        "copy",
    ),
    ("generator_predictions.dense.weight", "mlm/transform/kernel", "linear"),
    ("generator_predictions.dense.bias", "mlm/transform/bias", "copy"),
    ("generator_predictions.LayerNorm.weight", "mlm/transform_layer_norm/scale", "copy"),
    ("generator_predictions.LayerNorm.bias", "mlm/transform_layer_norm/bias", "copy"),
    ("generator_lm_head.bias", "mlm/bias", "copy"),
    ("classifier.dense.weight", "classifier/dense/kernel", "linear"),
    ("classifier.dense.bias", "classifier/dense/bias", "copy"),
    ("classifier.out_proj.weight", "classifier/out_proj/kernel", "linear"),
    ("classifier.out_proj.bias", "classifier/out_proj/bias", "copy"),
    ("classifier.weight", "classifier/kernel", "linear"),
    ("classifier.bias", "classifier/bias", "copy"),
    ("sequence_summary.summary.weight", "sequence_summary/kernel", "linear"),
    ("sequence_summary.summary.bias", "sequence_summary/bias", "copy"),
    ("qa_outputs.weight", "qa_outputs/kernel", "linear"),
    ("qa_outputs.bias", "qa_outputs/bias", "copy"),
]
_HEAD_PREFIXES = (
    "discriminator_predictions.",
    "generator_predictions.",
    "generator_lm_head.",
    "classifier.",
    "sequence_summary.",
    "qa_outputs.",
)
# Not parameters of their own: buffers, and the generator's decoder tied to the word embeddings.
_IGNORED = re.compile(r"(embeddings\.(position_ids|token_type_ids)|generator_lm_head\.weight)$")


def name_map(num_layers: int) -> dict[str, tuple[str, str]]:
    """transformers name (encoder names without "electra.") -> (bert_jax path, layout) for every parameter."""
    names = {
        hf: value
        for hf, value in bert_hf.name_map(num_layers).items()
        if hf.startswith(("embeddings.", "encoder."))
    }
    names.update({hf: (ours, kind) for hf, ours, kind in _HEAD_NAMES})
    return names


def hf_to_flat_params(
    state: Mapping[str, np.ndarray], config: ElectraConfig, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames and re-lays-out transformers tensors; returns ({'bert/...': array}, ignored names).

    Raises ValueError naming the tensor for a name that is not a parameter of this ELECTRA config.
    """
    return bert_hf.rename_from_hf(
        state, config, source, prefix="electra.", names=name_map(config.num_layers), ignored=_IGNORED,
        family="ELECTRA",
    )  # fmt: skip


def flat_params_to_hf(params, config: ElectraConfig, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested dict) -> a transformers state dict for the matching Electra* class."""
    if head == "rtd":
        raise ValueError(
            "the ELECTRA pretraining model has no one transformers class: save its discriminator "
            "(head 'pretraining') or generator (head 'masked_lm')"
        )
    return bert_hf.rename_to_hf(
        params,
        head,
        prefix="electra.",
        names=name_map(config.num_layers),
        head_prefixes=_HEAD_PREFIXES,
    )


def config_from_hf(hf_config: Mapping, path: str = "config.json", **overrides) -> ElectraConfig:
    """An ElectraConfig from a transformers config.json dict; one-line errors for what does not fit."""
    bert_hf.check_encoder(hf_config, path, MODEL_TYPE)
    for key, value in SUMMARY.items():
        if hf_config.get(key, value) != value:
            raise ValueError(
                f"{path}: {key} {hf_config[key]!r} is not supported (bert_jax's multiple-choice head "
                f"is {key}={value!r})"
            )
    missing = [k for k in bert_hf.CONFIG_FIELDS if k not in hf_config and k != "hidden_act"]
    if missing:
        raise ValueError(f"{path}: missing ELECTRA config fields {missing}")
    values = {
        ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config
    }
    values.update(overrides)
    return ElectraConfig(**values)


def config_to_hf(config: ElectraConfig) -> dict:
    """The model fields of a transformers config.json (the WordPiece [PAD] id 0, as ElectraConfig's default)."""
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {**out, "model_type": MODEL_TYPE, "pad_token_id": 0}
