"""Google's original BERT checkpoints (TensorFlow 1, google-research/bert) <-> bert_jax parameters.

A released model is a directory `<name>/` with `bert_config.json`, `vocab.txt` and the TF1 checkpoint
`bert_model.ckpt.{index,data-*}` (read and written by `tf_checkpoint`, no TensorFlow needed). Variable names
are those of the original `modeling.py` (`bert/encoder/layer_3/attention/self/query/kernel`, [in, out]) and
of the heads in `run_pretraining.py` (`cls/predictions/...`, `cls/seq_relationship/output_weights` [2, H]),
`run_classifier.py` (`output_weights` [labels, H]) and `run_squad.py` (`cls/squad/output_weights` [2, H]).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from bert_jax import tf_checkpoint
from bert_jax.models.bert import BertConfig

FAMILY = "BERT"
# The files of a model directory: its config, the checkpoint name Google's releases use.
CONFIG_FILE = "bert_config.json"
CHECKPOINT = "bert_model.ckpt"
# Variables a BERT checkpoint has (the family of a TF1 checkpoint is the first whose markers match, ELECTRA's and
# ALBERT's before these: an ALBERT checkpoint has BERT's embedding names too).
MARKERS = re.compile(r"^bert/(encoder/layer_\d+/|embeddings/)")
# One layer: (TF1 name under bert/encoder/layer_{i}/, bert_jax path under bert/layer_{i}/, layout).
_LAYER_NAMES = [
    *[(f"attention/self/{p}/kernel", f"attention/{p}/kernel", "qkv_kernel") for p in "query key value".split()],
    *[(f"attention/self/{p}/bias", f"attention/{p}/bias", "qkv_bias") for p in "query key value".split()],
    ("attention/output/dense/kernel", "attention/output/kernel", "out_kernel"),
    ("attention/output/dense/bias", "attention/output/bias", "copy"),
    ("attention/output/LayerNorm/gamma", "attention_layer_norm/scale", "copy"),
    ("attention/output/LayerNorm/beta", "attention_layer_norm/bias", "copy"),
    ("intermediate/dense/kernel", "intermediate/kernel", "copy"),
    ("intermediate/dense/bias", "intermediate/bias", "copy"),
    ("output/dense/kernel", "output/kernel", "copy"),
    ("output/dense/bias", "output/bias", "copy"),
    ("output/LayerNorm/gamma", "output_layer_norm/scale", "copy"),
    ("output/LayerNorm/beta", "output_layer_norm/bias", "copy"),
]  # fmt: skip
# Everything outside the layers: (TF1 name, bert_jax path, layout).
_OTHER_NAMES = [
    ("bert/embeddings/word_embeddings", "bert/embeddings/word_embeddings/embedding", "copy"),
    ("bert/embeddings/position_embeddings", "bert/embeddings/position_embeddings/embedding", "copy"),
    ("bert/embeddings/token_type_embeddings", "bert/embeddings/token_type_embeddings/embedding", "copy"),
    ("bert/embeddings/LayerNorm/gamma", "bert/embeddings/layer_norm/scale", "copy"),
    ("bert/embeddings/LayerNorm/beta", "bert/embeddings/layer_norm/bias", "copy"),
    ("bert/pooler/dense/kernel", "bert/pooler/kernel", "copy"),
    ("bert/pooler/dense/bias", "bert/pooler/bias", "copy"),
    ("cls/predictions/transform/dense/kernel", "mlm/transform/kernel", "copy"),
    ("cls/predictions/transform/dense/bias", "mlm/transform/bias", "copy"),
    ("cls/predictions/transform/LayerNorm/gamma", "mlm/transform_layer_norm/scale", "copy"),
    ("cls/predictions/transform/LayerNorm/beta", "mlm/transform_layer_norm/bias", "copy"),
    # The MLM decoder is the word embedding matrix (tied); only its bias is a variable of its own.
    ("cls/predictions/output_bias", "mlm/bias", "copy"),
    ("cls/seq_relationship/output_weights", "nsp/kernel", "transpose"),
    ("cls/seq_relationship/output_bias", "nsp/bias", "copy"),
    ("output_weights", "classifier/kernel", "transpose"),
    ("output_bias", "classifier/bias", "copy"),
    ("cls/squad/output_weights", "qa_outputs/kernel", "transpose"),
    ("cls/squad/output_bias", "qa_outputs/bias", "copy"),
]  # fmt: skip
# Saved by the original training scripts but not parameters: optimizer slots and counters.
_UNUSED = re.compile(
    r"(/adam_[mv]|/Adam(_1)?|/Momentum|/lamb_[mv])$|^(global_step|good_steps|loss_scale)$"
)
# The same, public: ALBERT's and ELECTRA's readers skip them too.
NOT_PARAMETERS = _UNUSED
# bert_config.json field -> bert_jax BertConfig field (the original has no layer_norm_eps: it is 1e-12).
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout_prob",
    "attention_probs_dropout_prob": "attention_dropout_prob",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "initializer_range": "initializer_range",
}
# tokenization.validate_case_matches_checkpoint's lists: the released models and their casing.
_LOWER_MODELS = ("uncased_L-24_H-1024_A-16", "uncased_L-12_H-768_A-12", "multilingual_L-12_H-768_A-12", "chinese_L-12_H-768_A-12")  # fmt: skip
_CASED_MODELS = ("cased_L-12_H-768_A-12", "cased_L-24_H-1024_A-16", "multi_cased_L-12_H-768_A-12")


def name_map(num_layers: int) -> dict[str, tuple[str, str]]:
    """TF1 variable name -> (bert_jax 'bert/...' path, layout) for every parameter."""
    names = {tf: (ours, kind) for tf, ours, kind in _OTHER_NAMES}
    for i in range(num_layers):
        for tf, ours, kind in _LAYER_NAMES:
            names[f"bert/encoder/layer_{i}/{tf}"] = (f"bert/layer_{i}/{ours}", kind)
    return names


def to_jax(kind: str, w: np.ndarray, config: BertConfig) -> np.ndarray:
    """A TF1 tensor in bert_jax's layout (TF1 kernels are already [in, out])."""
    if kind == "copy":
        return w
    if kind == "transpose":
        return w.T
    if kind == "qkv_kernel":
        return w.reshape(w.shape[0], config.num_heads, config.head_dim)
    if kind == "qkv_bias":
        return w.reshape(config.num_heads, config.head_dim)
    if kind == "out_kernel":
        return w.reshape(config.num_heads, config.head_dim, w.shape[1])
    raise ValueError(kind)


