"""Loading and saving BERT models in every layout bert_jax meets (a library: the command is `bert_jax.convert`).

`load_pretrained(path, head=...)` reads, by what `path` holds:
  * a transformers-layout directory (`config.json` + weights + tokenizer; see `models/bert_hf.py`);
  * Google's original TF1 checkpoint of BERT (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`), ALBERT
    (`albert_config.json`, the SentencePiece `*.model`, `model.ckpt-best.*`) or ELECTRA (`vocab.txt`,
    `model.ckpt-<step>.*`, no config: sizes from the tensors): the directory or a checkpoint prefix; the family
    is told by the variable names (see `models/{bert,albert,electra}_tf1.py`; no TensorFlow needed);
  * a bert_jax workdir (pretraining or fine-tuning: `WORKDIR/checkpoints/<step>/`), or the `bert_jax`
    checkpoint that the conversion command writes (the same layout, without optimizer state); read by
    `bert_jax.workdir`, the one reader of a workdir.

`python -m bert_jax.convert --from=PATH --to=OUT --format=transformers|bert_jax|tf1` converts between them
(see `bert_jax.export`); every conversion is checked by running both models on a fixed batch.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from bert_jax import layouts_tf1, workdir
from bert_jax.models import electra, registry
from bert_jax.models.bert_hf import (  # noqa: F401 -- re-exported: the transformers mapping lived here
    CONFIG_FIELDS,
    config_from_hf,
    flat_params_to_hf,
    hf_to_flat_params,
    name_map,
    read_state_dict,
)

# Parameters a checkpoint may carry that a given head does not use, or lack and get initialised.
_OPTIONAL_ROOTS = ("mlm/", "nsp/", "classifier/", "qa_outputs/", "bert/pooler/")
# ELECTRA's: its pretraining checkpoint's generator and discriminator head, its multiple-choice summary.
_OPTIONAL_ROOTS += ("generator/", "discriminator_predictions/", "sequence_summary/")
# transformers' class for each head.
ARCHITECTURES = {
    "none": "BertModel",
    "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
    "span": "BertForQuestionAnswering",
    "token": "BertForTokenClassification",
}
# Fine-tuning runs whose head the parameters alone do not tell: SWAG's one-wide classifier scores choices (for a
# family with a transformers multiple-choice class; BERT's SWAG runs export as one-label classification).
_TASK_HEADS = {"swag": "multiple_choice"}
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def source_format(path) -> str:
    """The layout of `path` ("transformers", "tf1" or "bert_jax"); a one-line error for anything else."""
    path = epath.Path(path)
    # First: a bert_jax workdir also holds a config.json (the run's config, not a model's).
    if path.is_dir() and (path / "checkpoints").is_dir():
        return "bert_jax"
    if path.is_dir() and (path / "config.json").exists():
        return "transformers"
    # A TF1 directory: a family's config file (ELECTRA has none) or a checkpoint index.
    tf1_configs = [registry.family_named(f).tf1.CONFIG_FILE for f in registry.TF1_FAMILIES]
    if (path.is_dir() and any((path / c).exists() for c in tf1_configs[1:])) or (
        path.is_dir() and any(path.glob("*.index"))
    ):
        return "tf1"
    if not path.is_dir() and (path.name.endswith(".index") or epath.Path(f"{path}.index").exists()):
        return "tf1"
    if not path.exists() and not epath.Path(f"{path}.index").exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    raise FileNotFoundError(
        f"{path} is neither a bert_jax workdir (no checkpoints/) nor a transformers-layout directory "
        "(no config.json) nor a TF1 checkpoint (no bert_config.json, albert_config.json or .index)"
    )


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint holds, read in any layout: its model config, flat 'bert/...' parameters (bert_jax
    layout) and tokenizer, plus what exporting it again needs."""

    config: registry.Config
    flat: dict[str, np.ndarray]
    tokenizer: object
    do_lower_case: bool | None  # None: as the tokenizer files say
    source: str
    head: str  # the head its parameters are for ("pretraining" when it has the MLM/NSP heads)
    labels: list[str] | None  # class names in id order, when the checkpoint names them
    # Stored tensors that are not parameters (TF1 optimizer slots, global_step), skipped.
    skipped: list[str] = dataclasses.field(default_factory=list)
    # {"path", "do_lower_case"}: how to load the tokenizer again (an absolute path).
    tokenizer_spec: dict | None = None


