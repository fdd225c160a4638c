"""GLUE fine-tuning (Devlin et al. 2018, section 4.1 and appendix A.3) of a pretrained BERT checkpoint.

Defaults: from the paper's grid, batch 32, learning rate 2e-5, 3 epochs (the original run_classifier.py's
example values); AdamW (beta1 0.9, beta2 0.999, epsilon 1e-6, weight decay 0.01 off LayerNorm and biases),
linear warmup over the first 10% of the steps then linear decay to 0, gradient clipping at 1.0, dropout 0.1,
sequences of 128 tokens. One task:

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
from ml_collections import config_dict

from bert_jax.configs import pretraining


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's fine-tuning recipe; `size` picks the random-init model (configs/pretraining.py SIZES)."""
    c = ml_collections.ConfigDict()
    # What bert_jax.main runs: "finetune" (one task) or "glue_suite" (all tasks).
    c.mode = "finetune"
    # cola sst2 mrpc stsb qqp mnli qnli rte wnli (AX is predicted by the MNLI model).
    c.task = "mrpc"
    # Where the weights come from: a bert_jax workdir or a transformers-layout directory. "" = random
    # init of `model` below, only good for smoke tests.
    c.init_checkpoint = ""
    # Root of the official GLUE layout; None = TFDS glue/<task>.
    c.data_dir = config_dict.placeholder(str)
    # TFDS data directory; None = TFDS's default.
    c.tfds_data_dir = config_dict.placeholder(str)
    # Tokenizer of a random init ("" = bundled sample vocab); checkpoints bring theirs.
    c.vocab_file = ""
    # With vocab_file: an uncased model, as bert-base-uncased.
    c.do_lower_case = True
    # Informational: the random-init model size.
    c.size = size
    # Used only when init_checkpoint is "".
    c.model = pretraining.model_config(size)
    # Compute dtype; "bfloat16" on TPU/GPU.
    c.dtype = "float32"
    # Storage dtype of the parameters and Adam state.
    c.param_dtype = "float32"
    # Classifier init, dropout (folded with the step) and the order of the examples.
    c.seed = 0
    # Generator of the dropout keys ("rbg" is faster on some TPUs).
    c.prng_impl = "threefry2x32"
    # Persistent XLA compilation cache, shared with pretraining (see configs/pretraining.py).
    c.compilation_cache_dir = pretraining.COMPILATION_CACHE_DIR

    # The paper's recipe.
    # Tokens per example, [CLS] and [SEP]s included; longer pairs are truncated.
    c.max_seq_length = 128
    # Training batches' widths (bert_jax.data.batching.BATCH_LENGTHS; docs/performance.md "Fine-tuning batches"):
    # "full" rows, "trim" each batch to its longest example's rung, "bucket" by length (fastest, another order).
    c.batch_lengths = "full"
    # Global batch, from the paper's {16, 32}.
    c.batch_size = 32
    # Peak, from the paper's {5e-5, 3e-5, 2e-5}.
    c.learning_rate = 2e-5
    # From the paper's {2, 3, 4}; the learning rate decays to 0 at the last step.
    c.num_epochs = 3
    # Linear warmup over the first 10% of the steps, as run_classifier.py.
    c.warmup_fraction = 0.1
    # Hidden and attention dropout, as the paper (overrides the checkpoint's).
    c.dropout = 0.1
    # The original run_classifier.py's optimizer and schedule (docs/pretraining.md: what "adamw" changes).
    c.optimizer = "bert_adam"
    # First-moment decay.
    c.adam_b1 = 0.9
    # Second-moment decay.
    c.adam_b2 = 0.999
    # As the original BERT optimizer.
    c.adam_epsilon = 1e-6
    # Decoupled, not on LayerNorm scales or biases.
    c.weight_decay = 0.01
    # Global-norm clipping, as the original.
    c.max_grad_norm = 1.0

    # The paper's grid, with `sweep`: every combination, each with every seed.
    # True: run the grid below instead of the single setting above.
    c.sweep = False
    # The paper's batch sizes.
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

    # Evaluation and output.
    # Dev/test batch; the last batch is padded so evaluation compiles once.
    c.eval_batch_size = 64
    # Evaluate on dev after every epoch (results.json keeps each; the score is always the final one's).
    c.eval_every_epoch = True
    # Write the leaderboard files (False when GLUE_DIR has no test files).
    c.predict_test = True
    # A workdir holding another run (other settings) is refused; True deletes that run and starts over.
    c.overwrite = False

    # Devices and logging.
    # (data, fsdp, tensor); -1 = all remaining devices: pure data parallel.
    c.mesh_shape = (-1, 1, 1)
    # Train metrics to stdout, TensorBoard and metrics.jsonl this often.
    c.log_every_steps = 50
    # Stop after this many non-finite losses in a row.
    c.max_consecutive_nonfinite = 10

    if size == "tiny":
        # The tokenizer's size: the bundled sample vocab has ~2k tokens.
        c.model.vocab_size = -1
        # Divisible by 8 fake devices, and small enough for mock data sets.
        c.batch_size = 16
        c.eval_batch_size = 16
        # Compact random models need (and tolerate) a larger rate.
        c.learning_rate = 1e-3
        # Short: seconds per epoch on a CPU.
        c.max_seq_length = 64
        c.log_every_steps = 10
    c.lock()
    return c
