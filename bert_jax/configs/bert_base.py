"""BERT-Base pretraining: L12/H768/A12, FFN 3072 (110M parameters), the paper's BERT-Base, on the paper's schedule.

1M steps x 256 sequences, length 128 then 512 for the last 10%, AdamW lr 1e-4 (see configs/pretraining.py).
bfloat16 compute with float32 parameters and optimizer state; both phases fit a v5e-16, a v4-32 and a v5p-16
with pure data parallelism (docs/tpu.md has the compile check's numbers):

    python -m bert_jax.compile --config=configs/bert_base.py --topology=v5e-16
    python -m bert_jax.main --config=configs/bert_base.py --workdir=gs://BUCKET/bert_base \
        --config.data.input_pattern='gs://BUCKET/corpus/*.txt' --config.vocab_file=gs://BUCKET/vocab.txt
"""

from bert_jax.configs import pretraining


def get_config():
    c = pretraining.get_config("base")
    # 16-bit activations (float32 weights and Adam state keep the update exact): the paper's batch at length
    # 512 fits 16 GiB chips, and TPU/GPU matrix units run at their bfloat16 rate.
    c.dtype = "bfloat16"
    return c