def read_checkpoint(
    path,
    *,
    overrides=None,
    do_lower_case: bool | None = None,
    step: int | None = None,
    family: str | None = None,
) -> Checkpoint:
    """Reads a checkpoint of any supported layout (see the module docstring) without building a model.

    `family`: the model family the caller expects (e.g. a recipe's); a checkpoint of another is a one-line
    ValueError naming the path, the family found and the one expected (a TF1 one before its tensors are read).
    """
    kind = source_format(path)
    overrides = overrides or {}
    if kind == "tf1":
        return _read_tf1(path, overrides, do_lower_case, family)
    if kind == "bert_jax":
        ckpt = _read_workdir(path, step, overrides, do_lower_case)
    else:
        ckpt = _read_transformers(path, overrides, do_lower_case)
    found = registry.family_of(ckpt.config).name
    if family is not None and found != family:
        raise ValueError(
            f"{ckpt.source}: this is {layouts_tf1.a_family(found)} checkpoint, not "
            f"{layouts_tf1.DISPLAY.get(family, family)}"
        )
    return ckpt


def _read_tf1(path, overrides, do_lower_case, expected: str | None) -> Checkpoint:
    """A TF1 checkpoint of any family with one (`layouts_tf1.read`)."""
    parts = layouts_tf1.read(path, overrides, do_lower_case, expected)
    # ELECTRA's pretraining checkpoint (generator + discriminator) is the replaced-token-detection model.
    rtd = any(k.startswith("generator/") for k in parts["flat"])
    return Checkpoint(**parts, head="rtd" if rtd else _head_of(parts["flat"]), labels=None)


def _read_workdir(path, step, overrides, do_lower_case) -> Checkpoint:
    """A bert_jax workdir's parameters (all heads), read by `bert_jax.workdir`, as a Checkpoint."""
    run = workdir.read(path, step, do_lower_case=do_lower_case)
    family = _family_of_fields(run.stored, run.model_fields)
    fields = {k: v for k, v in run.model_fields.items() if k in registry.config_fields(family)}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = run.tokenizer.vocab_size
    try:
        config = registry.config_from_fields({**fields, **overrides}, family)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{run.source}: stored model config: {e}") from e
    flat = flat_params(run.params, "pretraining")
    lower = run.tokenizer_spec.get("do_lower_case")
    head = run.head or _TASK_HEADS.get(run.mode) or _head_of(flat)
    if head not in getattr(registry.family_of(config).hf, "ARCHITECTURES", ARCHITECTURES):
        head = _head_of(flat)
    return Checkpoint(
        config, flat, run.tokenizer, lower, run.source, head, run.labels, [], run.tokenizer_spec
    )


def _family_of_fields(stored: dict, fields) -> str:
    """A workdir's model family: the run's `family` field, else the family whose config has exactly the stored
    model fields (a RoBERTa's include `pad_token_id`), else BERT (older runs stored fewer fields)."""
    if stored.get("family"):
        return stored["family"]
    exact = [name for name in registry.FAMILIES if set(registry.config_fields(name)) == set(fields)]
    return exact[0] if exact else "bert"


def _head_of(flat) -> str:
    """The head a checkpoint's parameters are for (token classification reads as classification)."""
    if "mlm/bias" in flat or "nsp/kernel" in flat:
        return "pretraining"
    if "qa_outputs/kernel" in flat:
        return "span"
    return "classification" if _classifier_kernel(flat) is not None else "none"


def _classifier_kernel(flat):
    """The classifier's output kernel [hidden, labels] in flat parameters (RoBERTa's is `out_proj`), or None."""
    for key in ("classifier/kernel", "classifier/out_proj/kernel"):
        if key in flat:
            return flat[key]
    return None


