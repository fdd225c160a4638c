"""RoBERTa-Tiny: L2/H128/A2, FFN 512, the RoBERTa recipe (roberta_base.py) shrunk to a CPU's budget, as
bert_tiny.py, on the bundled sample corpus and the bundled byte-level BPE (bert_jax/assets/sample_bpe, made by
`python -m bert_jax.assets.make_sample_bpe`); under two minutes of CPU time (88 s measured), and the MLM loss
falls from 7.6 (ln 2,048) to 4.7, held-out MLM accuracy 0.104 at step 100 -> 0.148 at 300:

    python -m bert_jax.main --config=bert_jax/configs/roberta_tiny.py --workdir=/tmp/roberta_tiny

Everything but the size and the schedule is the paper's: MLM alone, fairseq's dynamic masking, FULL-SENTENCES
inputs (128 tokens here), AdamW with beta2 0.98. `model.vocab_size = -1` takes the byte-level BPE's size.
"""

from bert_jax.configs import roberta_base


def get_config():
    c = roberta_base.get_config("tiny")
    # The tokenizer's size (a small BPE trained on the sample corpus).
    c.model.vocab_size = -1
    # Under two CPU minutes (~10 epochs of the ~1,000 rows of 128 tokens the sample corpus makes).
    c.num_train_steps = 300
    # Small enough for a laptop, divisible by 8 fake devices in tests.
    c.global_batch_size = 32
    # The whole batch at once.
    c.grad_accum_steps = 1
    # Compact models tolerate (and need, in 300 steps) a larger peak rate.
    c.learning_rate = 2e-3
    # 10% of the steps.
    c.warmup_steps = 30
    # A 512-token step costs ~10x a 128-token one on a CPU; 128 keeps the run in minutes.
    c.data.seq_length = 128
    # The most fairseq's masking draws in 128 tokens (int(0.15 * 128 + U[0, 1)) <= 20).
    c.data.max_predictions_per_seq = 20
    # A few checkpoints, so resume can be tried.
    c.checkpoint_every_steps = 100
    # 12 log lines.
    c.log_every_steps = 25
    # Held-out MLM accuracy 3 times.
    c.eval_every_steps = 100
    # The bundled held-out sample is small (~70 rows of 128 tokens).
    c.eval_batches = 2
    return c
