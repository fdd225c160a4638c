"""The shared BERT pretraining recipe (MLM + NSP); the size files pick a model size and a few sizes' defaults.

The defaults are the paper's schedule (Devlin et al. 2018, appendix A.2): 1,000,000 steps at a global batch of 256
sequences, 90% of the steps at length 128 (20 predictions) and the last 10% at 512 (80 predictions); AdamW with
beta1 0.9, beta2 0.999, epsilon 1e-6 and weight decay 0.01 (not on LayerNorm or biases); learning rate 1e-4 with
10,000 warmup steps and linear decay to 0; gradient clipping at global norm 1.0; dropout 0.1.

    python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR \
        --config.data.input_pattern='corpus/*.txt' --config.vocab_file=vocab.txt

Every field can be overridden on the command line (`--config.learning_rate=2e-4`); the config is locked, so a
misspelt key is an error. docs/configs.md describes every field.
"""

import ml_collections
from ml_collections import config_dict

from bert_jax.configs.sizes import BERT as PRESETS

# Where compiled steps are kept between launches (pretraining and fine-tuning share it).
COMPILATION_CACHE_DIR = "~/.cache/bert_jax/xla"
# The model sizes: BERT-Tiny ... BERT-Large (the one table lives in bert_jax.configs.sizes, plain data).
SIZES = tuple(PRESETS)


def model_config(size: str) -> ml_collections.ConfigDict:
    """The BERT family's model fields for one of SIZES (the two dtypes are top-level fields: `dtype`, `param_dtype`)."""
    m = ml_collections.ConfigDict()
    # The uncased English WordPiece vocab; -1 = take the tokenizer's size.
    m.vocab_size = 30522
    # Width of every token representation.
    m.hidden_size = PRESETS[size]["hidden_size"]
    # Transformer encoder layers.
    m.num_layers = PRESETS[size]["num_layers"]
    # Attention heads (head size hidden_size / num_heads = 64 for the paper's models).
    m.num_heads = PRESETS[size]["num_heads"]
    # Feed-forward inner width, 4 x hidden_size.
    m.intermediate_size = PRESETS[size]["intermediate_size"]
    # Exact erf GELU, as the original.
    m.hidden_act = "gelu"
    # Dropout on embeddings and every residual branch, as the paper.
    m.hidden_dropout_prob = 0.1
    # Dropout on attention probabilities, as the paper.
    m.attention_dropout_prob = 0.1
    # Learned absolute positions; phase 2 uses all 512.
    m.max_position_embeddings = 512
    # Segments A and B.
    m.type_vocab_size = 2
    # Std of the truncated-normal init.
    m.initializer_range = 0.02
    # As the original TF code.
    m.layer_norm_eps = 1e-12
    # cuDNN flash attention on GPU where possible, plain XLA elsewhere.
    m.attention_impl = "auto"
    # "full"/"dots": recompute layer activations in the backward pass to save memory.
    m.remat_policy = "none"
    # One nn.scan over stacked layer weights: XLA compiles one layer instead of num_layers (much faster
    # compiles, same numbers); checkpoints for transformers stay per layer (convert stacks/unstacks).
    m.scan_layers = False
    # The word-embedding gradient: "scatter" (autodiff of the lookup) or "sorted" (a segmented sum with
    # one add per distinct id: on a GPU, padded batches' pad-id rows no longer collide; equal up to the
    # order of float32 additions). Which is faster on a GPU is still to be measured (docs/performance.md).
    m.embedding_gradient = "scatter"
    return m


