"""SWAG CSV reader and four-choice featurisation."""

import pytest

from bert_jax.data import swag
from bert_jax.data.tokenizer import WordPieceTokenizer

HEADER = (
    "video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label"
)
ROW = 'lsmdc3001,0,"He sat. She","He sat.",She,gold,runs.,"sits, too.",eats.,sleeps.,1'


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "he", "she", "sat", ".", ",", "runs"]
    vocab += ["sits", "too", "eats", "sleeps"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return WordPieceTokenizer.from_vocab_file(path)


def test_read_and_encode(tmp_path, tokenizer):
    (tmp_path / "val.csv").write_text(f"{HEADER}\n{ROW}\n{ROW.replace(',1', ',3')}\n")
    examples = swag.read_examples("dev", str(tmp_path))
    assert examples.ids == ["lsmdc3001/0"] * 2 and examples.labels.tolist() == [1, 3]
    assert examples.endings[0] == ("runs.", "sits, too.", "eats.", "sleeps.")
    features = swag.encode_examples(examples, tokenizer, max_seq_length=12)
    assert features["input_ids"].shape == (2, 4, 12)
    pieces = [tokenizer.id_to_token(i) for i in features["input_ids"][0, 1] if i]
    assert pieces == ["[CLS]", "he", "sat", ".", "[SEP]", "she", "sits", ",", "too", ".", "[SEP]"]
    assert features["token_type_ids"][0, 1].tolist() == [0] * 5 + [1] * 6 + [0]
    assert features["labels"].tolist() == [1, 3]


def test_bad_input(tmp_path):
    (tmp_path / "train.csv").write_text(f"{HEADER.replace(',ending3', '')}\n{ROW}\n")
    with pytest.raises(ValueError, match=r"train.csv:1: missing columns \['ending3'\]"):
        swag.read_examples("train", str(tmp_path))
    (tmp_path / "train.csv").write_text(f"{HEADER}\n{ROW}\n{ROW.replace(',1', ',7')}\n")
    with pytest.raises(ValueError, match=r"train.csv:3: label '7' is not one of 0..3"):
        swag.read_examples("train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="val.csv"):
        swag.read_examples("dev", str(tmp_path))
    (tmp_path / "test.csv").write_text(f"{HEADER[: -len(',label')]}\n{ROW[:-2]}\n")
    assert swag.read_examples("test", str(tmp_path)).labels is None
