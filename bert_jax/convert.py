"""Hugging Face transformers checkpoints <-> bert_jax parameters.

A transformers-layout directory holds `config.json`, the weights (`model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin`) and the tokenizer (`tokenizer.json` or `vocab.txt`).
PyTorch `Linear` weights are stored [out, in]; Flax kernels are [in, out], and bert_jax keeps attention
projections per head ([hidden, heads, head_dim]), so conversion transposes and reshapes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from bert_jax import model as model_lib

# transformers' BertConfig field -> bert_jax BertConfig field.
_HF_CONFIG_FIELDS = {
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
    "layer_norm_eps": "layer_norm_eps",
}

# One BERT layer: (transformers name under encoder.layer.{i}, bert_jax path under bert/layer_{i}, layout).
_LAYER_NAMES = [
    *[
        (f"attention.self.{p}.weight", f"attention/{p}/kernel", "qkv_kernel")
        for p in ("query", "key", "value")
    ],
    *[
        (f"attention.self.{p}.bias", f"attention/{p}/bias", "qkv_bias")
        for p in ("query", "key", "value")
    ],
    ("attention.output.dense.weight", "attention/output/kernel", "out_kernel"),
    ("attention.output.dense.bias", "attention/output/bias", "copy"),
    ("attention.output.LayerNorm.weight", "attention_layer_norm/scale", "copy"),
    ("attention.output.LayerNorm.bias", "attention_layer_norm/bias", "copy"),
    ("intermediate.dense.weight", "intermediate/kernel", "linear"),
    ("intermediate.dense.bias", "intermediate/bias", "copy"),
    ("output.dense.weight", "output/kernel", "linear"),
    ("output.dense.bias", "output/bias", "copy"),
    ("output.LayerNorm.weight", "output_layer_norm/scale", "copy"),
    ("output.LayerNorm.bias", "output_layer_norm/bias", "copy"),
]
# Everything outside the layers: (transformers name without the "bert." prefix, bert_jax path, layout).
_OTHER_NAMES = [
    ("embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings/embedding", "copy"),
    (
        "embeddings.position_embeddings.weight",
        "bert/embeddings/position_embeddings/embedding",
        "copy",
    ),
    (
        "embeddings.token_type_embeddings.weight",
        "bert/embeddings/token_type_embeddings/embedding",
        "copy",
    ),
    ("embeddings.LayerNorm.weight", "bert/embeddings/layer_norm/scale", "copy"),
    ("embeddings.LayerNorm.bias", "bert/embeddings/layer_norm/bias", "copy"),
    ("pooler.dense.weight", "bert/pooler/kernel", "linear"),
    ("pooler.dense.bias", "bert/pooler/bias", "copy"),
    ("cls.predictions.transform.dense.weight", "mlm/transform/kernel", "linear"),
    ("cls.predictions.transform.dense.bias", "mlm/transform/bias", "copy"),
    ("cls.predictions.transform.LayerNorm.weight", "mlm/transform_layer_norm/scale", "copy"),
    ("cls.predictions.transform.LayerNorm.bias", "mlm/transform_layer_norm/bias", "copy"),
    ("cls.predictions.bias", "mlm/bias", "copy"),
    ("cls.seq_relationship.weight", "nsp/kernel", "linear"),
    ("cls.seq_relationship.bias", "nsp/bias", "copy"),
    ("classifier.weight", "classifier/kernel", "linear"),
    ("classifier.bias", "classifier/bias", "copy"),
    ("qa_outputs.weight", "qa_outputs/kernel", "linear"),
    ("qa_outputs.bias", "qa_outputs/bias", "copy"),
]
# Present in transformers checkpoints but not parameters of their own: buffers, and the MLM decoder,
# which is tied to the word embeddings (its bias is `cls.predictions.bias`).
_IGNORED = re.compile(r"(embeddings\.position_ids|cls\.predictions\.decoder\.(weight|bias))$")
# Parameters a checkpoint may carry that a given head does not use.
_OPTIONAL_ROOTS = ("mlm/", "nsp/", "classifier/", "qa_outputs/", "bert/pooler/")


def name_map(num_layers: int) -> dict[str, tuple[str, str]]:
    """transformers name (no "bert." prefix) -> (bert_jax 'bert/...' path, layout) for every parameter."""
    names = {hf: (ours, kind) for hf, ours, kind in _OTHER_NAMES}
    for i in range(num_layers):
        for hf, ours, kind in _LAYER_NAMES:
            names[f"encoder.layer.{i}.{hf}"] = (f"bert/layer_{i}/{ours}", kind)
    return names


def _to_jax(kind: str, w: np.ndarray, config: model_lib.BertConfig) -> np.ndarray:
    heads, head_dim = config.num_heads, config.head_dim
    if kind == "copy":
        return w
    if kind == "linear":
        return w.T
    if kind == "qkv_kernel":
        return w.T.reshape(w.shape[1], heads, head_dim)
    if kind == "qkv_bias":
        return w.reshape(heads, head_dim)
    if kind == "out_kernel":
        return w.T.reshape(heads, head_dim, w.shape[0])
    raise ValueError(kind)


def _to_torch_layout(kind: str, w: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return w
    if kind == "linear":
        return w.T
    if kind == "qkv_kernel":  # [hidden, heads, head_dim] -> [out, in]
        return w.reshape(w.shape[0], -1).T
    if kind == "qkv_bias":
        return w.reshape(-1)
    if kind == "out_kernel":  # [heads, head_dim, hidden] -> [out, in]
        return w.reshape(-1, w.shape[-1]).T
    raise ValueError(kind)


def hf_to_flat_params(
    state: Mapping[str, np.ndarray], config: model_lib.BertConfig, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames and re-lays-out transformers tensors; returns ({'bert/...': array}, ignored names).

    Raises ValueError naming the tensor for a name that is not a parameter of this BERT config.
    """
    names = name_map(config.num_layers)
    flat, ignored = {}, []
    for name, value in state.items():
        short = name.removeprefix("bert.")
        # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
        short = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", short)
        short = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", short)
        if _IGNORED.match(short):
            ignored.append(name)
            continue
        if short not in names:
            layer = re.match(r"encoder\.layer\.(\d+)\.", short)
            why = (
                f"layer {layer.group(1)} but config.json has {config.num_layers} layers"
                if layer
                else "not a BERT parameter"
            )
            raise ValueError(f"{source}: unknown parameter {name!r} ({why})")
        path, kind = names[short]
        flat[path] = _to_jax(kind, np.asarray(value), config)
    return flat, ignored


