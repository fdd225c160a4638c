"""BERT (Devlin et al. 2018): its config, embeddings, encoder and FLOP count; the family's entry in the registry.

Token + segment + learned absolute position embeddings, summed and LayerNorm-ed; a stack of post-LN
Transformer encoder layers (`layers.EncoderLayer`); a tanh pooler on [CLS]. The heads (MLM + NSP, classification,
span, token) are `bert_jax.models.heads`, built around `BertModel` under the name "bert".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.configs.sizes import BERT as PRESETS  # noqa: F401 -- the sizes, as bert.PRESETS
from bert_jax.models import heads

# Re-exported: the names tests and tools used when everything lived in one model module.
from bert_jax.models.attention import (  # noqa: F401
    ATTENTION_IMPLS,
    check_attention_impl,
    dot_product_attention,
    dropout,
    packed_mask,
)
from bert_jax.models.heads import HEADS, dummy_inputs, init_params  # noqa: F401
from bert_jax.models.layers import (  # noqa: F401
    ACTIVATIONS,
    REMAT_POLICIES,
    Dropout,
    dense,
    layer_class,
    layer_norm,
    normal,
    run_layers,
    select_rows,
    stack_layers,
    unstack_layers,
)
from bert_jax.models.lookup import sorted_lookup

Array = jax.Array

_select_rows = select_rows  # the old private name, still used by tests
# How the word-embedding gradient is summed (bert_jax/models/lookup.py): "scatter" (autodiff of the gather) or
# "sorted" (a segmented sum; no colliding atomic adds on a GPU).
EMBEDDING_GRADIENTS = ("scatter", "sorted")


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


class Embeddings(nn.Module):
    """Word + token type + learned absolute position embeddings, summed, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = functools.partial(nn.Embed, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        self.word_embeddings = embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=normal(cfg, ("vocab", "embed"))
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=normal(cfg, ("position", "embed")),
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size,
            cfg.hidden_size,
            embedding_init=normal(cfg, ("token_type", "embed")),
        )
        self.layer_norm = layer_norm(cfg, "layer_norm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
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
        x = x + select_rows(types, token_type_ids)
        positions = self.position_embeddings.embedding.astype(self.config.compute_dtype)
        if position_ids is None:
            x = x + positions[None, :length]
        else:
            # Packed rows (positions restart at 0 for each sequence) or a family's own numbering (RoBERTa's
            # starts past the padding id): a gather, which the slice cannot say.
            x = x + jnp.take(positions, position_ids, axis=0)
        x = self.layer_norm(x)
        return self.dropout(x, deterministic)

    def attend(self, x: Array) -> Array:
        """Logits against the word embeddings (the tied MLM decoder)."""
        return self.word_embeddings.attend(x)


class BertModel(nn.Module):
    """The bare encoder: embeddings, `num_layers` encoder layers and (optionally) the tanh pooler."""

    config: BertConfig
    add_pooling_layer: bool = True
    # A family's own embeddings (RoBERTa numbers positions past the padding id).
    embeddings_class: ClassVar[type] = Embeddings

    def setup(self):
        cfg = self.config
        self.embeddings = self.embeddings_class(cfg)
        layer_cls = layer_class(cfg)
        if cfg.scan_layers:
            # One module whose parameters carry a leading [num_layers] axis (logical name "layers").
            self.layers = layer_cls(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
        if self.add_pooling_layer:
            self.pooler = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")

    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        segment_ids=None,
        position_ids=None,
        cls_positions=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> dict[str, Any]:
        """Packed rows (`bert_jax.data.packing`) give `segment_ids` [batch, length] (1..K per sequence, 0
        padding), `position_ids` (restarting at 0 per sequence) and `cls_positions` [batch, K] (each
        sequence's [CLS] column; the pooler output is then [batch, K, hidden]). Without them: one sequence
        per row, as before."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if segment_ids is None:
            # [batch, 1 (heads), 1 (queries), keys]: padding keys are never attended to.
            mask = (attention_mask > 0)[:, None, None, :]
        else:
            # [batch, 1, queries, keys]: a token attends only to its own sequence (block-diagonal).
            mask = packed_mask(segment_ids)

        x = self.embeddings(input_ids, token_type_ids, deterministic, position_ids)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x, hidden_states, attentions = run_layers(
            self.layers,
            self.config,
            x,
            mask,
            deterministic,
            output_attentions,
            output_hidden_states,
        )
        outputs: dict[str, Any] = {"last_hidden_state": x}
        if self.add_pooling_layer:
            if cls_positions is None:
                first = x[:, 0]
            else:
                first = jnp.take_along_axis(x, cls_positions[..., None], axis=1)
            outputs["pooler_output"] = jnp.tanh(self.pooler(first))
        if output_hidden_states:
            outputs["hidden_states"] = tuple(hidden_states)
        if output_attentions:
            outputs["attentions"] = tuple(attentions)
        return outputs


def build_model(config: BertConfig, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS) on the BERT encoder."""
    return heads.build(config, BertModel, head, num_labels)


# BERT with the MLM and NSP heads (the name transformers uses), as `build_model(config, "pretraining")`.
BertForPreTraining = functools.partial(heads.PreTrainingHeads, encoder=BertModel)


def flops_per_sequence(config: BertConfig, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence (forward + backward = 3 x forward, 2 FLOPs per multiply-add).

    Counts the matmuls of the paper's model: Q/K/V/output projections, attention scores and values, the
    feed-forward block, the pooler and NSP head, and the MLM head at the `predictions` masked positions only.
    """
    h, i = config.hidden_size, config.intermediate_size
    per_layer = length * (4 * h * h + 2 * h * i) + 2 * length * length * h
    head = predictions * (h * h + h * config.vocab_size) + h * h + 2 * h
    return 6.0 * (config.num_layers * per_layer + head)
