"""The Hugging Face transformers layout <-> bert_jax parameters.

A transformers-layout directory holds `config.json`, the weights (`model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin`) and the tokenizer (`tokenizer.json` or `vocab.txt`).
PyTorch `Linear` weights are stored [out, in]; Flax kernels are [in, out], and bert_jax keeps attention
projections per head ([hidden, heads, head_dim]), so conversion transposes and reshapes.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping

import flax.linen as nn
import numpy as np
from etils import epath
from flax import traverse_util

from bert_jax.models.bert import BertConfig

# transformers' BertConfig field -> bert_jax BertConfig field.
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


def name_map(num_layers: int) -> dict[str, tuple[str, str]]:
    """transformers name (no "bert." prefix) -> (bert_jax 'bert/...' path, layout) for every parameter."""
    names = {hf: (ours, kind) for hf, ours, kind in _OTHER_NAMES}
    for i in range(num_layers):
        for hf, ours, kind in _LAYER_NAMES:
            names[f"encoder.layer.{i}.{hf}"] = (f"bert/layer_{i}/{ours}", kind)
    return names


def _to_jax(kind: str, w: np.ndarray, config: BertConfig) -> np.ndarray:
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
    state: Mapping[str, np.ndarray], config: BertConfig, source: str = "checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renames and re-lays-out transformers tensors; returns ({'bert/...': array}, ignored names).

    Raises ValueError naming the tensor for a name that is not a parameter of this BERT config.
    """
    return rename_from_hf(
        state, config, source, prefix="bert.", names=name_map(config.num_layers), ignored=_IGNORED,
        family="BERT",
    )  # fmt: skip


def rename_from_hf(state, config, source: str, *, prefix: str, names, ignored, family: str):
    """A family's transformers tensors -> ({'bert/...': array}, ignored names): `prefix` is the encoder's
    ("bert.", "roberta."), `names` the family's name map, `ignored` the tensors that are not parameters."""
    flat, skipped = {}, []
    for name, value in state.items():
        short = name.removeprefix(prefix)
        # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
        short = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", short)
        short = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", short)
        if ignored.match(short):
            skipped.append(name)
            continue
        if short not in names:
            layer = re.match(r"encoder\.layer\.(\d+)\.", short)
            why = (
                f"layer {layer.group(1)} but config.json has {config.num_layers} layers"
                if layer
                else f"not a {family} parameter"
            )
            raise ValueError(f"{source}: unknown parameter {name!r} ({why})")
        path, kind = names[short]
        flat[path] = _to_jax(kind, np.asarray(value), config)
    return flat, skipped


def flat_params_to_hf(params, config: BertConfig, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested dict) -> a transformers state dict for the matching Bert* class."""
    return rename_to_hf(
        params, head, prefix="bert.", names=name_map(config.num_layers),
        head_prefixes=("cls.", "classifier.", "qa_outputs."),
    )  # fmt: skip


def rename_to_hf(params, head: str, *, prefix: str, names, head_prefixes) -> dict[str, np.ndarray]:
    """bert_jax parameters -> a family's transformers state dict: encoder names under `prefix` (none for the
    bare encoder), the heads' (`head_prefixes`) at the top."""
    flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
    if (
        head == "none"
    ):  # the bare encoder's tree has no "bert/" level; transformers' bare model no prefix
        flat = {f"bert/{k}": v for k, v in flat.items()}
    prefix = "" if head == "none" else prefix
    by_path = {ours: (hf, kind) for hf, (ours, kind) in names.items()}
    out = {}
    for path, value in flat.items():
        hf, kind = by_path[path]
        name = hf if hf.startswith(head_prefixes) else prefix + hf
        out[name] = np.asarray(_to_torch_layout(kind, np.asarray(value, np.float32)))
    return out


def check_encoder(hf_config: Mapping, path: str, model_type: str) -> None:
    """One-line errors for a transformers config.json of another model type, or of an encoder bert_jax does not
    build (relative position embeddings, a decoder); shared by the families' `config_from_hf`."""
    if hf_config.get("model_type") != model_type:
        raise ValueError(
            f"{path}: model_type is {hf_config.get('model_type')!r}, not {model_type!r}"
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{path}: position_embedding_type {position_type!r} is not supported")
    if hf_config.get("is_decoder"):
        raise ValueError(f"{path}: is_decoder is true; only the bidirectional encoder loads")


def config_from_hf(hf_config: Mapping, path: str = "config.json", **overrides) -> BertConfig:
    """A BertConfig from a transformers config.json dict; one-line errors for non-BERT configs."""
    model_type = hf_config.get("model_type")
    if model_type != "bert":
        raise ValueError(
            f"{path}: model_type is {model_type!r}, not 'bert'; only BERT checkpoints load"
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{path}: position_embedding_type {position_type!r} is not supported")
    missing = [k for k in CONFIG_FIELDS if k not in hf_config and k != "hidden_act"]
    if missing:
        raise ValueError(f"{path}: missing BERT config fields {missing}")
    values = {
        ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config
    }
    values.update(overrides)
    return BertConfig(**values)


def read_state_dict(directory: epath.Path) -> dict[str, np.ndarray]:
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
