"""The Hugging Face transformers RoBERTa layout <-> bert_jax parameters.

BERT's layer names and tensor layouts (`bert_hf`) under the `roberta.` prefix, plus RoBERTa's heads:
`lm_head.{dense,layer_norm,bias}` (the decoder is tied to the word embeddings), `classifier.{dense,out_proj}`
(sequence classification), `classifier` (token classification, multiple choice) and `qa_outputs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np
from etils import epath

from bert_jax.models import bert_hf
from bert_jax.models.bert_hf import read_state_dict  # noqa: F401 -- the same files as BERT's
from bert_jax.models.roberta import RobertaConfig

MODEL_TYPE = "roberta"
# transformers' RobertaConfig field -> bert_jax RobertaConfig field.
CONFIG_FIELDS = {**bert_hf.CONFIG_FIELDS, "pad_token_id": "pad_token_id"}
# transformers' class for each head.
ARCHITECTURES = {
    "none": "RobertaModel",
    "pretraining": "RobertaForMaskedLM",
    "classification": "RobertaForSequenceClassification",
    "span": "RobertaForQuestionAnswering",
    "token": "RobertaForTokenClassification",
    "multiple_choice": "RobertaForMultipleChoice",
}
# The heads' parameters: (transformers name, bert_jax path, layout). "classifier.weight" is token
# classification's and multiple choice's linear layer; "classifier.dense/out_proj" sequence classification's.
_HEAD_NAMES = [
    ("lm_head.dense.weight", "mlm/transform/kernel", "linear"),
    ("lm_head.dense.bias", "mlm/transform/bias", "copy"),
    ("lm_head.layer_norm.weight", "mlm/transform_layer_norm/scale", "copy"),
    ("lm_head.layer_norm.bias", "mlm/transform_layer_norm/bias", "copy"),
    ("lm_head.bias", "mlm/bias", "copy"),
    ("classifier.dense.weight", "classifier/dense/kernel", "linear"),
    ("classifier.dense.bias", "classifier/dense/bias", "copy"),
    ("classifier.out_proj.weight", "classifier/out_proj/kernel", "linear"),
    ("classifier.out_proj.bias", "classifier/out_proj/bias", "copy"),
    ("classifier.weight", "classifier/kernel", "linear"),
    ("classifier.bias", "classifier/bias", "copy"),
    ("qa_outputs.weight", "qa_outputs/kernel", "linear"),
    ("qa_outputs.bias", "qa_outputs/bias", "copy"),
]
_HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.")
# Not parameters of their own: buffers, and the decoder tied to the word embeddings (its bias is lm_head.bias).
_IGNORED = re.compile(
    r"(embeddings\.(position_ids|token_type_ids)|lm_head\.decoder\.(weight|bias))$"
)


def name_map(num_layers: int) -> dict[str, tuple[str, str]]:
    """transformers name (encoder names without "roberta.") -> (bert_jax path, layout) for every parameter."""
    bert_names = bert_hf.name_map(num_layers)
    names = {
        hf: value for hf, value in bert_names.items() if hf.startswith(("embeddings.", "encoder."))
    }
    names["pooler.dense.weight"] = bert_names["pooler.dense.weight"]
    names["pooler.dense.bias"] = bert_names["pooler.dense.bias"]
    names.update({hf: (ours, kind) for hf, ours, kind in _HEAD_NAMES})
    return names


def hf_to_flat_params(
    state: Mapping[str, np.ndarray], config: RobertaConfig, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames and re-lays-out transformers tensors; returns ({'bert/...': array}, ignored names).

    Raises ValueError naming the tensor for a name that is not a parameter of this RoBERTa config.
    """
    return bert_hf.rename_from_hf(
        state, config, source, prefix="roberta.", names=name_map(config.num_layers), ignored=_IGNORED,
        family="RoBERTa",
    )  # fmt: skip


def flat_params_to_hf(params, config: RobertaConfig, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested dict) -> a transformers state dict for the matching Roberta* class."""
    return bert_hf.rename_to_hf(
        params,
        head,
        prefix="roberta.",
        names=name_map(config.num_layers),
        head_prefixes=_HEAD_PREFIXES,
    )


def config_from_hf(hf_config: Mapping, path: str = "config.json", **overrides) -> RobertaConfig:
    """A RobertaConfig from a transformers config.json dict; one-line errors for what does not fit."""
    bert_hf.check_encoder(hf_config, path, MODEL_TYPE)
    missing = [k for k in bert_hf.CONFIG_FIELDS if k not in hf_config and k != "hidden_act"]
    if missing:
        raise ValueError(f"{path}: missing RoBERTa config fields {missing}")
    values = {
        ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config
    }
    values.update(overrides)
    return RobertaConfig(**values)


def config_to_hf(config: RobertaConfig) -> dict:
    """The model fields of a transformers config.json (RobertaConfig's <s> and </s> ids as fairseq's)."""
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {**out, "model_type": MODEL_TYPE, "bos_token_id": 0, "eos_token_id": 2}


# transformers' RobertaTokenizer's special tokens (fairseq's dictionary: <s> opens, </s> closes and separates).
SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}


def write_tokenizer(directory, tokenizer, config: RobertaConfig) -> None:
    """vocab.json + merges.txt (the byte-level BPE's files, byte for byte), tokenizer_config.json and
    special_tokens_map.json, as transformers' RobertaTokenizer (and AutoTokenizer) reads them."""
    directory = epath.Path(directory)
    (directory / "vocab.json").write_bytes(epath.Path(tokenizer.path).read_bytes())
    (directory / "merges.txt").write_bytes(epath.Path(tokenizer.merges_path).read_bytes())
    tokenizer_config = {
        "tokenizer_class": "RobertaTokenizer",
        # Text is encoded as it stands (a first word without "Ġ"), as bert_jax's tokenizer does.
        "add_prefix_space": False,
        "model_max_length": config.max_length,
        **SPECIAL_TOKENS,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))
