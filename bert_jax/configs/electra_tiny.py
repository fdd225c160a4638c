"""ELECTRA-Tiny: a 2-layer discriminator of 64 with 32-wide embeddings and a generator of 16, the ELECTRA-Small
recipe (electra_small.py) shrunk to a CPU's budget: a few hundred steps on the bundled sample corpus in about a
minute. The generator's MLM accuracy visibly moves (0.05 -> 0.12); the discriminator only learns the base rate
(always "original", its loss the entropy of the ~14% replaced share) in this budget: token-level detection leaves
that plateau far later than masked-LM at this size, which no change of learning rate, dropout or generator size
fixed within a few CPU-minutes (docs/models.md, ELECTRA, has the runs).

    python -m bert_jax.main --config=electra_tiny --workdir=/tmp/electra_tiny
"""

from bert_jax.configs import electra_small


def get_config():
    c = electra_small.get_config("tiny")
    # The tokenizer's size (the bundled sample vocab).
    c.model.vocab_size = -1
    # A minute on a 2-core CPU.
    c.num_train_steps = 300
    # Small enough for a laptop, divisible by 8 fake devices in tests.
    c.global_batch_size = 32
    # Compact models tolerate (and need, in a few hundred steps) a larger peak rate.
    c.learning_rate = 2e-3
    # 10% of the steps.
    c.warmup_steps = 30
    # Short sequences keep the step cheap.
    c.data.seq_length = 64
    # electra's int((0.15 + 0.005) * 64).
    c.data.max_predictions_per_seq = 9
    # A few checkpoints, so resume can be tried.
    c.checkpoint_every_steps = 100
    # 6 log lines.
    c.log_every_steps = 50
    # Held-out accuracy 3 times.
    c.eval_every_steps = 100
    # The bundled held-out sample is small.
    c.eval_batches = 4
    return c
