"""BERT-Large pretraining: L24/H1024/A16, FFN 4096 (340M parameters), the paper's BERT-Large, on the paper's schedule.

1M steps x 256 sequences, length 128 then 512 for the last 10%, AdamW lr 1e-4 (see configs/pretraining.py).
bfloat16 compute (float32 parameters and optimizer state) and "dots" rematerialisation, so that both phases
fit a v5e-16, a v4-32 and a v5p-16 with pure data parallelism (docs/tpu.md has the compile check's numbers):

    python -m bert_jax.compile --config=configs/bert_large.py --topology=v5e-16
    python -m bert_jax.main --config=configs/bert_large.py --workdir=gs://BUCKET/bert_large \
        --config.data.input_pattern='gs://BUCKET/corpus/*.txt' --config.vocab_file=gs://BUCKET/vocab.txt

With more HBM per sequence (e.g. v5p), `--config.model.remat_policy=none` saves the recomputation.
"""

from bert_jax.configs import pretraining


def get_config():
    c = pretraining.get_config("large")
    # The paper's batch at length 512 needs 16-bit activations on 16 GiB chips; the float32 weights and Adam
    # state keep the update exact.
    c.dtype = "bfloat16"
    # Keep only the projection/FFN matmul outputs for the backward pass and recompute attention: bert_large
    # phase 2 on a v5e-16 then needs 8.1 GiB of temporaries per chip (11.9 GiB in all, of 16).
    c.model.remat_policy = "dots"
    return c
