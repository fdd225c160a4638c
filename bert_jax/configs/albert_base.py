"""ALBERT pretraining (Lan et al. 2020): factorized embeddings, one layer shared by all, MLM + sentence order.

    python -m bert_jax.main --config=albert_base --workdir=DIR --config.vocab_file=PATH/30k-clean.model

The numbers are the paper's (section 4.1, "Experimental setup") and google-research/albert's (README and
run_pretraining.py flags): 125k steps of 4096 sequences of up to 512 tokens (10% made shorter), LAMB with peak
learning rate 0.00176 after 3,125 warmup steps and a linear (power 1) decay to 0, weight decay 0.01, epsilon 1e-6,
gradients clipped at global norm 1.0; a 30k-piece SentencePiece vocabulary; 15% of the tokens masked as n-grams
(n <= 3, p(n) proportional to 1/n) of whole words, at most 20 per sequence; sentence-order prediction on pairs of
consecutive segments, swapped half the time. `get_config("large")` / `"xxlarge"` give the other released sizes
(same schedule: the paper trains every size for 125k steps at batch 4096).

The model fields are `bert_jax.models.albert.AlbertConfig`'s. Masks are drawn afresh every step from text (the
original writes static instances with dupe_factor 40): with 125k steps over ~30 epochs of its 16 GB, every
sequence is seen under ~30 masks either way.
"""

from pathlib import Path

import ml_collections

from bert_jax.configs import pretraining
from bert_jax.configs.sizes import ALBERT as PRESETS

# The released sizes (and a tiny one): bert_jax.configs.sizes.ALBERT.
SIZES = tuple(PRESETS)
# The bundled 1,000-piece SentencePiece model with ALBERT's special ids (bert_jax/data/albert_vocab.py says how it
# was trained); albert-base-v2's own is the 30k-piece `30k-clean.model` of the released checkpoints.
SAMPLE_SPM = str(Path(__file__).resolve().parent.parent / "assets" / "albert_sample_spm.model")


def model_config(size: str) -> ml_collections.ConfigDict:
    """ALBERT's model fields for one of SIZES: BERT's (pretraining.model_config) with the family's differences."""
    m = pretraining.model_config("base")
    # Section 4.1: a 30,000-piece SentencePiece vocabulary (Kudo & Richardson 2018); -1 = the tokenizer's size.
    m.vocab_size = 30000
    # Width of the hidden representations (table 1).
    m.hidden_size = PRESETS[size]["hidden_size"]
    # Passes through the one shared layer (table 1).
    m.num_layers = PRESETS[size]["num_layers"]
    # Attention heads (table 1's models: head size 64).
    m.num_heads = PRESETS[size]["num_heads"]
    # Feed-forward inner width, 4 x hidden_size.
    m.intermediate_size = PRESETS[size]["intermediate_size"]
    # Section 3.1: the factorized embedding's width E (128 in every released model).
    m.embedding_size = PRESETS[size]["embedding_size"]
    # The released configs' activation: GELU's tanh approximation (albert_config.json "gelu_new").
    m.hidden_act = "gelu_new"
    # Section 4.9: dropout removed (the v2 models' albert_config.json: 0).
    m.hidden_dropout_prob = 0.0
    # Section 4.9, as above.
    m.attention_dropout_prob = 0.0
    # The SOP classifier's dropout (transformers' AlbertConfig default, the released configs' value).
    m.classifier_dropout_prob = 0.1
    # One group of one layer shared by all passes: the paper's all-shared setting (table 4), as released.
    m.num_hidden_groups = 1
    # Layers per group, as released.
    m.inner_group_num = 1
    return m


def get_config(size: str = "base") -> ml_collections.ConfigDict:
    """The paper's ALBERT pretraining recipe for a size in SIZES."""
    c = pretraining.get_config("base")
    # Informational: the model size, for logs and checkpoints.
    c.size = size
    # The model family (bert_jax.models.registry.FAMILIES) whose config `model` holds.
    c.family = "albert"
    c.model = model_config(size)
    # Section 4.1: masked LM + sentence-order prediction (section 3.1, "Inter-sentence coherence loss").
    c.objective = "mlm_sop"
    # A SentencePiece .model with ALBERT's ids (<pad> 0, <unk> 1, [CLS] 2, [SEP] 3, [MASK] 4): give the 30k one.
    c.vocab_file = SAMPLE_SPM
    # The released v2 models are uncased (their SentencePiece model folds case too).
    c.do_lower_case = True
    # Section 4.1: inputs of at most 512 tokens, one length throughout (no second phase).
    c.data.seq_length = 512
    # google-research/albert's README: --max_predictions_per_seq=20 with --max_seq_length=512.
    c.data.max_predictions_per_seq = 20
    # One length for the whole run.
    c.data.phase2_fraction = 0.0
    # Section 4.1: 10% of the inputs shorter than 512 (create_pretraining_data's short_seq_prob).
    c.data.short_seq_prob = 0.1
    # create_pretraining_data's default do_whole_word_mask=True: n-grams are of whole words.
    c.data.whole_word_mask = True
    # Section 3.1 (SOP): two consecutive segments of one document, swapped with probability 1/2 (label 1).
    c.data.sentence_order = True
    # Section 4.1: n-gram masking with n <= 3, p(n) proportional to 1/n (Joshi et al. 2019).
    c.data.max_ngram = 3
    # Section 4.1: 125,000 steps for every model.
    c.num_train_steps = 125_000
    # Section 4.1: batch size 4096.
    c.global_batch_size = 4096
    # 4096 = 16 micro-batches of 256 x 512 tokens; lower it where more fits per step.
    c.grad_accum_steps = 16
    # Section 4.1: LAMB with learning rate 0.00176.
    c.learning_rate = 0.00176
    # google-research/albert's README: --warmup_steps=3125.
    c.warmup_steps = 3125
    # google-research/albert's LAMBOptimizer (run_pretraining.py's default --optimizer=lamb).
    c.optimizer = "albert_lamb"
    # optimization.py: beta_1=0.9.
    c.adam_b1 = 0.9
    # optimization.py: beta_2=0.999.
    c.adam_b2 = 0.999
    # optimization.py: epsilon=1e-6.
    c.adam_epsilon = 1e-6
    # optimization.py: weight_decay_rate=0.01, excluding LayerNorm and biases.
    c.weight_decay = 0.01
    # optimization.py: tf.clip_by_global_norm(grads, clip_norm=1.0).
    c.max_grad_norm = 1.0
    return c
