"""RoBERTa (Liu et al. 2019) as its differences from BERT: the encoder layers, attention and tied MLM decoder are
BERT's (`bert_jax.models.bert`, `layers`, `heads`).

What differs, as fairseq and transformers have it:
  * one token type, and positions numbered past the padding id: token i's position is
    `pad_token_id + 1 + (number of non-pad tokens up to and including i)`, pads get `pad_token_id`
    (transformers' `create_position_ids_from_input_ids`), hence 514 position rows for 512 tokens;
  * LayerNorm epsilon 1e-5 (PyTorch's default, which fairseq keeps);
  * pretraining is masked LM alone (no NSP, no pooler): `RobertaForMaskedLM`, whose LM head applies the exact
    GELU whatever `hidden_act` says (transformers' `RobertaLMHead`);
  * sequence classification reads the <s> token through dense + tanh + out_proj (`RobertaClassificationHead`)
    instead of BERT's pooler + classifier; multiple choice keeps the pooler + a one-wide classifier.

Parameter paths keep BERT's names (the encoder is "bert/..."), so every layout reader and writer shares them;
`roberta_hf` maps them to transformers' `roberta.*` names.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.configs.sizes import ROBERTA as PRESETS  # noqa: F401 -- the sizes, as roberta.PRESETS
from bert_jax.models import bert, heads
from bert_jax.models.layers import Dropout, dense

# The head names: BERT's, with "pretraining" = masked LM alone, plus transformers' multiple choice.
HEADS = (*heads.HEADS, "multiple_choice")


@dataclasses.dataclass(frozen=True)
class RobertaConfig(bert.BertConfig):
    """BERT's fields with transformers' RoBERTa defaults, plus the padding id that numbers the positions."""

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    # The <pad> id of the byte-level BPE vocabulary (fairseq's dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3).
    pad_token_id: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(
                f"max_position_embeddings {self.max_position_embeddings} leaves no position past "
                f"pad_token_id {self.pad_token_id}"
            )

    @property
    def max_length(self) -> int:
        """The longest sequence: the rows up to and including the padding id are never a token's position."""
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """fairseq's `make_positions`: non-pad tokens count from `pad_token_id + 1`, pads sit at `pad_token_id`."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


class RobertaEmbeddings(bert.Embeddings):
    """BERT's embeddings, with positions numbered from the token ids (padding-aware)."""

    def __call__(self, input_ids, token_type_ids, deterministic: bool, positions=None):
        cfg = self.config
        if input_ids.shape[1] > cfg.max_length:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds {cfg.max_length} "
                f"(max_position_embeddings {cfg.max_position_embeddings} past pad_token_id {cfg.pad_token_id})"
            )
        # Packed rows give each sequence's positions from 0; RoBERTa numbers them past the padding id.
        if positions is None:
            ids = position_ids(input_ids, cfg.pad_token_id)
        else:
            ids = positions + cfg.pad_token_id + 1
        return super().__call__(input_ids, token_type_ids, deterministic, position_ids=ids)


class RobertaModel(bert.BertModel):
    """BERT's encoder (layers, optional tanh pooler) on `RobertaEmbeddings`."""

    embeddings_class = RobertaEmbeddings


# The pretraining model: the encoder without pooler and the MLM head tied to the word embeddings, `logits` (at
# `masked_lm_positions` when given); it takes the pretraining batch's arguments in BERT's order (`token_type_ids`
# are all zero). transformers' RobertaLMHead applies the exact GELU whatever `hidden_act` is.
RobertaForMaskedLM = functools.partial(
    heads.PreTrainingHeads, encoder=RobertaModel, pair_logits=None, mlm_activation="gelu"
)


class RobertaClassificationHead(nn.Module):
    """<s> token -> dropout -> dense -> tanh -> dropout -> out_proj (transformers' RobertaClassificationHead)."""

    config: RobertaConfig
    num_labels: int

    @nn.compact
    def __call__(self, sequence, deterministic: bool):
        cfg = self.config
        x = Dropout(cfg.hidden_dropout_prob)(sequence[:, 0], deterministic)
        x = jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x))
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        return dense(cfg, self.num_labels, ("embed", "classes"), "out_proj")(x)


class RobertaForSequenceClassification(nn.Module):
    """The encoder without pooler and `RobertaClassificationHead` (named "classifier") -> `logits`."""

    config: RobertaConfig
    num_labels: int = 2
    encoder_name: str = "bert"

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
        encoder = RobertaModel(self.config, add_pooling_layer=False, name=self.encoder_name)
        outputs = encoder(
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        head = RobertaClassificationHead(self.config, self.num_labels, name="classifier")
        outputs["logits"] = head(outputs["last_hidden_state"], deterministic).astype(jnp.float32)
        return outputs


def build_model(config: RobertaConfig, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS) on the RoBERTa encoder.

    "multiple_choice" scores each choice as one row (inputs [batch * choices, length], `logits`
    [batch * choices, 1]): the pooler, dropout and a one-wide "classifier", as transformers'
    RobertaForMultipleChoice (which flattens the choices the same way).
    """
    if head == "pretraining":
        return RobertaForMaskedLM(config)
    if head == "classification":
        return RobertaForSequenceClassification(config, num_labels=num_labels)
    if head == "multiple_choice":
        return heads.TaskHead(config, RobertaModel, task="classification", num_labels=1)
    if head in heads.HEADS:
        return heads.build(config, RobertaModel, head, num_labels)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def flops_per_sequence(config: RobertaConfig, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence: BERT's count without the pooler and NSP head (MLM alone)."""
    h = config.hidden_size
    return bert.flops_per_sequence(config, length, predictions) - 6.0 * (h * h + 2 * h)
