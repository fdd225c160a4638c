"""ELECTRA (Clark et al. 2020) as its differences from BERT: the encoder layers, attention, embeddings and the tied
MLM head are BERT's (`bert_jax.models.bert`, `layers`, `heads`).

What differs, as google-research/electra and transformers have it:
  * the word/position/type embeddings are `embedding_size` (E) wide, projected to `hidden_size` (H) by a dense
    `embeddings_project` when E != H (transformers' ElectraModel); there is no pooler;
  * pretraining is replaced-token detection: a small generator (an MLM encoder of `generator_hidden_fraction` x H,
    electra's `get_generator_config`) shares the discriminator's embeddings (word, position, type and their
    LayerNorm: electra's `electra/embeddings` scope), predicts the masked tokens through a head that projects to E
    and is tied to the shared word embeddings; its samples replace the masked tokens, and the discriminator tells
    for every token whether it was replaced (`ElectraForReplacedTokenDetection`, head "rtd");
  * the discriminator head is dense + `hidden_act` + a one-wide dense (ElectraDiscriminatorPredictions);
    sequence classification is dropout, dense, exact GELU, dropout, out_proj on the first token
    (ElectraClassificationHead); multiple choice is the first token through dense + GELU (SequenceSummary) and a
    one-wide classifier.

Parameter paths: the discriminator encoder is "bert/..." (as every family, so the layout readers and fine-tuning
share them), its projection "bert/embeddings_project"; the generator's own layers "generator/...", its MLM head
"mlm", the discriminator head "discriminator_predictions". `electra_hf` maps them to transformers' names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.configs.sizes import ELECTRA as PRESETS  # noqa: F401 -- the sizes, as electra.PRESETS
from bert_jax.models import bert, heads
from bert_jax.models.layers import ACTIVATIONS, Dropout, dense, layer_class, run_layers

# BERT's head names, plus transformers' multiple choice, the generator alone ("masked_lm": ElectraForMaskedLM)
# and the pretraining model (generator + discriminator).
HEADS = (*heads.HEADS, "multiple_choice", "masked_lm", "rtd")


@dataclasses.dataclass(frozen=True)
class ElectraConfig(bert.BertConfig):
    """BERT's fields with transformers' ElectraConfig defaults (ELECTRA-Small's discriminator), the embedding
    width, and the generator's size as fractions of the discriminator's (google-research/electra's
    `generator_hidden_size` and `generator_layers`)."""

    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    # Width of the word/position/type embeddings; projected to hidden_size when different.
    embedding_size: int = 128
    # The generator's hidden size as a fraction of hidden_size (1/4 for Small and Large, 1/3 for Base).
    generator_hidden_fraction: float = 0.25
    # The generator's layers as a fraction of num_layers (1.0 in every released recipe).
    generator_layers_fraction: float = 1.0
    # electra's `temperature`: the generator's logits are divided by it before each draw (1 in every released
    # recipe; above 1 the replacements are further from the originals, easier to detect).
    generator_temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("generator_hidden_fraction", "generator_layers_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is not in (0, 1]")
        if not self.generator_temperature > 0:
            raise ValueError(f"generator_temperature {self.generator_temperature} must be positive")
        if self.embedding_size < 1:
            raise ValueError(f"embedding_size {self.embedding_size} must be positive")

    @property
    def generator(self) -> ElectraConfig:
        """The generator's config, as electra's `get_generator_config`: the hidden size and layers scaled, a
        4x feed-forward, one head per 64 dimensions, everything else the discriminator's."""
        hidden = round(self.hidden_size * self.generator_hidden_fraction)
        return dataclasses.replace(
            self,
            hidden_size=hidden,
            num_layers=max(1, round(self.num_layers * self.generator_layers_fraction)),
            intermediate_size=4 * hidden,
            num_heads=max(1, hidden // 64),
            generator_hidden_fraction=1.0,
            generator_layers_fraction=1.0,
        )


def embedding_config(config: ElectraConfig) -> ElectraConfig:
    """The config BERT's embeddings and MLM head read: `hidden_size` is the embedding width."""
    return dataclasses.replace(config, hidden_size=config.embedding_size, num_heads=1)


class ElectraModel(nn.Module):
    """The bare encoder: BERT's embeddings at `embedding_size`, `embeddings_project` to `hidden_size` when they
    differ, the layer stack; no pooler. `shared_embeddings` (the generator's): another encoder's embeddings
    module, used instead of its own (ELECTRA ties them); the projection stays this encoder's."""

    config: ElectraConfig
    # The shared heads pass it; ELECTRA has no pooler, so it must be False.
    add_pooling_layer: bool = False
    shared_embeddings: Any = None

    def setup(self):
        cfg = self.config
        if self.add_pooling_layer:
            raise ValueError("ELECTRA has no pooler (add_pooling_layer must be False)")
        if self.shared_embeddings is None:
            self.embeddings = bert.Embeddings(embedding_config(cfg))
        if cfg.embedding_size != cfg.hidden_size:
            self.embeddings_project = dense(
                cfg, cfg.hidden_size, ("embed", "embed_out"), "embeddings_project"
            )
        layer_cls = layer_class(cfg)
        if cfg.scan_layers:
            self.layers = layer_cls(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]

    def word_embeddings(self) -> nn.Module:
        """The embeddings module in use (its `attend` is the tied decoder)."""
        return self.embeddings if self.shared_embeddings is None else self.shared_embeddings

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
        cfg = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        # [batch, 1 (heads), 1 (queries), keys]: padding keys are never attended to.
        mask = (attention_mask > 0)[:, None, None, :]
        x = self.word_embeddings()(input_ids, token_type_ids, deterministic)
        if cfg.embedding_size != cfg.hidden_size:
            x = self.embeddings_project(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x, hidden_states, attentions = run_layers(
            self.layers, cfg, x, mask, deterministic, output_attentions, output_hidden_states
        )
        outputs: dict[str, Any] = {"last_hidden_state": x}
        if output_hidden_states:
            outputs["hidden_states"] = tuple(hidden_states)
        if output_attentions:
            outputs["attentions"] = tuple(attentions)
        return outputs


def _encode(
    module, config, input_ids, token_type_ids, attention_mask, deterministic, hidden, attentions
):
    """The discriminator encoder, named "bert", run inside a head's compact method: (encoder, outputs)."""
    encoder = ElectraModel(config, name="bert")
    outputs = encoder(
        input_ids,
        token_type_ids,
        attention_mask,
        deterministic=deterministic,
        output_hidden_states=hidden,
        output_attentions=attentions,
    )
    return encoder, outputs


def generator_head(config: ElectraConfig) -> heads.MaskedLMHead:
    """The generator's MLM head (ElectraGeneratorPredictions + the tied generator_lm_head): dense to
    `embedding_size`, the exact GELU whatever `hidden_act` says, LayerNorm, the word embeddings' transpose + a
    bias. BERT's MLM head at the embedding width."""
    return heads.MaskedLMHead(config, config.embedding_size, "gelu", name="mlm")


class DiscriminatorHead(nn.Module):
    """dense + `hidden_act` + a one-wide dense, per token -> [batch, length] logits (float32)."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x)
        x = ACTIVATIONS[cfg.hidden_act](x)
        x = dense(cfg, 1, ("embed", "classes"), "dense_prediction")(x)
        return x[..., 0].astype(jnp.float32)


class ClassificationHead(nn.Module):
    """First token -> dropout -> dense -> exact GELU -> dropout -> out_proj (ElectraClassificationHead)."""

    config: ElectraConfig
    num_labels: int

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        x = ACTIVATIONS["gelu"](dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x))
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic)
        return dense(cfg, self.num_labels, ("embed", "classes"), "out_proj")(x)


class ElectraHeads(nn.Module):
    """One of transformers' ELECTRA heads on the discriminator encoder ("bert"):

    "pretraining" (ElectraForPreTraining): `logits` [batch, length], the replaced-token scores;
    "masked_lm" (ElectraForMaskedLM, the generator as released): `logits` [batch, length or predictions, vocab]
      at `masked_lm_positions` when given;
    "classification": `logits` [batch, num_labels] through ElectraClassificationHead ("classifier");
    "multiple_choice": `logits` [batch * choices, 1]: the first token through the SequenceSummary's dense + GELU
      ("sequence_summary") and a one-wide "classifier" (each choice one row, as RobertaForMultipleChoice here).
    """

    config: ElectraConfig
    head: str = "pretraining"
    num_labels: int = 2

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
        cfg = self.config
        encoder, outputs = _encode(
            self, cfg, input_ids, token_type_ids, attention_mask, deterministic,
            output_hidden_states, output_attentions,
        )  # fmt: skip
        sequence = outputs["last_hidden_state"]
        if self.head == "pretraining":
            outputs["logits"] = DiscriminatorHead(cfg, name="discriminator_predictions")(sequence)
            return outputs
        if self.head == "masked_lm":
            if masked_lm_positions is not None:
                sequence = jnp.take_along_axis(sequence, masked_lm_positions[..., None], axis=1)
            outputs["logits"] = generator_head(cfg)(sequence, encoder.word_embeddings())
            return outputs
        x = sequence[:, 0]
        if self.head == "classification":
            head = ClassificationHead(cfg, self.num_labels, name="classifier")
            logits = head(x, deterministic)
        else:
            summary = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "sequence_summary")
            x = ACTIVATIONS["gelu"](summary(x))
            # transformers' summary_last_dropout (0.1).
            x = Dropout(cfg.hidden_dropout_prob)(x, deterministic)
            logits = dense(cfg, 1, ("embed", "classes"), "classifier")(x)
        outputs["logits"] = logits.astype(jnp.float32)
        return outputs


class ElectraForReplacedTokenDetection(nn.Module):
    """The pretraining model: generator + discriminator over the shared embeddings (one parameter tree).

    Takes the masked batch (`input_ids` with [MASK]s, `masked_lm_positions`, `masked_lm_ids`,
    `masked_lm_weights`), draws each masked token from the generator's softmax (at `generator_temperature`, the
    "sample" rng, no gradient through the draw), puts the draws into the original sequence and runs the
    discriminator on it (without a "sample" rng, e.g. at init, a fixed key draws). Outputs `generator_logits`
    [batch, predictions, vocab], `logits` [batch, length] (the discriminator's), `labels` [batch, length] (1
    where the token differs from the original: a draw equal to the original counts as original, as electra's
    `_get_fake_data`) and `sampled_ids` [batch, predictions].
    """

    config: ElectraConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        masked_lm_positions=None,
        masked_lm_ids=None,
        masked_lm_weights=None,
        *,
        deterministic: bool = True,
    ):
        cfg = self.config
        if masked_lm_positions is None:
            # Shape-only calls (init): one empty prediction per row.
            masked_lm_positions = jnp.zeros((input_ids.shape[0], 1), jnp.int32)
            masked_lm_ids = jnp.zeros_like(masked_lm_positions)
            masked_lm_weights = jnp.zeros(masked_lm_positions.shape, jnp.float32)
        discriminator = ElectraModel(cfg, name="bert")
        shared = discriminator.embeddings
        generator = ElectraModel(cfg.generator, shared_embeddings=shared, name="generator")
        hidden = generator(input_ids, token_type_ids, attention_mask, deterministic=deterministic)[
            "last_hidden_state"
        ]
        hidden = jnp.take_along_axis(hidden, masked_lm_positions[..., None], axis=1)
        generator_logits = generator_head(cfg)(hidden, shared)
        # The sample is data for the discriminator, not a function of the generator: no gradient flows back.
        draw = jax.random.categorical(
            self.make_rng("sample") if self.has_rng("sample") else jax.random.key(0),
            jax.lax.stop_gradient(generator_logits) / cfg.generator_temperature,
            axis=-1,
        )
        valid = masked_lm_weights > 0
        original = unmask(input_ids, masked_lm_positions, masked_lm_ids, valid)
        sampled = jnp.where(valid, draw, masked_lm_ids)
        fake = scatter(original, masked_lm_positions, sampled, valid)
        outputs = discriminator(fake, token_type_ids, attention_mask, deterministic=deterministic)
        head = DiscriminatorHead(cfg, name="discriminator_predictions")
        return {
            "generator_logits": generator_logits,
            "logits": head(outputs["last_hidden_state"]),
            "labels": (fake != original).astype(jnp.int32),
            "sampled_ids": sampled,
        }


def scatter(ids, positions, values, valid):
    """electra's `scatter_update`: `ids` with `values` [batch, predictions] written at `positions` where `valid`.
    A position that several valid slots write (electra draws its masked positions with replacement) takes the
    floor of their mean, the original's integer division of the scattered sum by the count: the value itself
    when the slots agree (`unmask`'s original ids), else a token between two generator draws, as electra has it.
    Unlike a scatter-set with repeated indices, the result does not depend on the backend."""
    rows = jnp.arange(ids.shape[0])[:, None]
    weight = valid.astype(ids.dtype)
    total = jnp.zeros_like(ids).at[rows, positions].add(values.astype(ids.dtype) * weight)
    count = jnp.zeros_like(ids).at[rows, positions].add(weight)
    return jnp.where(count > 0, total // jnp.maximum(count, 1), ids)


def unmask(input_ids, positions, ids, valid):
    """The original sequence of a masked batch: `masked_lm_ids` back at their positions (electra's `unmask`)."""
    return scatter(input_ids, positions, ids, valid)


def generator_params(config: ElectraConfig, flat: dict) -> tuple[ElectraConfig, dict]:
    """A pretraining checkpoint's generator as the "masked_lm" model (transformers' ElectraForMaskedLM, as
    google-research/electra releases it): (`config.generator`, its flat parameters under the encoder's
    names). The shared embeddings stay `bert/embeddings/`, the generator's projection and layers move from
    `generator/` to `bert/`, its head stays `mlm/`; the discriminator's layers, projection and head are left."""
    kept = {k: v for k, v in flat.items() if k.startswith(("bert/embeddings/", "mlm/"))}
    kept.update(
        {
            "bert/" + k.removeprefix("generator/"): v
            for k, v in flat.items()
            if k.startswith("generator/")
        }
    )
    return config.generator, kept


def build_model(config: ElectraConfig, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for a head name (one of HEADS) on the ELECTRA encoder."""
    if head == "none":
        return ElectraModel(config)
    if head == "rtd":
        return ElectraForReplacedTokenDetection(config)
    if head in ("span", "token"):
        return heads.TaskHead(
            config, ElectraModel, task=head, num_labels=2 if head == "span" else num_labels
        )
    if head in ("pretraining", "masked_lm", "classification", "multiple_choice"):
        return ElectraHeads(config, head=head, num_labels=num_labels)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


def _encoder_flops(config: ElectraConfig, length: int) -> float:
    """Forward multiply-adds of one encoder's layers and projection on `length` tokens."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = length * (4 * h * h + 2 * h * i) + 2 * length * length * h
    project = length * config.embedding_size * h if config.embedding_size != h else 0
    return config.num_layers * per_layer + project


def flops_per_sequence(config: ElectraConfig, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence (3 x forward, 2 per multiply-add): the generator on every token with its
    MLM head at the `predictions` positions, the discriminator on every token with its per-token head."""
    e, h, v = config.embedding_size, config.hidden_size, config.vocab_size
    gen = config.generator
    forward = (
        _encoder_flops(gen, length)
        + predictions * (gen.hidden_size * e + e * v)
        + _encoder_flops(config, length)
        + length * (h * h + h)
    )
    return 6.0 * forward
