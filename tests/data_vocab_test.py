"""Vocabulary training (WordPiece and SentencePiece) and the loader on the trained tokenizers."""

import numpy as np

from bert_jax.configs.pretraining import data_config
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import loader as loader_lib
from bert_jax.data import vocab as vocab_lib
from bert_jax.data.tokenizer import SentencePieceTokenizer, WordPieceTokenizer, load_tokenizer


def test_wordpiece_training_matches_the_bundled_vocab(tmp_path):
    out = tmp_path / "vocab.txt"
    n = vocab_lib.train_wordpiece(str(corpus_lib.SAMPLE_CORPUS), str(out), vocab_size=4000)
    # The trainer breaks frequency ties in hash order, so runs differ in a few rare pieces.
    mine, bundled = out.read_text().split("\n"), corpus_lib.SAMPLE_VOCAB.read_text().split("\n")
    assert mine[:5] == bundled[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(set(mine) & set(bundled)) > 0.97 * len(bundled) and abs(n - len(bundled)) < 20
    tok = load_tokenizer(str(out))
    assert isinstance(tok, WordPieceTokenizer) and tok.vocab_size == n
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    ids = tok.encode("The river floods in spring.")
    assert tok.unk_id not in ids and tok.decode(ids) == "the river floods in spring."


def test_sentencepiece_training_and_loader_with_whole_word_masking(tmp_path):
    path = vocab_lib.train_sentencepiece(
        str(corpus_lib.SAMPLE_EVAL_CORPUS), str(tmp_path / "sp"), vocab_size=300
    )
    tok = load_tokenizer(path, do_lower_case=True)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 300
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.encode("The River") == tok.encode("the river")  # lower-cased like its training
    cfg = data_config()
    cfg.update(
        dict(
            source="text",
            input_pattern=str(corpus_lib.SAMPLE_EVAL_CORPUS),
            seq_length=64,
            max_predictions_per_seq=10,
            phase2_fraction=0.0,
            whole_word_mask=True,
        )
    )
    batch = loader_lib.make_pretraining_loader(
        cfg, vocab_file=path, global_batch_size=64, num_train_steps=10
    ).batch(0)
    ids, pos = batch["input_ids"], batch["masked_lm_positions"]
    valid = batch["masked_lm_weights"] > 0
    chosen = np.zeros(ids.shape, bool)
    rows = np.broadcast_to(np.arange(len(ids))[:, None], pos.shape)
    chosen[rows[valid], pos[valid]] = True
    original = ids.copy()
    original[rows[valid], pos[valid]] = batch["masked_lm_ids"][valid]
    cont = tok.is_continuation[original]
    cont[:, 1:] &= ~np.isin(original[:, :-1], tok.special_ids)
    # Whole words: a continuation piece is chosen exactly when the piece before it is.
    assert (chosen[:, :-1] == chosen[:, 1:])[cont[:, 1:]].all()
    assert cont.sum() > 100 and valid.sum() > 64


def test_sentencepiece_vocab_size_beyond_the_corpus_shrinks_and_says_so(tmp_path, caplog):
    path = vocab_lib.train_sentencepiece(
        str(corpus_lib.SAMPLE_EVAL_CORPUS), str(tmp_path / "big"), vocab_size=50_000
    )
    tok = load_tokenizer(path)  # no do_lower_case: the model says it lower-cases
    assert 300 < tok.vocab_size < 50_000
    assert tok.do_lower_case and tok.encode("The RIVER") == tok.encode("the river")
    warned = [r.getMessage() for r in caplog.records if "--vocab_size=50000" in r.getMessage()]
    assert warned == [
        f"{path}: the corpus supports {tok.vocab_size} tokens, not --vocab_size=50000; "
        f"wrote {tok.vocab_size}"
    ]
    cased = vocab_lib.train_sentencepiece(
        str(corpus_lib.SAMPLE_EVAL_CORPUS), str(tmp_path / "cased"), 300, do_lower_case=False
    )
    cased_tok = load_tokenizer(cased)
    assert not cased_tok.do_lower_case
    assert cased_tok.encode("The River") != cased_tok.encode("the river")


def test_wordpiece_vocab_size_beyond_the_corpus_says_so(tmp_path, caplog):
    out = tmp_path / "vocab.txt"
    n = vocab_lib.train_wordpiece(str(corpus_lib.SAMPLE_EVAL_CORPUS), str(out), vocab_size=50_000)
    assert n < 50_000 and len(out.read_text().splitlines()) == n
    assert any(
        r.getMessage()
        == f"{out}: the corpus supports {n} tokens, not --vocab_size=50000; wrote {n}"
        for r in caplog.records
    )
