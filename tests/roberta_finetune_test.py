"""RoBERTa fine-tuning: byte-level BPE word alignment for CoNLL and SQuAD (the "Ġ" space marker), a tiny random
RoBERTa fine-tuned through the one loop on a GLUE pair task and on SWAG, `predict` on its workdir, its transformers
exports (sequence classification, multiple choice) giving bert_jax's outputs, and `convert` round-tripping a
transformers RoBERTa directory exactly."""

import json

import numpy as np
import pytest
import task_fixtures
import torch
import transformers
from roberta_test import write_bpe_files
from safetensors.numpy import load_file

from bert_jax import export, finetune, predict
from bert_jax.configs import glue as glue_config
from bert_jax.configs import swag as swag_config
from bert_jax.data import conll, squad, squad_answers, swag
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.models import roberta, roberta_hf

# The 97-token BPE of roberta_test: <s>=0 <pad>=1 </s>=2, "Ġ"=4, one token per ASCII character ("a"=69, "h"=76,
# "t"=88), and the merges "Ġ t" -> "Ġt"=94, "h e" -> "he"=95.
THE, SPACE_THE = [88, 95], [94, 95]


@pytest.fixture
def bpe(tmp_path):
    """bert_jax's tokenizer of the BPE files, and their transformers directory (written by roberta_hf) beside."""
    write_bpe_files(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    (tmp_path / "hf").mkdir()
    roberta_hf.write_tokenizer(
        tmp_path / "hf", tokenizer, roberta.RobertaConfig(max_position_embeddings=40)
    )
    return tokenizer


def test_bpe_words_align_as_the_whole_text_encodes_them(bpe, tmp_path):
    # CoNLL: every word follows a space (transformers' add_prefix_space for words); the label sits on its first piece.
    sentence = conll.Sentence(("the", "cat.", "He"), ("O", "B-PER", "O"), (), 0)
    features = conll.encode_corpus(conll.Corpus("dev", "x", [sentence]), bpe, ("O", "B-PER"), 14)
    ids = [0, *SPACE_THE, 4, 71, 69, 88, 18, 4, 44, 73, 2, 1, 1]
    assert features["input_ids"][0].tolist() == ids
    assert features["word_index"][0].tolist() == [
        -1,
        0,
        -1,
        1,
        -1,
        -1,
        -1,
        -1,
        2,
        -1,
        -1,
        -1,
        -1,
        -1,
    ]
    assert features["labels"][0].tolist() == [0, 0, 0, 1] + [0] * 10
    assert features["token_type_ids"].sum() == 0 and features["attention_mask"][0].sum() == 12
    # transformers' tokenizer of the written files agrees on the ids and on each token's word.
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", add_prefix_space=True)(
        list(sentence.words), is_split_into_words=True
    )
    assert theirs["input_ids"] == ids[:12]
    first = [
        i
        for i, w in enumerate(theirs.word_ids())
        if w is not None and w != theirs.word_ids()[i - 1]
    ]
    assert first == [1, 3, 8]

    # SQuAD: `<s> question </s></s> context </s>`, one token type; the context's words as the text encodes them
    # (the first without "Ġ"); the answer's span on its pieces, inside a word too ("hat" in "(hat)").
    rows = [("the hat he", "hat", 4, 1, [9, 12]), ("the (hat) he", "hat", 5, 1, [11, 13])]
    examples = [
        squad.make_example(
            f"q{i}",
            "what",
            context,
            [(answer, start)],
            is_impossible=False,
            training=True,
            where="x",
        )  # fmt: skip
        for i, (context, answer, start, _, _) in enumerate(rows)
    ]
    features = squad.encode_examples(
        squad.Examples("1.1", "train", examples), bpe, max_seq_length=20, max_query_length=8,
        doc_stride=8, training=True,
    )  # fmt: skip
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert features["input_ids"][0].tolist() == [
        0, 91, 76, 69, 88, 2, 2, *THE, 4, 76, 69, 88, 4, 95, 2, 1, 1, 1, 1,
    ]  # fmt: skip
    for f, (context, *_, span) in enumerate(rows):
        n = int(features["attention_mask"][f].sum())
        assert features["input_ids"][f, :n].tolist() == reference("what", context)["input_ids"]
        assert [features["start_positions"][f], features["end_positions"][f]] == span
    assert features["token_to_word"][0].tolist() == [-1] * 7 + [0, 0, 1, 1, 1, 1, 2, 2] + [-1] * 5
    assert features["token_to_word"][1, 7:18].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, -1]
    assert features["token_type_ids"].sum() == 0
    # The gold span's logits give back the answer's text, "(hat)" trimmed to "hat".
    start = np.zeros(features["input_ids"].shape, np.float32)
    end = start.copy()
    start[np.arange(2), features["start_positions"]] = 10.0
    end[np.arange(2), features["end_positions"]] = 10.0
    answers = squad_answers.compute_answers(examples, features, start, end, bpe)
    assert answers.predictions == {"q0": "hat", "q1": "hat"}


def _tiny_roberta(directory, head="RobertaForMaskedLM"):
    """A random 2-layer, 32-wide RoBERTa (transformers) with the 97-token BPE: positions for 38 tokens."""
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=1,
    )  # fmt: skip
    getattr(transformers, head)(config).save_pretrained(directory)
    write_bpe_files(directory)


def _recipe(module, arg, **fields):
    config = module.get_config(arg)
    with config.unlocked():
        # One step of a 16-row batch; evaluated once, at the end.
        config.update(num_epochs=None, num_train_steps=1, eval_every_epoch=False, **fields)
    return config


