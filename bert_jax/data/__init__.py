"""Input pipelines: tokenizers, corpora, pretraining instances, GLUE. NumPy only, no JAX."""

from bert_jax.data.records import read_instances

__all__ = ["read_instances"]
