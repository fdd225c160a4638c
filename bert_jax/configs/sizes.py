"""The model sizes, as data: one table per model family, read by the recipes and by `bert_jax.models`.

Pure Python (no JAX, no NumPy), so that loading a recipe or a `data/` tool never imports an accelerator library.
"""

# The sizes of the released BERT models (Devlin et al. 2018; Turc et al. 2019 for the compact ones).
BERT = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}

# The sizes of the released RoBERTa models (Liu et al. 2019, table 9: BERT-Base's and BERT-Large's shapes) and a
# tiny one for CPU runs.
ROBERTA = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}

# The sizes of the released ALBERT models (Lan et al. 2020, table 1; every one factorizes its embeddings at
# E = 128 and shares one layer across all) and a tiny one for CPU runs (E = 64, still narrower than H).
ALBERT = {
    "tiny": dict(
        num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512, embedding_size=64
    ),
    "base": dict(
        num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, embedding_size=128
    ),
    "large": dict(
        num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096, embedding_size=128
    ),
    "xxlarge": dict(
        num_layers=12, hidden_size=4096, num_heads=64, intermediate_size=16384, embedding_size=128
    ),
}


# The sizes of the released ELECTRA discriminators (Clark et al. 2020, appendix table 6: Small is 12 layers of
# 256 with 128-wide embeddings, Base BERT-Base's shape, Large BERT-Large's) and a tiny one for CPU runs. The
# generator's size is a fraction of these (the recipes' model.generator_hidden_fraction).
ELECTRA = {
    "tiny": dict(
        num_layers=2, hidden_size=64, num_heads=2, intermediate_size=256, embedding_size=32
    ),
    "small": dict(
        num_layers=12, hidden_size=256, num_heads=4, intermediate_size=1024, embedding_size=128
    ),
    "base": dict(
        num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, embedding_size=768
    ),
    "large": dict(
        num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096, embedding_size=1024
    ),
}
