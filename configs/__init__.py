"""Experiment recipes (ml_collections): `pretraining.py` holds the shared pretraining recipe, one file per model size.

Each file's `get_config()` returns a ConfigDict; pass the file to the entry point:
`python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR`. Configs import only ml_collections.
"""