def _exported_outputs(directory, class_name, texts, pairs, rows=None):
    """The exported transformers model's logits on transformers' own tokenization of the texts."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = getattr(transformers, class_name).from_pretrained(directory).eval()
    # Truncated as the run's features were (longest first, to its max_seq_length).
    batch = tokenizer(
        texts, pairs, padding=True, truncation=True, max_length=24, return_tensors="pt"
    )
    if rows is not None:  # multiple choice: [examples, choices, length]
        batch = {k: v.reshape(rows, -1, v.shape[-1]) for k, v in batch.items()}
    with torch.no_grad():
        return model(**batch).logits.numpy()


def test_roberta_fine_tunes_predicts_and_exports(tmp_path):
    _tiny_roberta(tmp_path / "hf")
    # GLUE, a pair task (RTE): `<s> A </s></s> B </s>` through RobertaClassificationHead.
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    labels = ("not_entailment", "entailment")
    lines += ["\t".join([str(i), f"the hat {i}.", "he ate it.", labels[i % 2]]) for i in range(16)]
    for split in ("train", "dev"):
        (tmp_path / "glue" / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    config = _recipe(
        glue_config, "tiny", task="rte", data_dir=str(tmp_path / "glue"), predict_test=False,
        max_seq_length=24, init_checkpoint=str(tmp_path / "hf"),
    )  # fmt: skip
    results = finetune.run(config, tmp_path / "rte")
    assert results["config"]["family"] == "roberta" and results["num_train_examples"] == 16
    assert 0.0 <= results["score"] <= 1.0

    # predict: one row per input row, from the workdir alone.
    table = [("sentence1", "sentence2"), ("the hat.", "he ate."), ("he ate it", "the hat")]
    (tmp_path / "rows.tsv").write_text("".join("\t".join(row) + "\n" for row in table))
    predict.main(["--workdir", str(tmp_path / "rte"), "--input", str(tmp_path / "rows.tsv"),
                  "--output", str(tmp_path / "rows.jsonl")])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]

    # Export: a RobertaForSequenceClassification directory whose outputs are bert_jax's (the command checks them
    # on a ragged batch), and whose tokenizer and model give predict's probabilities.
    difference = export.convert_checkpoint(
        tmp_path / "rte", tmp_path / "rte_hf", "transformers", tolerance=1e-5
    )
    assert difference <= 1e-5
    saved = json.loads((tmp_path / "rte_hf" / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["type_vocab_size"]) == (
        "roberta", ["RobertaForSequenceClassification"], 1,
    )  # fmt: skip
    assert (saved["max_position_embeddings"], saved["pad_token_id"]) == (40, 1)
    assert saved["id2label"] == {"0": "entailment", "1": "not_entailment"}
    logits = _exported_outputs(tmp_path / "rte_hf", "RobertaForSequenceClassification",
                               ["the hat.", "he ate it"], ["he ate.", "the hat"])  # fmt: skip
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ours = [[r["probabilities"][label] for label in ("entailment", "not_entailment")] for r in rows]
    np.testing.assert_allclose(ours, probabilities, atol=1e-5)

    # SWAG: four `<s> context </s></s> ending </s>` rows per example through the multiple-choice head.
    task_fixtures.write_swag(tmp_path, n_train=16, n_dev=4)
    config = _recipe(
        swag_config, "tiny", data_dir=str(tmp_path), max_seq_length=24, init_checkpoint=str(tmp_path / "hf"),
    )  # fmt: skip
    results = finetune.run(config, tmp_path / "swag")
    predicted = (tmp_path / "swag" / "predictions.csv").read_text().splitlines()
    assert predicted[0] == "id,prediction,label,p0,p1,p2,p3" and len(predicted) == 5
    assert [r.split(",")[0] for r in predicted[1:]] == ["v0/0", "v1/1", "v2/2", "v3/3"]
    difference = export.convert_checkpoint(
        tmp_path / "swag", tmp_path / "swag_hf", "transformers", tolerance=1e-5
    )
    assert difference <= 1e-5
    saved = json.loads((tmp_path / "swag_hf" / "config.json").read_text())
    assert saved["architectures"] == ["RobertaForMultipleChoice"]
    # The exported model ranks the four endings of each dev example as predictions.csv does.
    dev = swag.read_examples("dev", str(tmp_path))
    contexts = [context for context in dev.contexts for _ in range(4)]
    endings = [f"{s} {e}" for s, four in zip(dev.starts, dev.endings, strict=True) for e in four]
    logits = _exported_outputs(
        tmp_path / "swag_hf", "RobertaForMultipleChoice", contexts, endings, rows=4
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    written = np.array([[float(p) for p in r.split(",")[3:]] for r in predicted[1:]])
    np.testing.assert_allclose(written, probabilities, atol=1e-5)


def test_convert_round_trips_a_transformers_roberta_exactly(tmp_path):
    _tiny_roberta(tmp_path / "hf")
    export.convert_checkpoint(tmp_path / "hf", tmp_path / "ours", "bert_jax", tolerance=1e-5)
    difference = export.convert_checkpoint(
        tmp_path / "ours", tmp_path / "back", "transformers", tolerance=1e-5
    )
    assert difference <= 1e-5
    source, back = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    # The tied decoder and the position-ids buffer are no parameters of their own.
    source = {
        k: v
        for k, v in source.items()
        if not k.startswith("lm_head.decoder") and "position_ids" not in k
    }
    assert sorted(back) == sorted(source)
    assert all(np.array_equal(source[k], back[k]) for k in source)
    fields = ("model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "pad_token_id", "layer_norm_eps")  # fmt: skip
    before, after = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf", "back"))
    assert {k: after[k] for k in fields} == {k: before[k] for k in fields}
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
