"""Google's original ALBERT checkpoints (TensorFlow 1, google-research/albert) <-> bert_jax parameters.

A released model is a directory with `albert_config.json`, the SentencePiece model (`30k-clean.model`) and the
TF1 checkpoint (`model.ckpt-best.{index,data-*}`; read and written by `tf_checkpoint`, no TensorFlow needed).
Variable names are those of the original `modeling.py`: BERT's embeddings at width E (`bert/embeddings/...`), the
E -> H projection `bert/encoder/embedding_hidden_mapping_in`, the one shared layer under
`bert/encoder/transformer/group_0/inner_group_0/` (`attention_1/self/query/kernel` [H, H], `LayerNorm` after
attention, `ffn_1/intermediate/dense`, `ffn_1/intermediate/output/dense`, `LayerNorm_1`), BERT's pooler; the heads
of `run_pretraining.py` (`cls/predictions/...` at width E, `cls/seq_relationship/output_weights` [2, H]: sentence
order), `classifier_utils.py` (`output_weights` [labels, H]) and `squad_utils.py` v1 (`cls/squad/output_weights`).

The original's "gelu" is GELU's tanh approximation (its `modeling.gelu`): bert_jax's "gelu_new".
"""

from __future__ import annotations

import json
import re

import numpy as np

from bert_jax import tf_checkpoint
from bert_jax.models import bert_tf1
from bert_jax.models.albert import AlbertConfig

FAMILY = "ALBERT"
# The files of a model directory: its config, the checkpoint name the release uses.
CONFIG_FILE = "albert_config.json"
CHECKPOINT = "model.ckpt-best"
# Variables only an ALBERT checkpoint has (how a TF1 checkpoint's family is told from its names).
MARKERS = re.compile(r"^bert/encoder/(embedding_hidden_mapping_in/|transformer/group_\d+/)")
_LAYER = "bert/encoder/transformer/group_0/inner_group_0/"
# The shared layer: (TF1 name under _LAYER, bert_jax path under bert/shared_layer/, layout).
_LAYER_NAMES = [
    *[(f"attention_1/self/{p}/kernel", f"attention/{p}/kernel", "qkv_kernel") for p in "query key value".split()],
    *[(f"attention_1/self/{p}/bias", f"attention/{p}/bias", "qkv_bias") for p in "query key value".split()],
    ("attention_1/output/dense/kernel", "attention/output/kernel", "out_kernel"),
    ("attention_1/output/dense/bias", "attention/output/bias", "copy"),
    ("LayerNorm/gamma", "attention_layer_norm/scale", "copy"),
    ("LayerNorm/beta", "attention_layer_norm/bias", "copy"),
    ("ffn_1/intermediate/dense/kernel", "intermediate/kernel", "copy"),
    ("ffn_1/intermediate/dense/bias", "intermediate/bias", "copy"),
    ("ffn_1/intermediate/output/dense/kernel", "output/kernel", "copy"),
    ("ffn_1/intermediate/output/dense/bias", "output/bias", "copy"),
    ("LayerNorm_1/gamma", "output_layer_norm/scale", "copy"),
    ("LayerNorm_1/beta", "output_layer_norm/bias", "copy"),
]  # fmt: skip
# The projection; everything else is named as in BERT's checkpoints.
_OTHER_NAMES = [
    ("bert/encoder/embedding_hidden_mapping_in/kernel", "bert/embeddings/embedding_hidden_mapping_in/kernel", "copy"),
    ("bert/encoder/embedding_hidden_mapping_in/bias", "bert/embeddings/embedding_hidden_mapping_in/bias", "copy"),
]  # fmt: skip
# albert_config.json field -> bert_jax AlbertConfig field (the sizes every released config has).
CONFIG_FIELDS = {
    **bert_tf1.CONFIG_FIELDS,
    "embedding_size": "embedding_size",
    "num_hidden_groups": "num_hidden_groups",
    "inner_group_num": "inner_group_num",
}
_REQUIRED = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")  # fmt: skip
# The original AlbertConfig's defaults for the rest (from_dict starts from them).
_DEFAULTS = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "num_hidden_groups": 1,
    "inner_group_num": 1,
}
# The original's activation names -> bert_jax's (its "gelu" is the tanh approximation).
_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu"}


def name_map(num_layers: int = 1) -> dict[str, tuple[str, str]]:
    """TF1 variable name -> (bert_jax path, layout) for every parameter (one shared layer, whatever
    `num_layers`)."""
    del num_layers
    names = {
        tf: value
        for tf, value in bert_tf1.name_map(0).items()
        if not tf.startswith("bert/encoder/")
    }
    names.update({tf: (ours, kind) for tf, ours, kind in _OTHER_NAMES})
    for tf, ours, kind in _LAYER_NAMES:
        names[_LAYER + tf] = (f"bert/shared_layer/{ours}", kind)
    return names


