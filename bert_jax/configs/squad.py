"""SQuAD v1.1 / v2.0 fine-tuning (Devlin et al. 2018, sections 4.2 and 4.3), the original run_squad.py's recipe.

Defaults are the paper's: v1.1 3 epochs, learning rate 5e-5, batch 32; v2.0 2 epochs, 5e-5, batch 48; 384-token
windows every 128 tokens, questions cut to 64 tokens, 20-best spans of at most 30 tokens, warmup over 10% of
the steps. The rest (AdamW, dropout, clipping) is the shared fine-tuning recipe's (configs/finetuning.py).

    python -m bert_jax.main --config=configs/squad.py --config.version=1.1 \
        --config.init_checkpoint=PATH --config.data_dir=DIR --workdir=OUT
    python -m bert_jax.main --config=configs/squad.py:2.0 \
        --config.init_checkpoint=PATH --config.data_dir=DIR --workdir=OUT

`:2.0` selects v2.0 with its own defaults (`--config.version=2.0` alone keeps v1.1's epochs and batch).
DIR holds train-v1.1.json and dev-v1.1.json (or the v2.0 pair), local or gs://; without data_dir TFDS
`squad/v1.1` (or `squad/v2.0`) is read. OUT gets predictions.json, nbest_predictions.json, (v2.0)
null_odds.json and results.json. `:tiny` (or `:tiny,2.0`) is the smoke-test recipe: a random BERT-Tiny.
"""

import ml_collections
from ml_collections import config_dict

from bert_jax.configs import finetuning

# The paper's fine-tuning settings per version: (epochs, learning rate, batch).
PAPER = {"1.1": (3, 5e-5, 32), "2.0": (2, 5e-5, 48)}


def get_config(arg: str = "1.1") -> ml_collections.ConfigDict:
    """`arg`: "1.1", "2.0", "tiny" or "tiny,2.0"."""
    parts = arg.split(",")
    size = "tiny" if "tiny" in parts else "base"
    version = "2.0" if "2.0" in parts else "1.1"
    c = finetuning.get_config("squad", size)
    # SQuAD version: "1.1" or "2.0" (2.0 adds unanswerable questions and the null answer).
    c.version = version
    num_epochs, learning_rate, batch_size = PAPER[version]
    # The paper's epochs for this version.
    c.num_epochs = num_epochs
    # The paper's peak learning rate.
    c.learning_rate = learning_rate
    # The paper's global batch for this version.
    c.global_batch_size = batch_size
    # Tokens per window, [CLS] and [SEP]s included, as run_squad.py.
    c.max_seq_length = 384
    # Tokens between the starts of consecutive windows over a long context, as run_squad.py.
    c.doc_stride = 128
    # Questions are cut to this many tokens, as run_squad.py.
    c.max_query_length = 64
    # Start and end candidates per window, and the n-best list's length, as run_squad.py.
    c.n_best_size = 20
    # Longest answer in tokens, as run_squad.py.
    c.max_answer_length = 30
    # v2.0: answer "" when null score - best span score exceeds it; None = the best-F1 threshold on dev
    # (the paper's protocol), 0.0 = run_squad.py's default.
    c.null_score_diff_threshold = config_dict.placeholder(float)
    # Windows per dev batch (the last batch is padded so evaluation compiles once).
    c.eval_batch_size = 64
    if size == "tiny":
        # Short windows over the sample vocab: seconds per epoch on a CPU.
        c.max_seq_length = 64
        c.doc_stride = 16
        c.max_query_length = 16
        c.global_batch_size = 16
        c.eval_batch_size = 16
        c.learning_rate = 1e-3
    c.lock()
    return c