def to_tf1(kind: str, w: np.ndarray) -> np.ndarray:
    """A bert_jax parameter in the TF1 layout (the inverse of `to_jax`)."""
    if kind == "copy":
        return w
    if kind == "transpose":
        return w.T
    if kind in ("qkv_kernel", "out_kernel"):
        return w.reshape(w.shape[0], -1) if kind == "qkv_kernel" else w.reshape(-1, w.shape[-1])
    if kind == "qkv_bias":
        return w.reshape(-1)
    raise ValueError(kind)


def _not_bert(bundle: tf_checkpoint.Bundle) -> str | None:
    """Why this checkpoint is not a TF1 BERT one (TF2 object graph, ALBERT, ELECTRA), or None."""
    names = bundle.names
    if bundle.is_tf2:
        example = next((n for n in names if n.endswith("/.ATTRIBUTES/VARIABLE_VALUE")), names[0])
        return (
            f"this is a TF2 checkpoint (tf.train.Checkpoint object graph, e.g. variable {example!r}); "
            "bert_jax reads TF1 checkpoints written by tf.train.Saver, like Google's bert_model.ckpt"
        )
    for pattern, family in (
        (r"(embedding_hidden_mapping_in|/transformer/group_\d+|inner_group_\d+)", "ALBERT"),
        (r"^(electra/|discriminator_predictions/|generator_predictions/|generator/)", "ELECTRA"),
    ):
        hit = next((n for n in names if re.search(pattern, n)), None)
        if hit:
            return f"this is an {family} checkpoint (variable {hit!r}), not BERT"
    return None