def data_config(next_sentence: bool = True) -> ml_collections.ConfigDict:
    """Fields of the pretraining input pipeline (`bert_jax.data.loader.make_pretraining_loader`); without
    `next_sentence`, none of the NSP pairs' fields (a family without NSP has none to misconfigure)."""
    d = ml_collections.ConfigDict()
    # "text" (one sentence per line, blank line between documents), "tfds", or "instances" (files of
    # create_pretraining_data: bert_jax's ArrayRecord or the original tool's TFRecords).
    d.source = "text"
    # Training files or glob (local or gs://); "" = the bundled sample corpus. For "instances", the
    # phase-1 files (--max_seq_length=128, as the original README's first run).
    d.input_pattern = ""
    # Phase-2 instance files (--max_seq_length=512, the original README's second run); required with
    # source "instances" when phase2_fraction > 0, each file checked to hold phase2_seq_length tokens.
    d.phase2_input_pattern = config_dict.placeholder(str)
    # Held-out files (text or instances, like the source) for periodic eval; unset = held out of the
    # training data: documents for text/TFDS (for the bundled corpus, its own held-out file), the
    # last records for instance files.
    d.eval_input_pattern = config_dict.placeholder(str)
    # Unset eval_input_pattern: 1 in this many documents (by content hash), or the last 1/this of the
    # instance records, is held out (~2%).
    d.eval_holdout_modulus = 50
    # "dynamic": fresh masks every step (RoBERTa's choice; the only one for text/TFDS, which store no
    # masks); "static": train on the masks stored in instance files (the paper's setup, with
    # dupe_factor=10 masks per sequence). Dynamic is the default: one behaviour for every source, and
    # RoBERTa found it comparable or slightly better (Liu et al. 2019, table 1).
    d.masking = "dynamic"
    # A record file that is truncated or fails its checksum is an error naming file and offset; True
    # skips the bad records instead (counted and logged), for data you cannot regenerate.
    d.skip_corrupt_records = False
    # TFDS dataset when source = "tfds".
    d.tfds_name = "wikipedia/20230601.en"
    # TFDS split when source = "tfds".
    d.tfds_split = "train"
    # TFDS feature holding the document text.
    d.tfds_text_key = "text"
    # TFDS data directory; unset = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    d.tfds_data_dir = config_dict.placeholder(str)
    # Phase-1 sequence length (the paper's first 90% of steps).
    d.seq_length = 128
    # Phase-1 masked positions per sequence (15% of 128, rounded up).
    d.max_predictions_per_seq = 20
    # Phase-2 sequence length (the last 10%), to learn the long positions.
    d.phase2_seq_length = 512
    # Phase-2 masked positions per sequence.
    d.phase2_max_predictions_per_seq = 80
    # Fraction of the steps at phase-2 length; the switch is at round(steps * (1 - this)).
    d.phase2_fraction = 0.1
    # Fraction of tokens masked, as the paper.
    d.masked_lm_prob = 0.15
    if next_sentence:
        # Fraction of instances made shorter than seq_length, as the original.
        d.short_seq_prob = 0.1
    # Mask every piece of a word together (the later "wwm" models).
    d.whole_word_mask = False
    # Pack several sequences into each row (bert_jax.data.packing): the bundled corpus's batches are 48%
    # padding at 128 and 87% at 512, Wikipedia's ~50% at 512 (Krell et al. 2021). A step keeps its
    # global_batch_size sequences, only their layout changes; per-step losses equal unpacked ones
    # (tests/packing_equality_test.py). The choice for real runs (docs/data.md); off here so that the CPU
    # quick start and the tests keep one compiled shape per phase.
    d.packing = False
    # With packing, at most this many sequences share a row: 16 so the bundled corpus's 512-token phase
    # (~7.5 sequences' worth of tokens per row) packs to under 5% padding; Krell et al. used 3 for Wikipedia.
    d.max_sequences_per_row = 16
    return d


def optimizer_fields(c: ml_collections.ConfigDict) -> None:
    """The paper's optimizer fields, the same for pretraining and fine-tuning (run_pretraining.py and
    run_classifier.py share one optimizer); configs/finetuning.py calls this too."""
    # The original code's Adam (no bias correction, its warmup/decay formula); "adamw" = optax's
    # bias-corrected AdamW; "lamb" for very large batches (You et al. 2019). docs/pretraining.md compares them.
    c.optimizer = "bert_adam"
    # First-moment decay.
    c.adam_b1 = 0.9
    # Second-moment decay.
    c.adam_b2 = 0.999
    # As the original BERT optimizer (not Adam's usual 1e-8).
    c.adam_epsilon = 1e-6
    # Decoupled decay, not on LayerNorm scales/biases or any bias.
    c.weight_decay = 0.01
    # Clip the global gradient norm, as the original.
    c.max_grad_norm = 1.0


