"""ALBERT's SentencePiece vocabulary: training one as google-research/albert's README does, and its word rule.

The released ALBERT models use a 30,000-piece unigram SentencePiece model whose first ids are `<pad>` 0, `<unk>` 1,
`[CLS]` 2, `[SEP]` 3, `[MASK]` 4 (no BOS/EOS). `train_sentencepiece` trains one with those ids from text files,
reproducibly (one thread, no input sampling or shuffling: the same corpus and options give the same bytes).
The bundled `bert_jax/assets/albert_sample_spm.model` (1,000 pieces) is

    python -c "from bert_jax.data import albert_vocab; albert_vocab.train_sentencepiece(
        ['bert_jax/assets/sample_corpus.txt'], 'bert_jax/assets/albert_sample_spm', 1000)"

`word_starts` is ALBERT's rule for where a whole word begins (create_pretraining_data's `_is_start_piece_sp`),
which n-gram masking groups pieces by. Pure NumPy (the `sentencepiece` library only when training).
"""

from __future__ import annotations

import numpy as np

# ALBERT's punctuation pieces, each a word of its own (create_pretraining_data.py's `special_pieces`). The original
# also adds "€" and "£", but as UTF-8 bytes, which no (str) piece equals under Python 3: they count as foreign
# characters there (a word start wherever they appear), so here too (the golden files of tests/golden hold such a
# piece).
PUNCTUATION = frozenset('!"#$%&"()*+,-./:;?@[\\]^_`{|}~')
_ENGLISH = frozenset("abcdefghijklmnopqrstuvwxyz")


def train_sentencepiece(inputs, model_prefix: str, vocab_size: int) -> str:
    """Trains a unigram SentencePiece model with ALBERT's special ids on `inputs` (text files, one sentence a
    line); writes `model_prefix`.model and .vocab and returns the .model path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in inputs),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        # ALBERT's ids: <pad> 0, <unk> 1, then [CLS], [SEP], [MASK] as control symbols 2, 3, 4; no BOS/EOS.
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        # Lower-cased as albert-base-v2 ("nmt_nfkc_cf" folds case inside the model).
        normalization_rule_name="nmt_nfkc_cf",
        character_coverage=1.0,
        # Reproducible: every sentence read, in file order, on one thread.
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    return f"{model_prefix}.model"


def is_word_start(piece: str) -> bool:
    """ALBERT's `_is_start_piece_sp`: a piece begins a word when it carries SentencePiece's "▁", is a control
    piece ("<...>"), a punctuation piece, or holds any character that is neither an English letter nor
    punctuation (foreign characters are each a word)."""
    if piece.startswith(("\u2581", "<")) or piece in PUNCTUATION:
        return True
    return not all(c.lower() in _ENGLISH or c in PUNCTUATION for c in piece)


def word_starts(tokenizer) -> np.ndarray:
    """Bool [vocab_size]: for a SentencePiece tokenizer `is_word_start` of every piece, for any other the
    tokenizer's own rule (WordPiece: not "##", ALBERT's `_is_start_piece_bert`); specials count as starts."""
    from bert_jax.data.tokenizer import SentencePieceTokenizer

    if isinstance(tokenizer, SentencePieceTokenizer):
        pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        starts = np.array([is_word_start(piece) for piece in pieces])
    else:
        starts = ~np.asarray(tokenizer.is_continuation)
    starts[list(tokenizer.special_ids)] = True
    return starts
