"""Google's original TF1 ALBERT and ELECTRA checkpoints: bert_jax against the outputs of the original
google-research/albert and google-research/electra graphs (tests/testdata, made by make_tf1_family_fixtures.py with
TensorFlow), exact round trips, and a checkpoint of one family given where another is expected."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

import bert_jax
from bert_jax import export, layouts, layouts_tf1, tf_checkpoint
from bert_jax.data import corpus
from bert_jax.models import albert_tf1, bert_tf1, electra, electra_tf1, registry

TESTDATA = Path(__file__).parent / "testdata"
ALBERT = TESTDATA / "tf1_albert_L-2_H-36_E-20"
ELECTRA = TESTDATA / "tf1_electra_L-2_H-36_E-20"
BERT = TESTDATA / "tf1_uncased_L-2_H-36_A-3"
ALBERT_OUT = np.load(ALBERT / "outputs.npz")
ELECTRA_OUT = np.load(ELECTRA / "outputs.npz")


def copy(source: Path, target: Path) -> Path:
    """A copy of a fixture directory; ALBERT's gets its SentencePiece model (bert_jax's bundled 1000-piece one,
    the fixture's vocabulary) under the released name."""
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "outputs.npz":
            shutil.copy(f, target / f.name)
    if source == ALBERT:
        shutil.copy(corpus.ASSETS / "albert_sample_spm.model", target / "30k-clean.model")
    return target


def close(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-5)


