"""Input pipelines: tokenizers, corpora, pretraining instances, GLUE. NumPy only, no JAX."""
