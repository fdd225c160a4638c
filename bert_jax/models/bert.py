"""BERT (Devlin et al. 2018) as pure-function Flax Linen modules.

Token + segment + learned absolute position embeddings, summed and LayerNorm-ed; a stack of post-LN
Transformer encoder layers; a tanh pooler on [CLS]; and the heads for pretraining (MLM tied to the word
embeddings + NSP), sequence classification/regression, span prediction and token classification.

Every parameter carries logical axis names (see `bert_jax.sharding.LOGICAL_AXIS_RULES`), so the trainer can
create it already sharded. `dtype` is the compute dtype and `param_dtype` the storage dtype; softmax,
LayerNorm statistics and the logits fed to losses are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.models.attention import (  # noqa: F401
    ATTENTION_IMPLS,
    check_attention_impl,
    dot_product_attention,
    dropout,
)

# Re-exported: attention and its dropout used to live here, and callers still name them `model.*`.
from bert_jax.models.lookup import sorted_lookup

Array = jax.Array

ACTIVATIONS = {
    "gelu": functools.partial(
        jax.nn.gelu, approximate=False
    ),  # exact erf GELU, as the paper's code
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
REMAT_POLICIES = ("none", "full", "dots")
# How the word-embedding gradient is summed (bert_jax/lookup.py): "scatter" (autodiff of the gather) or
# "sorted" (a segmented sum; no colliding atomic adds on a GPU).
EMBEDDING_GRADIENTS = ("scatter", "sorted")
HEADS = ("none", "pretraining", "classification", "span", "token")
# The sizes of the released BERT models (Devlin et al. 2018; Turc et al. 2019 for the compact ones).
PRESETS = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and numerics of a BERT model; field names follow BERT's own (and Hugging Face's)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"
    param_dtype: str = "float32"  # storage dtype of the parameters
    attention_impl: str = "auto"  # one of ATTENTION_IMPLS
    remat_policy: str = "none"  # one of REMAT_POLICIES: recompute layer activations in backward
    # One nn.scan over layer weights stacked on a leading axis: XLA compiles one layer, not num_layers.
    scan_layers: bool = False
    embedding_gradient: str = "scatter"  # one of EMBEDDING_GRADIENTS

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        check_attention_impl(
            self.attention_impl,
            dtype=self.dtype,
            head_dim=self.hidden_size // self.num_heads,
            dropout_rate=self.attention_dropout_prob,
        )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")
        if self.embedding_gradient not in EMBEDDING_GRADIENTS:
            raise ValueError(
                f"embedding_gradient {self.embedding_gradient!r} not in {EMBEDDING_GRADIENTS}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"{name} must be float32, bfloat16 or float16, not {getattr(self, name)!r}"
                )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BertConfig:
        """Builds a config from a mapping (e.g. an ml_collections ConfigDict), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self):
        return jnp.dtype(self.param_dtype)


class _FlatInit(nn.LogicallyPartitioned):
    """A box for the flattened value `nn.DenseGeneral` initialises before reshaping it to the named shape.

    DenseGeneral calls its initializer with the 2-D (or 1-D) flattened shape and then reshapes the boxed
    value (`replace_boxed`). A plain `nn.LogicallyPartitioned` would apply its 3 axis names to the flat
    value as a sharding constraint under a mesh context and fail; this box skips the constraint while the
    rank does not match and becomes a plain box once the value has its real shape.
    """

    def unbox(self, apply_constraint=True):
        return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))

    def replace_boxed(self, val):
        return nn.LogicallyPartitioned(val, self.names, self.mesh, self.rules)


def _partitioned(init, axes: tuple[str | None, ...]):
    """`init` whose value is boxed with the logical `axes` (also when DenseGeneral flattens the shape)."""

    def boxed(rng, shape, dtype=jnp.float32):
        box = _FlatInit if len(shape) != len(axes) else nn.LogicallyPartitioned
        return box(init(rng, shape, dtype), tuple(axes))

    return boxed


def _init(config: BertConfig, axes: tuple[str | None, ...]):
    """Truncated-normal kernel init with std `initializer_range`, annotated with logical axes."""
    return _partitioned(nn.initializers.truncated_normal(stddev=config.initializer_range), axes)