def test_albert_matches_the_original_modeling_py(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    model, params, tokenizer = bert_jax.load_pretrained(
        copy(ALBERT, tmp_path / "a"), head="pretraining"
    )
    assert model.config.hidden_act == "gelu_new" and model.config.embedding_size == 20
    out = model.apply(
        {"params": params}, input_ids=ALBERT_OUT["input_ids"], token_type_ids=ALBERT_OUT["segment_ids"],
        attention_mask=ALBERT_OUT["input_mask"], masked_lm_positions=ALBERT_OUT["masked_lm_positions"],
    )  # fmt: skip
    # Every position, padding included.
    close(out["last_hidden_state"], ALBERT_OUT["sequence_output"])
    close(out["pooler_output"], ALBERT_OUT["pooled_output"])
    close(np.asarray(out["prediction_logits"]).reshape(-1, 1000), ALBERT_OUT["mlm_logits"])
    close(out["sop_logits"], ALBERT_OUT["sop_logits"])
    assert np.abs(ALBERT_OUT["mlm_logits"]).max() > 2  # not a trivially small output
    # LAMB's adam_m/adam_v for each of the 32 model variables, and global_step.
    assert "skipped 65 variables the model does not use" in caplog.text
    assert tokenizer("The DOG")["input_ids"].tolist() == tokenizer("the dog")["input_ids"].tolist()


def test_electra_matches_the_original_run_pretraining_py(caplog):
    caplog.set_level(logging.INFO)
    ckpt = layouts.read_checkpoint(ELECTRA)
    # Sizes from the shapes; the heads (3, not 36 // 64) from hparams.json's model_hparam_overrides.
    config = ckpt.config
    assert (config.hidden_size, config.num_layers, config.num_heads, config.embedding_size) == (
        36,
        2,
        3,
        20,
    )
    assert (
        config.generator.hidden_size,
        config.generator.num_layers,
        config.generator.num_heads,
    ) == (12, 1, 1)
    assert ckpt.head == "rtd" and ckpt.source.endswith("model.ckpt-7")
    # AdamW's adam_m/adam_v for each of the 66 model variables, and global_step.
    assert "skipped 133 variables the model does not use" in caplog.text
    batch = dict(
        token_type_ids=ELECTRA_OUT["segment_ids"], attention_mask=ELECTRA_OUT["input_mask"]
    )
    # The discriminator on the replaced tokens.
    model, params = layouts.build(ckpt, "pretraining")
    out = model.apply({"params": params}, input_ids=ELECTRA_OUT["fake_input_ids"], **batch)
    close(out["last_hidden_state"], ELECTRA_OUT["discriminator_sequence_output"])
    close(out["logits"], ELECTRA_OUT["discriminator_logits"])
    # The generator on the masked tokens, at the masked positions (the pretraining model's first half).
    model, params = layouts.build(ckpt, "rtd")
    positions = ELECTRA_OUT["masked_lm_positions"]
    out = model.apply(
        {"params": params}, input_ids=ELECTRA_OUT["masked_input_ids"], masked_lm_positions=positions,
        masked_lm_ids=np.zeros_like(positions), masked_lm_weights=np.ones(positions.shape, np.float32), **batch,
    )  # fmt: skip
    close(out["generator_logits"], ELECTRA_OUT["generator_mlm_logits"])
    assert np.abs(ELECTRA_OUT["generator_mlm_logits"]).max() > 2
    # The generator's encoder alone: the shared embeddings, its projection and layers.
    tree = traverse_util.unflatten_dict(ckpt.flat, sep="/")
    generator = {"embeddings": tree["bert"]["embeddings"], **tree["generator"]}
    out = electra.ElectraModel(config.generator).apply(
        {"params": generator}, ELECTRA_OUT["masked_input_ids"], **batch
    )
    close(out["last_hidden_state"], ELECTRA_OUT["generator_sequence_output"])


def test_electra_without_hparams_json_takes_electras_head_rule(tmp_path):
    target = copy(ELECTRA, tmp_path / "e")
    (target / "hparams.json").unlink()
    config = layouts.read_checkpoint(target).config
    # training_utils.get_bert_config: max(1, hidden_size // 64) heads; everything else from the shapes.
    assert (
        config.num_heads,
        config.hidden_size,
        config.vocab_size,
        config.max_position_embeddings,
    ) == (1, 36, 99, 40)
    hparams = json.loads((ELECTRA / "hparams.json").read_text())
    (target / "hparams.json").write_text(json.dumps({**hparams, "embedding_size": 32}))
    with pytest.raises(ValueError) as error:
        layouts.read_checkpoint(target)
    assert str(error.value) == (
        f"{target / 'hparams.json'}: embedding_size is 32 but variable 'electra/embeddings/word_embeddings' in "
        f"{target / 'model.ckpt-7.index'} says 20"
    )
    # The generator's own (untied) embeddings: run_pretraining.py's untied_generator_embeddings, not read.
    (target / "hparams.json").unlink()
    untied = "generator/embeddings/word_embeddings"
    rewrite(target, lambda t: t.update({untied: t["electra/embeddings/word_embeddings"]}))
    with pytest.raises(ValueError) as error:
        layouts.read_checkpoint(target)
    assert str(error.value) == (
        f"{target / 'model.ckpt-7.index'}: variable '{untied}' is not an ELECTRA parameter"
    )


@pytest.mark.parametrize("family", ["albert", "electra"])
def test_tf1_round_trip_is_bitwise_exact(tmp_path, family):
    source = copy(ALBERT if family == "albert" else ELECTRA, tmp_path / "src")
    if family == "albert":  # through a bert_jax directory
        export.convert_checkpoint(source, tmp_path / "bj", "bert_jax")
        export.convert_checkpoint(tmp_path / "bj", tmp_path / "tf1", "tf1")
    else:  # directly (--head=auto: a TF1 ELECTRA's is rtd, generator and discriminator)
        export.convert_checkpoint(source, tmp_path / "tf1", "tf1")
    layout = registry.family_named(family).tf1
    original = tf_checkpoint.Bundle(str(source))
    written = tf_checkpoint.Bundle(str(tmp_path / "tf1"))
    assert written.prefix.endswith(layout.CHECKPOINT)
    assert written.names == sorted(
        n for n in original.names if not bert_tf1.NOT_PARAMETERS.search(n)
    )
    for name in written.names:
        a, b = written.read(name), original.read(name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    again = layouts.read_checkpoint(tmp_path / "tf1")
    assert again.config == layouts.read_checkpoint(source).config
    if family == "albert":
        config = json.loads((tmp_path / "tf1" / "albert_config.json").read_text())
        original_config = json.loads((ALBERT / "albert_config.json").read_text())
        assert config == {k: original_config[k] for k in albert_tf1.CONFIG_FIELDS}
    else:
        hparams = json.loads((tmp_path / "tf1" / "hparams.json").read_text())
        assert hparams["model_hparam_overrides"]["num_attention_heads"] == 3
        assert electra_tf1.config_dict(again.config) == hparams


def test_the_family_is_told_by_the_variable_names(tmp_path):
    assert layouts_tf1.tf1_family(tf_checkpoint.Bundle(str(BERT))) == (
        "bert",
        "bert/embeddings/LayerNorm/beta",
    )
    assert layouts_tf1.tf1_family(tf_checkpoint.Bundle(str(ALBERT)))[0] == "albert"
    assert layouts_tf1.tf1_family(tf_checkpoint.Bundle(str(ELECTRA))) == (
        "electra",
        "discriminator_predictions/dense/bias",
    )
    tf_checkpoint.write_bundle(str(tmp_path / "other.ckpt"), {"encoder/w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError) as error:
        layouts.read_checkpoint(tmp_path / "other.ckpt")
    assert str(error.value) == (
        f"{tmp_path / 'other.ckpt.index'}: no BERT, ALBERT or ELECTRA variable among its 1 (e.g. ['encoder/w'])"
    )


def test_a_checkpoint_of_one_family_given_as_another_is_one_line(tmp_path):
    albert = copy(ALBERT, tmp_path / "albert")
    electra = copy(ELECTRA, tmp_path / "electra")
    albert_index, electra_index = albert / "model.ckpt-best.index", electra / "model.ckpt-7.index"
    bert_index = BERT / "bert_model.ckpt.index"
    hit_albert = "bert/encoder/embedding_hidden_mapping_in/bias"
    hit_electra = "discriminator_predictions/dense/bias"
    cases = [
        (
            albert,
            "bert",
            f"{albert_index}: this is an ALBERT checkpoint (variable '{hit_albert}'), not BERT",
        ),
        (
            electra,
            "bert",
            f"{electra_index}: this is an ELECTRA checkpoint (variable '{hit_electra}'), not BERT",
        ),
        (
            BERT,
            "albert",
            f"{bert_index}: this is a BERT checkpoint (variable 'bert/embeddings/LayerNorm/beta'), not ALBERT",
        ),  # fmt: skip
        (
            albert,
            "electra",
            f"{albert_index}: this is an ALBERT checkpoint (variable '{hit_albert}'), not ELECTRA",
        ),
    ]
    for path, expected, message in cases:
        with pytest.raises(ValueError) as error:
            layouts.read_checkpoint(path, family=expected)
        assert str(error.value) == message
    # A family's config file beside another family's variables: the file says what was expected.
    shutil.copy(BERT / "bert_config.json", albert / "bert_config.json")
    (albert / "albert_config.json").unlink()
    with pytest.raises(ValueError) as error:
        bert_jax.load_pretrained(albert)
    assert str(error.value) == (
        f"{albert_index}: this is an ALBERT checkpoint (variable '{hit_albert}'), not BERT (bert_config.json "
        "beside it)"
    )
    (electra / "hparams.json").unlink()  # ELECTRA's own (optional) file would say ELECTRA
    shutil.copy(ALBERT / "albert_config.json", electra / "albert_config.json")
    with pytest.raises(ValueError, match=r"model.ckpt-7.index: this is an ELECTRA checkpoint .* not ALBERT \(albert_config.json beside it\)$"):  # fmt: skip
        bert_jax.load_pretrained(electra)
    # A family without a TF1 layout.
    with pytest.raises(
        ValueError, match=r"^roberta has no TF1 checkpoint layout \(Google released BERT, ALBERT"
    ):
        layouts.save_tf1(
            tmp_path / "r", {}, registry.config_from_fields({}, "roberta"), "none", None
        )


def test_continuing_pretraining_of_another_family_is_one_line(tmp_path):
    from bert_jax import warm_start
    from bert_jax.configs import albert_tiny, bert_tiny

    albert = copy(ALBERT, tmp_path / "albert")
    # The modules the recipe's model has (their shapes are never reached).
    abstract = type("Abstract", (), {"params": {"bert": None, "mlm": None, "nsp": None}})
    config = bert_tiny.get_config()
    config.init_checkpoint = str(albert)
    with pytest.raises(ValueError) as error:
        warm_start.pretraining_params(config, abstract)  # the family is checked before any shape
    assert str(error.value) == (
        f"{albert / 'model.ckpt-best.index'}: this is an ALBERT checkpoint "
        "(variable 'bert/encoder/embedding_hidden_mapping_in/bias'), not BERT"
    )
    config = albert_tiny.get_config()
    config.init_checkpoint = str(BERT / "bert_model.ckpt")
    with pytest.raises(
        ValueError, match=r"bert_model.ckpt.index: this is a BERT checkpoint .*, not ALBERT$"
    ):
        warm_start.pretraining_params(config, abstract)


def rewrite(directory: Path, change):
    """Rewrites the copy's checkpoint with `change(tensors)` applied (its parameters only)."""
    bundle = tf_checkpoint.Bundle(str(directory))
    tensors = {n: bundle.read(n) for n in bundle.names if not bert_tf1.NOT_PARAMETERS.search(n)}
    change(tensors)
    for f in directory.glob(f"{Path(bundle.prefix).name}.*"):
        f.unlink()
    tf_checkpoint.write_bundle(bundle.prefix, tensors)


def test_albert_classifier_and_bad_input(tmp_path):
    # run_classifier.py's output_weights [labels, H] (classifier_utils.create_model) on the fixture's encoder.
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 36)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)

    def fine_tuned(tensors):
        for name in [k for k in tensors if k.startswith("cls/")]:
            del tensors[name]
        tensors.update(output_weights=w, output_bias=b)

    target = copy(ALBERT, tmp_path / "a")
    rewrite(target, fine_tuned)
    assert layouts.read_checkpoint(target).head == "classification"
    model, params, _ = bert_jax.load_pretrained(target, head="classification", family="albert")
    out = model.apply(
        {"params": params}, input_ids=ALBERT_OUT["input_ids"], token_type_ids=ALBERT_OUT["segment_ids"],
        attention_mask=ALBERT_OUT["input_mask"],
    )  # fmt: skip
    close(out["logits"], ALBERT_OUT["pooled_output"] @ w.T + b)
    # A second group of layers, a tensor the config does not fit, a config without its sizes: one line each.
    layer = "bert/encoder/transformer/group_0/inner_group_0/LayerNorm/beta"
    second = "bert/encoder/transformer/group_1/inner_group_0/LayerNorm/beta"
    rewrite(target, lambda t: t.update({second: t[layer]}))
    with pytest.raises(
        ValueError, match=r"layer groups \['group_0/inner_group_0', 'group_1/inner_group_0'\]: only"
    ):
        bert_jax.load_pretrained(target)
    target = copy(ALBERT, tmp_path / "b")
    rewrite(target, lambda t: t.update({"bert/pooler/dense/bias": np.zeros(35, np.float32)}))
    with pytest.raises(ValueError) as error:
        bert_jax.load_pretrained(target)
    assert str(error.value) == (
        f"{target / 'model.ckpt-best.index'}: variable 'bert/pooler/dense/bias' has shape [35] but "
        f"{target / 'albert_config.json'} implies [36]"
    )
    config = json.loads((ALBERT / "albert_config.json").read_text())
    (target / "albert_config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    with pytest.raises(
        ValueError,
        match=r"albert_config.json: hidden_act 'gelu_new' is not one of \['gelu', 'relu'\]$",
    ):
        bert_jax.load_pretrained(target)
    del config["embedding_size"]
    (target / "albert_config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"albert_config.json: missing ALBERT config fields \['embedding_size'\]$"
    ):
        bert_jax.load_pretrained(target)
