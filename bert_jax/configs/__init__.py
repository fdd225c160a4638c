"""Experiment recipes (ml_collections), shipped inside the package.

`pretraining.py` holds the shared pretraining recipe, one file per model size; `finetuning.py` what the
fine-tuning recipes (`glue.py`, `squad.py`, `swag.py`, `conll.py`) share. Each file's `get_config()` returns a
ConfigDict. Pass a recipe to the entry point by path or by name; both work from any directory once the package
is installed:

    python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR
    bert-jax --config=bert_base --workdir=DIR
"""

from pathlib import Path

# Files here that other recipes build on; running one directly is refused with this pointer.
BASES = {
    "pretraining": "the pretraining recipe the sizes share; run a size: "
    "bert_tiny, bert_mini, bert_small, bert_medium, bert_base or bert_large",
    "finetuning": "what the glue, squad, swag and conll recipes share; run one of those",
}

# Every recipe gives its run length and its warmup one of two ways: exactly one field of each pair is set
# (`run_setup.run_length` turns them into steps). A command-line override of one field unsets the other.
ONE_OF = (("num_train_steps", "num_epochs"), ("warmup_steps", "warmup_fraction"))

# Field names of the previous release -> the fields that replaced them (one vocabulary for pretraining and
# fine-tuning). A `--config.OLD=V` override still works for one release, with one deprecation line; a stored
# config of an old run (config.json, a checkpoint's config) is read through `translate`. Pure data.
RENAMED = {
    "batch_size": ("global_batch_size",),
    "dropout": ("model.hidden_dropout_prob", "model.attention_dropout_prob"),
    "data.vocab_file": ("vocab_file",),
    "data.do_lower_case": ("do_lower_case",),
}


def recipes() -> list[str]:
    """The names `--config=NAME` runs (every recipe file but the shared bases)."""
    here = Path(__file__).resolve().parent
    return sorted(f.stem for f in here.glob("*.py") if f.stem != "__init__" and f.stem not in BASES)


def translate(stored: dict) -> dict:
    """A stored config (nested dict, e.g. an old run's config.json) with RENAMED's old fields under their new
    names; a new field already present keeps its value. A copy: `stored` is left as it is."""
    out = _copy(stored)
    for old, new_fields in RENAMED.items():
        *parents, leaf = old.split(".")
        holder = out
        for name in parents:
            holder = holder.get(name) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or leaf not in holder:
            continue
        value = holder.pop(leaf)
        for new in new_fields:
            *path, name = new.split(".")
            target = out
            for part in path:
                target = target.setdefault(part, {})
            target.setdefault(name, value)
    return out


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
