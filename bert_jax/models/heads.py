"""The heads on an encoder: pretraining (masked LM tied to the word embeddings + next sentence prediction) and
one fine-tuning head for sequence classification/regression, span prediction and token classification.

A head is built around a family's encoder class (`encoder`), which it names `encoder_name` ("bert" for BERT, so
the parameter paths are the ones checkpoints, converters and golden files know). The encoder takes
`(config, add_pooling_layer=..., name=...)`, returns a dict with `last_hidden_state` (and `pooler_output`
when pooled), and holds an `embeddings` submodule with `attend(x)` (the tied MLM decoder).
Logits fed to losses are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.models.layers import ACTIVATIONS, Dropout, dense, layer_norm, zeros

# Head names: "none" is the bare encoder; TASKS are the fine-tuning heads `TaskHead` builds.
TASKS = ("classification", "span", "token")
HEADS = ("none", "pretraining", *TASKS)


def _encode(
    module, pooler: bool, input_ids, token_type_ids, attention_mask, deterministic, outputs, packed
):
    """The encoder call every head shares; run inside a head's compact method, it names the submodule
    `encoder_name`. `outputs`: (output_hidden_states, output_attentions); `packed`: the packed-row inputs
    (`segment_ids`, `position_ids`, `cls_positions`), passed only when given, so an encoder without packing
    still serves unpacked batches. Returns (encoder, its outputs)."""
    encoder = module.encoder(module.config, add_pooling_layer=pooler, name=module.encoder_name)
    hidden, attentions = outputs
    return encoder, encoder(
        input_ids,
        token_type_ids,
        attention_mask,
        deterministic=deterministic,
        output_hidden_states=hidden,
        output_attentions=attentions,
        **{k: v for k, v in packed.items() if v is not None},
    )


class MaskedLMHead(nn.Module):
    """MLM head: dense + activation + LayerNorm, then the decoder tied to the word embeddings + a bias.

    `width` is the transform's width (0: the hidden size; ALBERT's and ELECTRA's generator: the embedding size,
    which the tied decoder needs) and `activation` its non-linearity ("": the config's `hidden_act`; RoBERTa's
    and ELECTRA's heads apply the exact GELU whatever the encoder uses). Float32 logits."""

    config: Any
    width: int = 0
    activation: str = ""

    @nn.compact
    def __call__(self, x, embeddings: nn.Module):
        cfg = self.config
        x = dense(cfg, self.width or cfg.hidden_size, ("embed", "embed_out"), "transform")(x)
        x = ACTIVATIONS[self.activation or cfg.hidden_act](x)
        x = layer_norm(cfg, "transform_layer_norm")(x)
        bias = self.param("bias", zeros(("vocab",)), (cfg.vocab_size,), cfg.storage_dtype)
        logits = embeddings.attend(x.astype(cfg.compute_dtype))
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)


class PreTrainingHeads(nn.Module):
    """The encoder with the MLM head ("mlm") and, unless `pair_logits` is None, a sentence-pair classifier ("nsp")
    on the pooled [CLS]: BERT's NSP (`seq_relationship_logits`), ALBERT's sentence order (`sop_logits`, after
    dropout `pair_dropout`). Without a pair task the encoder has no pooler and the MLM logits are `logits`
    (transformers' *ForMaskedLM: RoBERTa's pretraining model, ALBERT's `masked_lm`), else `prediction_logits`.

    With `masked_lm_positions` [batch, predictions], MLM logits are computed only at those positions (so the
    head costs what the paper's FLOP count says); otherwise at every position. Packed rows add `segment_ids`,
    `position_ids` and `cls_positions` [batch, K]: pair logits are then [batch, K, 2], one per sequence's [CLS].
    """

    config: Any
    encoder: Any
    encoder_name: str = "bert"
    # The output name of the sentence-pair logits; None: masked LM alone.
    pair_logits: str | None = "seq_relationship_logits"
    pair_dropout: float = 0.0
    # The MLM transform's width and activation (`MaskedLMHead`).
    mlm_width: int = 0
    mlm_activation: str = ""

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        masked_lm_positions=None,
        *,
        segment_ids=None,
        position_ids=None,
        cls_positions=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        pooled = self.pair_logits is not None
        packed = {"segment_ids": segment_ids, "position_ids": position_ids}
        if pooled:
            packed["cls_positions"] = cls_positions
        encoder, outputs = _encode(
            self,
            pooled,
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic,
            (output_hidden_states, output_attentions),
            packed,
        )
        sequence = outputs["last_hidden_state"]
        if masked_lm_positions is not None:
            sequence = jnp.take_along_axis(sequence, masked_lm_positions[..., None], axis=1)
        # The decoder is tied to the word embeddings: the head calls back into the encoder's embeddings.
        mlm = MaskedLMHead(self.config, self.mlm_width, self.mlm_activation, name="mlm")
        logits = mlm(sequence, encoder.embeddings)
        if not pooled:
            outputs["logits"] = logits
            return outputs
        outputs["prediction_logits"] = logits
        x = Dropout(self.pair_dropout)(outputs["pooler_output"], deterministic)
        pair = dense(self.config, 2, ("embed", "classes"), "nsp")
        outputs[self.pair_logits] = pair(x).astype(jnp.float32)
        return outputs


