"""Experiment recipes (ml_collections), shipped inside the package.

`pretraining.py` holds the shared pretraining recipe, one file per model size; `glue.py` the fine-tuning one. Each
file's `get_config()` returns a ConfigDict. Pass a recipe to the entry point by path or by name; both work from any
directory once the package is installed:

    python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR
    bert-jax --config=bert_base --workdir=DIR
"""

from pathlib import Path

# Files here that other recipes build on; running one directly is refused with this pointer.
BASES = {
    "pretraining": "the pretraining recipe the sizes share; run a size: "
    "bert_tiny, bert_mini, bert_small, bert_medium, bert_base or bert_large",
    "tasks": "what the squad, swag and conll recipes share; run one of those",
    # Until the pretraining loop builds the recipe's `family` and its FULL-SENTENCES data (issue 22).
    "roberta_base": "RoBERTa's recipe, which the pretraining loop does not run yet (issue 22: the family's "
    "data path is not wired); load RoBERTa models with bert_jax.load_pretrained",
    "roberta_tiny": "RoBERTa's tiny recipe, which the pretraining loop does not run yet (issue 22: the family's "
    "data path is not wired); load RoBERTa models with bert_jax.load_pretrained",
}


def recipes() -> list[str]:
    """The names `--config=NAME` runs (every recipe file but the shared bases)."""
    here = Path(__file__).resolve().parent
    return sorted(f.stem for f in here.glob("*.py") if f.stem != "__init__" and f.stem not in BASES)
