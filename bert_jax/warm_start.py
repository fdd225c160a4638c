"""Where a run's starting weights come from: a bert_jax workdir (pretraining or fine-tuning, parameters only),
a transformers-layout directory, a TF1 checkpoint, or a random init (smoke tests). Returns the encoder's config,
its tokenizer and the weights; `initial_params` builds a fine-tuning task's model around them, and
`pretraining_params` checks them against the pretraining recipe's model to continue pretraining.

Every route reads the same way (`layouts.read_checkpoint`, which reads workdirs through `bert_jax.workdir`):
the parameters the checkpoint holds, in bert_jax's names, nothing initialised. So the same weights reached as a
workdir, its transformers export or its TF1 export start a fine-tuning run from the same arrays; what a task
needs and the checkpoint lacks is initialised in one place, `initial_params`, from the run's seed.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax import traverse_util

from bert_jax import layouts, run_setup, sharding, train_lib, workdir
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.models import registry
from bert_jax.models.bert_hf import CONFIG_FIELDS

# The fields a run chooses for itself (its recipe's `model`), whatever the checkpoint was trained with: dropout
# (stored in every layout's config, but the fine-tuning recipe's: the paper's 0.1), the attention kernel, remat,
# scan and the embedding gradient.
EXECUTION = (
    "hidden_dropout_prob", "attention_dropout_prob", "attention_impl", "remat_policy", "scan_layers",
    "embedding_gradient",
)  # fmt: skip
# The BertConfig fields every checkpoint layout stores that say what the weights are, not how a run uses them.
ARCHITECTURE = tuple(f for f in CONFIG_FIELDS.values() if f not in EXECUTION)


@dataclasses.dataclass
class InitialWeights:
    """What a fine-tuning run starts from."""

    model_config: registry.Config
    tokenizer: object
    # {"path", "do_lower_case"}: how to load the tokenizer again (an absolute path).
    tokenizer_spec: dict
    # Unboxed top-level modules ({"bert": ..., maybe a head}) as NumPy arrays; None = random init.
    params: dict | None
    # Where they came from, for logs and results.json (a workdir names the step actually restored).
    source: str


def from_path(
    path,
    *,
    heads,
    dtype: str,
    param_dtype: str,
    head: str = "none",
    trains: str = "fine-tuning",
    family=None,
    **overrides,
) -> InitialWeights:
    """The top-level modules named in `heads` of a bert_jax workdir, a transformers-layout directory or an
    original TF1 checkpoint (`path` absolute or relative to the current directory). The model config takes
    the stored architecture (ARCHITECTURE) with the run's dtypes and `overrides` (e.g. dropout, the EXECUTION
    fields); `head` (the model the run builds) is for the log line, `trains` (the run that trains what the
    checkpoint lacks) for the warning; `family`, when given, is the one the checkpoint must be (a one-line error
    naming both otherwise)."""
    path = workdir.absolute(path)
    if not path.exists() and not os.path.exists(f"{path}.index"):
        raise FileNotFoundError(
            f"{path}: no such file or directory; give a bert_jax workdir, a transformers directory or a TF1 "
            f"checkpoint (a relative path is read from {os.getcwd()})"
        )
    ckpt = layouts.read_checkpoint(path, family=family)
    # The weights' own fields come from the checkpoint; how to run them (attention kernel, remat, scan) is the
    # run's, so every layout of the same weights builds the same model.
    # A family's own fields beyond BERT's (ALBERT's embedding_size, RoBERTa's pad_token_id) describe weights too.
    family = registry.family_of(ckpt.config)
    bert_fields = registry.config_fields("bert")
    fields = {
        k: v
        for k, v in dataclasses.asdict(ckpt.config).items()
        if k in ARCHITECTURE or k not in bert_fields
    }
    model_config = train_lib.model_config(
        fields, vocab_size=ckpt.tokenizer.vocab_size, dtype=dtype, param_dtype=param_dtype,
        family=family.name, **overrides,
    )  # fmt: skip
    tree = traverse_util.unflatten_dict(ckpt.flat, sep="/")
    # Every layout stores the layers one by one; a scanning model takes them stacked.
    if model_config.scan_layers:
        tree["bert"] = registry.stack_layers(tree["bert"], model_config.num_layers)
    kept = {k: v for k, v in tree.items() if k in heads}
    lacking = sorted(set(heads) - set(kept))
    if lacking:
        warnings.warn(
            f"{ckpt.source}: {lacking} not in the checkpoint: initialised at random from the run's seed "
            f"({trains} trains them)",
            stacklevel=3,
        )
    logging.info(
        "%s: restored %s for the %s head; dropped heads %s",
        *(ckpt.source, sorted(kept), head, sorted(set(tree) - set(kept))),
    )
    return InitialWeights(
        model_config, ckpt.tokenizer, dict(ckpt.tokenizer_spec), kept, ckpt.source
    )


def load(config, *, head: str = "classification", heads=("bert", "classifier")) -> InitialWeights:
    """Resolves a fine-tuning config's `init_checkpoint` (see `from_path`), or "" for a random init of
    `config.model` with `config.vocab_file`. The EXECUTION fields of `config.model` are the recipe's, dropout
    (`model.hidden_dropout_prob`, `model.attention_dropout_prob`) among them."""
    if config.init_checkpoint:
        execution = {k: config.model[k] for k in EXECUTION if k in config.model}
        return from_path(
            config.init_checkpoint, head=head, heads=heads, dtype=config.dtype,
            param_dtype=config.param_dtype, **execution,
        )  # fmt: skip
    logging.warning("no init_checkpoint: random initialisation (good for smoke tests only)")
    path = str(workdir.absolute(config.vocab_file)) if config.vocab_file else str(SAMPLE_VOCAB)
    spec = {"path": path, "do_lower_case": config.do_lower_case}
    # Named as the field it is, even inside the caller's "init_checkpoint" setup step.
    with run_setup.setup_error("vocab_file"):
        tokenizer = workdir.open_tokenizer(path, config.do_lower_case)
    model_config = train_lib.model_config(
        config.model.to_dict(), vocab_size=tokenizer.vocab_size, dtype=config.dtype,
        param_dtype=config.param_dtype, family=config.get("family", "bert"),
    )  # fmt: skip
    return InitialWeights(model_config, tokenizer, spec, None, "random")


def pretraining_params(config, abstract) -> dict | None:
    """The modules of the recipe's pretraining model (`abstract.params`' top level: BERT's encoder and MLM/NSP
    heads; ELECTRA's discriminator, generator and both heads) that `config.init_checkpoint` holds (a bert_jax
    workdir, a transformers directory or a TF1 checkpoint), to continue pretraining from; None for a random
    init. Shapes must equal the recipe's model. The rest starts from the run's seed, with one warning naming
    it: from a transformers ELECTRA discriminator (ElectraForPreTraining, as released without its generator)
    the generator (`generator`, `mlm`) starts afresh on the discriminator's embeddings, as electra's own
    pretraining starts it."""
    if not config.init_checkpoint:
        return None
    weights = from_path(
        config.init_checkpoint, head="pretraining", heads=tuple(abstract.params),
        dtype=config.dtype, param_dtype=config.param_dtype, trains="continued pretraining",
        family=config.get("family", "bert"),
    )  # fmt: skip
    wanted = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(weights.params)[0])
    for path, leaf in wanted:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if path[0].key not in weights.params:
            continue
        if path not in have or tuple(have[path].shape) != tuple(leaf.shape):
            got = "absent" if path not in have else tuple(have[path].shape)
            raise ValueError(
                f"{weights.source}: {name} is {got} but the recipe's model wants {tuple(leaf.shape)}"
            )
    logging.info("continuing pretraining from %s (%s)", weights.source, sorted(weights.params))
    # The recipe's parameters of the modules the checkpoint has, stored in the recipe's param_dtype.
    have = traverse_util.flatten_dict(weights.params, sep="/")
    wanted = traverse_util.flatten_dict(dict(abstract.params), sep="/")
    kept = {
        k: np.asarray(have[k]).astype(leaf.dtype)
        for k, leaf in wanted.items()
        if k.split("/")[0] in weights.params
    }
    return traverse_util.unflatten_dict(kept, sep="/")


def initial_params(weights: InitialWeights, head: str, num_labels: int, mesh, rng, *, task: str):
    """(model, parameter shardings, parameters) of `head` with `num_labels` outputs for `task`, born sharded on
    `mesh`: a fresh init from `rng` in which every parameter the checkpoint holds replaces the fresh one.

    The encoder is kept leaf by leaf: a pooler the checkpoint has and the head does not use (span, token) is
    ignored, one the head needs and the checkpoint lacks is initialised; any other encoder parameter missing or
    of another shape is an error. A head module the checkpoint lacks, or one of another shape (a classifier with
    another label count), is initialised afresh, with a log line; checkpoint modules the head has no place for
    are ignored.
    """
    model = layouts.build_model(weights.model_config, head, num_labels)
    boxed = jax.eval_shape(train_lib.boxed_init(model), rng)
    shardings = sharding.logical_shardings(boxed, mesh)
    params = train_lib.create_params(model, shardings, rng)
    if weights.params is None:
        return model, shardings, params
    flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
    shapes = lambda tree: {k: tuple(v.shape) for k, v in flat(tree).items()}
    # A head's width is its kernel's last dimension (Dense and DenseGeneral alike).
    width = lambda s: s["kernel"][-1] if "kernel" in s else None
    taken = {}
    for name in nn.unbox(boxed):
        want = shapes(params[name])
        if name not in weights.params:
            logging.info(
                "%s has no %s: initialised one with %s outputs", weights.source, name, width(want)
            )
            continue
        have = shapes(weights.params[name])
        if name == "bert":
            taken[name] = _encoder_keys(have, want, weights.source, head)
        elif have == want:
            taken[name] = list(want)
        elif width(have) is not None and width(want) is not None:
            logging.warning(
                "%s: the checkpoint's %s has %s outputs but %s needs %s: re-initialising it",
                *(weights.source, name, width(have), task, width(want)),
            )
        else:
            logging.warning(
                "%s: the checkpoint's %s does not fit the %s head: re-initialising it",
                *(weights.source, name, head),
            )
    for name, keys in taken.items():
        stored, fresh, where = flat(weights.params[name]), flat(params[name]), flat(shardings[name])
        for key in keys:
            value = np.asarray(stored[key]).astype(fresh[key].dtype)
            fresh[key] = jax.device_put(value, where[key])
        params[name] = traverse_util.unflatten_dict(fresh, sep="/")
    return model, shardings, params


def _encoder_keys(have: dict, want: dict, source: str, head: str) -> list[str]:
    """The encoder parameters to take from the checkpoint: all the model has, but a pooler the checkpoint
    lacks (initialised, with a log line). Raises naming the first other parameter missing or misshapen."""
    for key, shape in want.items():
        if key in have and have[key] != shape:
            raise ValueError(
                f"{source}: encoder parameter bert/{key} is {have[key]} but the model wants {shape}"
            )
        if key not in have and not key.startswith("pooler/"):
            raise ValueError(
                f"{source}: encoder parameter bert/{key} is missing from the checkpoint"
            )
    if any(k not in have for k in want):
        logging.info("%s has no pooler: initialised one for the %s head", source, head)
    unused = sorted({k.split("/")[0] for k in have if k not in want})
    if unused:
        logging.info("%s: encoder parameters the %s head does not use: %s", source, head, unused)
    return [k for k in want if k in have]
