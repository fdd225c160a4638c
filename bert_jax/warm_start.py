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
