"""bert_jax's model equals transformers' PyTorch BERT with the same weights, for every head."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import bert_jax
from bert_jax.models import bert as model_lib

# Odd sizes so that a transposed or mis-reshaped tensor cannot go unnoticed.
SMALL = dict(
    vocab_size=103,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
HF_CLASSES = {
    "none": transformers.BertModel,
    "pretraining": transformers.BertForPreTraining,
    "classification": transformers.BertForSequenceClassification,
    "span": transformers.BertForQuestionAnswering,
    "token": transformers.BertForTokenClassification,
}
# Outputs compared per head (transformers' name -> bert_jax's name).
OUTPUTS = {
    "none": {"last_hidden_state": "last_hidden_state", "pooler_output": "pooler_output"},
    "pretraining": {
        "prediction_logits": "prediction_logits",
        "seq_relationship_logits": "seq_relationship_logits",
    },
    "classification": {"logits": "logits"},
    "span": {"start_logits": "start_logits", "end_logits": "end_logits"},
    "token": {"logits": "logits"},
}


def write_vocab(directory, size):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(size - len(specials))]
    (directory / "vocab.txt").write_text("\n".join(specials + words) + "\n")


def save_reference(tmp_path, head, num_labels=3, seed=0, **overrides):
    """A random-weight transformers model saved with save_pretrained, plus a vocab; returns (dir, model)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        **(SMALL | overrides), num_labels=num_labels, attn_implementation="eager"
    )
    reference = HF_CLASSES[head](config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so they are checked too
        for name, p in reference.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    directory = tmp_path / head
    reference.save_pretrained(directory)
    write_vocab(directory, config.vocab_size)
    return directory, reference


def random_inputs(batch=3, length=17, vocab=103, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    lengths = np.array([length, length - 5, 6])[:batch]
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    types = (np.arange(length)[None] >= (lengths // 2)[:, None]).astype(np.int32) * mask
    return {"input_ids": ids * mask, "token_type_ids": types, "attention_mask": mask}


def torch_outputs(reference, inputs):
    with torch.no_grad():
        out = reference(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def rel_err(ours, theirs):
    return float(np.max(np.abs(np.asarray(ours, np.float32) - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_matches_transformers_float32(tmp_path, head):
    # transformers sizes qa_outputs by num_labels; span prediction needs exactly 2 (start, end).
    directory, reference = save_reference(tmp_path, head, num_labels=2 if head == "span" else 3)
    model, params, _ = bert_jax.load_pretrained(directory, head=head)
    inputs = random_inputs()
    ours = model.apply({"params": params}, **inputs)
    theirs = torch_outputs(reference, inputs)
    for their_name, our_name in OUTPUTS[head].items():
        assert ours[our_name].shape == theirs[their_name].shape
        assert rel_err(ours[our_name], theirs[their_name]) <= 1e-5, their_name


def test_mlm_logits_at_masked_positions_equal_full_logits(tmp_path):
    directory, reference = save_reference(tmp_path, "pretraining")
    model, params, _ = bert_jax.load_pretrained(directory, head="pretraining")
    inputs = random_inputs()
    positions = np.array([[1, 4, 0], [2, 3, 5], [0, 1, 2]], np.int32)
    ours = model.apply({"params": params}, **inputs, masked_lm_positions=positions)
    full = torch_outputs(reference, inputs)["prediction_logits"]
    expected = np.take_along_axis(full, positions[..., None], axis=1)
    assert ours["prediction_logits"].shape == (3, 3, 103)
    assert rel_err(ours["prediction_logits"], expected) <= 1e-5


def test_bfloat16_compute_close_to_float32_reference(tmp_path):
    # bfloat16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); a 2-layer model's activations carry a few
    # such roundings per matmul and LayerNorm, so 3% of the output scale bounds it with margin, while a wrong
    # weight layout gives errors of order 100%.
    directory, reference = save_reference(tmp_path, "pretraining")
    model, params, _ = bert_jax.load_pretrained(directory, head="pretraining", dtype="bfloat16")
    inputs = random_inputs()
    ours = model.apply({"params": params}, **inputs)
    theirs = torch_outputs(reference, inputs)
    assert params["bert"]["layer_0"]["intermediate"]["kernel"].dtype == jnp.float32
    for name in ("prediction_logits", "seq_relationship_logits"):
        assert ours[name].dtype == jnp.float32  # logits for the losses stay float32
        assert rel_err(ours[name], theirs[name]) <= 3e-2, name


def test_hidden_states_and_attentions_match(tmp_path):
    directory, reference = save_reference(tmp_path, "none")
    model, params, _ = bert_jax.load_pretrained(directory)
    inputs = random_inputs()
    ours = model.apply(
        {"params": params}, **inputs, output_hidden_states=True, output_attentions=True
    )
    with torch.no_grad():
        theirs = reference(
            **{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()},
            output_hidden_states=True,
            output_attentions=True,
        )
    assert len(ours["hidden_states"]) == len(theirs.hidden_states) == 3
    for a, b in zip(ours["hidden_states"], theirs.hidden_states, strict=True):
        assert rel_err(a, b.numpy()) <= 1e-5
    for a, b in zip(ours["attentions"], theirs.attentions, strict=True):
        assert a.shape == (3, 3, 17, 17)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    # Padding keys get exactly zero weight.
    assert float(jnp.max(ours["attentions"][0][2, :, :, 6:])) == 0.0


def test_attention_implementations_agree():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 9, 3, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(np.arange(9)[None] < np.array([9, 4])[:, None])[:, None, None, :]
    xla, _ = model_lib.dot_product_attention(q, k, v, mask, impl="xla")
    lib, _ = model_lib.dot_product_attention(q, k, v, mask, impl="jax")
    auto, _ = model_lib.dot_product_attention(q, k, v, mask, impl="auto")
    np.testing.assert_allclose(xla, lib, atol=1e-6)
    np.testing.assert_array_equal(auto, xla)  # on CPU "auto" takes the XLA path
    # The masked keys do not influence the output of the second example.
    v2 = v.at[1, 4:].set(100.0)
    changed, _ = model_lib.dot_product_attention(q, k, v2, mask, impl="xla")
    np.testing.assert_allclose(changed[1], xla[1], atol=1e-6)


def small_config(**kw):
    return model_lib.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        **kw,
    )


@pytest.mark.parametrize("head", model_lib.HEADS)
def test_gradients_finite_and_dropout_only_when_training(head):
    model = model_lib.build_model(small_config(), head, num_labels=3)
    params = nn.unbox(model_lib.init_params(model, jax.random.key(0)))
    inputs = {k: jnp.asarray(v) for k, v in random_inputs(3, 12, 50).items()}

    def total(p, rng, deterministic):
        out = model.apply(
            {"params": p}, **inputs, deterministic=deterministic, rngs={"dropout": rng}
        )
        return sum(jnp.sum(jnp.sin(v)) for k, v in out.items() if k not in ("hidden_states",))

    grads = jax.grad(total)(params, jax.random.key(1), False)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(bool(jnp.any(g != 0)) for g in leaves) >= 0.9 * len(leaves)

    eval1 = total(params, jax.random.key(1), True)
    eval2 = total(params, jax.random.key(2), True)
    train1 = total(params, jax.random.key(1), False)
    train2 = total(params, jax.random.key(2), False)
    assert float(eval1) == float(eval2)
    assert float(train1) != float(train2)
    assert float(train1) != float(eval1)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    "sizes,expected",
    [
        (dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072), 109_482_240),
        (dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096), 335_141_888),
    ],
)
def test_parameter_count_equals_transformers_bert(sizes, expected):
    model = model_lib.BertModel(model_lib.BertConfig(**sizes))
    shapes = jax.eval_shape(lambda: nn.unbox(model_lib.init_params(model, jax.random.key(0))))
    assert count(shapes) == expected


def test_parameter_count_equals_transformers_on_odd_config():
    config = transformers.BertConfig(**SMALL)
    for head, cls in HF_CLASSES.items():
        theirs = sum(p.numel() for p in cls(config).parameters())
        ours_model = model_lib.build_model(
            model_lib.BertConfig(
                vocab_size=103,
                hidden_size=36,
                num_layers=2,
                num_heads=3,
                intermediate_size=37,
                max_position_embeddings=40,
            ),
            head,
            num_labels=2,
        )
        ours = count(
            jax.eval_shape(lambda m=ours_model: model_lib.init_params(m, jax.random.key(0)))
        )
        assert ours == theirs, head


def test_save_pretrained_round_trips_through_transformers(tmp_path):
    config = model_lib.BertConfig(
        vocab_size=103,
        hidden_size=36,
        num_layers=2,
        num_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
    )
    model = model_lib.build_model(config, "pretraining")
    params = nn.unbox(model_lib.init_params(model, jax.random.key(3)))
    bert_jax.save_pretrained(tmp_path, params, config, head="pretraining")
    reference = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    inputs = random_inputs()
    ours = model.apply({"params": params}, **inputs)
    theirs = torch_outputs(reference, inputs)
    assert rel_err(ours["prediction_logits"], theirs["prediction_logits"]) <= 1e-5


def test_dropout_drops_the_rate_and_keeps_the_mean():
    x = jnp.ones((1000, 1000), jnp.float32)
    y = np.asarray(model_lib.dropout(x, 0.1, jax.random.key(0)))
    dropped = y == 0
    assert abs(dropped.mean() - 0.1) < 0.0015  # 1M draws: the std of the fraction is 0.0003
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.9], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.005
    # Independent across keys and between neighbouring elements: joint drop rate ~ 0.1 * 0.1.
    other = np.asarray(model_lib.dropout(x, 0.1, jax.random.key(1))) == 0
    assert abs((dropped & other).mean() - 0.01) < 0.001
    assert abs((dropped[:, 1:] & dropped[:, :-1]).mean() - 0.01) < 0.001
    assert abs((dropped[1:] & dropped[:-1]).mean() - 0.01) < 0.001
    # Other rates are exact too.
    assert abs((np.asarray(model_lib.dropout(x, 0.5, jax.random.key(2))) == 0).mean() - 0.5) < 0.002


def test_heads_reject_unknown_keyword_arguments():
    """A misspelt option is an error, not silently ignored."""
    config = model_lib.BertConfig(
        vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    for head in ("pretraining", "classification", "span", "token"):
        model = model_lib.build_model(config, head)
        with pytest.raises(TypeError, match="output_attention"):
            jax.eval_shape(
                lambda m=model: m.init(
                    jax.random.key(0), **model_lib.dummy_inputs(), output_attention=True
                )
            )


# The parameter paths of every head, as checkpoints, the converters and the golden files know them.
_ENCODER_PATHS = {
    "bert/embeddings/word_embeddings/embedding", "bert/embeddings/position_embeddings/embedding",
    "bert/embeddings/token_type_embeddings/embedding", "bert/embeddings/layer_norm/scale",
    "bert/embeddings/layer_norm/bias",
    *(f"bert/layer_0/{m}/{p}" for m in ("attention/query", "attention/key", "attention/value",
      "attention/output", "intermediate", "output") for p in ("kernel", "bias")),
    *(f"bert/layer_0/{n}/{p}" for n in ("attention_layer_norm", "output_layer_norm") for p in ("scale", "bias")),
}  # fmt: skip
_POOLER = {"bert/pooler/kernel", "bert/pooler/bias"}
_HEAD_PATHS = {
    "pretraining": _POOLER | {"mlm/transform/kernel", "mlm/transform/bias", "mlm/transform_layer_norm/scale",
                              "mlm/transform_layer_norm/bias", "mlm/bias", "nsp/kernel", "nsp/bias"},
    "classification": _POOLER | {"classifier/kernel", "classifier/bias"},
    "span": {"qa_outputs/kernel", "qa_outputs/bias"},
    "token": {"classifier/kernel", "classifier/bias"},
}  # fmt: skip


@pytest.mark.parametrize("head", sorted(_HEAD_PATHS))
def test_registry_heads_keep_the_parameter_paths(head):
    """registry.build: the one task head (and the pretraining heads) name every parameter as the four
    per-head classes did, with the shapes the head implies."""
    from bert_jax.models import registry

    config = registry.config_from_fields(
        dict(vocab_size=50, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    )
    model = registry.build(config, head, num_labels=3)
    params = jax.eval_shape(lambda: nn.unbox(registry.init_params(model, jax.random.key(0))))
    flat = {"/".join(k.key for k in path): x.shape for path, x in
            jax.tree_util.tree_flatten_with_path(params)[0]}  # fmt: skip
    assert set(flat) == _ENCODER_PATHS | _HEAD_PATHS[head]
    if head in ("classification", "token"):
        assert flat["classifier/kernel"] == (8, 3)
    if head == "span":
        assert flat["qa_outputs/kernel"] == (8, 2)


def test_registry_errors_are_one_line():
    from bert_jax.models import registry

    with pytest.raises(ValueError, match=r"unknown model config keys \['hidden'\]"):
        registry.config_from_fields({"hidden": 8})
    with pytest.raises(
        ValueError,
        match="model family 'gpt' is not one of \\['albert', 'bert', 'electra', 'roberta'\\]",
    ):
        registry.config_from_fields({}, family="gpt")
    with pytest.raises(ValueError, match="unknown head 'pooler'"):
        registry.build(registry.config_from_fields({}), "pooler")
    model = registry.build(registry.config_from_fields({}), "pretraining")
    with pytest.raises(ValueError, match=r"objective 'rtd' is not one of \['mlm_nsp'\]"):
        registry.objective("rtd", model)


def test_registry_flops_are_the_familys_count():
    """bert_base at 128 tokens / 20 predictions: the paper-model count, through the registry."""
    from bert_jax import flops
    from bert_jax.models import registry

    config = registry.config_from_fields(dict(registry.presets()["base"]))
    h, i, v, n = 768, 3072, 30522, 128
    expected = 6.0 * (
        12 * (n * (4 * h * h + 2 * h * i) + 2 * n * n * h) + 20 * (h * h + h * v) + h * h + 2 * h
    )
    assert registry.flops_per_sequence(config, 128, 20) == expected
    assert flops.model_flops_per_sequence(config, 128, 20) == expected
