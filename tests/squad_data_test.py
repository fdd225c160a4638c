"""SQuAD readers, sliding windows, max-context rule and post-processing back to the original text."""

import json
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert_jax.data import squad, squad_answers
from bert_jax.data.tokenizer import WordPieceTokenizer

WORDS = "the a cafe muller strasse 1895 1943 ( ) - , . ? what is where was born in he when"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
    vocab += [f"w{i}" for i in range(300)]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return WordPieceTokenizer.from_vocab_file(path)


FILLER = " ".join(f"w{i}" for i in range(200))
# Accents, punctuation and doubled spaces inside the answer; the answer starts at word 204.
CONTEXT = FILLER + " he was born in  Café  Müller-Strasse, (1895-1943). " + "w1 " * 60


def _encode(examples, tokenizer, training=True):
    return squad.encode_examples(
        squad.Examples("1.1", "train", examples),
        tokenizer,
        max_seq_length=64,
        doc_stride=16,
        max_query_length=10,
        training=training,
    )


def _gold_logits(features):
    """Logits that pick each window's labelled span (only where its start has max context)."""
    start = np.zeros(features["input_ids"].shape, np.float32)
    end = start.copy()
    pairs = zip(features["start_positions"], features["end_positions"], strict=True)
    for r, (s, e) in enumerate(pairs):
        if s and features["max_context"][r, s]:
            start[r, s], end[r, e] = 10.0, 9.0
    return start, end


def test_split_words_offsets():
    words, starts, char_to_word = squad.split_words("  a\u202fbc\t d ")
    assert words == ["a", "bc", "d"]
    assert starts == [2, 4, 8]
    assert char_to_word == [-1, -1, 0, 0, 1, 1, 1, 1, 2, 2]


def test_windows_and_max_context():
    # 10 tokens, windows of 4 every 2: starts 0, 2, 4, 6 (the last one reaches the end).
    spans = squad.window_starts(10, 4, 2)
    assert spans == [(0, 4), (2, 4), (4, 4), (6, 4)]
    # Token 3 is in windows 0 (left 3, right 0) and 1 (left 1, right 1): window 1 wins.
    assert [squad.is_max_context(spans, i, 3) for i in range(4)] == [False, True, False, False]
    assert squad.window_starts(0, 4, 2) == [(0, 0)]


def test_answer_beyond_first_window_recovers_exact_text(tokenizer):
    answer = "Café  Müller-Strasse"
    example = squad.make_example(
        "q1", "where was he born?", CONTEXT, [(answer, CONTEXT.index(answer))],
        is_impossible=False, training=True, where="test",
    )  # fmt: skip
    assert (example.start_word, example.end_word) == (204, 205)
    features = _encode([example], tokenizer)
    windows = np.nonzero(features["start_positions"])[0]
    assert len(features["input_ids"]) == 15 and windows.min() > 0  # not in the first window
    for r in windows:
        s, e = features["start_positions"][r], features["end_positions"][r]
        pieces = [tokenizer.id_to_token(i) for i in features["input_ids"][r, s : e + 1]]
        assert pieces == ["cafe", "muller", "-", "strasse"]
        assert features["token_to_word"][r, s] == 204 and features["token_to_word"][r, e] == 205
    # Every context token has its maximum context in exactly one window.
    assert features["max_context"].sum() == len(tokenizer.encode(CONTEXT))
    answers = squad_answers.compute_answers([example], features, *_gold_logits(features), tokenizer)
    assert answers.predictions == {"q1": answer}
    assert answers.nbest["q1"][0]["text"] == answer
    assert answers.nbest["q1"][0]["start_logit"] == 10.0
    assert answers.nbest["q1"][0]["end_logit"] == 9.0


def test_improved_span_inside_a_word(tokenizer):
    # "1895" is part of the word "(1895-1943).": the target is the tightest matching pieces.
    example = squad.make_example(
        "q2", "when?", CONTEXT, [("1895", CONTEXT.index("1895"))],
        is_impossible=False, training=True, where="test",
    )  # fmt: skip
    features = _encode([example], tokenizer)
    for r in np.nonzero(features["start_positions"])[0]:
        s, e = features["start_positions"][r], features["end_positions"][r]
        assert [tokenizer.id_to_token(i) for i in features["input_ids"][r, s : e + 1]] == ["1895"]
    answers = squad_answers.compute_answers([example], features, *_gold_logits(features), tokenizer)
    assert answers.predictions == {"q2": "1895"}


