"""Where a fine-tuning run's weights come from: a bert_jax workdir (pretraining or fine-tuning, parameters only),
a transformers-layout directory, or a random init (smoke tests). Returns the encoder's config, its tokenizer and
the weights; the loop builds the task's model around them."""

from __future__ import annotations

import dataclasses

from absl import logging
from etils import epath

from bert_jax import checkpoint, convert, train_lib
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.model import BertConfig


@dataclasses.dataclass
class InitialWeights:
    """What a fine-tuning run starts from."""

    model_config: BertConfig
    tokenizer: object
    # {"path", "do_lower_case"}: how to load the tokenizer again.
    tokenizer_spec: dict
    # Unboxed top-level modules ({"bert": ..., maybe a head}); None = random init.
    params: dict | None
    # Where they came from, for logs and results.json (a workdir names the step actually restored).
    source: str


def _config(fields, tokenizer, config) -> BertConfig:
    """The encoder config for fine-tuning: the run's dtypes and dropout over the stored fields."""
    dropout = {"hidden_dropout_prob": config.dropout, "attention_dropout_prob": config.dropout}
    return train_lib.model_config(
        fields,
        vocab_size=tokenizer.vocab_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        **dropout,
    )


def from_workdir(path: epath.Path, config, heads=("bert",)) -> InitialWeights:
    """The newest readable checkpoint of a bert_jax workdir (parameters only; no optimizer is built)."""
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
    model_config = _config(stored["model"], tokenizer, config)
    return InitialWeights(model_config, tokenizer, spec, kept, f"{directory}/{step}")


def load(config, *, head: str = "classification", heads=("bert", "classifier")) -> InitialWeights:
    """Resolves `config.init_checkpoint`: a bert_jax workdir, a transformers-layout directory, or "" (random).

    `head` is the head asked of a transformers checkpoint (its own label count, so a classifier it has loads);
    `heads` are the top-level modules kept from a bert_jax workdir.
    """
    path = config.init_checkpoint
    if not path:
        logging.warning("no init_checkpoint: random initialisation (good for smoke tests only)")
        spec = {
            "path": config.vocab_file or str(SAMPLE_VOCAB),
            "do_lower_case": config.do_lower_case,
        }
        tokenizer = load_tokenizer(spec["path"], do_lower_case=spec["do_lower_case"])
        return InitialWeights(
            _config(config.model.to_dict(), tokenizer, config), tokenizer, spec, None, "random"
        )
    path = epath.Path(path)
    if (path / "checkpoints").is_dir():
        return from_workdir(path, config, heads)
    if (path / "config.json").exists():
        model, params, tokenizer = convert.load_pretrained(
            path, head=head, dtype=config.dtype, seed=config.seed
        )
        fields = {
            k: v
            for k, v in dataclasses.asdict(model.config).items()
            if k not in ("dtype", "param_dtype")
        }
        spec = {"path": str(path), "do_lower_case": None}
        return InitialWeights(
            _config(fields, tokenizer, config), tokenizer, spec, params, str(path)
        )
    raise ValueError(
        f"{path} is neither a bert_jax workdir (no checkpoints/) nor a transformers-layout "
        "directory (no config.json)"
    )
