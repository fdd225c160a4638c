"""CoNLL-2003 column reader, TFDS reader, first-sub-token labels and CoNLL output."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert_jax.data import conll
from bert_jax.data.tokenizer import WordPieceTokenizer

TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP I-LOC
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "eu", "re", "##ject", "##s", "german"]
    vocab += ["call", "peter", "black", "##burn", "brussels"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return WordPieceTokenizer.from_vocab_file(path)


def test_read_columns(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN)
    corpus = conll.read_corpus("train", str(tmp_path))
    assert [s.words for s in corpus.sentences] == [
        ("EU", "rejects", "German", "call"), ("Peter", "Blackburn"), ("BRUSSELS",),
    ]  # fmt: skip
    assert corpus.sentences[0].tags == ("I-ORG", "O", "I-MISC", "O")
    assert [s.document for s in corpus.sentences] == [0, 0, 1]
    assert conll.label_list(corpus) == ("O", "I-LOC", "I-MISC", "I-ORG", "I-PER")


def test_bad_input(tmp_path):
    (tmp_path / "train.txt").write_text(TRAIN.replace("call NN I-NP O", "call NN I-NP"))
    with pytest.raises(ValueError, match=r"train.txt:6: expected 4 space-separated columns"):
        conll.read_corpus("train", str(tmp_path))
    (tmp_path / "train.txt").write_text("EU\n")
    with pytest.raises(ValueError, match=r"train.txt:1: expected 2 .* got 1"):
        conll.read_corpus("train", str(tmp_path))
    (tmp_path / "train.txt").write_text(TRAIN)
    (tmp_path / "valid.txt").write_text("Paris NNP B-NP B-LOC\n")
    train, dev = (conll.read_corpus(s, str(tmp_path)) for s in ("train", "dev"))
    with pytest.raises(ValueError, match=r"valid.txt: tags \['B-LOC'\] do not occur in the train"):
        conll.check_labels(dev, conll.label_list(train))
    with pytest.raises(FileNotFoundError, match="eng.testb"):
        conll.read_corpus("test", str(tmp_path))


def test_first_subtoken_labels_and_output(tmp_path, tokenizer):
    (tmp_path / "train.txt").write_text(TRAIN)
    corpus = conll.read_corpus("train", str(tmp_path))
    labels = conll.label_list(corpus)
    features = conll.encode_corpus(corpus, tokenizer, labels, max_seq_length=8)
    pieces = [tokenizer.id_to_token(i) for i in features["input_ids"][0]]
    assert pieces == ["[CLS]", "eu", "re", "##ject", "##s", "german", "call", "[SEP]"]
    assert features["label_weights"][0].tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    assert [labels[i] for i in features["labels"][0][[1, 2, 5, 6]]] == ["I-ORG", "O", "I-MISC", "O"]
    assert features["word_index"][0].tolist() == [-1, 0, 1, -1, -1, 2, 3, -1]
    # Predicting the gold ids back gives the gold tags, written as CoNLL columns + prediction.
    predicted = conll.word_predictions(corpus, features, features["labels"], labels)
    assert predicted == [list(s.tags) for s in corpus.sentences]
    conll.write_predictions(tmp_path / "out.txt", corpus, predicted)
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines[:3] == ["-DOCSTART- -X- -X- O", "", "EU NNP B-NP I-ORG I-ORG"]
    assert lines[-4:] == ["-DOCSTART- -X- -X- O", "", "BRUSSELS NNP B-NP I-LOC I-LOC", ""]


def test_long_sentence_split_at_words(tmp_path, tokenizer):
    (tmp_path / "train.txt").write_text(TRAIN)
    corpus = conll.read_corpus("train", str(tmp_path))
    labels = conll.label_list(corpus)
    # 5 pieces per row: sentence 0 (6 pieces) becomes rows [EU rejects German] + [call].
    features = conll.encode_corpus(corpus, tokenizer, labels, max_seq_length=7)
    assert features["sentence_index"].tolist() == [0, 0, 1, 2]
    assert features["word_index"][1].tolist() == [-1, 3, -1, -1, -1, -1, -1]
    assert features["label_weights"].sum() == 7  # every word labelled once
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(labels), features["labels"].shape)
    predicted = conll.word_predictions(corpus, features, ids, labels)
    assert [len(p) for p in predicted] == [4, 2, 1]
    assert predicted[0][2:] == [labels[ids[0, 5]], labels[ids[1, 1]]]


def test_tfds_reader():
    row = {
        "tokens": np.array([b"EU", b"rejects"], object),
        "pos": np.array([22, 42]),  # NNP VBZ
        "chunks": np.array([11, 21]),  # B-NP B-VP
        "ner": np.array([3, 0]),  # B-ORG O
    }
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: [row]):
        corpus = conll.read_corpus("dev")
    assert corpus.sentences[0].words == ("EU", "rejects")
    assert corpus.sentences[0].tags == ("B-ORG", "O")
    assert corpus.sentences[0].columns == (
        ("EU", "NNP", "B-NP", "B-ORG"),
        ("rejects", "VBZ", "B-VP", "O"),
    )
    # TFDS's random mock rows have columns of different lengths: one clear line.
    with tfds.testing.mock_data(num_examples=3), pytest.raises(ValueError, match="row 0: lengths"):
        conll.read_corpus("dev")
