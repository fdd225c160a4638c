"""GLUE fine-tuning (Devlin et al. 2018, section 4.1 and appendix A.3) of a pretrained BERT checkpoint.

Defaults: from the paper's grid, batch 32, learning rate 2e-5, 3 epochs (the original run_classifier.py's
example values); AdamW (beta1 0.9, beta2 0.999, epsilon 1e-6, weight decay 0.01 off LayerNorm and biases),
linear warmup over the first 10% of the steps then linear decay to 0, gradient clipping at 1.0, dropout 0.1,
sequences of 128 tokens. One task:

    python -m bert_jax.main --config=configs/glue.py --config.task=mrpc \
        --config.init_checkpoint=PATH --config.data_dir=GLUE_DIR --workdir=OUT

PATH: a bert_jax workdir (pretraining or fine-tuning) or a transformers-layout directory. Without
`data_dir` the task is read from TFDS `glue/<task>`. The paper's grid (batch {16, 32} x lr {5e-5, 3e-5, 2e-5}
x epochs {3, 4}) over several seeds: add `--config.sweep=True`. All nine tasks and the GLUE table:

    python -m bert_jax.main --config=configs/glue.py --config.mode=glue_suite \
        --config.init_checkpoint=PATH --config.data_dir=GLUE_DIR --workdir=OUT [--config.suite_from_mnli=True]

`--config=configs/glue.py:tiny` is the smoke-test recipe: a random BERT-Tiny with the bundled sample vocab
through the same code path (the model sizes below are used only when `init_checkpoint` is empty).
"""

import ml_collections
from ml_collections import config_dict

from configs import pretraining


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's fine-tuning recipe; `size` picks the random-init model (configs/pretraining.py SIZES)."""
    c = ml_collections.ConfigDict()
    c.mode = (
        "finetune"  # what bert_jax.main runs: "finetune" (one task) or "glue_suite" (all tasks)
    )
    c.task = (
        "mrpc"  # cola sst2 mrpc stsb qqp mnli qnli rte wnli (AX is predicted by the MNLI model)
    )
    # Where the weights come from: a bert_jax workdir or a transformers-layout directory. "" = random
    # init of `model` below, only good for smoke tests.
    c.init_checkpoint = ""
    c.data_dir = config_dict.placeholder(
        str
    )  # root of the official GLUE layout; None = TFDS glue/<task>
    c.tfds_data_dir = config_dict.placeholder(str)  # TFDS data directory; None = TFDS's default
    c.vocab_file = (
        ""  # tokenizer of a random init ("" = bundled sample vocab); checkpoints bring theirs
    )
    c.do_lower_case = True  # with vocab_file: an uncased model, as bert-base-uncased
    c.size = size  # informational: the random-init model size
    c.model = pretraining.model_config(size)  # used only when init_checkpoint is ""
    c.dtype = "float32"  # compute dtype; "bfloat16" on TPU/GPU (params and Adam state stay float32)
    c.seed = 0  # classifier init, dropout (folded with the step) and the order of the examples
    c.prng_impl = "threefry2x32"  # generator of the dropout keys ("rbg" is faster on some TPUs)
    # Persistent XLA compilation cache, shared with pretraining (see configs/pretraining.py).
    c.compilation_cache_dir = pretraining.COMPILATION_CACHE_DIR

    # The paper's recipe.
    c.max_seq_length = (
        128  # tokens per example, [CLS] and [SEP]s included; longer pairs are truncated
    )
    c.batch_size = 32  # global batch, from the paper's {16, 32}
    c.learning_rate = 2e-5  # peak, from the paper's {5e-5, 3e-5, 2e-5}
    c.num_epochs = 3  # from the paper's {3, 4}; the learning rate decays to 0 at the last step
    c.warmup_fraction = 0.1  # linear warmup over the first 10% of the steps, as run_classifier.py
    c.dropout = 0.1  # hidden and attention dropout, as the paper (overrides the checkpoint's)
    c.optimizer = "adamw"  # as the paper
    c.adam_b1 = 0.9  # first-moment decay
    c.adam_b2 = 0.999  # second-moment decay
    c.adam_epsilon = 1e-6  # as the original BERT optimizer
    c.weight_decay = 0.01  # decoupled, not on LayerNorm scales or biases
    c.max_grad_norm = 1.0  # global-norm clipping, as the original

    # The paper's grid, with `sweep`: every combination, each with every seed.
    c.sweep = False  # True: run the grid below instead of the single setting above
    c.sweep_batch_sizes = (16, 32)  # the paper's batch sizes
    c.sweep_learning_rates = (5e-5, 3e-5, 2e-5)  # the paper's learning rates
    c.sweep_num_epochs = (3, 4)  # the paper's epoch counts
    c.sweep_seeds = (0, 1, 2)  # small tasks (RTE, MRPC, STS-B, CoLA) vary a lot from seed to seed

    # The suite (mode "glue_suite").
    c.suite_tasks = (
        "mnli",
        "qqp",
        "qnli",
        "sst2",
        "cola",
        "stsb",
        "mrpc",
        "rte",
        "wnli",
    )  # MNLI first
    c.suite_from_mnli = (
        False  # start RTE, MRPC and STS-B from the fine-tuned MNLI model (a known gain)
    )

    # Evaluation and output.
    c.eval_batch_size = 64  # dev/test batch; the last batch is padded so evaluation compiles once
    c.predict_test = True  # write the leaderboard files (False when GLUE_DIR has no test files)

    # Devices and logging.
    c.mesh_shape = (
        -1,
        1,
        1,
    )  # (data, fsdp, tensor); -1 = all remaining devices: pure data parallel
    c.log_every_steps = 50  # train metrics to stdout, TensorBoard and metrics.jsonl this often
    c.max_consecutive_nonfinite = 10  # stop after this many non-finite losses in a row

    if size == "tiny":
        c.model.vocab_size = -1  # the tokenizer's size: the bundled sample vocab has ~2k tokens
        c.batch_size = 16  # divisible by 8 fake devices, and small enough for mock data sets
        c.eval_batch_size = 16
        c.learning_rate = 1e-3  # compact random models need (and tolerate) a larger rate
        c.max_seq_length = 64  # short: seconds per epoch on a CPU
        c.log_every_steps = 10
    c.lock()
    return c
