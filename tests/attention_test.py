"""Attention implementations, the padding-mask -> key-lengths route cuDNN takes, and its fallback."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import attention
from bert_jax.models import bert as model_lib


def qkv(batch=3, length=10, heads=2, head_dim=8, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype) for _ in range(3)
    )


def right_padding(lengths, length):
    return jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])


def test_key_lengths_of_right_padding_and_of_other_masks():
    lengths, right = attention.key_lengths(right_padding([10, 6, 1], 10).astype(jnp.int32))
    np.testing.assert_array_equal(lengths, [10, 6, 1])
    assert bool(right)
    # A hole, left padding, or an empty row among right-padded ones: not right padding.
    hole = np.ones((2, 6), bool)
    hole[1, 2] = False
    left = np.ones((2, 6), bool)
    left[0, :2] = False
    for mask, want_lengths in ((hole, [6, 5]), (left, [4, 6])):
        lengths, right = attention.key_lengths(jnp.asarray(mask))
        np.testing.assert_array_equal(lengths, want_lengths)
        assert not bool(right)
    lengths, right = attention.key_lengths(right_padding([3, 0], 5))
    np.testing.assert_array_equal(lengths, [3, 0])
    assert bool(right)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("lengths", [[10, 10, 10], [10, 6, 1]])
def test_every_cpu_implementation_gives_the_same_output(dtype, tol, lengths):
    q, k, v = qkv(dtype=dtype)
    mask = right_padding(lengths, 10)[:, None, None, :]
    expected = np.asarray(
        attention._masked_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)[0]
    )
    outputs = {
        impl: attention.dot_product_attention(q, k, v, mask, impl=impl)[0]
        for impl in ("xla", "jax", "auto")
    }
    # The lengths route that "cudnn" takes, run by jax.nn's XLA implementation (it runs on a CPU).
    outputs["lengths"] = attention.padded_attention(q, k, v, mask, implementation="xla")
    for impl, out in outputs.items():
        assert out.shape == q.shape and out.dtype == dtype, impl
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=tol, err_msg=impl)
    # Padded keys do not matter: changing their values changes nothing in any implementation.
    v_changed = v.at[2, lengths[2] :].set(100.0) if lengths[2] < 10 else v
    changed = attention.padded_attention(q, k, v_changed, mask, implementation="xla")
    np.testing.assert_array_equal(changed, outputs["lengths"])


def test_a_mask_that_is_not_right_padding_takes_the_masked_path():
    q, k, v = qkv(batch=2, length=6)
    left = np.ones((2, 6), bool)
    left[0, :2] = False  # left padding: lengths alone would attend to keys 0-3, not 2-5
    mask = jnp.asarray(left)[:, None, None, :]
    expected = attention._masked_attention(q, k, v, mask)[0]
    out = jax.jit(lambda *a: attention.padded_attention(*a, implementation="xla"))(q, k, v, mask)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    # ... which is a different answer from the lengths route: the check is what made it right.
    by_lengths = jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=jnp.array([4, 6], jnp.int32)
    )
    assert float(jnp.max(jnp.abs(by_lengths[0] - expected[0]))) > 0.1
    # A mask of any other shape (per query) also takes the masked path.
    per_query = jnp.broadcast_to(mask, (2, 1, 6, 6))
    out = attention.padded_attention(q, k, v, per_query, implementation="xla")
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_gradients_through_the_lengths_route_equal_the_masked_path():
    q, k, v = qkv()
    mask = right_padding([10, 6, 3], 10)[:, None, None, :]
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

    routed = jax.grad(
        loss(lambda *a: attention.padded_attention(*a, mask, implementation="xla")), (0, 1, 2)
    )
    plain = jax.grad(loss(lambda *a: attention._masked_attention(*a, mask)[0]), (0, 1, 2))
    for a, b in zip(routed(q, k, v), plain(q, k, v), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_auto_takes_cudnn_only_where_it_can_run(monkeypatch):
    resolve = lambda **kw: attention.resolve_impl(
        "auto", **({"head_dim": 64, "dropout": False, "weights": False} | kw)
    )
    assert resolve(dtype=jnp.bfloat16) == "xla"  # this machine has no GPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve(dtype=jnp.bfloat16) == "cudnn"
    assert resolve(dtype=jnp.float16) == "cudnn"
    assert resolve(dtype=jnp.float32) == "xla"
    assert resolve(dtype=jnp.bfloat16, dropout=True) == "xla"
    assert resolve(dtype=jnp.bfloat16, weights=True) == "xla"
    assert resolve(dtype=jnp.bfloat16, head_dim=12) == "xla"
    assert (
        attention.resolve_impl("jax", dtype=jnp.float32, head_dim=12, dropout=False, weights=False)
        == "jax"
    )


@pytest.mark.parametrize(
    "fields,message",
    [
        (
            dict(attention_impl="cudnn"),
            "attention_impl 'cudnn' cannot run: it needs a GPU and the JAX backend is 'cpu'",
        ),
        (
            dict(attention_impl="jax"),
            "attention_impl 'jax' applies no dropout to the attention probabilities (attention_dropout_prob is 0.1)",
        ),
        (dict(attention_impl="flash"), "attention_impl 'flash' is not one of"),
    ],
)
def test_impossible_attention_impl_is_a_one_line_config_error(fields, message):
    with pytest.raises(ValueError) as error:
        model_lib.BertConfig(**fields)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "settings,reason",
    [
        (
            dict(dtype="float32"),
            "it needs 16-bit inputs (bfloat16 or float16) and dtype is 'float32'",
        ),
        (dict(head_dim=12), "it needs a head size that is a multiple of 8 up to 128, not 12"),
        (
            dict(dropout_rate=0.1),
            "it applies no dropout to the attention probabilities (attention_dropout_prob is 0.1;",
        ),
        (dict(), None),
    ],
)
def test_cudnn_requirements_on_a_gpu(settings, reason):
    args = dict(backend="gpu", dtype="bfloat16", head_dim=64, dropout_rate=0.0) | settings
    why = attention.cudnn_unsupported(**args)
    assert why == reason if reason is None else why.startswith(reason)
    if reason is None:
        attention.check_attention_impl("cudnn", **args)  # passes
    else:
        with pytest.raises(ValueError, match="attention_impl 'cudnn' cannot run"):
            attention.check_attention_impl("cudnn", **args)


def test_attention_weights_from_cudnn_or_jax_are_an_error_before_compiling():
    q, k, v = qkv()
    mask = right_padding([10, 6, 3], 10)[:, None, None, :]
    for impl in ("cudnn", "jax"):
        with pytest.raises(
            ValueError, match=f"attention_impl '{impl}' cannot give attention weights"
        ):
            jax.eval_shape(
                lambda q, k, v, i=impl: attention.dot_product_attention(
                    q, k, v, mask, impl=i, return_weights=True
                ),
                q,
                k,
                v,
            )


def test_model_outputs_equal_across_implementations():
    fields = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=24)
    fields |= dict(max_position_embeddings=16, attention_dropout_prob=0.0)
    inputs = dict(
        input_ids=jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % 50,
        token_type_ids=(jnp.arange(12) >= 5).astype(jnp.int32)[None].repeat(2, 0),
        attention_mask=right_padding([12, 7], 12).astype(jnp.int32),
    )
    model = model_lib.BertModel(model_lib.BertConfig(**fields, attention_impl="xla"))
    params = nn.unbox(model_lib.init_params(model, jax.random.key(0)))
    expected = model.apply({"params": params}, **inputs)["last_hidden_state"]
    got = model_lib.BertModel(model_lib.BertConfig(**fields, attention_impl="jax")).apply(
        {"params": params}, **inputs
    )
    np.testing.assert_allclose(got["last_hidden_state"], expected, atol=1e-5)


def _compiled_scatters(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return sorted(line.split("=")[1].split()[0] for line in hlo.splitlines() if " scatter(" in line)


def test_embedding_gradients_need_no_scatter_for_positions_and_segments():
    # Only the gathers that must stay gathers have a scatter-add in the gradient: the word embeddings
    # [vocab, hidden] and the masked positions [batch, length, hidden]. Before, the position table [16, 16]
    # and the 2-row segment table [2, 16] had one each (the segment one took half an H100 step).
    cfg = model_lib.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
    )
    model = model_lib.BertForPreTraining(cfg)
    params = jax.eval_shape(lambda: nn.unbox(model_lib.init_params(model, jax.random.key(0))))
    ids = jnp.zeros((4, 12), jnp.int32)

    def total(p):
        out = model.apply(
            {"params": p},
            ids,
            ids,
            ids + 1,
            jnp.zeros((4, 3), jnp.int32),
            deterministic=False,
            rngs={"dropout": jax.random.key(0)},
        )
        return jnp.sum(out["prediction_logits"]) + jnp.sum(out["seq_relationship_logits"])

    assert _compiled_scatters(jax.grad(total), params) == ["f32[4,12,16]{2,1,0}", "f32[50,16]{1,0}"]


def test_segment_rows_by_select_equal_a_gather():
    table = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
    ids = jnp.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    np.testing.assert_array_equal(model_lib._select_rows(table, ids), table[ids])
    grad = jax.grad(lambda t: jnp.sum(model_lib._select_rows(t, ids) * jnp.arange(5.0)))(table)
    counts = np.array([3, 2, 3], np.float32)[:, None]
    np.testing.assert_allclose(grad, counts * np.arange(5.0)[None])


def test_pallas_takes_the_same_dropout_as_xla_and_auto_never_picks_it(monkeypatch):
    q, k, v = qkv(batch=2, length=16, head_dim=16)
    mask = right_padding([16, 9], 16)[:, None, None, :]
    rng = jax.random.key(2)
    kw = dict(dropout_rate=0.1, dropout_rng=rng)
    fused, weights = attention.dot_product_attention(q, k, v, mask, impl="pallas", **kw)
    assert weights is None
    expected = attention.dot_product_attention(q, k, v, mask, impl="xla", **kw)[0]
    np.testing.assert_allclose(fused, expected, atol=2e-6)
    # A per-query mask is not a [batch, keys] one: the masked path runs it, with the same dropout.
    per_query = jnp.broadcast_to(mask, (2, 1, 16, 16))
    out = attention.dot_product_attention(q, k, v, per_query, impl="pallas", **kw)[0]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="attention_impl 'pallas' cannot give attention weights"):
        attention.dot_product_attention(q, k, v, mask, impl="pallas", return_weights=True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    for dtype, dropout in ((jnp.bfloat16, False), (jnp.bfloat16, True), (jnp.float32, True)):
        resolved = attention.resolve_impl(
            "auto", dtype=dtype, head_dim=64, dropout=dropout, weights=False
        )
        assert resolved in ("cudnn", "xla")


def test_pallas_requirements_are_one_line_config_errors():
    assert (
        model_lib.BertConfig(attention_impl="pallas").attention_impl == "pallas"
    )  # CPU: interpreted
    attention.check_attention_impl(
        "pallas", dtype="bfloat16", head_dim=64, dropout_rate=0.1, backend="gpu"
    )
    for head_dim in (12, 8, 48):
        with pytest.raises(ValueError) as error:
            attention.check_attention_impl(
                "pallas", dtype="bfloat16", head_dim=head_dim, dropout_rate=0.1, backend="gpu"
            )
        assert str(error.value) == (
            f"attention_impl 'pallas' cannot run: on a GPU it needs a head size that is a power of "
            f"two from 16, not {head_dim}"
        )


@pytest.mark.slow  # 8-23 s on a shared CPU: the kernels are interpreted
def test_model_with_pallas_attention_equals_xla_in_training():
    fields = dict(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=24)
    fields |= dict(max_position_embeddings=16)
    inputs = dict(
        input_ids=jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 50,
        token_type_ids=jnp.zeros((2, 16), jnp.int32),
        attention_mask=right_padding([16, 11], 16).astype(jnp.int32),
    )
    model = model_lib.BertModel(model_lib.BertConfig(**fields, attention_impl="xla"))
    params = nn.unbox(model_lib.init_params(model, jax.random.key(0)))
    rngs = {"dropout": jax.random.key(5)}
    expected = model.apply({"params": params}, **inputs, deterministic=False, rngs=rngs)
    pallas = model_lib.BertModel(model_lib.BertConfig(**fields, attention_impl="pallas"))
    got = pallas.apply({"params": params}, **inputs, deterministic=False, rngs=rngs)
    np.testing.assert_allclose(got["last_hidden_state"], expected["last_hidden_state"], atol=1e-5)
