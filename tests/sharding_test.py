"""Mesh construction, logical-axis rules, parameter shardings and host -> global batches (8 fake devices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.models import bert as model_lib

TINY = model_lib.BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
PARAM_AXES = {
    "vocab",
    "embed",
    "embed_out",
    "position",
    "token_type",
    "heads",
    "kv",
    "mlp",
    "classes",
}


def _abstract_params(head, config=TINY, num_labels=3):
    model = model_lib.build_model(config, head, num_labels)
    return jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))


def _boxes(tree):
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


@pytest.mark.parametrize("head", model_lib.HEADS)
def test_every_parameter_has_logical_axes_and_every_axis_a_rule(head):
    rules = dict(sharding.LOGICAL_AXIS_RULES)
    boxes = _boxes(_abstract_params(head))
    assert boxes
    used = set()
    for name, box in boxes.items():
        assert isinstance(box, nn.LogicallyPartitioned), f"{name} has no logical axes"
        assert len(box.names) == box.value.ndim, name
        assert all(isinstance(axis, str) for axis in box.names), name
        used.update(box.names)
    assert used <= PARAM_AXES
    assert used <= set(rules)
    # Activations use these at block boundaries; they need rules too.
    assert {"batch", "length", "embed"} <= set(rules)


def test_the_parameters_use_exactly_the_closed_set_of_axes():
    used = set()
    for head in model_lib.HEADS:
        for box in _boxes(_abstract_params(head)).values():
            used.update(box.names)
    assert used == PARAM_AXES
    assert set(dict(sharding.LOGICAL_AXIS_RULES)) == PARAM_AXES | {"batch", "length", "layers"}


def test_activation_batch_takes_fsdp_so_embed_is_replicated():
    spec = nn.logical_to_mesh_axes(("batch", "length", "embed"), sharding.LOGICAL_AXIS_RULES)
    assert tuple(spec) == (("data", "fsdp"), None, None)
    # A weight has no batch dimension, so its embed dimension does take fsdp.
    spec = nn.logical_to_mesh_axes(("vocab", "embed"), sharding.LOGICAL_AXIS_RULES)
    assert tuple(spec) == ("tensor", "fsdp")


# The per-device block of each tiny parameter on a data=2 x fsdp=2 x tensor=2 mesh, worked out by hand:
# hidden (32) halves over fsdp; vocab (100), heads (2), mlp (64) and the pooler/transform outputs halve over
# tensor; positions, token types, per-head size (16) and classes stay whole.
SHARD_SHAPES_2X2X2 = {
    "word_embeddings']['embedding']": (50, 16),
    "position_embeddings']['embedding']": (64, 16),
    "token_type_embeddings']['embedding']": (2, 16),
    "layer_norm']['scale']": (16,),
    "layer_norm']['bias']": (16,),
    "['query']['kernel']": (16, 1, 16),
    "['query']['bias']": (1, 16),
    "['key']['kernel']": (16, 1, 16),
    "['key']['bias']": (1, 16),
    "['value']['kernel']": (16, 1, 16),
    "['value']['bias']": (1, 16),
    "['attention']['output']['kernel']": (1, 16, 16),
    "['attention']['output']['bias']": (16,),
    "['intermediate']['kernel']": (16, 32),
    "['intermediate']['bias']": (32,),
    "]['output']['kernel']": (32, 16),  # feed-forward output (mlp, embed)
    "]['output']['bias']": (16,),
    "['pooler']['kernel']": (16, 16),
    "['pooler']['bias']": (16,),
    "['transform']['kernel']": (16, 16),
    "['transform']['bias']": (16,),
    "['classifier']['bias']": (3,),
    "['qa_outputs']['bias']": (2,),
    "['mlm']['bias']": (50,),
    "['nsp']['kernel']": (16, 2),
    "['nsp']['bias']": (2,),
    "['classifier']['kernel']": (16, 3),
    "['qa_outputs']['kernel']": (16, 2),
}


def _expected_2x2x2(name):
    matches = [suffix for suffix in SHARD_SHAPES_2X2X2 if name.endswith(suffix)]
    # The attention output kernel also ends like the feed-forward one: the longest match is the specific one.
    return SHARD_SHAPES_2X2X2[max(matches, key=len)] if matches else None


@pytest.mark.parametrize("head", model_lib.HEADS)
def test_parameter_shardings_on_three_meshes(head):
    abstract = _abstract_params(head)
    boxes = _boxes(abstract)
    hand = dict(
        embed="fsdp", vocab="tensor", heads="tensor", mlp="tensor", embed_out="tensor"
    )  # the rules restated; the axes not named here are replicated
    for mesh_shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2)]:
        mesh = sharding.make_mesh(mesh_shape)
        shardings = _boxes(sharding.logical_shardings(abstract, mesh))
        assert shardings.keys() == boxes.keys()
        for name, box in boxes.items():
            got = shardings[name]
            assert isinstance(got, NamedSharding) and got.mesh == mesh
            assert got.spec == PartitionSpec(*(hand.get(axis) for axis in box.names)), name
            block = got.shard_shape(box.value.shape)
            if mesh_shape == (8, 1, 1):
                assert block == box.value.shape, name  # pure data parallel: every device holds all
            elif mesh_shape == (1, 8, 1):
                divided = tuple(
                    d // 8 if axis == "embed" else d
                    for d, axis in zip(box.value.shape, box.names, strict=True)
                )
                assert block == divided, name
            else:
                expected = _expected_2x2x2(name)
                assert expected is not None, f"no hand-written shard shape for {name}"
                assert block == expected, name


def test_a_mesh_axis_that_does_not_divide_is_dropped():
    config = model_lib.BertConfig(**{**TINY.__dict__, "vocab_size": 102})
    abstract = _abstract_params("pretraining", config)
    mesh = sharding.make_mesh((2, 1, 4))
    got = _boxes(sharding.logical_shardings(abstract, mesh))
    embedding = got["['bert']['embeddings']['word_embeddings']['embedding']"]
    assert embedding.spec == PartitionSpec(None, "fsdp")  # 102 rows do not split 4 ways
    assert got["['mlm']['bias']"].spec == PartitionSpec(None)
    # mlp (64) still splits over tensor=4.
    assert got["['bert']['layer_0']['intermediate']['kernel']"].spec == PartitionSpec(
        "fsdp", "tensor"
    )


def test_parameters_are_born_sharded_under_jit():
    model = model_lib.build_model(
        model_lib.BertConfig(**{**TINY.__dict__, "num_layers": 1}), "pretraining"
    )
    init = lambda rng: model_lib.init_params(model, rng)
    abstract = jax.eval_shape(init, jax.random.key(0))
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.logical_shardings(abstract, mesh)
    params = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(0))
    reference = nn.unbox(init(jax.random.key(0)))
    for got, want, spec in zip(
        jax.tree.leaves(params), jax.tree.leaves(reference), jax.tree.leaves(shardings), strict=True
    ):
        assert got.sharding == spec
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_make_mesh_shapes():
    assert dict(sharding.make_mesh((8, 1, 1)).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(sharding.make_mesh((-1, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh((1, -1, 1)).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    mesh = sharding.make_mesh((2, 2, 1), devices=jax.devices()[:4])
    assert mesh.devices.size == 4


@pytest.mark.parametrize(
    "shape, words",
    [
        ((3, 1, 1), "needs 3 devices but there are 8"),
        ((4, 4, 1), "needs 16 devices but there are 8"),
        ((-1, 3, 1), "8 is not divisible by 3"),
        ((-1, -1, 1), "at most one -1"),
        ((8, 1), "must have 3 entries"),
    ],
)
def test_make_mesh_errors_are_one_line(shape, words):
    with pytest.raises(ValueError) as error:
        sharding.make_mesh(shape)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_host_to_global_round_trips():
    mesh = sharding.make_mesh((2, 2, 2))
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(0, 100, (8, 16)).astype(np.int32),
        "masked_lm_weights": rng.random((8, 4)).astype(np.float32),
        "next_sentence_labels": rng.integers(0, 2, (8,)).astype(np.int32),
    }
    out = sharding.host_to_global(batch, mesh)
    assert out.keys() == batch.keys()
    for key, value in batch.items():
        assert isinstance(out[key], jax.Array)
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
        assert out[key].sharding.spec == PartitionSpec(("data", "fsdp"))
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        # 4 batch shards of 2 rows; the two tensor-parallel devices of a shard hold the same rows.
        for shard in out[key].addressable_shards:
            rows = shard.index[0]
            assert (rows.stop - rows.start) == 2
            np.testing.assert_array_equal(np.asarray(shard.data), value[rows])
    # The arrays feed a jitted computation without resharding surprises.
    total = jax.jit(lambda b: jnp.sum(b["input_ids"]))(out)
    assert int(total) == int(batch["input_ids"].sum())


@pytest.mark.parametrize("mesh_shape, rows", [((2, 2, 2), 6), ((8, 1, 1), 4), ((1, 8, 1), 12)])
def test_host_to_global_rejects_an_indivisible_batch(mesh_shape, rows):
    mesh = sharding.make_mesh(mesh_shape)
    batch = {"input_ids": np.zeros((rows, 4), np.int32)}
    with pytest.raises(ValueError) as error:
        sharding.host_to_global(batch, mesh)
    message = str(error.value)
    assert f"global_batch_size {rows} is not divisible" in message and "\n" not in message


def test_host_to_global_rejects_ragged_features():
    mesh = sharding.make_mesh((8, 1, 1))
    with pytest.raises(ValueError, match="different leading sizes"):
        sharding.host_to_global({"a": np.zeros((8, 2)), "b": np.zeros((16,))}, mesh)


def test_check_batch_divisible():
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.check_batch_divisible(256, mesh, 2)  # 4 batch shards, 2 hosts
    with pytest.raises(ValueError, match="by the 4 batch shards"):
        sharding.check_batch_divisible(10, mesh, 1)
    with pytest.raises(ValueError, match="by 3 processes"):
        sharding.check_batch_divisible(8, mesh, 3)
    assert sharding.batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))


def test_unboxed_leaves_are_replicated():
    mesh = sharding.make_mesh((2, 2, 2))
    tree = {"w": nn.LogicallyPartitioned(jnp.ones((4, 6)), ("embed", "mlp")), "b": jnp.ones((3,))}
    got = sharding.logical_shardings(tree, mesh)
    assert got["w"].spec == PartitionSpec("fsdp", "tensor")
    assert got["b"].spec == PartitionSpec(None)
    assert got["b"].is_fully_replicated


def _constraints(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [e for e in jaxpr.eqns if e.primitive.name == "sharding_constraint"]


def test_block_boundary_constraints_take_effect_only_under_the_mesh():
    model = model_lib.build_model(TINY, "pretraining")
    params = jax.eval_shape(lambda: nn.unbox(model_lib.init_params(model, jax.random.key(0))))
    forward = lambda p, b: model.apply({"params": p}, **b)["prediction_logits"]
    batch = model_lib.dummy_inputs(8, 16)
    assert _constraints(forward, params, batch) == []  # no mesh context: no-ops, as before
    mesh = sharding.make_mesh((2, 2, 2))
    found = _constraints(sharding.under_mesh(forward, mesh), params, batch)
    # After the embeddings and after each of the 2 layers: [batch, length, hidden], batch over data x fsdp.
    assert len(found) == 1 + TINY.num_layers
    for eqn in found:
        assert eqn.invars[0].aval.shape == (8, 16, TINY.hidden_size)
        assert eqn.params["sharding"].spec == PartitionSpec(("data", "fsdp"), None, None)
        assert eqn.params["sharding"].mesh.shape == mesh.shape


def test_init_under_the_mesh_constrains_every_parameter_including_flattened_kernels():
    """DenseGeneral initialises Q/K/V/output kernels flattened to 2-D; their 3 axis names apply after the
    reshape, so init under the rules neither fails nor loses a parameter's constraint."""
    model = model_lib.build_model(TINY, "pretraining")
    mesh = sharding.make_mesh((2, 2, 2))
    init = lambda rng: model_lib.init_params(model, rng)
    boxes = _boxes(jax.eval_shape(init, jax.random.key(0)))
    found = _constraints(sharding.under_mesh(init, mesh), jax.random.key(0))
    want = sorted(
        (box.value.shape, str(nn.logical_to_mesh_axes(box.names, sharding.LOGICAL_AXIS_RULES)))
        for box in boxes.values()
    )
    got = sorted((e.invars[0].aval.shape, str(e.params["sharding"].spec)) for e in found)
    # Init also runs the forward pass once, on a [1, 8] dummy batch: its block-boundary constraints.
    activation = ((1, 8, TINY.hidden_size), "P(('data', 'fsdp'), None, None)")
    assert got.count(activation) == 1 + TINY.num_layers
    # Every parameter is constrained as its axes say (a parameter used twice, e.g. the word embeddings by
    # the tied decoder, is constrained at each use).
    assert sorted(set(got) - {activation}) == sorted(set(want))
    assert ((32, 2, 16), "P('fsdp', 'tensor', None)") in got  # e.g. a query kernel, 3-D
    # And the values equal those of an init without any mesh.
    sharded = jax.jit(sharding.under_mesh(lambda r: nn.unbox(init(r)), mesh))(jax.random.key(0))
    plain = nn.unbox(init(jax.random.key(0)))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dcn_mesh_shape_of_ones_is_one_slice():
    mesh = sharding.make_mesh((-1, 2, 1), dcn_mesh_shape=(1, 1, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(
        ValueError, match=r"dcn_mesh_shape \(2, 1, 1\) needs 2 devices but there are 1"
    ):
        sharding.make_mesh((-1, 1, 1), dcn_mesh_shape=(2, 1, 1))  # CPU devices are one slice
