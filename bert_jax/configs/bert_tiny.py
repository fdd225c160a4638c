"""BERT-Tiny: L2/H128/A2, FFN 512 (Turc et al. 2019) on the bundled sample corpus; the embedded default run.

The same code path as a real run (both sequence-length phases, checkpoints, eval, metrics), shrunk to finish in
a few minutes on a laptop CPU and visibly learn (the MLM loss falls from ~ln(vocab) to well below it):

    python -m bert_jax.main                       # = --config=configs/bert_tiny.py --workdir=./workdir/bert_tiny
    python -m bert_jax.main --config=configs/bert_tiny.py --workdir=/tmp/tiny --config.num_train_steps=200

`model.vocab_size = -1` takes the size of the tokenizer's vocab (the bundled sample vocab unless
`vocab_file` is set), so the embedding matrix has no unused rows.
"""

from bert_jax.configs import pretraining


def get_config():
    c = pretraining.get_config("tiny")
    # The bundled sample vocab's size (set from the tokenizer at startup).
    c.model.vocab_size = -1
    # ~3 minutes on an idle 2-core CPU; ~25 epochs of the ~100k-word sample.
    c.num_train_steps = 800
    # Small enough for a laptop, divisible by 8 fake devices in tests.
    c.global_batch_size = 32
    # Compact models tolerate (and need, in 800 steps) a larger peak rate.
    c.learning_rate = 1e-3
    # 10% of the steps.
    c.warmup_steps = 80
    # The last 40 steps in phase 2: both phases, at a CPU-friendly cost.
    c.data.phase2_fraction = 0.05
    # A 512-token step costs ~10x a 128-token one on a CPU.
    c.data.phase2_seq_length = 256
    # 15% of 256, rounded up.
    c.data.phase2_max_predictions_per_seq = 40
    # A few checkpoints, so resume can be tried on the default run.
    c.checkpoint_every_steps = 200
    # 16 log lines.
    c.log_every_steps = 50
    # Held-out MLM/NSP accuracy 4 times.
    c.eval_every_steps = 200
    # The bundled held-out sample is small.
    c.eval_batches = 4
    return c
