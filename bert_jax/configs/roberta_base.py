"""RoBERTa pretraining (Liu et al. 2019): BERT's encoder trained longer, on bigger batches, with masked LM alone.

The numbers are the paper's (appendix, table 9, RoBERTa-Base column; `get_config("large")` the Large column):
500k steps of 8k sequences of 512 tokens; AdamW with beta2 0.98, epsilon 1e-6, weight decay 0.01; peak learning
rate 6e-4 after 24k warmup steps, linear decay; dropout 0.1; no gradient clipping. Inputs are FULL-SENTENCES
(section 4.2: contiguous sentences up to 512 tokens, crossing document boundaries with a separator) over a
byte-level BPE (section 4.4), masked dynamically (section 4.1), with no next sentence prediction (4.2).

    python -m bert_jax.main --config=roberta_base --workdir=DIR \
        --config.data.input_pattern='corpus/*.txt' --config.vocab_file=ROBERTA_BPE_DIR

The data path is the family's (bert_jax/data/family_data.py): FULL-SENTENCES rows masked per step as fairseq's
MaskTokensDataset (docs/models.md, RoBERTa). The family's model fields are `bert_jax.models.roberta.RobertaConfig`'s; the BERT recipe's NSP field
(`data.short_seq_prob`) is absent, so setting it is the config's one-line unknown-field error.
"""

import ml_collections

from bert_jax.configs import pretraining
from bert_jax.configs.sizes import ROBERTA as PRESETS

# The released sizes (and a tiny one): bert_jax.configs.sizes.ROBERTA.
SIZES = tuple(PRESETS)
# Table 9: the peak learning rate and warmup steps per size (the tiny one's are set by its recipe).
SCHEDULE = {"base": (6e-4, 24_000), "large": (4e-4, 30_000), "tiny": (6e-4, 24_000)}


def model_config(size: str) -> ml_collections.ConfigDict:
    """RoBERTa's model fields for one of SIZES: BERT's (pretraining.model_config) with the family's differences."""
    m = pretraining.model_config("base")
    # The released byte-level BPE's 50,265 tokens (fairseq's GPT-2 dictionary); -1 = the tokenizer's size.
    m.vocab_size = 50265
    # Width of every token representation.
    m.hidden_size = PRESETS[size]["hidden_size"]
    # Transformer encoder layers.
    m.num_layers = PRESETS[size]["num_layers"]
    # Attention heads (head size 64 for the released models).
    m.num_heads = PRESETS[size]["num_heads"]
    # Feed-forward inner width, 4 x hidden_size.
    m.intermediate_size = PRESETS[size]["intermediate_size"]
    # 512 token positions numbered past the padding id (fairseq's make_positions): 512 + pad_token_id + 1.
    m.max_position_embeddings = 514
    # One token type: no sentence pairs in pretraining.
    m.type_vocab_size = 1
    # PyTorch's LayerNorm default, which fairseq keeps.
    m.layer_norm_eps = 1e-5
    # fairseq's dictionary order: <s>=0, <pad>=1, </s>=2, <unk>=3.
    m.pad_token_id = 1
    return m


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's RoBERTa pretraining recipe for a size in SIZES."""
    # No next-sentence pairs: the data config has no NSP fields (a RoBERTa recipe given one is an error).
    c = pretraining.get_config(size, next_sentence=False)
    # The model family (bert_jax.models.registry.FAMILIES) whose config `model` holds.
    c.family = "roberta"
    c.model = model_config(size)
    # Masked LM alone: the paper drops next sentence prediction (section 4.2, table 2).
    c.objective = "mlm"
    # A byte-level BPE directory (vocab.json + merges.txt); "" = the bundled one trained on the sample corpus
    # (bert_jax/assets/sample_bpe, as bert_base's "" is the sample WordPiece). The paper's is GPT-2's 50k BPE:
    # --config.vocab_file=DIR with the released vocab.json + merges.txt (e.g. a transformers roberta-base dir).
    c.vocab_file = ""
    # Byte-level BPE is cased, as GPT-2's (the field is for WordPiece; a BPE directory ignores it).
    c.do_lower_case = False
    # Every sequence is 512 tokens (FULL-SENTENCES); one length, so no second phase.
    c.data.seq_length = 512
    # 15% of 512, rounded up (fairseq draws int(0.15 * 512 + U[0, 1)) <= 77 positions).
    c.data.max_predictions_per_seq = 77
    # No 512-token second phase: the whole run is at 512.
    c.data.phase2_fraction = 0.0
    # Fresh masks every time a sequence is seen (section 4.1), fairseq's 80/10/10 replacement.
    c.data.masking = "dynamic"
    # Table 9: 500k updates.
    c.num_train_steps = 500_000
    # Table 9: 8k sequences per update.
    c.global_batch_size = 8192
    # 8192 = 32 micro-batches of 256 x 512 tokens (BERT's batch); lower it where more fits per step.
    c.grad_accum_steps = 32
    # Table 9: the peak rate for this size.
    c.learning_rate = SCHEDULE[size][0]
    # Table 9: linear warmup for this size, then linear decay to 0.
    c.warmup_steps = SCHEDULE[size][1]
    # Bias-corrected AdamW, as fairseq's Adam with decoupled weight decay.
    c.optimizer = "adamw"
    # Table 9.
    c.adam_b1 = 0.9
    # Table 9: 0.98 (not 0.999) for stability with large batches (section 3.1).
    c.adam_b2 = 0.98
    # Table 9.
    c.adam_epsilon = 1e-6
    # Table 9.
    c.weight_decay = 0.01
    # Table 9: gradient clipping 0.0, i.e. none.
    c.max_grad_norm = 0.0
    return c
