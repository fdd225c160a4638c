"""Google's original ELECTRA checkpoints (TensorFlow 1, google-research/electra) <-> bert_jax parameters.

A released model is a directory with `vocab.txt` and the pretraining checkpoint (`model.ckpt-<step>.{index,data-*}`
and the `checkpoint` state file naming the latest; read and written by `tf_checkpoint`, no TensorFlow needed).
Variable names are those of the original `run_pretraining.py` (the default electra objective, untied generator with
the embeddings shared): `electra/embeddings/...` (E wide, shared by both encoders), `electra/embeddings_project`
(E -> H, when E != H), `electra/encoder/layer_{i}/...` (BERT's layer names), the generator's
`generator/embeddings_project` and `generator/encoder/layer_{i}/...`, its MLM head `generator_predictions/{dense,
LayerNorm,output_bias}` (tied to the word embeddings) and the discriminator head
`discriminator_predictions/{dense,dense_1}`.

The sizes: ELECTRA keeps no model config file; its size is run_pretraining.py's `--hparams` (`model_size` small /
base / large, `embedding_size`, `generator_hidden_size`, `generator_layers`, `model_hparam_overrides`). bert_jax
reads every size from the tensors' shapes (vocabulary, E, H, layers, feed-forward, positions, token types and the
generator's width and depth), and the number of attention heads, which no shape shows, by ELECTRA's own rule
(`training_utils.get_bert_config`: hidden_size // 64, right for every released model) unless an `hparams.json` (the
`--hparams` file) beside the checkpoint says otherwise in `model_hparam_overrides` (`num_attention_heads`, and
`hidden_act`, dropout). A size hparams.json gives that the tensors contradict is an error. bert_jax writes
hparams.json with every size as `model_hparam_overrides`, so the original's `--hparams=hparams.json` rebuilds it.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from bert_jax import tf_checkpoint
from bert_jax.models import bert_tf1
from bert_jax.models.electra import ElectraConfig

FAMILY = "ELECTRA"
CONFIG_FILE = "hparams.json"
CHECKPOINT = "model.ckpt"
# Variables only an ELECTRA checkpoint has (how a TF1 checkpoint's family is told from its names).
MARKERS = re.compile(r"^(electra|generator|generator_predictions|discriminator_predictions)/")
# configure_pretraining.py / training_utils.get_bert_config: model_size -> its hidden size and layers.
MODEL_SIZES = {"small": (256, 12), "base": (768, 12), "large": (1024, 24)}
# Outside the layers: (TF1 name, bert_jax path, layout).
_OTHER_NAMES = [
    *[(f"electra/embeddings/{t}", f"bert/embeddings/{t}/embedding", "copy")
      for t in ("word_embeddings", "position_embeddings", "token_type_embeddings")],
    ("electra/embeddings/LayerNorm/gamma", "bert/embeddings/layer_norm/scale", "copy"),
    ("electra/embeddings/LayerNorm/beta", "bert/embeddings/layer_norm/bias", "copy"),
    ("electra/embeddings_project/kernel", "bert/embeddings_project/kernel", "copy"),
    ("electra/embeddings_project/bias", "bert/embeddings_project/bias", "copy"),
    ("generator/embeddings_project/kernel", "generator/embeddings_project/kernel", "copy"),
    ("generator/embeddings_project/bias", "generator/embeddings_project/bias", "copy"),
    ("generator_predictions/dense/kernel", "mlm/transform/kernel", "copy"),
    ("generator_predictions/dense/bias", "mlm/transform/bias", "copy"),
    ("generator_predictions/LayerNorm/gamma", "mlm/transform_layer_norm/scale", "copy"),
    ("generator_predictions/LayerNorm/beta", "mlm/transform_layer_norm/bias", "copy"),
    ("generator_predictions/output_bias", "mlm/bias", "copy"),
    ("discriminator_predictions/dense/kernel", "discriminator_predictions/dense/kernel", "copy"),
    ("discriminator_predictions/dense/bias", "discriminator_predictions/dense/bias", "copy"),
    ("discriminator_predictions/dense_1/kernel", "discriminator_predictions/dense_prediction/kernel", "copy"),
    ("discriminator_predictions/dense_1/bias", "discriminator_predictions/dense_prediction/bias", "copy"),
]  # fmt: skip
# One layer: BERT's names, under electra/encoder/layer_{i}/ and generator/encoder/layer_{i}/.
_LAYER_NAMES = [
    (tf.removeprefix("bert/encoder/layer_0/"), ours.removeprefix("bert/layer_0/"), kind)
    for tf, (ours, kind) in bert_tf1.name_map(1).items()
    if tf.startswith("bert/encoder/layer_0/")
]
# The --hparams entries bert_jax reads from model_hparam_overrides beyond the sizes.
_OVERRIDES = {
    "num_attention_heads": "num_heads",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout_prob",
    "attention_probs_dropout_prob": "attention_dropout_prob",
    "initializer_range": "initializer_range",
}


def name_map(num_layers: int, generator_layers: int | None = None) -> dict[str, tuple[str, str]]:
    """TF1 variable name -> (bert_jax path, layout) for every parameter (`generator_layers`: default as many)."""
    names = {tf: (ours, kind) for tf, ours, kind in _OTHER_NAMES}
    for tower, ours_root, layers in (
        ("electra", "bert", num_layers),
        ("generator", "generator", num_layers if generator_layers is None else generator_layers),
    ):
        for i in range(layers):
            for tf, ours, kind in _LAYER_NAMES:
                names[f"{tower}/encoder/layer_{i}/{tf}"] = (f"{ours_root}/layer_{i}/{ours}", kind)
    return names


def _layers(names, tower: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"{tower}/encoder/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def _hparams(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            values = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a JSON object of run_pretraining.py --hparams")
    return values


def load_config(bundle: tf_checkpoint.Bundle, config_path: str, **overrides) -> ElectraConfig:
    """The ElectraConfig of a checkpoint: sizes from its tensors' shapes, the rest from `config_path` (an optional
    hparams.json) or ELECTRA's defaults; one-line errors naming the file and the variable that disagree."""
    names, index = bundle.names, bundle.index_path
    shape = lambda name: bundle.shape(name) if name in names else None  # noqa: E731
    words = shape("electra/embeddings/word_embeddings")
    query = shape("electra/encoder/layer_0/attention/self/query/kernel")
    if words is None or query is None:
        raise ValueError(
            f"{index}: no 'electra/embeddings/word_embeddings' or 'electra/encoder/layer_0/...': not the "
            "discriminator of an ELECTRA pretraining checkpoint"
        )
    vocab, width = words
    hidden = query[0]
    layers = _layers(names, "electra")
    hparams = _hparams(config_path)
    given = dict(hparams.get("model_hparam_overrides") or {})
    size = hparams.get("model_size")
    if size is not None and size not in MODEL_SIZES:
        raise ValueError(f"{config_path}: model_size {size!r} is not one of {sorted(MODEL_SIZES)}")
    implied = dict(
        zip(("hidden_size", "num_hidden_layers"), MODEL_SIZES.get(size, ()), strict=False)
    )
    implied.update(
        {
            k: given[k]
            for k in ("hidden_size", "num_hidden_layers", "intermediate_size")
            if k in given
        }
    )
    implied.update({k: hparams[k] for k in ("vocab_size", "embedding_size") if k in hparams})
    if implied.get("embedding_size") is None:
        implied.pop(
            "embedding_size", None
        )  # None: the hidden size (configure_pretraining's default)
    intermediate = shape("electra/encoder/layer_0/intermediate/dense/kernel")[1]
    found = {
        "vocab_size": (vocab, "electra/embeddings/word_embeddings"),
        "embedding_size": (width, "electra/embeddings/word_embeddings"),
        "hidden_size": (hidden, "electra/encoder/layer_0/attention/self/query/kernel"),
        "num_hidden_layers": (layers, f"electra/encoder/layer_{layers - 1}/..."),
        "intermediate_size": (intermediate, "electra/encoder/layer_0/intermediate/dense/kernel"),
    }
    for field, value in implied.items():
        if value != found[field][0]:
            raise ValueError(
                f"{config_path}: {field} is {value} but variable {found[field][1]!r} in {index} says "
                f"{found[field][0]}"
            )
    fields = {
        "vocab_size": vocab,
        "embedding_size": width,
        "hidden_size": hidden,
        "num_layers": layers,
        "intermediate_size": intermediate,
        "max_position_embeddings": shape("electra/embeddings/position_embeddings")[0],
        "type_vocab_size": shape("electra/embeddings/token_type_embeddings")[0],
        # get_bert_config's rule; model_hparam_overrides win (below).
        "num_heads": max(1, hidden // 64),
    }
    fields.update({ours: given[theirs] for theirs, ours in _OVERRIDES.items() if theirs in given})
    generator = shape("generator/encoder/layer_0/attention/self/query/kernel")
    if generator is not None:
        fields["generator_hidden_fraction"] = generator[0] / hidden
        fields["generator_layers_fraction"] = _layers(names, "generator") / layers
    else:
        for theirs, ours in (("generator_hidden_size", "generator_hidden_fraction"),
                             ("generator_layers", "generator_layers_fraction")):  # fmt: skip
            if theirs in hparams:
                fields[ours] = hparams[theirs]
    try:
        config = ElectraConfig(**fields, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{index}: {e}") from e
    if generator is not None:
        _check_generator(bundle, config)
    return config


def _check_generator(bundle: tf_checkpoint.Bundle, config: ElectraConfig) -> None:
    """The generator bert_jax builds (get_generator_config's rule) must be the checkpoint's, tensor for tensor."""
    gen = config.generator
    checks = {
        "generator/encoder/layer_0/attention/self/query/kernel": (gen.hidden_size, gen.hidden_size),
        "generator/encoder/layer_0/intermediate/dense/kernel": (
            gen.hidden_size,
            gen.intermediate_size,
        ),
    }
    for name, want in checks.items():
        if tuple(bundle.shape(name)) != want:
            raise ValueError(
                f"{bundle.index_path}: variable {name!r} has shape {list(bundle.shape(name))} but ELECTRA's "
                f"generator of a {config.hidden_size}-wide discriminator (get_generator_config) has {list(want)}"
            )
    layers = _layers(bundle.names, "generator")
    if layers != gen.num_layers:
        raise ValueError(
            f"{bundle.index_path}: the generator has {layers} layers but {gen.num_layers} follow from "
            f"generator_layers_fraction {config.generator_layers_fraction}"
        )


def config_dict(config: ElectraConfig) -> dict:
    """run_pretraining.py's --hparams for `config`: every size as model_hparam_overrides."""
    return {
        # The released size these are, else any (model_hparam_overrides give every size).
        "model_size": next(
            (k for k, v in MODEL_SIZES.items() if v == (config.hidden_size, config.num_layers)),
            "small",
        ),
        "vocab_size": config.vocab_size,
        "embedding_size": config.embedding_size,
        "generator_hidden_size": config.generator_hidden_fraction,
        "generator_layers": config.generator_layers_fraction,
        "model_hparam_overrides": {
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "intermediate_size": config.intermediate_size,
            "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size,
            "hidden_act": config.hidden_act,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "attention_probs_dropout_prob": config.attention_dropout_prob,
            "initializer_range": config.initializer_range,
        },
    }


def expected_shape(name: str, config: ElectraConfig) -> tuple[int, ...]:
    """The shape `config` implies for TF1 variable `name`."""
    cfg = config.generator if name.startswith("generator/") else config
    h, e, v = cfg.hidden_size, config.embedding_size, config.vocab_size
    whole = {
        "electra/embeddings/word_embeddings": (v, e),
        "electra/embeddings/position_embeddings": (config.max_position_embeddings, e),
        "electra/embeddings/token_type_embeddings": (config.type_vocab_size, e),
        "electra/embeddings/LayerNorm/gamma": (e,),
        "electra/embeddings/LayerNorm/beta": (e,),
        "electra/embeddings_project/kernel": (e, h),
        "generator/embeddings_project/kernel": (e, h),
        "generator_predictions/dense/kernel": (config.generator.hidden_size, e),
        "generator_predictions/dense/bias": (e,),
        "generator_predictions/LayerNorm/gamma": (e,),
        "generator_predictions/LayerNorm/beta": (e,),
        "generator_predictions/output_bias": (v,),
        "discriminator_predictions/dense_1/kernel": (h, 1),
        "discriminator_predictions/dense_1/bias": (1,),
    }
    if name in whole:
        return whole[name]
    return bert_tf1.expected_shape(name, cfg)


def read_params(prefix: str, config: ElectraConfig, config_path: str):
    """Reads a TF1 ELECTRA checkpoint: ({'bert/...' path: array in bert_jax layout}, skipped variable names).

    Raises ValueError naming the file and variable for a variable that is no ELECTRA parameter (the generator's
    own untied embeddings among them) or a tensor of another shape than the config implies.
    """
    bundle = tf_checkpoint.Bundle(prefix)
    names = name_map(config.num_layers, config.generator.num_layers)

    def to_ours(name, kind, w):
        return bert_tf1.to_jax(
            kind, w, config.generator if name.startswith("generator/") else config
        )

    implied = config_path if os.path.isfile(config_path) else "the checkpoint's sizes"
    return bert_tf1.read_mapped(
        bundle, names, lambda name: expected_shape(name, config), to_ours, FAMILY, implied
    )


def write_params(prefix: str, flat: dict[str, np.ndarray], config: ElectraConfig) -> None:
    """Writes flat 'bert/...' parameters (bert_jax layout) as a TF1 checkpoint with the original names."""
    by_path = {
        ours: (tf, kind)
        for tf, (ours, kind) in name_map(config.num_layers, config.generator.num_layers).items()
    }
    missing = sorted(set(flat) - set(by_path))
    if missing:
        raise ValueError(
            f"{missing[0]!r} has no name in Google's TF1 ELECTRA (its pretraining checkpoint holds the "
            "encoders, generator_predictions and discriminator_predictions)"
        )
    tensors = {
        by_path[p][0]: bert_tf1.to_tf1(by_path[p][1], np.asarray(v)) for p, v in flat.items()
    }
    tf_checkpoint.write_bundle(prefix, tensors)