class TaskHead(nn.Module):
    """The fine-tuning head, one of TASKS, on the encoder:

    "classification": pooled [CLS] -> dropout -> linear "classifier" -> `logits` (`num_labels == 1` is
      regression, e.g. STS-B);
    "span": every position -> linear "qa_outputs" -> `start_logits`, `end_logits` (SQuAD);
    "token": every position -> dropout -> linear "classifier" -> `logits` (NER).
    Only "classification" builds the pooler. Packed rows add `segment_ids`, `position_ids` and (for
    "classification") `cls_positions` [batch, K]: the logits are then [batch, K, num_labels].
    """

    config: Any
    encoder: Any
    task: str = "classification"
    num_labels: int = 2
    encoder_name: str = "bert"

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        *,
        segment_ids=None,
        position_ids=None,
        cls_positions=None,
        deterministic=True,
        output_hidden_states=False,
        output_attentions=False,
    ):
        pooled = self.task == "classification"
        packed = {"segment_ids": segment_ids, "position_ids": position_ids}
        if pooled:
            packed["cls_positions"] = cls_positions
        _, outputs = _encode(
            self,
            pooled,
            input_ids,
            token_type_ids,
            attention_mask,
            deterministic,
            (output_hidden_states, output_attentions),
            packed,
        )
        x = outputs["pooler_output" if pooled else "last_hidden_state"]
        if self.task == "span":
            logits = dense(self.config, 2, ("embed", "classes"), "qa_outputs")(x)
            logits = logits.astype(jnp.float32)
            outputs["start_logits"], outputs["end_logits"] = logits[..., 0], logits[..., 1]
            return outputs
        # ALBERT's configs give the task heads their own dropout (classifier_dropout_prob: 0.1 where the released
        # encoders use none), as its transformers heads and original classifier do; the other families' heads use
        # the hidden dropout.
        rate = getattr(self.config, "classifier_dropout_prob", self.config.hidden_dropout_prob)
        x = Dropout(rate)(x, deterministic)
        logits = dense(self.config, self.num_labels, ("embed", "classes"), "classifier")(x)
        outputs["logits"] = logits.astype(jnp.float32)
        return outputs


def build(config, encoder, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS) around the family's `encoder` class."""
    if head == "none":
        return encoder(config)
    if head == "pretraining":
        return PreTrainingHeads(config, encoder)
    if head in TASKS:
        return TaskHead(config, encoder, task=head, num_labels=2 if head == "span" else num_labels)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def dummy_inputs(batch: int = 1, length: int = 8) -> dict[str, jax.Array]:
    """Shape-only inputs for `model.init` / `jax.eval_shape`."""
    ids = jnp.zeros((batch, length), jnp.int32)
    return {"input_ids": ids, "token_type_ids": ids, "attention_mask": jnp.ones_like(ids)}


def init_params(model: nn.Module, rng: jax.Array, batch: int = 1, length: int = 8):
    """Initialises parameters (boxed with their logical axes; `nn.unbox` strips the boxes)."""
    return model.init(rng, **dummy_inputs(batch, length))["params"]
