"""Google's original TF1 checkpoints of every family that has one (BERT, ALBERT, ELECTRA): which family a checkpoint
is, told by its variable names, and reading one into bert_jax's flat parameters, config and tokenizer. The names
and files per family live in `models/{bert,albert,electra}_tf1.py`; `layouts` dispatches here and writes TF1
(`layouts.save_tf1`). No TensorFlow needed (`tf_checkpoint` reads the files).
"""

from __future__ import annotations

import json
import os

from absl import logging
from etils import epath

from bert_jax import tf_checkpoint
from bert_jax.models import registry


def tf1_family(bundle: tf_checkpoint.Bundle) -> tuple[str, str]:
    """(family name, a variable that shows it) of a TF1 checkpoint, told by its variable names alone: the first
    of registry.TF1_FAMILIES whose MARKERS one variable matches. One-line ValueError naming the index file for a
    TF2 checkpoint or one with no variable of any family."""
    names = bundle.names
    if bundle.is_tf2:
        example = next((n for n in names if n.endswith("/.ATTRIBUTES/VARIABLE_VALUE")), names[0])
        raise ValueError(
            f"{bundle.index_path}: this is a TF2 checkpoint (tf.train.Checkpoint object graph, e.g. variable "
            f"{example!r}); bert_jax reads TF1 checkpoints written by tf.train.Saver, like Google's "
            "bert_model.ckpt"
        )
    for family in registry.TF1_FAMILIES:
        hit = next((n for n in names if registry.family_named(family).tf1.MARKERS.search(n)), None)
        if hit:
            return family, hit
    raise ValueError(
        f"{bundle.index_path}: no BERT, ALBERT or ELECTRA variable among its {len(names)} (e.g. {names[:3]})"
    )


def checked_family(bundle, directory, expected: str | None) -> str:
    """The checkpoint's family by its variables; a one-line error naming the index file, the family found and the
    one expected: by the caller (`expected`), else by a family's config file beside it (bert_config.json,
    albert_config.json)."""
    found, hit = tf1_family(bundle)
    why = ""
    if expected is None:
        configs = [
            f
            for f in registry.TF1_FAMILIES
            if (directory / registry.family_named(f).tf1.CONFIG_FILE).exists()
        ]
        # ELECTRA's hparams.json is optional, and any family's config file beside it names the expected one.
        if configs and found not in configs and configs != ["electra"]:
            expected = configs[0]
            why = f" ({registry.family_named(expected).tf1.CONFIG_FILE} beside it)"
    if expected is not None and expected != found:
        raise ValueError(
            f"{bundle.index_path}: this is {a_family(found)} checkpoint (variable {hit!r}), not "
            f"{DISPLAY.get(expected, expected)}{why}"
        )
    return found


# The families as their papers write them, for messages.
DISPLAY = {"bert": "BERT", "roberta": "RoBERTa", "electra": "ELECTRA", "albert": "ALBERT"}


def a_family(family: str) -> str:
    """'a BERT', 'an ALBERT', ... ."""
    name = DISPLAY.get(family, family)
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


def read(path, overrides, do_lower_case, expected: str | None) -> dict:
    """A TF1 checkpoint of any family with one (its family told by the variable names, see `tf1_family`): the
    fields of `layouts.Checkpoint` but its head and labels (`config`, `flat`, `tokenizer`, `do_lower_case`,
    `source`, `skipped`, `tokenizer_spec`). `expected`: the family the caller wants (one line otherwise)."""
    from bert_jax.data.tokenizer import load_tokenizer

    prefix = tf_checkpoint.find_prefix(str(path))
    directory = epath.Path(os.path.dirname(prefix))
    bundle = tf_checkpoint.Bundle(prefix)
    layout = registry.family_named(checked_family(bundle, directory, expected)).tf1
    config_path = str(directory / layout.CONFIG_FILE)
    config = layout.load_config(bundle, config_path, **overrides)
    saved = directory / "tokenizer_config.json"  # written by bert_jax's TF1 export, not by Google
    if do_lower_case is None and saved.exists():
        do_lower_case = json.loads(saved.read_text()).get("do_lower_case")
    vocab = directory / "vocab.txt"
    if registry.family_of(config).name == "albert":
        models = sorted(directory.glob("*.model"))
        if not models:
            raise FileNotFoundError(
                f"{directory}: no SentencePiece *.model (Google's ALBERT checkpoints ship 30k-clean.model)"
            )
        vocab = models[0]
        if (
            do_lower_case is None
        ):  # run_classifier.py's and run_pretraining.py's --do_lower_case default
            do_lower_case = True
    elif not vocab.exists():
        raise FileNotFoundError(f"{vocab}: missing (Google's checkpoints ship their vocab.txt)")
    if do_lower_case is None:
        do_lower_case, why = registry.FAMILIES["bert"].tf1.infer_do_lower_case(prefix, str(vocab))
        logging.info("%s: do_lower_case=%s (%s)", prefix, do_lower_case, why)
    tokenizer = load_tokenizer(str(vocab), do_lower_case=do_lower_case)
    flat, skipped = layout.read_params(prefix, config, config_path)
    if skipped:
        logging.info(
            "%s: skipped %d variables the model does not use (optimizer slots, global_step)",
            prefix,
            len(skipped),
        )
    spec = {"path": os.path.abspath(str(vocab)), "do_lower_case": do_lower_case}
    return {
        "config": config, "flat": flat, "tokenizer": tokenizer, "do_lower_case": do_lower_case,
        "source": prefix, "skipped": skipped, "tokenizer_spec": spec,
    }  # fmt: skip
