"""ELECTRA pretraining (Clark et al. 2020): a small generator corrupts the input, the discriminator learns to tell
which tokens were replaced.

    python -m bert_jax.main --config=electra_small --workdir=DIR \
        --config.data.input_pattern='corpus/*.txt' --config.vocab_file=vocab.txt

The numbers are the paper's (appendix A, table 6, ELECTRA-Small column; `get_config("base")` is
configs/electra_base.py): 1M steps of 128 sequences of 128 tokens; a discriminator of 12 layers of 256 with
128-wide embeddings; a generator 1/4 of its width sharing its embeddings; 15% of the tokens masked; the generator's
MLM loss + 50 x the discriminator's loss (section 2); Adam (beta1 0.9, beta2 0.999, epsilon 1e-6), weight decay
0.01, peak learning rate 5e-4 after 10,000 warmup steps, linear decay; dropout 0.1. The optimizer, clipping
(global norm 1.0) and weight-decay exclusions are google-research/electra's `optimization.create_optimizer`, which
is BERT's (`bert_adam` here). Table 7 is fine-tuning: configs/glue.py with `--config.init_checkpoint=DIR`.

The data path is the family's (bert_jax/data/family_data.py): BERT's WordPiece, uncased, and electra's
build_pretraining_dataset.py examples (`bert_jax.data.electra_examples`: one or two segments of one document, no
NSP; its fixed 5% random-length rule, so the BERT recipe's `data.short_seq_prob` is absent and setting it is the
config's one-line unknown-field error); the masking is electra's `pretrain_helpers.mask`: of the 15% chosen, 85%
become [MASK] and 15% stay, none become a random token.
"""

import ml_collections

from bert_jax.configs import pretraining
from bert_jax.configs.sizes import ELECTRA as PRESETS

# The released discriminator sizes (and a tiny one): bert_jax.configs.sizes.ELECTRA.
SIZES = tuple(PRESETS)
# Table 6 per size: (generator fraction, learning rate, batch, steps, sequence length).
PAPER = {
    "small": (1 / 4, 5e-4, 128, 1_000_000, 128),
    "base": (1 / 3, 2e-4, 256, 766_000, 512),
    "large": (1 / 4, 2e-4, 2048, 400_000, 512),
    "tiny": (1 / 4, 5e-4, 128, 1_000_000, 128),
}


def model_config(size: str) -> ml_collections.ConfigDict:
    """ELECTRA's model fields for one of SIZES: BERT's (pretraining.model_config) with the family's own."""
    m = pretraining.model_config("base")
    # The uncased English WordPiece vocab (BERT's); -1 = the tokenizer's size.
    m.vocab_size = 30522
    # Width of every token representation in the discriminator.
    m.hidden_size = PRESETS[size]["hidden_size"]
    # Transformer encoder layers (the generator has as many: electra's generator_layers 1.0).
    m.num_layers = PRESETS[size]["num_layers"]
    # Attention heads, 64 dimensions each.
    m.num_heads = PRESETS[size]["num_heads"]
    # Feed-forward inner width, 4 x hidden_size.
    m.intermediate_size = PRESETS[size]["intermediate_size"]
    # Table 6: the embedding width (Small's 128 is projected to 256).
    m.embedding_size = PRESETS[size]["embedding_size"]
    # Table 6: the generator's size as a fraction of the discriminator's (hidden size, FFN, heads).
    m.generator_hidden_fraction = PAPER[size][0]
    # Every released recipe gives the generator all the discriminator's layers.
    m.generator_layers_fraction = 1.0
    # electra's `temperature` for the generator's draws: 1 in every released recipe.
    m.generator_temperature = 1.0
    return m


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    """The paper's ELECTRA pretraining recipe for a size in SIZES."""
    # No NSP pairs, so none of their data fields (ELECTRA's examples: bert_jax.data.electra_examples).
    c = pretraining.get_config("base", next_sentence=False)
    # Informational: the name of the model size, for logs and checkpoints.
    c.size = size
    # The model family (bert_jax.models.registry.FAMILIES) whose config `model` holds.
    c.family = "electra"
    c.model = model_config(size)
    # Replaced-token detection: generator MLM loss + 50 x discriminator loss (bert_jax.models.objectives.Rtd).
    c.objective = "rtd"
    _, learning_rate, batch, steps, length = PAPER[size]
    # Table 6: the sequence length (section 3.1: Small at 128, Base and Large at 512).
    c.data.seq_length = length
    # electra's max_predictions_per_seq: int((mask_prob + 0.005) * length).
    c.data.max_predictions_per_seq = int((0.15 + 0.005) * length)
    # One length for the whole run: no 512-token second phase.
    c.data.phase2_fraction = 0.0
    # Table 6: mask 15% (Large: 25%).
    c.data.masked_lm_prob = 0.25 if size == "large" else 0.15
    # electra's pretrain_helpers.mask: 85% of the chosen tokens become [MASK] ...
    c.data.mask_token_fraction = 0.85
    # ... and the other 15% stay as they are (no random tokens: the generator makes the replacements).
    c.data.random_token_fraction = 0.0
    # Table 6.
    c.num_train_steps = steps
    # Table 6.
    c.global_batch_size = batch
    # Table 6: the peak rate, linear decay to 0.
    c.learning_rate = learning_rate
    # Table 6.
    c.warmup_steps = 10_000
    # Held-out generator and discriminator accuracy this often.
    c.eval_every_steps = 10_000
    return c
