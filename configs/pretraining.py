"""The shared BERT pretraining recipe (MLM + NSP); the size files pick a model size and a few sizes' defaults.

The defaults are the paper's schedule (Devlin et al. 2018, appendix A.2): 1,000,000 steps at a global batch of 256
sequences, 90% of the steps at length 128 (20 predictions) and the last 10% at 512 (80 predictions); AdamW with
beta1 0.9, beta2 0.999, epsilon 1e-6 and weight decay 0.01 (not on LayerNorm or biases); learning rate 1e-4 with
10,000 warmup steps and linear decay to 0; gradient clipping at global norm 1.0; dropout 0.1.

    python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR \
        --config.data.input_pattern='corpus/*.txt' --config.data.vocab_file=vocab.txt

Every field can be overridden on the command line (`--config.learning_rate=2e-4`); the config is locked, so a
misspelt key is an error. docs/configs.md describes every field.
"""

import ml_collections
from ml_collections import config_dict

# Where compiled steps are kept between launches (pretraining and fine-tuning share it).
COMPILATION_CACHE_DIR = "~/.cache/bert_jax/xla"
# (num_layers, hidden_size, num_heads, intermediate_size): the sizes of Turc et al. 2019 and the paper.
SIZES = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def model_config(size: str) -> ml_collections.ConfigDict:
    """BertConfig fields for one of SIZES (all but `dtype`, which is the top-level `config.dtype`)."""
    num_layers, hidden_size, num_heads, intermediate_size = SIZES[size]
    m = ml_collections.ConfigDict()
    m.vocab_size = 30522  # the uncased English WordPiece vocab; -1 = take the tokenizer's size
    m.hidden_size = hidden_size  # width of every token representation
    m.num_layers = num_layers  # Transformer encoder layers
    m.num_heads = (
        num_heads  # attention heads (head size hidden_size / num_heads = 64 for the paper's)
    )
    m.intermediate_size = intermediate_size  # feed-forward inner width, 4 x hidden_size
    m.hidden_act = "gelu"  # exact erf GELU, as the original
    m.hidden_dropout_prob = 0.1  # dropout on embeddings and every residual branch, as the paper
    m.attention_dropout_prob = 0.1  # dropout on attention probabilities, as the paper
    m.max_position_embeddings = 512  # learned absolute positions; phase 2 uses all 512
    m.type_vocab_size = 2  # segments A and B
    m.initializer_range = 0.02  # std of the truncated-normal init
    m.layer_norm_eps = 1e-12  # as the original TF code
    m.param_dtype = (
        "float32"  # parameters and optimizer state stay float32 even with bfloat16 compute
    )
    m.attention_impl = "auto"  # cuDNN flash attention on GPU where possible, plain XLA elsewhere
    m.remat_policy = (
        "none"  # "full"/"dots": recompute layer activations in the backward pass to save memory
    )
    return m


def data_config() -> ml_collections.ConfigDict:
    """Fields of the pretraining input pipeline (`bert_jax.data.loader.make_pretraining_loader`)."""
    d = ml_collections.ConfigDict()
    d.source = (
        "text"  # "text" (one sentence per line, blank line between documents), "instances", "tfds"
    )
    d.input_pattern = ""  # training files or glob (local or gs://); "" = the bundled sample corpus
    # Held-out files for periodic eval; unset = ~2% of the training documents are held out (for the bundled
    # sample corpus, its own held-out file).
    d.eval_input_pattern = config_dict.placeholder(str)
    d.tfds_name = "wikipedia/20230601.en"  # TFDS dataset when source = "tfds"
    d.tfds_split = "train"  # TFDS split when source = "tfds"
    d.tfds_text_key = "text"  # TFDS feature holding the document text
    d.vocab_file = ""  # WordPiece vocab.txt or SentencePiece .model; "" = the bundled sample vocab
    d.do_lower_case = True  # uncased model, as bert-base-uncased
    d.seq_length = 128  # phase 1 sequence length (the paper's first 90% of steps)
    d.max_predictions_per_seq = 20  # phase 1 masked positions per sequence (15% of 128, rounded up)
    d.phase2_seq_length = 512  # phase 2 sequence length (the last 10%), to learn the long positions
    d.phase2_max_predictions_per_seq = 80  # phase 2 masked positions per sequence
    d.phase2_fraction = (
        0.1  # fraction of the steps at phase-2 length; the switch is at round(steps * 0.9)
    )
    d.masked_lm_prob = 0.15  # fraction of tokens masked, as the paper
    d.short_seq_prob = 0.1  # fraction of instances made shorter than seq_length, as the original
    d.whole_word_mask = False  # mask every piece of a word together (the later "wwm" models)
    return d


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's pretraining recipe for a model size in SIZES."""
    c = ml_collections.ConfigDict()
    c.mode = "pretrain"  # what bert_jax.main runs: "pretrain" (fine-tuning configs say "finetune")
    c.size = size  # informational: the name of the model size, for logs and checkpoints
    c.model = model_config(size)
    c.data = data_config()
    c.dtype = (
        "float32"  # compute dtype: "bfloat16" on TPU/GPU (params and optimizer state stay float32)
    )
    c.seed = 0  # parameter init, dropout (folded with the step) and data order
    c.prng_impl = "threefry2x32"  # generator of the dropout keys ("rbg" is faster on some TPUs)
    # Persistent XLA compilation cache: a relaunch (resume, preemption, a second run) loads the compiled
    # steps instead of compiling them again (bert_base on a GPU: ~40 s). "" = no cache. Local or gs://.
    c.compilation_cache_dir = COMPILATION_CACHE_DIR

    # Schedule.
    c.num_train_steps = 1_000_000  # the paper: 1M steps of 256 sequences (~40 epochs of 3.3B words)
    c.global_batch_size = 256  # sequences per step over all hosts and devices
    c.grad_accum_steps = (
        1  # micro-batches per update: the same global batch on fewer devices / less memory
    )
    c.learning_rate = 1e-4  # peak learning rate, as the paper
    c.warmup_steps = 10_000  # linear warmup from 0, then linear decay to 0 at num_train_steps

    # Optimizer.
    c.optimizer = "adamw"  # "adamw" as the paper; "lamb" for very large batches (You et al. 2019)
    c.adam_b1 = 0.9  # first-moment decay
    c.adam_b2 = 0.999  # second-moment decay
    c.adam_epsilon = 1e-6  # as the original BERT optimizer (not Adam's usual 1e-8)
    c.weight_decay = 0.01  # decoupled decay, not on LayerNorm scales/biases or any bias
    c.max_grad_norm = 1.0  # clip the global gradient norm, as the original

    # Devices.
    c.mesh_shape = (
        -1,
        1,
        1,
    )  # (data, fsdp, tensor); -1 = all remaining devices. Default: pure data parallel

    # Checkpoints, logging, evaluation.
    c.checkpoint_every_steps = 10_000  # save (asynchronously) this often, and always at the end
    c.keep_checkpoints = 3  # keep the last K checkpoints
    c.async_checkpoints = True  # write checkpoints in the background while training continues
    c.log_every_steps = 100  # write train metrics (stdout, TensorBoard, metrics.jsonl) this often
    c.eval_every_steps = 10_000  # held-out MLM/NSP accuracy this often, and at the end; 0 = never
    c.eval_batches = 20  # held-out batches per evaluation
    c.max_consecutive_nonfinite = (
        10  # stop after this many non-finite losses in a row (updates are skipped)
    )
    c.preemption_check_every_steps = (
        10  # multi-host: how often hosts agree on a SIGTERM (a tiny all-gather)
    )
    return c
