"""The Hugging Face transformers ALBERT layout <-> bert_jax parameters.

transformers keeps the shared layer once, at `albert.encoder.albert_layer_groups.0.albert_layers.0.*` (the one
group of one layer the released models have), the E -> H projection at `albert.encoder.embedding_hidden_mapping_in`,
the pooler at `albert.pooler`; the heads at the top: `predictions.{dense,LayerNorm,bias}` (the decoder is tied to
the word embeddings), `sop_classifier.classifier`, `classifier`, `qa_outputs`. Tensor layouts are BERT's
(`bert_hf`: PyTorch [out, in] -> Flax [in, out], attention per head).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np
from etils import epath

from bert_jax.models import bert_hf
from bert_jax.models.albert import AlbertConfig
from bert_jax.models.bert_hf import read_state_dict  # noqa: F401 -- the same files as BERT's

MODEL_TYPE = "albert"
# transformers' AlbertConfig field -> bert_jax AlbertConfig field.
CONFIG_FIELDS = {
    **bert_hf.CONFIG_FIELDS,
    "embedding_size": "embedding_size",
    "classifier_dropout_prob": "classifier_dropout_prob",
    "num_hidden_groups": "num_hidden_groups",
    "inner_group_num": "inner_group_num",
}
# transformers' class for each head.
ARCHITECTURES = {
    "none": "AlbertModel",
    "pretraining": "AlbertForPreTraining",
    "masked_lm": "AlbertForMaskedLM",
    "classification": "AlbertForSequenceClassification",
    "span": "AlbertForQuestionAnswering",
    "token": "AlbertForTokenClassification",
    "multiple_choice": "AlbertForMultipleChoice",
}
_LAYER = "encoder.albert_layer_groups.0.albert_layers.0."
# The shared layer: (transformers name under _LAYER, bert_jax path under bert/shared_layer, layout).
_LAYER_NAMES = [
    *[(f"attention.{p}.weight", f"attention/{p}/kernel", "qkv_kernel") for p in ("query", "key", "value")],
    *[(f"attention.{p}.bias", f"attention/{p}/bias", "qkv_bias") for p in ("query", "key", "value")],
    ("attention.dense.weight", "attention/output/kernel", "out_kernel"),
    ("attention.dense.bias", "attention/output/bias", "copy"),
    ("attention.LayerNorm.weight", "attention_layer_norm/scale", "copy"),
    ("attention.LayerNorm.bias", "attention_layer_norm/bias", "copy"),
    ("ffn.weight", "intermediate/kernel", "linear"),
    ("ffn.bias", "intermediate/bias", "copy"),
    ("ffn_output.weight", "output/kernel", "linear"),
    ("ffn_output.bias", "output/bias", "copy"),
    ("full_layer_layer_norm.weight", "output_layer_norm/scale", "copy"),
    ("full_layer_layer_norm.bias", "output_layer_norm/bias", "copy"),
]  # fmt: skip
# Everything else: (transformers name, without "albert." for the encoder's, bert_jax path, layout).
_OTHER_NAMES = [
    *[
        (f"embeddings.{t}.weight", f"bert/embeddings/{t}/embedding", "copy")
        for t in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ],
    ("embeddings.LayerNorm.weight", "bert/embeddings/layer_norm/scale", "copy"),
    ("embeddings.LayerNorm.bias", "bert/embeddings/layer_norm/bias", "copy"),
    (
        "encoder.embedding_hidden_mapping_in.weight",
        "bert/embeddings/embedding_hidden_mapping_in/kernel",
        "linear",
    ),
    (
        "encoder.embedding_hidden_mapping_in.bias",
        "bert/embeddings/embedding_hidden_mapping_in/bias",
        "copy",
    ),
    ("pooler.weight", "bert/pooler/kernel", "linear"),
    ("pooler.bias", "bert/pooler/bias", "copy"),
    ("predictions.dense.weight", "mlm/transform/kernel", "linear"),
    ("predictions.dense.bias", "mlm/transform/bias", "copy"),
    ("predictions.LayerNorm.weight", "mlm/transform_layer_norm/scale", "copy"),
    ("predictions.LayerNorm.bias", "mlm/transform_layer_norm/bias", "copy"),
    ("predictions.bias", "mlm/bias", "copy"),
    ("sop_classifier.classifier.weight", "nsp/kernel", "linear"),
    ("sop_classifier.classifier.bias", "nsp/bias", "copy"),
    ("classifier.weight", "classifier/kernel", "linear"),
    ("classifier.bias", "classifier/bias", "copy"),
    ("qa_outputs.weight", "qa_outputs/kernel", "linear"),
    ("qa_outputs.bias", "qa_outputs/bias", "copy"),
]
_HEAD_PREFIXES = ("predictions.", "sop_classifier.", "classifier.", "qa_outputs.")
# Not parameters of their own: buffers, and the decoder tied to the word embeddings (its bias is
# predictions.bias).
_IGNORED = re.compile(
    r"(embeddings\.(position_ids|token_type_ids)|predictions\.decoder\.(weight|bias))$"
)


def name_map(num_layers: int = 1) -> dict[str, tuple[str, str]]:
    """transformers name (encoder names without "albert.") -> (bert_jax path, layout) for every parameter.
    `num_layers` is accepted for the families' common signature: the shared layer has one set of names."""
    del num_layers
    names = {hf: (ours, kind) for hf, ours, kind in _OTHER_NAMES}
    for hf, ours, kind in _LAYER_NAMES:
        names[_LAYER + hf] = (f"bert/shared_layer/{ours}", kind)
    return names


