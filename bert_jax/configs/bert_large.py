"""BERT-Large pretraining: L24/H1024/A16, FFN 4096 (340M parameters), the paper's BERT-Large, on the paper's schedule.

1M steps x 256 sequences, length 128 then 512 for the last 10%, AdamW lr 1e-4 (see configs/pretraining.py).

    python -m bert_jax.main --config=configs/bert_large.py --workdir=gs://BUCKET/bert_large \
        --config.data.input_pattern='gs://BUCKET/corpus/*.txt' --config.data.vocab_file=gs://BUCKET/vocab.txt \
        --config.dtype=bfloat16

On accelerators with less memory, trade recompute for memory: `--config.model.remat_policy=dots`.
"""

from bert_jax.configs import pretraining


def get_config():
    return pretraining.get_config("large")