def read_config(path: str, **overrides) -> AlbertConfig:
    """AlbertConfig from the original `albert_config.json`; one-line errors naming the file and field."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path}: missing (a TF1 ALBERT checkpoint needs albert_config.json)"
        ) from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ValueError(f"{path}: missing ALBERT config fields {missing}")
    values = {**_DEFAULTS, **values}
    if values["hidden_act"] not in _ACTIVATIONS:
        raise ValueError(
            f"{path}: hidden_act {values['hidden_act']!r} is not one of {sorted(_ACTIVATIONS)}"
        )
    values["hidden_act"] = _ACTIVATIONS[values["hidden_act"]]
    try:
        return AlbertConfig(
            **{ours: values[theirs] for theirs, ours in CONFIG_FIELDS.items()}, **overrides
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def load_config(bundle: tf_checkpoint.Bundle, config_path: str, **overrides) -> AlbertConfig:
    """The model config of a checkpoint directory: its albert_config.json."""
    del bundle
    return read_config(config_path, **overrides)


def config_dict(config: AlbertConfig) -> dict:
    """The original albert_config.json fields of `config`."""
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    theirs = {ours: name for name, ours in _ACTIVATIONS.items()}
    theirs.update(gelu_tanh="gelu", gelu_pytorch_tanh="gelu")
    if config.hidden_act not in theirs:
        raise ValueError(
            f"hidden_act {config.hidden_act!r} has no name in Google's ALBERT (its 'gelu' is the tanh "
            "approximation, bert_jax's 'gelu_new')"
        )
    out["hidden_act"] = theirs[config.hidden_act]
    return out


def expected_shape(name: str, config: AlbertConfig) -> tuple[int | None, ...]:
    """The shape `config` implies for TF1 variable `name` (None: the classifier's free label count)."""
    h, e, v = config.hidden_size, config.embedding_size, config.vocab_size
    whole = {
        "bert/embeddings/word_embeddings": (v, e),
        "bert/embeddings/position_embeddings": (config.max_position_embeddings, e),
        "bert/embeddings/token_type_embeddings": (config.type_vocab_size, e),
        "bert/embeddings/LayerNorm/gamma": (e,),
        "bert/embeddings/LayerNorm/beta": (e,),
        "bert/encoder/embedding_hidden_mapping_in/kernel": (e, h),
        "cls/predictions/transform/dense/kernel": (h, e),
        "cls/predictions/transform/dense/bias": (e,),
        "cls/predictions/transform/LayerNorm/gamma": (e,),
        "cls/predictions/transform/LayerNorm/beta": (e,),
        _LAYER + "attention_1/output/dense/kernel": (h, h),
        _LAYER + "ffn_1/intermediate/output/dense/kernel": (config.intermediate_size, h),
    }
    # The rest as BERT's (the same endings: /intermediate/dense/kernel, a [H, H] or [H] otherwise).
    return whole[name] if name in whole else bert_tf1.expected_shape(name, config)


def read_params(prefix: str, config: AlbertConfig, config_path: str):
    """Reads a TF1 ALBERT checkpoint: ({'bert/...' path: array in bert_jax layout}, skipped variable names).

    Raises ValueError naming the file and variable for a variable that is no ALBERT parameter (more than one
    group of layers among them) or a tensor of another shape than albert_config.json implies.
    """
    bundle = tf_checkpoint.Bundle(prefix)
    groups = sorted(
        {m.group(0) for n in bundle.names if (m := re.search(r"group_\d+/inner_group_\d+", n))}
    )
    if groups and groups != ["group_0/inner_group_0"]:
        raise ValueError(
            f"{bundle.index_path}: layer groups {groups}: only group_0/inner_group_0 (one layer shared by all, "
            "as every released ALBERT) is supported"
        )
    return bert_tf1.read_mapped(
        bundle, name_map(), lambda name: expected_shape(name, config),
        lambda name, kind, w: bert_tf1.to_jax(kind, w, config), FAMILY, config_path,
    )  # fmt: skip


def write_params(prefix: str, flat: dict[str, np.ndarray], config: AlbertConfig) -> None:
    """Writes flat 'bert/...' parameters (bert_jax layout) as a TF1 checkpoint with the original names."""
    by_path = {ours: (tf, kind) for tf, (ours, kind) in name_map().items()}
    missing = sorted(set(flat) - set(by_path))
    if missing:
        raise ValueError(
            f"{missing[0]!r} has no name in Google's TF1 ALBERT (token classification?)"
        )
    tensors = {
        by_path[p][0]: bert_tf1.to_tf1(by_path[p][1], np.asarray(v)) for p, v in flat.items()
    }
    tf_checkpoint.write_bundle(prefix, tensors)
