"""ALBERT (Lan et al. 2020) as its differences from BERT: the encoder layer, attention, pooler and task heads are
BERT's (`bert_jax.models.bert`, `layers`, `heads`).

What differs, as google-research/albert and transformers have it:
  * a factorized embedding: word, position and token-type tables of width `embedding_size` (E, 128 for the
    released models) instead of `hidden_size` (H), LayerNorm-ed at width E, then projected E -> H by
    `embedding_hidden_mapping_in` before the first layer;
  * ONE encoder layer whose weights every one of the `num_layers` passes reuses (cross-layer sharing; the
    released models have num_hidden_groups = inner_group_num = 1, the only setting this module builds);
  * the masked-LM head transforms H -> E (dense, activation, LayerNorm at width E) and decodes with the E-wide
    word embeddings (tied) plus a bias; the pretraining model's second head is sentence-order prediction (SOP:
    label 1 = the two segments swapped) on the pooled [CLS], after dropout `classifier_dropout_prob`;
  * GELU's tanh approximation ("gelu_new") and no dropout in the released v2 configs.

Parameter paths keep BERT's where the parameter is BERT's ("bert/embeddings/...", "bert/pooler", "mlm/...",
"classifier", "qa_outputs"): the shared layer is "bert/shared_layer" (BERT's layer names and logical axes, so it
shards as one BERT layer), the projection "bert/embeddings/embedding_hidden_mapping_in", and the SOP classifier
sits in BERT's sentence-pair head slot "nsp" (so checkpoint readers treat it as the optional pretraining head it
is). `albert_hf` maps them to transformers' `albert.*` names.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn

from bert_jax.configs.sizes import ALBERT as PRESETS  # noqa: F401 -- the sizes, as albert.PRESETS
from bert_jax.models import bert, heads
from bert_jax.models.layers import (
    Dropout,
    dense,
    layer_class,
    layer_norm,
    normal,
)

# The head names: BERT's ("pretraining" = MLM + SOP), plus transformers' masked LM alone and multiple choice.
HEADS = (*heads.HEADS, "masked_lm", "multiple_choice")


@dataclasses.dataclass(frozen=True)
class AlbertConfig(bert.BertConfig):
    """BERT's fields with transformers' ALBERT defaults (albert-base-v2's sizes), plus the embedding width, the
    SOP/classifier dropout and the layer-sharing layout (only the released one, one group of one layer)."""

    vocab_size: int = 30000
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    # E: the width of the word, position and token-type tables (factorized embedding, section 3.1).
    embedding_size: int = 128
    # The dropout before the SOP classifier (transformers' AlbertSOPHead).
    classifier_dropout_prob: float = 0.1
    # Groups of shared layers and layers per group: 1 and 1 in every released model.
    num_hidden_groups: int = 1
    inner_group_num: int = 1

    def __post_init__(self):
        super().__post_init__()
        if (self.num_hidden_groups, self.inner_group_num) != (1, 1):
            raise ValueError(
                f"num_hidden_groups {self.num_hidden_groups} and inner_group_num {self.inner_group_num}: "
                "only 1 and 1 (one layer shared by all, as every released ALBERT) are supported"
            )
        if self.scan_layers:
            raise ValueError(
                "scan_layers is true, but ALBERT's layers share one set of weights: there is nothing to stack"
            )


class AlbertEmbeddings(bert.Embeddings):
    """BERT's embeddings at width `embedding_size`, then the E -> H projection `embedding_hidden_mapping_in`."""

    def setup(self):
        cfg = self.config
        width = cfg.embedding_size
        embed = functools.partial(nn.Embed, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        # The E-wide tables carry BERT's logical axes ("embed" for the width), so they shard as BERT's.
        self.word_embeddings = embed(
            cfg.vocab_size, width, embedding_init=normal(cfg, ("vocab", "embed"))
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings, width, embedding_init=normal(cfg, ("position", "embed"))
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, width, embedding_init=normal(cfg, ("token_type", "embed"))
        )
        self.layer_norm = layer_norm(cfg, "layer_norm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.embedding_hidden_mapping_in = dense(
            cfg, cfg.hidden_size, ("embed", "embed_out"), "embedding_hidden_mapping_in"
        )

    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
        x = super().__call__(input_ids, token_type_ids, deterministic, position_ids)
        return self.embedding_hidden_mapping_in(x)


class AlbertModel(bert.BertModel):
    """BERT's encoder call (masks, packing, pooler) on `AlbertEmbeddings`, with one layer run `num_layers`
    times: its parameters exist once ("shared_layer"), each pass draws its own dropout keys."""

    embeddings_class = AlbertEmbeddings

    def setup(self):
        cfg = self.config
        self.embeddings = self.embeddings_class(cfg)
        self.shared_layer = layer_class(cfg)(cfg, name="shared_layer")
        if self.add_pooling_layer:
            self.pooler = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "pooler")

    @property
    def layers(self):
        """The layer stack `BertModel.__call__` runs: the one shared layer, `num_layers` times."""
        return [self.shared_layer] * self.config.num_layers


def build_model(config: AlbertConfig, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS) on the ALBERT encoder.

    "pretraining" is AlbertForPreTraining (MLM + SOP: `prediction_logits`, `sop_logits`), "masked_lm"
    AlbertForMaskedLM (`logits`, no pooler), both `heads.PreTrainingHeads`; the task heads are BERT's
    (`heads.TaskHead`: pooled [CLS] -> dropout -> "classifier"; every token -> "qa_outputs" or dropout ->
    "classifier"), which are transformers' Albert* heads; "multiple_choice" scores each choice as one row
    (inputs [batch * choices, length], `logits` [batch * choices, 1]), as AlbertForMultipleChoice flattens them.
    """
    if head in ("pretraining", "masked_lm"):
        # transformers' AlbertMLMHead: the transform is E wide, for the decoder tied to the E-wide embeddings.
        return heads.PreTrainingHeads(
            config,
            AlbertModel,
            pair_logits="sop_logits" if head == "pretraining" else None,
            pair_dropout=config.classifier_dropout_prob,
            mlm_width=config.embedding_size,
        )
    if head == "multiple_choice":
        return heads.TaskHead(config, AlbertModel, task="classification", num_labels=1)
    if head in heads.HEADS:
        return heads.build(config, AlbertModel, head, num_labels)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def flops_per_sequence(config: AlbertConfig, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence: sharing weights saves memory, not compute, so BERT's count with the
    factorized parts: the E -> H projection per token, and the MLM head's H -> E transform and E-wide decoder."""
    h, e, v = config.hidden_size, config.embedding_size, config.vocab_size
    bert_head = predictions * (h * h + h * v)
    albert_head = predictions * (h * e + e * v)
    projection = length * e * h
    return bert.flops_per_sequence(config, length, predictions) + 6.0 * (
        projection + albert_head - bert_head
    )
