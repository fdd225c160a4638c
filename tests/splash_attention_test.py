"""attention_impl="splash": JAX's Splash kernel (interpreted on this CPU) against the masked XLA path, for padding,
packed rows, a length it must pad, under a data- and tensor-parallel mesh, and in the model; its one-line
refusals, and "auto" leaving it to be asked for by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.models import attention, bert, splash_attention

# Splash's smallest block is 128 tokens.
LENGTH = 128
# Rows of a packed batch: three sequences and padding; one sequence filling the row; a row of padding only.
SEGMENTS = np.zeros((3, LENGTH), np.int32)
SEGMENTS[0, :50], SEGMENTS[0, 50:100], SEGMENTS[0, 100:120] = 1, 2, 3
SEGMENTS[1, :] = 1


def qkv(batch=3, length=LENGTH, heads=2, head_dim=32, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, length, heads, head_dim)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))


def padding(lengths, length=LENGTH):
    return jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])[:, None, None, :]


def both(q, k, v, mask):
    run = lambda impl: attention.dot_product_attention(q, k, v, mask, impl=impl)[0]
    return run("splash"), run("xla")


def test_splash_equals_the_masked_path_at_every_real_token_and_in_gradients():
    q, k, v = qkv()
    # Padding: every query row of a row with a real token sees what the XLA path's key mask lets it see.
    got, expected = both(q, k, v, padding([128, 70, 1]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # A length off Splash's 128 grid is padded up inside and sliced back.
    got, expected = both(q[:, :40], k[:, :40], v[:, :40], padding([40, 23, 1], 40))
    assert got.shape == (3, 40, 2, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Packed rows: real tokens equal; a padding query attends the padding keys (XLA: every key, uniformly).
    mask = attention.packed_mask(jnp.asarray(SEGMENTS))
    real = SEGMENTS > 0
    got, expected = both(q, k, v, mask)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5)
    assert np.abs(np.asarray(got - expected)[~real]).max() > 1e-2
    assert np.isfinite(np.asarray(got)).all()

    # Gradients of a loss on the real tokens, as every objective reads them.
    def loss(impl):
        def f(q, k, v):
            out = attention.dot_product_attention(q, k, v, mask, impl=impl)[0]
            return jnp.sum(jnp.where(real[:, :, None, None], out, 0.0) ** 2)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)

    for a, b in zip(loss("splash"), loss("xla"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_splash_under_a_data_and_tensor_parallel_mesh_runs_per_device():
    q, k, v = qkv(batch=4, heads=2)
    segments = jnp.asarray(np.concatenate([SEGMENTS, SEGMENTS[:1]]))
    mesh = sharding.make_mesh((2, 2, 2))
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    f = lambda q, k, v, s: attention.dot_product_attention(
        q, k, v, attention.packed_mask(s), impl="splash"
    )[0]
    step = jax.jit(sharding.under_mesh(f, mesh), in_shardings=(batch,) * 4)
    text = step.lower(q, k, v, segments).as_text()
    # One manual region: batch over data x fsdp, heads over tensor.
    assert text.count("sdy.manual_computation") == 1
    assert '[{"data", "fsdp"}, {"tensor"}, {}, {}]' in text
    got = step(q, k, v, segments)
    expected = f(q, k, v, segments)
    real = np.asarray(segments) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], atol=1e-5)


def test_model_with_splash_equals_xla_on_padded_and_packed_batches():
    fields = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=24)
    fields |= dict(max_position_embeddings=LENGTH, attention_dropout_prob=0.0)
    ids = jnp.asarray(np.arange(3 * LENGTH).reshape(3, LENGTH) % 50, jnp.int32)
    xla = bert.BertModel(bert.BertConfig(**fields, attention_impl="xla"))
    fused = bert.BertModel(bert.BertConfig(**fields, attention_impl="splash"))
    params = nn.unbox(bert.init_params(xla, jax.random.key(0)))
    padded = dict(attention_mask=padding([128, 70, 9])[:, 0, 0].astype(jnp.int32))
    positions = np.concatenate([np.arange(50), np.arange(50), np.arange(28)])[None]
    packed = dict(
        segment_ids=jnp.asarray(SEGMENTS),
        position_ids=jnp.asarray(np.concatenate([positions, np.arange(LENGTH)[None]] * 2)[:3]),
    )
    for inputs, real in (
        (padded, np.asarray(padded["attention_mask"]) > 0),
        (packed, SEGMENTS > 0),
    ):
        expected = xla.apply({"params": params}, ids, **inputs)["last_hidden_state"]
        got = fused.apply({"params": params}, ids, **inputs)["last_hidden_state"]
        np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], atol=1e-5)
    # A training step's gradient through nn.scan traces the layer more than once: a kernel kept from one trace
    # for the next leaked its block tables as tracers there.
    scanned = bert.BertModel(bert.BertConfig(**fields, attention_impl="splash", scan_layers=True))
    scanned_params = nn.unbox(bert.init_params(scanned, jax.random.key(0)))

    def loss(p):
        rngs = {"dropout": jax.random.key(1)}
        out = scanned.apply({"params": p}, ids, **packed, deterministic=False, rngs=rngs)
        return jnp.sum(out["last_hidden_state"] ** 2)

    text = jax.jit(jax.grad(loss)).lower(scanned_params).as_text()
    assert text.count("stablehlo.while") >= 2  # the layers' scan, forward and backward


def test_splash_refusals_are_one_line_errors():
    cases = (
        (dict(), "attention_impl 'splash' cannot run: it applies no dropout to the attention probabilities "
         "(attention_dropout_prob is 0.1; set it to 0"),
        (dict(attention_dropout_prob=0.0, backend="gpu"),
         "attention_impl 'splash' cannot run: it is a TPU kernel; on a GPU use 'cudnn', 'pallas' or 'xla'"),
    )  # fmt: skip
    for fields, message in cases:
        backend = fields.pop("backend", None)
        with pytest.raises(ValueError) as error:
            if backend:
                attention.check_attention_impl(
                    "splash", dtype="bfloat16", head_dim=64, dropout_rate=0.0, backend=backend
                )
            else:
                bert.BertConfig(attention_impl="splash", **fields)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert bert.BertConfig(attention_impl="splash", attention_dropout_prob=0.0).attention_impl == (
        "splash"
    )
    q, k, v = qkv()
    mask = padding([128, 70, 1])
    for kw, what in (
        (dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)), "dropout on the attention"),
        (dict(return_weights=True), "attention weights"),
    ):
        with pytest.raises(ValueError, match=f"attention_impl 'splash' cannot give {what}"):
            jax.eval_shape(
                lambda q, k, v, kw=kw: attention.dot_product_attention(
                    q, k, v, mask, impl="splash", **kw
                ),
                q,
                k,
                v,
            )
    assert attention.check_packing("splash") is None


def test_auto_stays_on_xla_on_a_tpu_until_splash_is_timed_there(monkeypatch):
    """ "auto" never picks Splash (asked for by name until timed on a TPU); cuDNN on a GPU as before."""

    def resolve(**kw):
        args = dict(dtype=jnp.float32, head_dim=64, dropout=False, weights=False, length=LENGTH)
        return attention.resolve_impl("auto", **(args | kw))

    assert resolve() == "xla"  # this machine is a CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert splash_attention.target_platform() == "tpu"
    assert resolve() == "xla" and resolve(packed=True, length=512) == "xla"
    assert attention.resolve_impl(
        "splash", dtype=jnp.float32, head_dim=64, dropout=False, weights=False
    ) == ("splash")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve(dtype=jnp.bfloat16) == "cudnn"
    assert resolve(dtype=jnp.bfloat16, packed=True) == "xla"
    assert [splash_attention.block_size(n) for n in (128, 256, 384, 512, 640, 1024)] == [
        128,
        256,
        384,
        512,
        128,
        512,
    ]


def test_splash_compiles_for_a_tpu_slice_under_data_and_tensor_parallelism():
    """Ahead of time for a v5e-4 from this CPU host: "splash" in a forward without dropout is the real kernel (one
    Mosaic kernel per layer, for packed rows too) and the heads never leave their device (no all-gather)."""
    from bert_jax import topologies

    devices = topologies.topology_devices(topologies.parse_topology("v5e-4"))
    mesh = sharding.make_mesh((2, 1, 2), devices=devices)
    config = bert.BertConfig(
        vocab_size=256, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256,
        max_position_embeddings=LENGTH, dtype="bfloat16", attention_impl="splash",
        attention_dropout_prob=0.0,
    )  # fmt: skip
    model = bert.BertModel(config)
    boxed = jax.eval_shape(lambda: bert.init_params(model, jax.random.key(0)))
    shardings = sharding.logical_shardings(boxed, mesh)
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings
    )
    spec = jax.ShapeDtypeStruct((4, LENGTH), jnp.int32, sharding=sharding.batch_sharding(mesh))
    forward = lambda p, ids, segments: model.apply({"params": p}, ids, segment_ids=segments)[
        "last_hidden_state"
    ]
    step = jax.jit(sharding.under_mesh(forward, mesh))
    hlo = step.lower(params, spec, spec).compile().as_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') == config.num_layers
    assert "all-gather" not in hlo