def load_pretrained(
    path,
    head: str = "none",
    num_labels: int | None = None,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    attention_impl: str = "auto",
    seed: int = 0,
    do_lower_case: bool | None = None,
    step: int | None = None,
    scan_layers: bool = False,
    family: str | None = None,
):
    """Loads a BERT checkpoint of any supported layout: returns (model, params, tokenizer).

    head: "none" (bare encoder), "pretraining" (MLM + NSP), "classification" (num_labels; 1 = regression),
    "span" or "token". `num_labels` defaults to the checkpoint's classifier width (or its label names, or
    2). Head parameters the checkpoint lacks are initialised (with `seed`) and named in a Python warning;
    encoder parameters must all be present. `do_lower_case` overrides the tokenizer's casing (TF1:
    otherwise inferred from the model's name, as the original did). `step`: which checkpoint of a bert_jax
    workdir (default: the latest). `scan_layers`: the model scans over its layers and the checkpoint's
    per-layer tensors are stacked for it. `family` ("bert", "albert", ...): the family the caller expects; a
    checkpoint of another is a one-line error naming both (None: whatever the checkpoint is).
    """
    overrides = dict(dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl)
    ckpt = for_head(
        read_checkpoint(
            path, overrides=overrides, do_lower_case=do_lower_case, step=step, family=family
        ),
        head,
    )
    ckpt.config = dataclasses.replace(ckpt.config, scan_layers=scan_layers)
    model, params = build(ckpt, head, num_labels, seed=seed)
    return model, params, ckpt.tokenizer


def for_head(ckpt: Checkpoint, head: str) -> Checkpoint:
    """`ckpt` as the model `head` reads it: an ELECTRA pretraining checkpoint's "masked_lm" model is its
    generator (its own, smaller config; `electra.generator_params`), every other head the discriminator."""
    if head != "masked_lm" or not any(k.startswith("generator/") for k in ckpt.flat):
        return ckpt
    config, flat = electra.generator_params(ckpt.config, ckpt.flat)
    return dataclasses.replace(ckpt, config=config, flat=flat, head=head)


def build(ckpt: Checkpoint, head: str, num_labels: int | None = None, *, seed: int = 0):
    """(model, params) for `head` from a read checkpoint."""
    if ckpt.tokenizer.vocab_size > ckpt.config.vocab_size:
        raise ValueError(
            f"{ckpt.source}: tokenizer has {ckpt.tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {ckpt.config.vocab_size}"
        )
    if num_labels is None:
        if _classifier_kernel(ckpt.flat) is not None:
            num_labels = _classifier_kernel(ckpt.flat).shape[-1]
        else:
            num_labels = len(ckpt.labels) if ckpt.labels else 2
    model = build_model(ckpt.config, head, num_labels)
    params = load_flat_params(model, ckpt.config, ckpt.flat, ckpt.source, seed=seed, head=head)
    return model, params


def build_model(config: registry.Config, head: str, num_labels: int = 2):
    """`registry.build`, where a family without a multiple-choice head of its own scores each choice with its
    classification head of one output (BERT's is BertForMultipleChoice's very layers); RoBERTa has its own
    (the pooler + a one-wide classifier, not RobertaClassificationHead)."""
    try:
        return registry.build(config, head, num_labels)
    except ValueError:
        if head != "multiple_choice":
            raise
        return registry.build(config, "classification", 1)


def _read_transformers(path, overrides, do_lower_case) -> Checkpoint:
    from bert_jax.data.tokenizer import load_tokenizer

    directory = epath.Path(path)
    config_file = directory / "config.json"
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from e
    # The family from config.json's model_type (bert, roberta, ...); its name table reads the rest.
    hf = registry.family_of_model_type(hf_config.get("model_type"), str(config_file)).hf
    config = hf.config_from_hf(hf_config, str(config_file), **overrides)
    tokenizer = load_tokenizer(str(directory), do_lower_case=do_lower_case)
    asked_lower_case = do_lower_case
    flat, ignored = hf.hf_to_flat_params(read_state_dict(directory), config, str(directory))
    if ignored:
        logging.info("%s: ignored non-parameter tensors %s", directory, ignored)
    if do_lower_case is None and (directory / "tokenizer_config.json").exists():
        saved = json.loads((directory / "tokenizer_config.json").read_text())
        do_lower_case = saved.get("do_lower_case")
    id2label = hf_config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    architectures = getattr(hf, "ARCHITECTURES", ARCHITECTURES)
    head = {v: k for k, v in architectures.items()}.get((hf_config.get("architectures") or [""])[0])
    # The casing as asked: None lets the directory's own files decide again, as they did here.
    spec = {"path": str(workdir.absolute(directory)), "do_lower_case": asked_lower_case}
    return Checkpoint(
        config,
        flat,
        tokenizer,
        do_lower_case,
        str(directory),
        head or _head_of(flat),
        labels,
        [],
        spec,
    )


