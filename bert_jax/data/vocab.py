"""Trains a WordPiece vocab.txt or a SentencePiece model on a corpus in the original format.

    python -m bert_jax.data.vocab --input_file=corpus.txt --output=vocab.txt --vocab_size=30522
    python -m bert_jax.data.vocab --input_file='shards/*.txt' --output=spm --model=sentencepiece

WordPiece uses the `tokenizers` trainer with BERT's normalization (lower-casing optional); the
special tokens come first: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. SentencePiece (unigram)
writes `<output>.model` with the same specials as pieces, ready for `load_tokenizer`; with
lower-casing the model's own normalizer case-folds (`nmt_nfkc_cf`), so every reader of the
.model lower-cases as its training did.

A `--vocab_size` larger than the corpus supports gives the largest vocabulary it does, with a
warning naming both sizes (both trainers), never a crash.
"""

from __future__ import annotations

from absl import app, flags, logging

from bert_jax.data import corpus as corpus_lib

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentences(pattern: str):
    stats = corpus_lib.CorpusStats()
    for doc in corpus_lib.iter_text_documents(pattern, stats):
        yield from doc
    stats.log(f"vocab corpus {pattern}")


def train_wordpiece(
    pattern: str, output: str, vocab_size: int, do_lower_case: bool = True, min_frequency: int = 2
) -> int:
    """Writes a BERT vocab.txt to `output`; returns its size."""
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        lowercase=do_lower_case, strip_accents=None if do_lower_case else False
    )
    tok.train_from_iterator(
        _sentences(pattern),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        limit_alphabet=1000,
        show_progress=False,
    )
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(output, "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)
    _say_if_shrunk(output, len(vocab), vocab_size)
    return len(vocab)


def _say_if_shrunk(output: str, size: int, asked: int) -> None:
    if size < asked:
        logging.warning(
            "%s: the corpus supports %d tokens, not --vocab_size=%d; wrote %d",
            output,
            size,
            asked,
            size,
        )


def train_sentencepiece(
    pattern: str, output_prefix: str, vocab_size: int, do_lower_case: bool = True
) -> str:
    """Writes `<output_prefix>.model` (unigram) with BERT's specials; returns its path.

    The model lower-cases (case folding in its normalizer) when `do_lower_case`.
    """
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(pattern),
        model_prefix=output_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        user_defined_symbols=SPECIALS[2:],
        # Case folding inside the model: the .model itself says it lower-cases.
        normalization_rule_name="nmt_nfkc_cf" if do_lower_case else "nmt_nfkc",
        # A soft limit: a corpus too small for vocab_size gives a smaller vocabulary, not an error.
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = output_prefix + ".model"
    _say_if_shrunk(path, spm.SentencePieceProcessor(model_file=path).get_piece_size(), vocab_size)
    return path


FLAGS = flags.FLAGS


def define_flags():
    """Registers the command-line flags (only when run as a program, so importing is free)."""
    flags.DEFINE_string("input_file", None, "Comma-separated text files/globs (original format).")
    flags.DEFINE_string(
        "output", None, "vocab.txt path (wordpiece) or model prefix (sentencepiece)."
    )
    flags.DEFINE_integer("vocab_size", 30522, "Target vocabulary size.")
    flags.DEFINE_enum("model", "wordpiece", ["wordpiece", "sentencepiece"], "Tokenizer kind.")
    flags.DEFINE_bool("do_lower_case", True, "Lower-case (and strip accents) before training.")
    flags.DEFINE_integer("min_frequency", 2, "WordPiece: minimum count for a merge.")


def main(argv):
    del argv
    if FLAGS.model == "wordpiece":
        n = train_wordpiece(
            FLAGS.input_file,
            FLAGS.output,
            FLAGS.vocab_size,
            FLAGS.do_lower_case,
            FLAGS.min_frequency,
        )
        logging.info("wrote %s (%d tokens)", FLAGS.output, n)
    else:
        path = train_sentencepiece(
            FLAGS.input_file, FLAGS.output, FLAGS.vocab_size, FLAGS.do_lower_case
        )
        logging.info("wrote %s", path)


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["input_file", "output"])
    app.run(main)
