"""Experiment recipes (ml_collections), shipped inside the package.

`pretraining.py` holds the shared pretraining recipe, one file per model size; `glue.py` the fine-tuning one. Each
file's `get_config()` returns a ConfigDict. Pass a recipe to the entry point by path or by name; both work from any
directory once the package is installed:

    python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR
    bert-jax --config=bert_base --workdir=DIR
"""