def check_is_bert(prefix: str) -> tf_checkpoint.Bundle:
    """Opens the checkpoint; ValueError naming the index file if it is TF2, ALBERT or ELECTRA."""
    bundle = tf_checkpoint.Bundle(prefix)
    why = _not_bert(bundle)
    if why:
        raise ValueError(f"{bundle.index_path}: {why}")
    return bundle


def read_config(path: str, **overrides) -> BertConfig:
    """BertConfig from the original `bert_config.json`; one-line errors naming the file and field."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path}: missing (a TF1 BERT checkpoint needs bert_config.json)"
        ) from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in CONFIG_FIELDS if k not in values]
    if missing:
        raise ValueError(f"{path}: missing BERT config fields {missing}")
    try:
        return BertConfig(**{CONFIG_FIELDS[k]: values[k] for k in CONFIG_FIELDS}, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def load_config(bundle: tf_checkpoint.Bundle, config_path: str, **overrides) -> BertConfig:
    """The model config of a checkpoint directory: its bert_config.json (the family interface of `registry`)."""
    del bundle
    return read_config(config_path, **overrides)


def config_dict(config: BertConfig) -> dict:
    """The original bert_config.json fields of `config`."""
    return {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}


def _check_sizes(bundle, config, config_path: str) -> None:
    """Raises naming the config field and the variable when bert_config.json disagrees with the tensors."""
    layers = {
        int(m.group(1)) for n in bundle.names if (m := re.match(r"bert/encoder/layer_(\d+)/", n))
    }
    if layers and max(layers) + 1 != config.num_layers:
        raise ValueError(
            f"{config_path}: num_hidden_layers is {config.num_layers} but {bundle.index_path} has layers "
            f"0..{max(layers)} (variable 'bert/encoder/layer_{max(layers)}/...')"
        )
    checks = [
        ("bert/embeddings/word_embeddings", ("vocab_size", "hidden_size")),
        ("bert/embeddings/position_embeddings", ("max_position_embeddings", "hidden_size")),
        ("bert/embeddings/token_type_embeddings", ("type_vocab_size", "hidden_size")),
        ("bert/encoder/layer_0/intermediate/dense/kernel", ("hidden_size", "intermediate_size")),
    ]
    for name, fields in checks:
        if name not in bundle.names:
            continue
        shape = bundle.shape(name)
        for size, field in zip(shape, fields, strict=False):
            ours = getattr(config, CONFIG_FIELDS[field])
            if size != ours:
                raise ValueError(
                    f"{config_path}: {field} is {ours} but variable {name!r} in {bundle.index_path} "
                    f"has shape {list(shape)}"
                )


def infer_do_lower_case(prefix: str, vocab_path: str | None) -> tuple[bool, str]:
    """(do_lower_case, why) as the original decides it: from the model's directory name ('uncased',
    'cased', 'multilingual', 'chinese', as in tokenization.validate_case_matches_checkpoint), else from
    the vocabulary (a vocab with upper-case words was not lower-cased)."""
    name = os.path.basename(os.path.dirname(os.path.abspath(prefix)))
    if name in _LOWER_MODELS or name in _CASED_MODELS:
        return name in _LOWER_MODELS, f"released model {name!r}"
    lowered = name.lower()
    if "uncased" in lowered:
        return True, f"'uncased' in the name {name!r}"
    if "cased" in lowered:
        return False, f"'cased' in the name {name!r}"
    if lowered.startswith(("multilingual", "chinese")):
        return True, f"the name {name!r}"
    if vocab_path and os.path.isfile(vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            words = [t.strip() for t in f if not t.startswith(("[", "##"))]
        upper = next((w for w in words if w != w.lower()), None)
        if upper:
            return False, f"{vocab_path} has upper-case tokens (e.g. {upper!r})"
        return True, f"{vocab_path} has no upper-case tokens"
    return True, "the default"


def read_params(prefix: str, config: BertConfig, config_path: str):
    """Reads a TF1 BERT checkpoint: ({'bert/...' path: array in bert_jax layout}, skipped variable names).

    Raises ValueError naming the file and variable for a TF2 / ALBERT / ELECTRA checkpoint, a variable that
    is no BERT parameter, a config that disagrees with the tensors, or a mis-shaped tensor; BundleError for
    unreadable files.
    """
    bundle = check_is_bert(prefix)
    _check_sizes(bundle, config, config_path)
    return read_mapped(
        bundle,
        name_map(config.num_layers),
        lambda name: expected_shape(name, config),
        lambda name, kind, array: to_jax(kind, array, config),
        FAMILY,
        os.path.basename(config_path),
    )


def expected_shape(name: str, config: BertConfig) -> tuple[int | None, ...]:
    """The shape `config` implies for TF1 variable `name` (None: the classifier's free label count)."""
    h, v = config.hidden_size, config.vocab_size
    whole = {
        "bert/embeddings/word_embeddings": (v, h),
        "bert/embeddings/position_embeddings": (config.max_position_embeddings, h),
        "bert/embeddings/token_type_embeddings": (config.type_vocab_size, h),
        "cls/predictions/output_bias": (v,),
        "cls/seq_relationship/output_weights": (2, h),
        "cls/seq_relationship/output_bias": (2,),
        "cls/squad/output_weights": (2, h),
        "cls/squad/output_bias": (2,),
        "output_weights": (None, h),
        "output_bias": (None,),
    }
    if name in whole:
        return whole[name]
    if name.endswith("/intermediate/dense/kernel"):
        return (h, config.intermediate_size)
    if name.endswith("/intermediate/dense/bias"):
        return (config.intermediate_size,)
    if name.endswith("/output/dense/kernel") and "/attention/" not in name:
        return (config.intermediate_size, h)
    return (h, h) if name.endswith("/kernel") else (h,)


def write_params(prefix: str, flat: dict[str, np.ndarray], config: BertConfig) -> None:
    """Writes flat 'bert/...' parameters (bert_jax layout) as a TF1 checkpoint with the original names."""
    by_path = {ours: (tf, kind) for tf, (ours, kind) in name_map(config.num_layers).items()}
    missing = sorted(set(flat) - set(by_path))
    if missing:
        raise ValueError(f"{missing[0]!r} has no name in Google's TF1 BERT (token classification?)")
    tensors = {by_path[p][0]: to_tf1(by_path[p][1], np.asarray(v)) for p, v in flat.items()}
    tf_checkpoint.write_bundle(prefix, tensors)


def read_mapped(
    bundle: tf_checkpoint.Bundle,
    names: Mapping[str, tuple[str, str]],
    shape_of: Callable[[str], tuple[int | None, ...]],
    to_ours: Callable[[str, str, np.ndarray], np.ndarray],
    family: str,
    implied_by: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Reads every variable of `bundle` through a name table: ({our path: to_ours(name, kind, array)}, skipped).

    `names`: variable name -> (our path, layout kind); `shape_of(name)`: the shape the config implies (None: free).
    Optimizer slots and counters are skipped; a variable not in `names` or of another shape is a ValueError
    naming the index file, the variable and (for shapes) `implied_by`, the file the sizes came from.
    """
    flat, skipped = {}, []
    for name in bundle.names:
        if _UNUSED.search(name):
            skipped.append(name)
            continue
        if name not in names:
            article = "an" if family[0] in "AEIOU" else "a"
            raise ValueError(
                f"{bundle.index_path}: variable {name!r} is not {article} {family} parameter"
            )
        want, have = shape_of(name), bundle.shape(name)
        if len(have) != len(want) or any(
            w not in (None, h) for w, h in zip(want, have, strict=True)
        ):
            want = ["labels" if w is None else w for w in want]
            raise ValueError(
                f"{bundle.index_path}: variable {name!r} has shape {list(have)} but {implied_by} implies {want}"
            )
        path, kind = names[name]
        flat[path] = to_ours(name, kind, bundle.read(name))
    return flat, skipped