def load_flat_params(
    model, config, loaded: dict[str, np.ndarray], source: str, *, seed: int, head: str
):
    """Fills `model`'s parameter tree from flat 'bert/...' arrays: checks shapes, initialises missing
    head parameters (with a warning); a missing encoder parameter is an error naming it."""
    dtype = config.storage_dtype
    # Filled per layer, as checkpoints store them; a scan_layers model gets them stacked at the end.
    init = lambda rng: registry.unstack_layers(nn.unbox(registry.init_params(model, rng)))
    expected = traverse_util.flatten_dict(jax.eval_shape(init, jax.random.key(seed)), sep="/")
    if head == "none":  # the bare encoder's tree has no "bert/" level
        loaded = {k.removeprefix("bert/"): v for k, v in loaded.items()}
        optional = (*_OPTIONAL_ROOTS, "pooler/")
    else:
        optional = _OPTIONAL_ROOTS
    unused = sorted(k for k in loaded if k not in expected)
    # Only head parameters and the pooler may go unused (e.g. `cls.*` when fine-tuning); the layout
    # readers already rejected anything that is no BERT parameter at all.
    surprising = [k for k in unused if not k.startswith(optional)]
    if surprising:
        raise ValueError(f"{source}: parameter {surprising[0]!r} has no place in a {head!r} model")
    if unused:
        logging.info("%s: checkpoint tensors not used by head %r: %s", source, head, unused)
    out, initialised, fresh = {}, [], None
    for key, init_value in expected.items():
        if key in loaded:
            value = loaded[key]
            if value.shape != init_value.shape:
                raise ValueError(
                    f"{source}: parameter {key!r} has shape {value.shape} in the checkpoint but "
                    f"{init_value.shape} in the model"
                )
            out[key] = jax.numpy.asarray(value, dtype)
        elif key.startswith(optional):
            if fresh is None:  # initialising is a compile: only when some head needs it
                fresh = traverse_util.flatten_dict(jax.jit(init)(jax.random.key(seed)), sep="/")
            out[key] = fresh[key].astype(dtype)
            initialised.append(key)
        else:
            raise ValueError(f"{source}: parameter {key!r} is missing from the checkpoint")
    if initialised:
        roots = sorted({k.rsplit("/", 1)[0] for k in initialised})
        warnings.warn(
            f"{source}: head {head!r} parameters not in the checkpoint were initialised at random "
            f"(train them before use): {roots}",
            stacklevel=3,
        )
    tree = traverse_util.unflatten_dict(out, sep="/")
    return registry.stack_layers(tree, config.num_layers) if config.scan_layers else tree


def flat_params(params, head: str) -> dict[str, np.ndarray]:
    """bert_jax parameters (nested, any head) -> {'bert/...' path: NumPy array}."""
    # A scan_layers model's stacked `layers` are written per layer, as every layout stores them.
    flat = traverse_util.flatten_dict(registry.unstack_layers(nn.unbox(params)), sep="/")
    prefix = "bert/" if head == "none" else ""
    return {prefix + k: np.asarray(v) for k, v in flat.items()}


def infer_num_labels(params, head: str, num_labels: int | None = None) -> int:
    """The classifier's width from the parameters (2 for heads without one); checks a given value."""
    params = nn.unbox(params)
    if head not in ("classification", "token", "multiple_choice") or "classifier" not in params:
        return 2 if num_labels is None else num_labels
    width = int(_classifier_kernel(traverse_util.flatten_dict(params, sep="/")).shape[-1])
    if num_labels is not None and num_labels != width:
        raise ValueError(f"num_labels is {num_labels} but the classifier has {width} outputs")
    return width


def tokenizer_lowercases(tokenizer) -> bool:
    """Whether `tokenizer` lower-cases its input, from what it does (no tokenizer internals needed)."""
    if hasattr(tokenizer, "do_lower_case"):
        return bool(tokenizer.do_lower_case)
    upper = "THE QUICK BROWN FOX JUMPS OVER A LAZY DOG"
    return tokenizer.encode(upper) == tokenizer.encode(upper.lower())