def get_config(size: str = "base", next_sentence: bool = True) -> ml_collections.ConfigDict:
    """The paper's pretraining recipe for a model size in SIZES."""
    c = ml_collections.ConfigDict()
    # What bert_jax.main runs: "pretrain" (fine-tuning configs say "finetune").
    c.mode = "pretrain"
    # Informational: the name of the model size, for logs and checkpoints.
    c.size = size
    # The model family (bert_jax.models.registry.FAMILIES) whose config `model` holds; a family's recipe sets it.
    c.family = "bert"
    c.model = model_config(size)
    # The pretraining objective (bert_jax.models.objectives): "mlm_nsp" = masked LM + next sentence prediction,
    # the paper's; the field lets a family bring its own (MLM alone, replaced-token detection) without a new loop.
    c.objective = "mlm_nsp"
    c.data = data_config(next_sentence)
    # The tokenizer: WordPiece vocab.txt or SentencePiece .model; "" = the bundled sample vocab. The loader
    # tokenizes with it and the workdir keeps it (fine-tuning recipes name theirs with the same two fields).
    c.vocab_file = ""
    # Uncased model, as bert-base-uncased.
    c.do_lower_case = True
    # Compute dtype: "bfloat16" on TPU/GPU. Softmax, LayerNorm statistics and losses stay float32.
    c.dtype = "float32"
    # Storage dtype of the parameters, and so of the optimizer state: float32 even with bfloat16 compute.
    c.param_dtype = "float32"
    # Continue pretraining from a bert_jax workdir, a transformers directory or a TF1 checkpoint (its encoder
    # and MLM/NSP heads; shapes must match `model`); "" = random init. Used only when WORKDIR has no checkpoint.
    c.init_checkpoint = ""
    # Parameter init, dropout (folded with the step) and data order.
    c.seed = 0
    # Generator of the dropout keys ("rbg" is faster on some TPUs).
    c.prng_impl = "threefry2x32"
    # Persistent XLA compilation cache: a relaunch (resume, preemption, a second run) loads the compiled
    # steps instead of compiling them again (bert_base on a GPU: ~40 s). "" = no cache. Local or gs://.
    c.compilation_cache_dir = COMPILATION_CACHE_DIR

    # Schedule.
    # The paper: 1M steps of 256 sequences (~40 epochs of 3.3B words).
    c.num_train_steps = 1_000_000
    # Fine-tuning's other way to give the run length; unset here (a pretraining stream has no epochs).
    c.num_epochs = config_dict.placeholder(int)
    # Sequences per step over all hosts and devices.
    c.global_batch_size = 256
    # Micro-batches per update: the same global batch on fewer devices / less memory.
    c.grad_accum_steps = 1
    # Peak learning rate, as the paper.
    c.learning_rate = 1e-4
    # Linear warmup from 0, then linear decay to 0 at num_train_steps.
    c.warmup_steps = 10_000
    # Instead of warmup_steps: a warmup over this fraction of num_train_steps (fine-tuning's habit).
    c.warmup_fraction = config_dict.placeholder(float)

    # Optimizer.
    optimizer_fields(c)

    # Devices.
    # (data, fsdp, tensor); -1 = all remaining devices. Default: pure data parallel.
    c.mesh_shape = (-1, 1, 1)
    # Multi-slice: the (data, fsdp, tensor) mesh of slices over the data-center network (DCN); mesh_shape is
    # then the mesh inside one slice. (2, 1, 1) = data parallel across 2 slices. All ones = one slice.
    c.dcn_mesh_shape = (1, 1, 1)

    # Checkpoints, logging, evaluation.
    # Save (asynchronously) this often, and always at the end.
    c.checkpoint_every_steps = 10_000
    # Keep the last K checkpoints.
    c.keep_checkpoints = 3
    # Write checkpoints in the background while training continues.
    c.async_checkpoints = True
    # Write train metrics (stdout, TensorBoard, metrics.jsonl) this often.
    c.log_every_steps = 100
    # Held-out MLM/NSP accuracy this often, and at the end; 0 = never.
    c.eval_every_steps = 10_000
    # Held-out batches per evaluation.
    c.eval_batches = 20
    # Stop after this many non-finite losses in a row (updates are skipped).
    c.max_consecutive_nonfinite = 10
    # Multi-host: how often hosts agree on a SIGTERM (a tiny all-gather).
    c.preemption_check_every_steps = 10
    return c