def _zeros(axes):
    return _partitioned(nn.initializers.zeros_init(), axes)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Flax computes the mean/variance in float32 even for bfloat16 inputs.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=_zeros(("embed",)),
        name=name,
    )


def _dense(config: BertConfig, features, axes, name: str, **kwargs) -> nn.Module:
    return nn.DenseGeneral(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        kernel_init=_init(config, axes),
        bias_init=_zeros(axes[-1:] if isinstance(features, int) else axes[-len(features) :]),
        name=name,
        **kwargs,
    )


class Dropout(nn.Module):
    """`dropout` as a module: active only when not `deterministic`, drawing from the "dropout" rng."""

    rate: float

    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


def _select_rows(table: Array, ids: Array) -> Array:
    """`table[ids]` for a table of a few rows, as a chain of selects (exact, and no scatter in its gradient).

    Ids past the last row take the last row (the data never has them; a gather would give NaN).
    """
    out = jnp.broadcast_to(table[0], (*ids.shape, table.shape[-1]))
    for row in range(1, table.shape[0]):
        out = jnp.where((ids >= row)[..., None], table[row], out)
    return out


class Embeddings(nn.Module):
    """Word + token type + learned absolute position embeddings, summed, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = functools.partial(nn.Embed, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        self.word_embeddings = embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=_init(cfg, ("vocab", "embed"))
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=_init(cfg, ("position", "embed")),
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, cfg.hidden_size, embedding_init=_init(cfg, ("token_type", "embed"))
        )
        self.layer_norm = _layer_norm(cfg, "layer_norm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        cfg = self.config
        if cfg.embedding_gradient == "sorted":
            x = sorted_lookup(self.word_embeddings.embedding, input_ids, cfg.compute_dtype)
        else:
            x = self.word_embeddings(input_ids)
        # The position and segment tables are read without a gather: a gather's gradient is a scatter-add,
        # and on a GPU the segment table's (32,768 rows of a 256 x 128 batch added into 2) serialises on
        # colliding atomics. A slice's gradient is a pad, a select's an elementwise select and a sum.
        types = self.token_type_embeddings.embedding.astype(self.config.compute_dtype)
        x = x + _select_rows(types, token_type_ids)
        positions = self.position_embeddings.embedding.astype(self.config.compute_dtype)
        x = x + positions[None, :length]
        x = self.layer_norm(x)
        return self.dropout(x, deterministic)

    def attend(self, x: Array) -> Array:
        """Logits against the word embeddings (the tied MLM decoder)."""
        return self.word_embeddings.attend(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with the padding mask; query/key/value/output projections."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_attentions: bool):
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        q = _dense(cfg, heads, ("embed", "heads", "kv"), "query")(x)
        k = _dense(cfg, heads, ("embed", "heads", "kv"), "key")(x)
        v = _dense(cfg, heads, ("embed", "heads", "kv"), "value")(x)
        rate = cfg.attention_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out, weights = dot_product_attention(
            q,
            k,
            v,
            mask,
            impl=cfg.attention_impl,
            dropout_rate=rate,
            dropout_rng=rng,
            return_weights=output_attentions,
        )
        out = _dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "output", axis=(-2, -1))(out)
        return out, weights


class EncoderLayer(nn.Module):
    """One post-LN Transformer layer: attention, residual, LN; feed-forward, residual, LN."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_attentions: bool = False):
        cfg = self.config
        attn, weights = SelfAttention(cfg, name="attention")(
            x, mask, deterministic, output_attentions
        )
        attn = Dropout(cfg.hidden_dropout_prob)(attn, deterministic)
        x = _layer_norm(cfg, "attention_layer_norm")(x + attn)
        h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x)
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h)
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic)
        x = _layer_norm(cfg, "output_layer_norm")(x + h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, weights


def _scan_body(layer, x, mask, deterministic, output_attentions, output_hidden_states):
    x, weights = layer(x, mask, deterministic, output_attentions)
    # Emit each layer's output only when asked: a stacked [layers, batch, length, hidden] costs memory.
    return x, (x if output_hidden_states else None, weights)


def _scan_layers(
    layer, x, mask, deterministic: bool, output_attentions: bool, output_hidden_states: bool
):
    """Runs `layer` (whose parameters are stacked over a leading layer axis) once per layer in a scan.

    Returns (last hidden state, (every layer's output [layers, ...] or None, attention weights
    [layers, ...] or None)). Each layer gets its own dropout key, as the unrolled loop's distinct module
    names give it.
    """
    scan = nn.scan(
        _scan_body,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 4,
        length=layer.config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scan(layer, x, mask, deterministic, output_attentions, output_hidden_states)


def stack_layers(params: dict, num_layers: int) -> dict:
    """Per-layer parameters (`layer_0` ... `layer_{L-1}`, as saved and converted) -> the scanned model's
    `layers` subtree with a leading [num_layers] axis. Works on the encoder or any tree that holds it."""
    params = dict(params)
    if "layer_0" in params:
        layers = [params.pop(f"layer_{i}") for i in range(num_layers)]
        params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return {k: stack_layers(v, num_layers) if isinstance(v, dict) and k != "layers" else v
            for k, v in params.items()}  # fmt: skip


def unstack_layers(params: dict) -> dict:
    """The inverse of `stack_layers`: `layers` [num_layers, ...] -> `layer_0` ... `layer_{L-1}`."""
    params = dict(params)
    if "layers" in params:
        layers = params.pop("layers")
        num_layers = jax.tree.leaves(layers)[0].shape[0]
        for i in range(num_layers):
            params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
    return {k: unstack_layers(v) if isinstance(v, dict) and not k.startswith("layer_") else v
            for k, v in params.items()}  # fmt: skip


class BertModel(nn.Module):
    """The bare encoder: embeddings, `num_layers` encoder layers and (optionally) the tanh pooler."""

    config: BertConfig
    add_pooling_layer: bool = True

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        layer_cls = EncoderLayer
        if cfg.remat_policy != "none":
            policy = {
                "full": None,
                "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
            }
            # Argument numbers count `self`: (self, x, mask, deterministic, output_attentions).
            layer_cls = nn.remat(
                EncoderLayer, policy=policy[cfg.remat_policy], static_argnums=(3, 4)
            )
        if cfg.scan_layers:
            # One module whose parameters carry a leading [num_layers] axis (logical name "layers").
            self.layers = layer_cls(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
        if self.add_pooling_layer:
            self.pooler = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")

    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> dict[str, Any]:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        # [batch, 1 (heads), 1 (queries), keys]: padding keys are never attended to.
        mask = (attention_mask > 0)[:, None, None, :]

        x = self.embeddings(input_ids, token_type_ids, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        hidden_states, attentions = [x], []
        if self.config.scan_layers:
            x, (states, weights) = _scan_layers(
                self.layers, x, mask, deterministic, output_attentions, output_hidden_states
            )
            layers = range(self.config.num_layers)
            hidden_states += [None if states is None else states[i] for i in layers]
            attentions = [None if weights is None else weights[i] for i in layers]
        else:
            for layer in self.layers:
                x, weights = layer(x, mask, deterministic, output_attentions)
                hidden_states.append(x)
                attentions.append(weights)
        outputs: dict[str, Any] = {"last_hidden_state": x}
        if self.add_pooling_layer:
            outputs["pooler_output"] = jnp.tanh(self.pooler(x[:, 0]))
        if output_hidden_states:
            outputs["hidden_states"] = tuple(hidden_states)
        if output_attentions:
            outputs["attentions"] = tuple(attentions)
        return outputs


class MaskedLMHead(nn.Module):
    """MLM head: dense + activation + LayerNorm, then the decoder tied to the word embeddings + a bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, embeddings: Embeddings):
        cfg = self.config
        x = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "transform")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        x = _layer_norm(cfg, "transform_layer_norm")(x)
        bias = self.param("bias", _zeros(("vocab",)), (cfg.vocab_size,), cfg.storage_dtype)
        logits = embeddings.attend(x.astype(cfg.compute_dtype))
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)


def _encode(
    config, pooler: bool, input_ids, token_type_ids, attention_mask, deterministic, outputs
):
    """The heads' shared encoder call; run inside a head's compact method, it names the submodule "bert".

    `outputs`: (output_hidden_states, output_attentions)."""
    bert = BertModel(config, add_pooling_layer=pooler, name="bert")
    hidden, attentions = outputs
    return bert(
        input_ids,
        token_type_ids,
        attention_mask,
        deterministic=deterministic,
        output_hidden_states=hidden,
        output_attentions=attentions,
    )


class BertForPreTraining(nn.Module):
    """BERT with the MLM and next-sentence-prediction heads.

    With `masked_lm_positions` [batch, predictions], MLM logits are computed only at those positions (so the
    head costs what the paper's FLOP count says); otherwise at every position.
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        masked_lm_positions=None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        bert = BertModel(self.config, name="bert")
        outputs = bert(
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        sequence = outputs["last_hidden_state"]
        if masked_lm_positions is not None:
            sequence = jnp.take_along_axis(sequence, masked_lm_positions[..., None], axis=1)
        # The decoder is tied to the word embeddings: the head calls back into bert's embedding module.
        outputs["prediction_logits"] = MaskedLMHead(self.config, name="mlm")(
            sequence, bert.embeddings
        )
        nsp = _dense(self.config, 2, ("embed", "classes"), "nsp")
        outputs["seq_relationship_logits"] = nsp(outputs["pooler_output"]).astype(jnp.float32)
        return outputs


class BertForSequenceClassification(nn.Module):
    """Pooled [CLS] -> dropout -> linear; `num_labels == 1` is regression (e.g. STS-B)."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        deterministic=True,
        output_hidden_states=False,
        output_attentions=False,
    ):
        outputs = _encode(
            self.config,
            True,
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic,
            (output_hidden_states, output_attentions),
        )
        x = Dropout(self.config.hidden_dropout_prob)(outputs["pooler_output"], deterministic)
        logits = _dense(self.config, self.num_labels, ("embed", "classes"), "classifier")(x)
        outputs["logits"] = logits.astype(jnp.float32)
        return outputs


class BertForQuestionAnswering(nn.Module):
    """Span prediction (SQuAD): a linear layer gives start and end logits per token."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        deterministic=True,
        output_hidden_states=False,
        output_attentions=False,
    ):
        outputs = _encode(
            self.config,
            False,
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic,
            (output_hidden_states, output_attentions),
        )
        logits = _dense(self.config, 2, ("embed", "classes"), "qa_outputs")(
            outputs["last_hidden_state"]
        )
        logits = logits.astype(jnp.float32)
        outputs["start_logits"], outputs["end_logits"] = logits[..., 0], logits[..., 1]
        return outputs


class BertForTokenClassification(nn.Module):
    """Per-token labels (NER): dropout -> linear on every position."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        deterministic=True,
        output_hidden_states=False,
        output_attentions=False,
    ):
        outputs = _encode(
            self.config,
            False,
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic,
            (output_hidden_states, output_attentions),
        )
        x = Dropout(self.config.hidden_dropout_prob)(outputs["last_hidden_state"], deterministic)
        logits = _dense(self.config, self.num_labels, ("embed", "classes"), "classifier")(x)
        outputs["logits"] = logits.astype(jnp.float32)
        return outputs


def build_model(config: BertConfig, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS)."""
    if head == "none":
        return BertModel(config)
    if head == "pretraining":
        return BertForPreTraining(config)
    if head == "classification":
        return BertForSequenceClassification(config, num_labels=num_labels)
    if head == "span":
        return BertForQuestionAnswering(config)
    if head == "token":
        return BertForTokenClassification(config, num_labels=num_labels)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def dummy_inputs(batch: int = 1, length: int = 8) -> dict[str, Array]:
    """Shape-only inputs for `model.init` / `jax.eval_shape`."""
    ids = jnp.zeros((batch, length), jnp.int32)
    return {"input_ids": ids, "token_type_ids": ids, "attention_mask": jnp.ones_like(ids)}


def init_params(model: nn.Module, rng: Array, batch: int = 1, length: int = 8):
    """Initialises parameters (boxed with their logical axes; `nn.unbox` strips the boxes)."""
    return model.init(rng, **dummy_inputs(batch, length))["params"]
