"""CoNLL-2003 NER fine-tuning (Devlin et al. 2018, section 5.3): a label per word on its first word piece.

The paper does not list its NER hyperparameters; these are the GLUE-like values of its grid: learning rate 5e-5,
batch 32, 3 epochs, 128 tokens (longer sentences are split at word boundaries). The rest is the shared fine-tuning
recipe's (configs/finetuning.py). Note: the paper's 96.4 dev F1 uses document context ("maximal document
context"); this recipe feeds one sentence per sequence, as most reproductions do.

    python -m bert_jax.main --config=configs/conll.py \
        --config.init_checkpoint=PATH --config.data_dir=DIR --workdir=OUT

DIR holds train.txt and valid.txt (or eng.train and eng.testa), local or gs://; without data_dir TFDS
`conll2003` is read. Cased checkpoints suit NER (the paper used cased BERT). OUT gets dev_predictions.txt
(CoNLL columns + predicted tag) and results.json. `:tiny` is the smoke-test recipe: a random BERT-Tiny.
"""

import ml_collections

from bert_jax.configs import finetuning


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    c = finetuning.get_config("conll", size)
    # GLUE-like: the paper gives none for NER.
    c.num_epochs = 3
    # GLUE-like: the paper gives none for NER.
    c.learning_rate = 5e-5
    # GLUE-like: the paper gives none for NER.
    c.global_batch_size = 32
    # Word pieces per sequence, [CLS] and [SEP] included.
    c.max_seq_length = 128
    # Sentences per dev batch (the last batch is padded so evaluation compiles once).
    c.eval_batch_size = 64
    if size == "tiny":
        c.max_seq_length = 32
        c.global_batch_size = 16
        c.eval_batch_size = 16
        c.learning_rate = 1e-3
    c.lock()
    return c