def flat_params_to_hf(params, config: model_lib.BertConfig, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested dict) -> a transformers state dict for the matching Bert* class."""
    # A scan_layers model's stacked `layers` are written as the per-layer tensors transformers knows.
    flat = traverse_util.flatten_dict(model_lib.unstack_layers(nn.unbox(params)), sep="/")
    if (
        head == "none"
    ):  # the bare encoder's tree has no "bert/" level; transformers' BertModel no prefix
        flat = {f"bert/{k}": v for k, v in flat.items()}
    prefix = "" if head == "none" else "bert."
    by_path = {ours: (hf, kind) for hf, (ours, kind) in name_map(config.num_layers).items()}
    out = {}
    for path, value in flat.items():
        hf, kind = by_path[path]
        name = hf if hf.startswith(("cls.", "classifier.", "qa_outputs.")) else prefix + hf
        out[name] = np.asarray(_to_torch_layout(kind, np.asarray(value, np.float32)))
    return out


def config_from_hf(
    hf_config: Mapping, path: str = "config.json", **overrides
) -> model_lib.BertConfig:
    """A BertConfig from a transformers config.json dict; one-line errors for non-BERT configs."""
    model_type = hf_config.get("model_type")
    if model_type != "bert":
        raise ValueError(
            f"{path}: model_type is {model_type!r}, not 'bert'; only BERT checkpoints load"
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{path}: position_embedding_type {position_type!r} is not supported")
    missing = [k for k in _HF_CONFIG_FIELDS if k not in hf_config and k != "hidden_act"]
    if missing:
        raise ValueError(f"{path}: missing BERT config fields {missing}")
    values = {
        ours: hf_config[theirs] for theirs, ours in _HF_CONFIG_FIELDS.items() if theirs in hf_config
    }
    values.update(overrides)
    return model_lib.BertConfig(**values)


def _read_state_dict(directory: epath.Path) -> dict[str, np.ndarray]:
    safetensors_file = directory / "model.safetensors"
    index_file = directory / "model.safetensors.index.json"
    bin_file = directory / "pytorch_model.bin"
    if safetensors_file.exists() or index_file.exists():
        from safetensors.numpy import load as load_safetensors

        files = [safetensors_file]
        if not safetensors_file.exists():
            files = sorted(
                {directory / f for f in json.loads(index_file.read_text())["weight_map"].values()}
            )
        state = {}
        for f in files:
            state.update(load_safetensors(f.read_bytes()))
        return state
    if bin_file.exists():
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{bin_file}: reading pytorch_model.bin needs torch (pip install torch)"
            ) from e
        loaded = torch.load(
            io.BytesIO(bin_file.read_bytes()), map_location="cpu", weights_only=True
        )
        return {k: v.float().numpy() for k, v in loaded.items()}
    raise FileNotFoundError(
        f"{directory}: no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def load_pretrained(
    path,
    head: str = "none",
    num_labels: int | None = None,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    attention_impl: str = "auto",
    seed: int = 0,
    scan_layers: bool = False,
):
    """Loads a transformers-layout BERT directory: returns (model, params, tokenizer).

    With `scan_layers` the model scans over its layers and the per-layer tensors are stacked for it.

    head: "none" (bare encoder), "pretraining", "classification" (num_labels; 1 = regression), "span" or
    "token" (num_labels). Parameters of the head that the checkpoint lacks are initialised (with `seed`) and
    listed in a log line; tensors the chosen head does not use (e.g. `cls.*` when fine-tuning) are logged.
    """
    from bert_jax.data.tokenizer import load_tokenizer

    directory = epath.Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: not a directory (expected a transformers-layout checkpoint)"
        )
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{config_file}: missing (a transformers-layout checkpoint needs config.json)"
        )
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from e
    config = config_from_hf(
        hf_config,
        str(config_file),
        dtype=dtype,
        param_dtype=param_dtype,
        attention_impl=attention_impl,
    )
    config = dataclasses.replace(config, scan_layers=scan_layers)
    if num_labels is None:
        num_labels = len(hf_config.get("id2label") or {}) or hf_config.get("num_labels", 2)
    model = model_lib.build_model(config, head, num_labels)

    tokenizer = load_tokenizer(str(directory))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but config.json vocab_size is "
            f"{config.vocab_size}"
        )

    loaded, ignored = hf_to_flat_params(_read_state_dict(directory), config, str(directory))
    params = load_flat_params(model, config, loaded, str(directory), seed=seed, head=head)
    if ignored:
        logging.info("%s: ignored non-parameter tensors %s", directory, ignored)
    return model, params, tokenizer


def load_flat_params(
    model, config, loaded: dict[str, np.ndarray], source: str, *, seed: int, head: str
):
    """Fills `model`'s parameter tree from flat 'bert/...' arrays: checks shapes, initialises the rest."""
    dtype = config.storage_dtype
    fresh = jax.jit(lambda rng: nn.unbox(model_lib.init_params(model, rng)))(jax.random.key(seed))
    # Filled per layer, as stored; a scan_layers model gets them stacked at the end.
    fresh = model_lib.unstack_layers(fresh)
    expected = traverse_util.flatten_dict(fresh, sep="/")
    if head == "none":  # the bare encoder's tree has no "bert/" level
        loaded = {k[len("bert/") :]: v for k, v in loaded.items() if k.startswith("bert/")} | {
            k: v for k, v in loaded.items() if not k.startswith("bert/")
        }
    unused = sorted(k for k in loaded if k not in expected)
    # Only head parameters and the pooler may go unused (e.g. `cls.*` when fine-tuning); hf_to_flat_params
    # already rejected anything that is no BERT parameter at all.
    surprising = [k for k in unused if not k.startswith(_OPTIONAL_ROOTS)]
    if surprising:
        raise ValueError(f"{source}: parameter {surprising[0]!r} has no place in a {head!r} model")
    if unused:
        logging.info("%s: checkpoint tensors not used by head %r: %s", source, head, unused)
    out, initialised = {}, []
    for key, init_value in expected.items():
        if key in loaded:
            value = loaded[key]
            if value.shape != init_value.shape:
                raise ValueError(
                    f"{source}: parameter {key!r} has shape {value.shape} in the checkpoint but "
                    f"{init_value.shape} in the model"
                )
            out[key] = jax.numpy.asarray(value, dtype)
        else:
            out[key] = init_value.astype(dtype)
            initialised.append(key)
    if initialised:
        logging.info(
            "%s: initialised parameters missing from the checkpoint: %s", source, initialised
        )
    tree = traverse_util.unflatten_dict(out, sep="/")
    return model_lib.stack_layers(tree, config.num_layers) if config.scan_layers else tree


def save_pretrained(
    directory, params, config: model_lib.BertConfig, head: str = "none", num_labels: int = 2
):
    """Writes `params` as a transformers-layout directory (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architectures = {
        "none": "BertModel",
        "pretraining": "BertForPreTraining",
        "classification": "BertForSequenceClassification",
        "span": "BertForQuestionAnswering",
        "token": "BertForTokenClassification",
    }
    hf_config = {theirs: getattr(config, ours) for theirs, ours in _HF_CONFIG_FIELDS.items()}
    hf_config.update(model_type="bert", architectures=[architectures[head]], num_labels=num_labels)
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    state = flat_params_to_hf(params, config, head)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / "model.safetensors")
    )
