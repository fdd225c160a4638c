"""RoBERTa-Tiny: L2/H128/A2, FFN 512, the RoBERTa recipe (roberta_base.py) shrunk to a CPU's budget, as
bert_tiny.py (whose 800 steps take ~3 minutes on an idle 2-core CPU). Not run by the entry point yet: the
pretraining loop does not build the roberta family's data.

Everything but the size and the schedule is the paper's: MLM alone, dynamic masking, 512-token FULL-SENTENCES
inputs, AdamW with beta2 0.98. `model.vocab_size = -1` takes the byte-level BPE's size.
"""

from bert_jax.configs import roberta_base


def get_config():
    c = roberta_base.get_config("tiny")
    # The tokenizer's size (a small BPE trained on the sample corpus).
    c.model.vocab_size = -1
    # bert_tiny's budget.
    c.num_train_steps = 800
    # Small enough for a laptop, divisible by 8 fake devices in tests.
    c.global_batch_size = 32
    # The whole batch at once.
    c.grad_accum_steps = 1
    # Compact models tolerate (and need, in 800 steps) a larger peak rate.
    c.learning_rate = 1e-3
    # 10% of the steps.
    c.warmup_steps = 80
    # A 512-token step costs ~10x a 128-token one on a CPU; 128 keeps the run in minutes.
    c.data.seq_length = 128
    # 15% of 128, rounded up.
    c.data.max_predictions_per_seq = 20
    # A few checkpoints, so resume can be tried.
    c.checkpoint_every_steps = 200
    # 16 log lines.
    c.log_every_steps = 50
    # Held-out MLM accuracy 4 times.
    c.eval_every_steps = 200
    # The bundled held-out sample is small.
    c.eval_batches = 4
    return c
