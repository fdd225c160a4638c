"""GLUE fine-tuning (Devlin et al. 2018, section 4.1 and appendix A.3) of a pretrained BERT checkpoint.

Defaults: from the paper's grid, batch 32, learning rate 2e-5, 3 epochs (the original run_classifier.py's
example values); AdamW (beta1 0.9, beta2 0.999, epsilon 1e-6, weight decay 0.01 off LayerNorm and biases),
linear warmup over the first 10% of the steps then linear decay to 0, gradient clipping at 1.0, dropout 0.1,
sequences of 128 tokens (the shared fields are configs/finetuning.py's). One task:

    python -m bert_jax.main --config=configs/glue.py --config.task=mrpc \
        --config.init_checkpoint=PATH --config.data_dir=GLUE_DIR --workdir=OUT

PATH: a bert_jax workdir (pretraining or fine-tuning) or a transformers-layout directory. Without
`data_dir` the task is read from TFDS `glue/<task>`. The paper's grid (batch {16, 32} x lr {5e-5, 3e-5, 2e-5}
x epochs {2, 3, 4}) over several seeds: add `--config.sweep=True`. All nine tasks and the GLUE table:

    python -m bert_jax.main --config=configs/glue.py --config.mode=glue_suite \
        --config.init_checkpoint=PATH --config.data_dir=GLUE_DIR --workdir=OUT [--config.suite_from_mnli=True]

`--config=configs/glue.py:tiny` is the smoke-test recipe: a random BERT-Tiny with the bundled sample vocab
through the same code path (the model sizes below are used only when `init_checkpoint` is empty).
"""

import ml_collections

from bert_jax.configs import finetuning


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's GLUE recipe: the shared fine-tuning fields plus GLUE's; `size` picks the random-init model."""
    c = finetuning.get_config("finetune", size)
    # cola sst2 mrpc stsb qqp mnli qnli rte wnli (AX is predicted by the MNLI model); data_dir is the root of
    # the official GLUE layout (None = TFDS glue/<task>).
    c.task = "mrpc"

    # The paper's grid, with `sweep`: every combination, each with every seed.
    # True: run the grid below instead of the single setting above (mode "finetune" only).
    c.sweep = False
    # The paper's batch sizes (values of global_batch_size).
    c.sweep_batch_sizes = (16, 32)
    # The paper's learning rates.
    c.sweep_learning_rates = (5e-5, 3e-5, 2e-5)
    # The paper's epoch counts (appendix A.3: 2, 3, 4).
    c.sweep_num_epochs = (2, 3, 4)
    # Small tasks (RTE, MRPC, STS-B, CoLA) vary a lot from seed to seed.
    c.sweep_seeds = (0, 1, 2)

    # The suite (mode "glue_suite").
    # MNLI first.
    c.suite_tasks = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "wnli")
    # Start RTE, MRPC and STS-B from the fine-tuned MNLI model (a known gain).
    c.suite_from_mnli = False
    # Write the leaderboard files (False when GLUE_DIR has no test files).
    c.predict_test = True
    c.lock()
    return c
