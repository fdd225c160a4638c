"""BERT-Medium pretraining: L8/H512/A8, FFN 2048 (41M parameters), Turc et al. 2019's compact size, on the paper's schedule.

1M steps x 256 sequences, length 128 then 512 for the last 10%, AdamW lr 1e-4 (see configs/pretraining.py).

    python -m bert_jax.main --config=configs/bert_medium.py --workdir=gs://BUCKET/bert_medium \
        --config.data.input_pattern='gs://BUCKET/corpus/*.txt' --config.vocab_file=gs://BUCKET/vocab.txt \
        --config.dtype=bfloat16
"""

from bert_jax.configs import pretraining


def get_config():
    return pretraining.get_config("medium")