def test_final_text_span_undoes_normalization():
    basic = lambda text: text.lower().replace("é", "e").replace(",", " ,").split()
    assert squad_answers.final_text_span("cafe", "Steve's Café,", basic) == (8, 12)
    # Not found (or length changed by normalization): the whole words' text.
    assert squad_answers.final_text_span("nope", "Steve's Café,", basic) == (0, 13)
    assert squad_answers.pieces_text(["mul", "##ler", "-", "st", "##rasse"]) == "muller - strasse"


def test_null_answer_and_threshold(tokenizer):
    example = squad.make_example(
        "q3", "what?", "he was born in 1895", [], is_impossible=True, training=True, where="t"
    )
    features = _encode([example], tokenizer)
    start = np.zeros(features["input_ids"].shape, np.float32)
    end = start.copy()
    start[0, 0], end[0, 0] = 3.0, 2.0  # null score 5
    start[0, 8], end[0, 8] = 2.5, 1.5  # [CLS] what ? [SEP] he was born in 1895
    assert [tokenizer.id_to_token(i) for i in features["input_ids"][0, 8:9]] == ["1895"]
    answers = squad_answers.compute_answers(
        [example], features, start, end, tokenizer, version_2=True
    )
    assert answers.null_odds == {"q3": pytest.approx(1.0)}  # 5 - (2.5 + 1.5)
    assert answers.predictions == {"q3": ""}
    assert answers.best_span == {"q3": "1895"}
    assert squad_answers.apply_threshold(answers, 1.5) == {"q3": "1895"}
    texts = [x["text"] for x in answers.nbest["q3"]]
    assert texts[:2] == ["", "1895"]
    assert sum(x["probability"] for x in answers.nbest["q3"]) == pytest.approx(1.0)


def test_json_reader_and_bad_input(tmp_path, caplog):
    context = "Paris is the capital of France."
    data = {
        "version": "1.1",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {"id": "ok", "question": "Capital?",
                             "answers": [{"text": "Paris", "answer_start": 0}]},
                            {"id": "bad", "question": "Country?",
                             "answers": [{"text": "France", "answer_start": 3}]},
                        ],
                    }
                ],
            }
        ],
    }  # fmt: skip
    (tmp_path / "train-v1.1.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        examples = squad.read_examples("1.1", "train", str(tmp_path))
    assert [e.qas_id for e in examples.examples] == ["ok"] and examples.num_skipped == 1
    assert "'bad'" in caplog.text and "skipped 1 questions" in caplog.text
    # Dev keeps every question (answers are only scored there).
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(data))
    assert len(squad.read_examples("1.1", "dev", str(tmp_path))) == 2

    data["data"][0]["paragraphs"][0]["context"] = "  "
    (tmp_path / "train-v1.1.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"train-v1.1.json: question 'ok' has no context"):
        squad.read_examples("1.1", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-v2.0.json"):
        squad.read_examples("2.0", "train", str(tmp_path))
    (tmp_path / "dev-v2.0.json").write_text("{")
    with pytest.raises(ValueError, match="dev-v2.0.json: not a SQuAD JSON file"):
        squad.read_examples("2.0", "dev", str(tmp_path))


def _tfds_row(qid, context, answer, impossible=False):
    found = [answer] if answer else []
    row = {
        "id": qid.encode(),
        "title": b"t",
        "context": context.encode(),
        "question": b"Who?",
        "answers": {
            "text": np.array([a.encode() for a in found], object),
            "answer_start": np.array([context.find(a) for a in found], np.int32),
        },
    }
    return {**row, "is_impossible": impossible}


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_tfds_reader(version):
    rows = [
        _tfds_row("a", "Ann met Bob.", "Bob"),
        _tfds_row("b", "Ann  met Bob.", "Ann  met"),
        _tfds_row("c", "Nobody here.", "", impossible=True),
    ]
    if version == "1.1":
        rows = [{k: v for k, v in r.items() if k != "is_impossible"} for r in rows[:2]]
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: rows):
        train = squad.read_examples(version, "train")
    got = [(e.qas_id, e.start_word, e.end_word, e.is_impossible) for e in train.examples]
    want = [("a", 2, 2, False), ("b", 0, 1, False), ("c", -1, -1, True)]
    assert got == want[: len(rows)] and train.num_skipped == 0
    assert train.examples[1].answers == ("Ann  met",)
    # TFDS's own random mock rows have as many answer texts as starts only by chance: one line.
    with tfds.testing.mock_data(num_examples=3), pytest.raises(ValueError, match="answer starts"):
        squad.read_examples(version, "dev")
