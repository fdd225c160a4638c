"""ELECTRA-Base pretraining (Clark et al. 2020, appendix A, table 6, ELECTRA-Base column): 766k steps of 256
sequences of 512 tokens (the compute of BERT-Base's 1M steps), a discriminator of BERT-Base's shape with 768-wide
embeddings, a generator 1/3 of its width, peak learning rate 2e-4; everything else as configs/electra_small.py.

    python -m bert_jax.main --config=electra_base --workdir=DIR \
        --config.data.input_pattern='corpus/*.txt' --config.vocab_file=vocab.txt
"""

from bert_jax.configs import electra_small


def get_config():
    return electra_small.get_config("base")
