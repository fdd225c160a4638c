"""Where a run's starting weights come from: a bert_jax workdir (pretraining or fine-tuning, parameters only),
a transformers-layout directory, a TF1 checkpoint, or a random init (smoke tests). Returns the encoder's config,
its tokenizer and the weights; `initial_params` builds a fine-tuning task's model around them, and
`pretraining_params` checks them against the pretraining recipe's model to continue pretraining."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
from absl import logging
from etils import epath

from bert_jax import checkpoint, convert, sharding, train_lib
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.models import registry


@dataclasses.dataclass
class InitialWeights:
    """What a fine-tuning run starts from."""

    model_config: registry.Config
    tokenizer: object
    # {"path", "do_lower_case"}: how to load the tokenizer again.
    tokenizer_spec: dict
    # Unboxed top-level modules ({"bert": ..., maybe a head}); None = random init.
    params: dict | None
    # Where they came from, for logs and results.json (a workdir names the step actually restored).
    source: str


def from_path(
    path, *, head: str, heads, dtype: str, param_dtype: str, seed: int = 0, **overrides
) -> InitialWeights:
    """Weights from a bert_jax workdir (the top-level modules in `heads`), a transformers-layout directory or an
    original TF1 checkpoint (`head` is what `load_pretrained` is asked for). The model config takes the run's
    dtypes and `overrides` (e.g. dropout) over the stored fields."""
    path = epath.Path(path)
    if (path / "checkpoints").is_dir():
        directory = path / "checkpoints"
        step, params, stored = checkpoint.restore_params(str(directory))
        if stored["mode"] == "pretrain":
            spec = {"path": stored["data"]["vocab_file"] or str(SAMPLE_VOCAB)}
            spec["do_lower_case"] = stored["data"]["do_lower_case"]
        else:
            spec = stored["tokenizer"]
        tokenizer = load_tokenizer(spec["path"], do_lower_case=spec["do_lower_case"])
        kept = {k: v for k, v in params.items() if k in heads}
        dropped = sorted(set(params) - set(kept))
        logging.info(
            "%s step %d: restored %s; dropped heads %s", directory, step, sorted(kept), dropped
        )
        fields, source = stored["model"], f"{directory}/{step}"
    elif (
        (path / "config.json").exists()
        or (path / "bert_config.json").exists()
        or epath.Path(f"{path}.index").exists()
    ):
        model, kept, tokenizer = convert.load_pretrained(path, head=head, dtype=dtype, seed=seed)
        fields = dataclasses.asdict(model.config)
        spec, source = {"path": str(path), "do_lower_case": None}, str(path)
        if convert.source_format(path) == "tf1":
            # TF1 casing is inferred from the checkpoint's name, which the vocab.txt alone does not carry.
            spec = {
                "path": tokenizer.path,
                "do_lower_case": convert.tokenizer_lowercases(tokenizer),
            }
    else:
        raise ValueError(
            f"{path} is neither a bert_jax workdir (no checkpoints/) nor a transformers-layout "
            "directory (no config.json) nor an original TF1 checkpoint (no bert_config.json)"
        )
    fields = {k: v for k, v in fields.items() if k not in ("dtype", "param_dtype")}
    model_config = train_lib.model_config(
        fields, vocab_size=tokenizer.vocab_size, dtype=dtype, param_dtype=param_dtype, **overrides
    )
    return InitialWeights(model_config, tokenizer, spec, kept, source)


def load(config, *, head: str = "classification", heads=("bert", "classifier")) -> InitialWeights:
    """Resolves a fine-tuning config's `init_checkpoint` (see `from_path`), or "" for a random init of
    `config.model` with `config.vocab_file`. Dropout is the fine-tuning recipe's (`config.dropout`)."""
    dropout = {"hidden_dropout_prob": config.dropout, "attention_dropout_prob": config.dropout}
    if config.init_checkpoint:
        return from_path(
            config.init_checkpoint, head=head, heads=heads, dtype=config.dtype,
            param_dtype=config.param_dtype, seed=config.seed, **dropout,
        )  # fmt: skip
    logging.warning("no init_checkpoint: random initialisation (good for smoke tests only)")
    spec = {"path": config.vocab_file or str(SAMPLE_VOCAB), "do_lower_case": config.do_lower_case}
    tokenizer = load_tokenizer(spec["path"], do_lower_case=spec["do_lower_case"])
    model_config = train_lib.model_config(
        config.model.to_dict(), vocab_size=tokenizer.vocab_size, dtype=config.dtype,
        param_dtype=config.param_dtype, **dropout,
    )  # fmt: skip
    return InitialWeights(model_config, tokenizer, spec, None, "random")


def pretraining_params(config, abstract) -> dict | None:
    """`config.init_checkpoint`'s encoder and MLM/NSP heads (a bert_jax workdir, a transformers directory or a
    TF1 checkpoint) to continue pretraining from; None for a random init. Shapes must equal the recipe's model."""
    if not config.init_checkpoint:
        return None
    weights = from_path(
        config.init_checkpoint, head="pretraining", heads=("bert", "mlm", "nsp"),
        dtype=config.dtype, param_dtype=config.param_dtype, seed=config.seed,
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
    return weights.params


def initial_params(weights: InitialWeights, head: str, num_labels: int, mesh, rng, *, task: str):
    """(model, parameter shardings, parameters) of `head` with `num_labels` outputs for `task`, born sharded on
    `mesh`: a fresh init whose top-level modules are the checkpoint's where their shapes fit.

    A module the checkpoint lacks, or one of another shape (a classifier with another label count), is
    initialised afresh, with a log line; checkpoint modules the head has no place for are ignored.
    """
    model = registry.build(weights.model_config, head, num_labels)
    boxed = jax.eval_shape(train_lib.boxed_init(model), rng)
    shardings = sharding.logical_shardings(boxed, mesh)
    if weights.params is None:
        return model, shardings, train_lib.create_params(model, shardings, rng)
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    fresh, loaded = shapes(nn.unbox(boxed)), {}
    # A head's width is its kernel's last dimension (Dense and DenseGeneral alike).
    width = lambda tree: tree["kernel"][-1] if isinstance(tree, dict) and "kernel" in tree else None
    for name, want in fresh.items():
        if name not in weights.params:
            logging.info(
                "%s has no %s: initialised one with %s outputs", weights.source, name, width(want)
            )
            continue
        have = shapes(weights.params[name])
        if have == want:
            loaded[name] = weights.params[name]
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
    return model, shardings, train_lib.create_params(model, shardings, rng, loaded)
