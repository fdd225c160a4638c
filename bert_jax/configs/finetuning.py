"""What every fine-tuning recipe shares (GLUE, SQuAD, SWAG, CoNLL-2003): the paper's fine-tuning setup (Devlin et
al. 2018, section 4 and appendix A.3), each field and its reason given once here. Not a recipe itself:
configs/glue.py, squad.py, swag.py and conll.py call `get_config` and add their task's own fields.

AdamW (beta1 0.9, beta2 0.999, epsilon 1e-6, weight decay 0.01 off LayerNorm and biases), linear warmup over the
first 10% of the steps then linear decay to 0, gradient clipping at 1.0, dropout 0.1, 3 epochs. The field names
are pretraining's (configs/pretraining.py): `global_batch_size`, `num_train_steps`/`num_epochs`,
`warmup_steps`/`warmup_fraction`, top-level `vocab_file`/`do_lower_case`, `model.*_dropout_prob`.
"""

import ml_collections
from ml_collections import config_dict

from bert_jax.configs import pretraining


def get_config(mode: str, size: str = "base") -> ml_collections.ConfigDict:
    """The shared fine-tuning fields for `mode` (the task bert_jax.main runs); `size` picks the random-init
    model (configs/pretraining.py SIZES). Unlocked: the task recipe adds its fields, then locks it."""
    c = ml_collections.ConfigDict()
    # What bert_jax.main runs: "finetune"/"glue_suite" (GLUE), "squad", "swag" or "conll" (bert_jax.tasks).
    c.mode = mode
    # Where the weights come from: a bert_jax workdir, a transformers-layout directory or a TF1 checkpoint.
    # "" = random init of `model` below, only good for smoke tests.
    c.init_checkpoint = ""
    # The task's files (local or gs://); None = its TFDS data set, where there is one.
    c.data_dir = config_dict.placeholder(str)
    # TFDS data directory; None = TFDS's default.
    c.tfds_data_dir = config_dict.placeholder(str)
    # Tokenizer of a random init: WordPiece vocab.txt or SentencePiece .model ("" = the bundled sample vocab);
    # checkpoints bring theirs.
    c.vocab_file = ""
    # With vocab_file: an uncased model, as bert-base-uncased.
    c.do_lower_case = True
    # Informational: the random-init model size.
    c.size = size
    # The random-init model's family (bert_jax.models.registry.FAMILIES); a checkpoint brings its own.
    c.family = "bert"
    # The random-init model (used whole only when init_checkpoint is ""); from a checkpoint the weights' own
    # architecture is kept and only the run's fields (dropout, attention kernel, remat, scan) are read here.
    # Its hidden_dropout_prob and attention_dropout_prob (0.1, as the paper) override the checkpoint's.
    c.model = pretraining.model_config(size)
    # Compute dtype; "bfloat16" on TPU/GPU.
    c.dtype = "float32"
    # Storage dtype of the parameters and Adam state.
    c.param_dtype = "float32"
    # Head init, dropout (folded with the step) and the order of the examples.
    c.seed = 0
    # Generator of the dropout keys ("rbg" is faster on some TPUs).
    c.prng_impl = "threefry2x32"
    # Persistent XLA compilation cache, shared with pretraining (see configs/pretraining.py).
    c.compilation_cache_dir = pretraining.COMPILATION_CACHE_DIR

    # The paper's recipe; the task recipes set their own length, batch and learning rate.
    # Tokens per example, [CLS] and [SEP]s included; longer inputs are truncated or split.
    c.max_seq_length = 128
    # Training batches' widths (bert_jax.data.batching.BATCH_LENGTHS; docs/performance.md "Fine-tuning batches"):
    # "full" rows as the paper, "trim" each batch to its longest example's rung, "bucket" by length (fastest,
    # another order). Eval and predict always use full rows, so dev scores do not depend on it.
    c.batch_lengths = "full"
    # Micro-batches per update (train_lib.accumulate_gradients): the same global batch on fewer devices or less
    # memory; 1 is the paper's plain step.
    c.grad_accum_steps = 1
    # Examples per step over all hosts and devices, from the paper's {16, 32}.
    c.global_batch_size = 32
    # Peak, from the paper's {5e-5, 3e-5, 2e-5}.
    c.learning_rate = 2e-5
    # From the paper's {2, 3, 4}; the learning rate decays to 0 at the last step. Exactly one of num_epochs
    # and num_train_steps is set.
    c.num_epochs = 3
    # Instead of num_epochs: train this many steps (epochs as far as they go), e.g. for a quick check.
    c.num_train_steps = config_dict.placeholder(int)
    # Linear warmup over the first 10% of the steps, as run_classifier.py. Exactly one of warmup_fraction and
    # warmup_steps is set.
    c.warmup_fraction = 0.1
    # Instead of warmup_fraction: a warmup of this many steps.
    c.warmup_steps = config_dict.placeholder(int)
    # The original run_classifier.py's optimizer, the same fields as pretraining's (one place for them).
    pretraining.optimizer_fields(c)

    # Evaluation and output.
    # Dev/test examples per batch; the last batch is padded so evaluation compiles once.
    c.eval_batch_size = 64
    # Evaluate on dev after every epoch (results.json keeps each; the score is always the final one's).
    c.eval_every_epoch = True
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
        c.global_batch_size = 16
        c.eval_batch_size = 16
        # Compact random models need (and tolerate) a larger rate.
        c.learning_rate = 1e-3
        # Short: seconds per epoch on a CPU.
        c.max_seq_length = 64
        c.log_every_steps = 10
    return c