def hf_to_flat_params(
    state: Mapping[str, np.ndarray], config: AlbertConfig, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames and re-lays-out transformers tensors; returns ({'bert/...': array}, ignored names).

    Raises ValueError naming the tensor for a name that is not a parameter of this ALBERT config.
    """
    return bert_hf.rename_from_hf(
        state, config, source, prefix="albert.", names=name_map(), ignored=_IGNORED, family="ALBERT"
    )


def flat_params_to_hf(params, config: AlbertConfig, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested dict) -> a transformers state dict for the matching Albert* class."""
    state = bert_hf.rename_to_hf(
        params, head, prefix="albert.", names=name_map(), head_prefixes=_HEAD_PREFIXES
    )
    if "predictions.bias" in state:
        # transformers ties decoder.bias to predictions.bias and reads both from the file.
        state["predictions.decoder.bias"] = state["predictions.bias"]
    return state


def config_from_hf(hf_config: Mapping, path: str = "config.json", **overrides) -> AlbertConfig:
    """An AlbertConfig from a transformers config.json dict; one-line errors for what does not fit."""
    bert_hf.check_encoder(hf_config, path, MODEL_TYPE)
    groups = (hf_config.get("num_hidden_groups", 1), hf_config.get("inner_group_num", 1))
    if groups != (1, 1):
        raise ValueError(
            f"{path}: num_hidden_groups {groups[0]} and inner_group_num {groups[1]}: only 1 and 1 "
            "(one layer shared by all, as every released ALBERT) are supported"
        )
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in (*required, "intermediate_size", "embedding_size") if k not in hf_config]
    if missing:
        raise ValueError(f"{path}: missing ALBERT config fields {missing}")
    values = {
        ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config
    }
    values.update(overrides)
    return AlbertConfig(**values)


def config_to_hf(config: AlbertConfig) -> dict:
    """The model fields of a transformers config.json (ALBERT's SentencePiece ids: <pad> 0, [CLS] 2, [SEP] 3)."""
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {
        **out,
        "model_type": MODEL_TYPE,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 3,
    }


def write_tokenizer(directory, tokenizer, config, do_lower_case: bool) -> None:
    """Into `directory` (an epath.Path): spiece.model (the file, byte for byte) and the configs transformers' AlbertTokenizer reads."""
    (directory / "spiece.model").write_bytes(epath.Path(tokenizer.path).read_bytes())
    specials = {
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "unk_token": "<unk>",
        "sep_token": "[SEP]",
        "pad_token": "<pad>",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    tokenizer_config = {
        "tokenizer_class": "AlbertTokenizer",
        "do_lower_case": do_lower_case,
        "model_max_length": config.max_position_embeddings,
        **specials,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