def write_tokenizer(directory, tokenizer, config, do_lower_case: bool | None = None) -> None:
    """vocab.txt, tokenizer_config.json and special_tokens_map.json, as transformers' BertTokenizer wants."""
    from bert_jax.data.tokenizer import ByteLevelBPETokenizer, SentencePieceTokenizer
    from bert_jax.models import albert_hf, roberta_hf

    directory = epath.Path(directory)
    if isinstance(tokenizer, ByteLevelBPETokenizer):
        roberta_hf.write_tokenizer(directory, tokenizer, config)
        return
    if (
        isinstance(tokenizer, SentencePieceTokenizer)
        and registry.family_of(config).name == "albert"
    ):
        lower = tokenizer_lowercases(tokenizer) if do_lower_case is None else do_lower_case
        albert_hf.write_tokenizer(directory, tokenizer, config, lower)
        return
    if do_lower_case is None:
        do_lower_case = tokenizer_lowercases(tokenizer)
    source = epath.Path(getattr(tokenizer, "path", ""))
    if source.name == "vocab.txt" and source.exists():  # the original file, byte for byte
        (directory / "vocab.txt").write_bytes(source.read_bytes())
        tokens = []
    else:
        tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    if any(t is None for t in tokens):
        raise ValueError(f"{tokenizer.path}: not a WordPiece vocabulary with one token per id")
    if any(t.startswith("▁") for t in tokens):
        raise ValueError(
            f"{tokenizer.path}: a SentencePiece vocabulary has no transformers BertTokenizer form"
        )
    if tokens:
        (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": do_lower_case,
        "model_max_length": config.max_position_embeddings,
        **SPECIAL_TOKENS,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))


def architecture(config: registry.Config, head: str) -> str:
    """transformers' class name for `head` of `config`'s family (e.g. RobertaForMaskedLM); one line if none."""
    family = registry.family_of(config)
    architectures = getattr(family.hf, "ARCHITECTURES", ARCHITECTURES)
    if head not in architectures:
        raise ValueError(f"head {head!r} has no transformers class for {family.name}")
    return architectures[head]


def save_pretrained(
    directory,
    params,
    config: registry.Config,
    head: str = "none",
    num_labels: int | None = None,
    *,
    tokenizer=None,
    do_lower_case: bool | None = None,
    id2label=None,
):
    """Writes `params` as a transformers-layout directory: config.json, model.safetensors and, with a
    `tokenizer`, vocab.txt + tokenizer_config.json + special_tokens_map.json (so both
    `load_pretrained` and transformers' AutoTokenizer read it back). `num_labels` comes from the
    classifier; `id2label` (label names in id order) names the classes in config.json."""
    from safetensors.numpy import save_file

    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    num_labels = infer_num_labels(params, head, num_labels)
    labels = list(id2label) if id2label is not None else [f"LABEL_{i}" for i in range(num_labels)]
    if len(labels) != num_labels:
        raise ValueError(f"id2label has {len(labels)} names but the model has {num_labels} labels")
    family = registry.family_of(config)
    if family.name == "bert":
        hf_config = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
        hf_config.update(model_type="bert", pad_token_id=0)
    else:
        hf_config = family.hf.config_to_hf(config)
    hf_config.update(
        architectures=[architecture(config, head)],
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
    )
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    state = family.hf.flat_params_to_hf(registry.unstack_layers(nn.unbox(params)), config, head)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / "model.safetensors")
    )
    if tokenizer is not None:
        write_tokenizer(directory, tokenizer, config, do_lower_case)
    else:
        warnings.warn(
            f"{directory}: saved without tokenizer files (pass tokenizer=); transformers' "
            "AutoTokenizer and load_pretrained cannot read this directory alone",
            stacklevel=2,
        )


def save_tf1(directory, params, config: registry.Config, head: str, tokenizer) -> str:
    """Writes Google's layout of the family: BERT's bert_config.json, vocab.txt and bert_model.ckpt.*; ALBERT's
    albert_config.json, the SentencePiece model and model.ckpt-best.*; ELECTRA's hparams.json (run_pretraining.py
    --hparams), vocab.txt and model.ckpt.*; the original scripts take the prefix as --init_checkpoint. Returns
    the prefix."""
    family = registry.family_of(config)
    if family.tf1 is None:
        raise ValueError(
            f"{family.name} has no TF1 checkpoint layout (Google released BERT, ALBERT and ELECTRA as ones)"
        )
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / family.tf1.CONFIG_FILE).write_text(
        json.dumps(family.tf1.config_dict(config), indent=2)
    )
    write_tokenizer(directory, tokenizer, config)
    prefix = str(directory / family.tf1.CHECKPOINT)
    family.tf1.write_params(prefix, flat_params(params, head), config)
    return prefix
