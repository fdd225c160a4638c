"""The model families: for each, its config class, sizes, encoder build, FLOP count, pretraining objectives and
the transformers / TF1 name tables. Everything outside `bert_jax.models` reaches a model through here.

    from bert_jax.models import registry
    config = registry.config_from_fields({"num_layers": 2, ...})   # family "bert"
    model = registry.build(config, "classification", num_labels=3)
    params = registry.init_params(model, jax.random.key(0))

A new family (RoBERTa, ELECTRA, ALBERT) is one file beside bert.py plus one entry in FAMILIES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import flax.linen as nn

from bert_jax.models import (
    albert,
    albert_hf,
    albert_tf1,
    bert,
    bert_hf,
    bert_tf1,
    electra,
    electra_hf,
    electra_tf1,
    objectives,
    roberta,
    roberta_hf,
)
from bert_jax.models.heads import HEADS, TASKS, dummy_inputs, init_params  # noqa: F401
from bert_jax.models.layers import stack_layers, unstack_layers  # noqa: F401

# Any family's config (a frozen dataclass with BERT's field names for the shared layers).
Config = Any


@dataclasses.dataclass(frozen=True)
class Family:
    """What the rest of bert_jax needs to know about one model family."""

    name: str
    # The frozen dataclass of sizes and numerics.
    config_class: type
    # Size name -> the size fields (bert_jax.configs.sizes).
    presets: Mapping[str, Mapping[str, int]]
    # (config, head, num_labels) -> the Flax module.
    build: Callable[..., nn.Module]
    # (config, length, predictions) -> training FLOPs of one sequence (the MFU numerator).
    flops_per_sequence: Callable[..., float]
    # The pretraining objectives this family's "pretraining" head serves, by recipe name.
    objectives: tuple[str, ...]
    # transformers names and layouts (config_from_hf, hf_to_flat_params, flat_params_to_hf, name_map).
    hf: ModuleType
    # Google's original TF1 names and files (FAMILY, CONFIG_FILE, CHECKPOINT, MARKERS: the variables only this
    # family's checkpoints have; load_config, read_params, write_params, config_dict, name_map); None for a
    # family that was never released as a TF1 checkpoint.
    tf1: ModuleType | None


FAMILIES = {
    "bert": Family(
        name="bert",
        config_class=bert.BertConfig,
        presets=bert.PRESETS,
        build=bert.build_model,
        flops_per_sequence=bert.flops_per_sequence,
        objectives=("mlm_nsp",),
        hf=bert_hf,
        tf1=bert_tf1,
    ),
    # Liu et al. 2019: BERT's encoder, positions past the padding id, MLM alone (fairseq; no TF1 release).
    "roberta": Family(
        name="roberta",
        config_class=roberta.RobertaConfig,
        presets=roberta.PRESETS,
        build=roberta.build_model,
        flops_per_sequence=roberta.flops_per_sequence,
        objectives=("mlm",),
        hf=roberta_hf,
        tf1=None,
    ),
    # Clark et al. 2020: BERT's layers at E-wide embeddings, a generator sharing them, replaced-token detection
    # (google-research/electra's TF1 pretraining checkpoints: electra_tf1).
    "electra": Family(
        name="electra",
        config_class=electra.ElectraConfig,
        presets=electra.PRESETS,
        build=electra.build_model,
        flops_per_sequence=electra.flops_per_sequence,
        objectives=("rtd",),
        hf=electra_hf,
        tf1=electra_tf1,
    ),
    # Lan et al. 2020: factorized embeddings, one layer shared by all, MLM + sentence-order prediction
    # (google-research/albert's TF1 checkpoints: albert_tf1).
    "albert": Family(
        name="albert",
        config_class=albert.AlbertConfig,
        presets=albert.PRESETS,
        build=albert.build_model,
        flops_per_sequence=albert.flops_per_sequence,
        objectives=("mlm_sop",),
        hf=albert_hf,
        tf1=albert_tf1,
    ),
}


# The families with a TF1 layout, most specific first: a checkpoint is the first whose MARKERS match one of its
# variables (an ALBERT checkpoint has BERT's embedding names too; ELECTRA's names are its own).
TF1_FAMILIES = ("electra", "albert", "bert")


def family_named(name: str = "bert") -> Family:
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(config: Config) -> Family:
    """The family whose config class `config` is."""
    # The exact class: RobertaConfig is a BertConfig subclass, yet another family.
    for candidate in FAMILIES.values():
        if type(config) is candidate.config_class:
            return candidate
    raise ValueError(f"{type(config).__name__} is no model family's config")


def family_of_model_type(model_type, path: str = "config.json") -> Family:
    """The family of a transformers config.json's `model_type` (family names are transformers' model types);
    a one-line error naming the supported families for any other."""
    if model_type not in FAMILIES:
        names = [repr(name) for name in sorted(FAMILIES)]
        listing = " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
        raise ValueError(
            f"{path}: model_type is {model_type!r}, not {listing} (the model families bert_jax supports)"
        )
    return FAMILIES[model_type]


def config_fields(family: str = "bert") -> tuple[str, ...]:
    """The field names of a family's config."""
    return tuple(f.name for f in dataclasses.fields(family_named(family).config_class))


def config_from_fields(fields: Mapping[str, Any], family: str = "bert") -> Config:
    """A family's config from a mapping (e.g. a recipe's `model` ConfigDict), rejecting unknown keys."""
    known = set(config_fields(family))
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    return family_named(family).config_class(**dict(fields))


def presets(family: str = "bert") -> Mapping[str, Mapping[str, int]]:
    return family_named(family).presets


def build(config: Config, head: str = "none", num_labels: int = 2) -> nn.Module:
    """The module for `config`'s family with a head (one of HEADS)."""
    return family_of(config).build(config, head, num_labels)


def flops_per_sequence(config: Config, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence of `length` tokens with `predictions` masked positions."""
    return family_of(config).flops_per_sequence(config, length, predictions)


def objective(name: str, model: nn.Module):
    """The pretraining objective `name` (a recipe's `objective` field) around a "pretraining" head module."""
    served = family_of(model.config).objectives
    if name not in served:
        raise ValueError(f"objective {name!r} is not one of {list(served)} for this model family")
    return objectives.OBJECTIVES[name](model)


def objective_head(name: str) -> str:
    """The head the pretraining objective `name` is computed on ("pretraining"; "rtd" for ELECTRA's)."""
    if name not in objectives.OBJECTIVES:
        raise ValueError(f"objective {name!r} is not one of {sorted(objectives.OBJECTIVES)}")
    return objectives.OBJECTIVES[name].head
