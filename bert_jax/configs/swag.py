"""SWAG fine-tuning (Devlin et al. 2018, section 4.4): four context + ending sequences per example, a score
per [CLS], softmax over the four.

Defaults are the paper's: 3 epochs, learning rate 2e-5, batch 16 (examples, each of four sequences). The rest
is the shared fine-tuning recipe's (configs/finetuning.py).

    python -m bert_jax.main --config=configs/swag.py \
        --config.init_checkpoint=PATH --config.data_dir=DIR --workdir=OUT

DIR holds the official train.csv and val.csv (local or gs://); TFDS has no SWAG. OUT gets predictions.csv
and results.json. `:tiny` is the smoke-test recipe: a random BERT-Tiny.
"""

import ml_collections

from bert_jax.configs import finetuning


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    c = finetuning.get_config("swag", size)
    # The paper's.
    c.num_epochs = 3
    # The paper's.
    c.learning_rate = 2e-5
    # The paper's: examples per batch (each runs 4 sequences).
    c.global_batch_size = 16
    # Context + ending tokens, [CLS] and [SEP]s included; SWAG's are short (the paper does not say).
    c.max_seq_length = 128
    # Examples per dev batch (the last batch is padded so evaluation compiles once).
    c.eval_batch_size = 64
    if size == "tiny":
        c.max_seq_length = 32
        c.global_batch_size = 8
        c.eval_batch_size = 8
        c.learning_rate = 1e-3
    c.lock()
    return c
