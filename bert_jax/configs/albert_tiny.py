"""ALBERT-Tiny: L2/H128/E64/A2, FFN 512, the ALBERT recipe (albert_base.py) shrunk to about a minute on a CPU.

    python -m bert_jax.main --config=albert_tiny --workdir=/tmp/albert_tiny

Everything but the size and the schedule is the paper's: one shared layer over factorized embeddings, MLM with
n-gram masking of whole words + sentence-order prediction, ALBERT's LAMB. The tokenizer is the bundled 1,000-piece
SentencePiece model trained on the sample corpus (bert_jax/data/albert_vocab.py), the data the sample corpus.
"""

from bert_jax.configs import albert_base


def get_config():
    c = albert_base.get_config("tiny")
    # The tokenizer's size (the bundled 1,000-piece model).
    c.model.vocab_size = -1
    # About a minute on an idle 2-core CPU.
    c.num_train_steps = 300
    # Small enough for a laptop, divisible by 8 fake devices in tests.
    c.global_batch_size = 32
    # The whole batch at once.
    c.grad_accum_steps = 1
    # LAMB scales each update to the weights' norm; a tiny model in 300 steps takes a larger peak rate.
    c.learning_rate = 0.01
    # 10% of the steps.
    c.warmup_steps = 30
    # A 512-token step costs ~20x a 64-token one on a CPU; 64 keeps the run in about a minute.
    c.data.seq_length = 64
    # 15% of 64, rounded up (the original's 20 would never be reached).
    c.data.max_predictions_per_seq = 10
    # A few checkpoints, so resume can be tried.
    c.checkpoint_every_steps = 100
    # 6 log lines.
    c.log_every_steps = 50
    # Held-out MLM and SOP accuracy 3 times.
    c.eval_every_steps = 100
    # The bundled held-out sample is small.
    c.eval_batches = 4
    return c
