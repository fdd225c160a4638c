"""Google's original TF1 BERT checkpoints: bert_jax against the outputs of the original 2018 modeling.py
(tests/testdata, made by make_tf1_fixture.py with TensorFlow), exact round trips, casing, and bad input."""

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import bert_jax
from bert_jax import export, layouts, tf_checkpoint
from bert_jax.models import bert_tf1 as tf1_layout

FIXTURE = Path(__file__).parent / "testdata" / "tf1_uncased_L-2_H-36_A-3"
ORIGINAL = np.load(FIXTURE / "outputs.npz")


def original_batch():
    return dict(
        input_ids=ORIGINAL["input_ids"],
        token_type_ids=ORIGINAL["segment_ids"],
        attention_mask=ORIGINAL["input_mask"],
    )


def test_matches_the_original_modeling_py_outputs(caplog):
    caplog.set_level(logging.INFO)
    model, params, tokenizer = bert_jax.load_pretrained(FIXTURE, head="pretraining")
    out = model.apply(
        {"params": params}, **original_batch(), masked_lm_positions=ORIGINAL["masked_lm_positions"]
    )
    # Every position, padding included: both mask padded keys the same way.
    np.testing.assert_allclose(
        out["last_hidden_state"], ORIGINAL["sequence_output"], rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(out["pooler_output"], ORIGINAL["pooled_output"], rtol=0, atol=1e-5)
    mlm = np.asarray(out["prediction_logits"]).reshape(-1, 99)
    np.testing.assert_allclose(mlm, ORIGINAL["mlm_logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        out["seq_relationship_logits"], ORIGINAL["nsp_logits"], rtol=0, atol=1e-5
    )
    assert np.abs(ORIGINAL["mlm_logits"]).max() > 2  # not a trivially small output
    # The optimizer slots and global_step are skipped and counted; "uncased" in the name lower-cases.
    assert "skipped 93 variables the model does not use" in caplog.text
    assert "do_lower_case=True ('uncased' in the name 'tf1_uncased_L-2_H-36_A-3')" in caplog.text
    assert tokenizer("The DOG")["input_ids"].tolist() == tokenizer("the dog")["input_ids"].tolist()


def test_every_head_maps_to_the_original_variables():
    config = tf1_layout.read_config(str(FIXTURE / "bert_config.json"))
    bundle = tf_checkpoint.Bundle(str(FIXTURE))
    flat, skipped = tf1_layout.read_params(bundle.prefix, config, "bert_config.json")
    assert len(flat) == 46 and len(skipped) == 93
    assert all(s.endswith(("/adam_m", "/adam_v")) or s == "global_step" for s in skipped)
    # NSP weights are [2, H] in TF1, [H, 2] in bert_jax; the MLM bias is cls/predictions/output_bias.
    np.testing.assert_array_equal(
        flat["nsp/kernel"], bundle.read("cls/seq_relationship/output_weights").T
    )
    np.testing.assert_array_equal(flat["mlm/bias"], bundle.read("cls/predictions/output_bias"))
    q = bundle.read("bert/encoder/layer_1/attention/self/query/kernel")
    np.testing.assert_array_equal(flat["bert/layer_1/attention/query/kernel"][:, 2, :], q[:, 24:36])
    o = bundle.read("bert/encoder/layer_0/attention/output/dense/kernel")
    np.testing.assert_array_equal(flat["bert/layer_0/attention/output/kernel"][1], o[12:24])
    names = tf1_layout.name_map(2)
    assert len({p for p, _ in names.values()}) == len(names)  # one-to-one


def test_tf1_to_bert_jax_to_tf1_is_bitwise_exact(tmp_path):
    export.convert_checkpoint(FIXTURE, tmp_path / "bj", "bert_jax")
    export.convert_checkpoint(tmp_path / "bj", tmp_path / "tf1", "tf1")
    original = tf_checkpoint.Bundle(str(FIXTURE))
    written = tf_checkpoint.Bundle(str(tmp_path / "tf1"))
    assert written.names == sorted(n for n in original.names if n in tf1_layout.name_map(2))
    for name in written.names:
        a, b = written.read(name), original.read(name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    config = json.loads((tmp_path / "tf1" / "bert_config.json").read_text())
    assert config == json.loads((FIXTURE / "bert_config.json").read_text())


def test_classification_head_from_a_pretraining_checkpoint_warns():
    with pytest.warns(UserWarning, match=r"head 'classification' parameters not in the checkpoint "
                      r"were initialised at random .*\['classifier'\]"):  # fmt: skip
        _, params, _ = bert_jax.load_pretrained(FIXTURE, head="classification", num_labels=3)
    assert params["classifier"]["kernel"].shape == (36, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every parameter is in the checkpoint: no warning
        bert_jax.load_pretrained(str(FIXTURE / "bert_model.ckpt"), head="pretraining")


@pytest.mark.parametrize(
    "name,lower",
    [
        ("uncased_L-12_H-768_A-12", True),
        ("cased_L-24_H-1024_A-16", False),
        ("multi_cased_L-12_H-768_A-12", False),
        ("multilingual_L-12_H-768_A-12", True),
        ("chinese_L-12_H-768_A-12", True),
        ("wwm_cased_L-24_H-1024_A-16", False),
        ("uncased_L-4_H-256_A-4", True),
    ],
)
def test_do_lower_case_from_the_models_name(tmp_path, name, lower):
    assert (
        tf1_layout.infer_do_lower_case(str(tmp_path / name / "bert_model.ckpt"), None)[0] is lower
    )


def test_do_lower_case_from_the_vocab_or_explicit(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\nThe\n##s\n")
    lower, why = tf1_layout.infer_do_lower_case(
        str(tmp_path / "my_model" / "x.ckpt"), str(tmp_path / "vocab.txt")
    )
    assert lower is False and "upper-case tokens (e.g. 'The')" in why
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n##S\n")
    assert tf1_layout.infer_do_lower_case(
        str(tmp_path / "m" / "x.ckpt"), str(tmp_path / "vocab.txt")
    )[0]
    _, _, tokenizer = bert_jax.load_pretrained(FIXTURE, do_lower_case=False)
    assert tokenizer("The")["input_ids"].tolist() != tokenizer("the")["input_ids"].tolist()


def copy_fixture(tmp_path) -> Path:
    target = tmp_path / "model"
    target.mkdir(parents=True)
    for f in FIXTURE.iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
    return target


def rewrite(directory: Path, change):
    """Rewrites the copy's checkpoint with `change(tensors)` applied (the model variables only)."""
    bundle = tf_checkpoint.Bundle(str(directory))
    tensors = {n: np.asarray(bundle.read(n)) for n in bundle.names if n in tf1_layout.name_map(2)}
    change(tensors)
    for f in directory.glob("bert_model.ckpt.*"):
        f.unlink()
    tf_checkpoint.write_bundle(str(directory / "bert_model.ckpt"), tensors)


def test_config_that_disagrees_with_the_tensors(tmp_path):
    target = copy_fixture(tmp_path)
    config = json.loads((target / "bert_config.json").read_text())
    for field, value, variable in [
        ("hidden_size", 48, "bert/embeddings/word_embeddings"),
        ("vocab_size", 120, "bert/embeddings/word_embeddings"),
        ("intermediate_size", 64, "bert/encoder/layer_0/intermediate/dense/kernel"),
        ("max_position_embeddings", 512, "bert/embeddings/position_embeddings"),
    ]:
        (target / "bert_config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(
            ValueError, match=rf"bert_config.json: {field} is {value} but variable '{variable}'"
        ):
            bert_jax.load_pretrained(target)
    (target / "bert_config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(
        ValueError,
        match=r"num_hidden_layers is 3 but .* has layers 0..1 .variable 'bert/encoder/layer_1/",
    ):
        bert_jax.load_pretrained(target)


def test_missing_misshaped_and_unknown_variables(tmp_path):
    target = copy_fixture(tmp_path)
    rewrite(target, lambda t: t.pop("bert/encoder/layer_1/output/LayerNorm/gamma"))
    with pytest.raises(
        ValueError, match=r"parameter 'bert/layer_1/output_layer_norm/scale' is missing"
    ):
        bert_jax.load_pretrained(target, head="pretraining")
    target = copy_fixture(tmp_path / "2")
    rewrite(
        target, lambda t: t.update({"bert/pooler/dense/kernel": np.zeros((36, 35), np.float32)})
    )
    with pytest.raises(
        ValueError,
        match=r"variable 'bert/pooler/dense/kernel' has shape \[36, 35\] but bert_config.json implies \[36, 36\]",
    ):
        bert_jax.load_pretrained(target)
    target = copy_fixture(tmp_path / "3")
    rewrite(target, lambda t: t.update({"bert/encoder/extra/kernel": np.zeros(3, np.float32)}))
    with pytest.raises(
        ValueError,
        match=r"bert_model.ckpt.index: variable 'bert/encoder/extra/kernel' is not a BERT parameter",
    ):
        bert_jax.load_pretrained(target)


@pytest.mark.parametrize(
    "variable,family",
    [
        ("bert/encoder/embedding_hidden_mapping_in/kernel", "ALBERT"),
        (
            "bert/encoder/transformer/group_0/inner_group_0/ffn_1/intermediate/dense/kernel",
            "ALBERT",
        ),
        ("electra/embeddings/word_embeddings", "ELECTRA"),
        ("discriminator_predictions/dense/kernel", "ELECTRA"),
    ],
)
def test_albert_and_electra_are_refused(tmp_path, variable, family):
    target = copy_fixture(tmp_path)
    rewrite(target, lambda t: t.update({variable: np.zeros((2, 2), np.float32)}))
    with pytest.raises(
        ValueError,
        match=rf"bert_model.ckpt.index: this is an {family} checkpoint \(variable '{variable}'\), not BERT",
    ):
        bert_jax.load_pretrained(target)


def test_tf2_checkpoint_and_damaged_files_are_one_line_errors(tmp_path):
    target = copy_fixture(tmp_path)
    shutil.copytree(FIXTURE / "tf2", target / "tf2")
    with pytest.raises(
        ValueError,
        match=r"ckpt-1.index: this is a TF2 checkpoint .*'kernel/.ATTRIBUTES/VARIABLE_VALUE'",
    ):
        bert_jax.load_pretrained(target / "tf2" / "ckpt-1")
    shard = target / "bert_model.ckpt.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:50000])
    with pytest.raises(
        tf_checkpoint.BundleError,
        match=r"data-00000-of-00001: tensor 'bert/encoder/layer_\d/.*' needs bytes",
    ):
        bert_jax.load_pretrained(target)
    (target / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt: missing"):
        bert_jax.load_pretrained(target)
    with pytest.raises(
        FileNotFoundError,
        match="is neither a bert_jax workdir .no checkpoints/. nor a transformers-layout",
    ):
        layouts.source_format(tmp_path)


def test_fine_tuning_starts_from_a_tf1_checkpoint():
    from bert_jax import warm_start
    from bert_jax.configs import glue as glue_config

    config = glue_config.get_config("tiny")
    config.init_checkpoint = str(FIXTURE / "bert_model.ckpt")
    with pytest.warns(UserWarning, match=r"\['classifier'\]"):
        start = warm_start.load(config)
    assert start.model_config.hidden_size == 36 and start.model_config.num_layers == 2
    assert start.tokenizer_spec == {"path": str(FIXTURE / "vocab.txt"), "do_lower_case": True}
    expected = tf_checkpoint.Bundle(str(FIXTURE)).read("bert/encoder/layer_1/output/dense/kernel")
    np.testing.assert_array_equal(start.params["bert"]["layer_1"]["output"]["kernel"], expected)


@pytest.mark.parametrize("head", ["classification", "span"])
def test_run_classifier_and_run_squad_heads_compute_what_the_original_does(tmp_path, head):
    # The fine-tuning scripts' variables on top of the fixture's encoder: run_classifier.py's
    # output_weights [labels, H], run_squad.py's cls/squad/output_weights [2, H] (+ biases, + Adam slots).
    rng = np.random.default_rng(3)
    names = {"classification": ("output_weights", "output_bias", 3), "span": ("cls/squad/output_weights", "cls/squad/output_bias", 2)}  # fmt: skip
    w_name, b_name, n = names[head]
    w, b = rng.normal(size=(n, 36)).astype(np.float32), rng.normal(size=(n,)).astype(np.float32)

    def fine_tuned(tensors):
        for name in [k for k in tensors if k.startswith("cls/")]:
            del tensors[name]
        tensors.update({w_name: w, b_name: b, w_name + "/adam_m": w, "global_step": np.int64(9)})

    target = copy_fixture(tmp_path)
    rewrite(target, fine_tuned)
    export.convert_checkpoint(target, tmp_path / "hf", "transformers")  # --head=auto finds the head
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == [layouts.ARCHITECTURES[head]]
    model, params, _ = bert_jax.load_pretrained(target, head=head)
    out = model.apply({"params": params}, **original_batch())
    # The original scripts' formulas, applied to the original graph's own encoder outputs (span logits reach
    # ~17: float32 rounding of a 36-term dot product, hence the relative part of the tolerance).
    if head == "classification":
        expected = ORIGINAL["pooled_output"] @ w.T + b
        np.testing.assert_allclose(out["logits"], expected, rtol=0, atol=1e-5)
    else:
        expected = ORIGINAL["sequence_output"] @ w.T + b
        np.testing.assert_allclose(out["start_logits"], expected[..., 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["end_logits"], expected[..., 1], rtol=1e-5, atol=1e-5)
