"""The Pallas flash kernel (interpret mode on a CPU) against the XLA path: outputs, gradients, dropout mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import attention
from bert_jax.models import flash_attention as fa

# Tiles smaller than the lengths, and unequal, so that the online softmax and the index arithmetic cross
# tile borders in both directions.
BLOCKS = dict(block_q=16, block_k=8)


def qkv(batch=2, length=32, heads=2, head_dim=16, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, length, heads, head_dim)
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))


def padding(lengths, length):
    return jnp.asarray(np.arange(length)[None] < np.asarray(lengths)[:, None])


def segment_mask(segments):
    """The XLA path's [batch, 1, q, kv] mask for packed rows (segment 0 is padding)."""
    seg = jnp.asarray(segments)
    return ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0))[:, None]


def one_hot_values(batch, length, heads):
    """V whose key s is the unit vector e_s: the attention output is then the (dropped) probabilities.

    The kernel takes one head size for Q, K and V, so the tests that use this give Q and K `length` too.
    """
    eye = jnp.eye(length, dtype=jnp.float32)[None, :, None, :]
    return jnp.broadcast_to(eye, (batch, length, heads, length))


def test_block_size_is_the_largest_power_of_two_dividing_the_length():
    assert [fa.block_size(n, 64) for n in (128, 64, 48, 40, 16, 12)] == [64, 64, 16, 8, 16, 4]
    assert fa.block_size(128, 100) == 64


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_forward_equals_the_xla_path(rate):
    q, k, v = qkv()
    key_mask = padding([32, 19], 32)
    rng = jax.random.key(7)
    out = fa.flash_attention(
        q, k, v, key_mask=key_mask, dropout_rate=rate, dropout_rng=rng, **BLOCKS
    )
    expected = attention._masked_attention(q, k, v, key_mask[:, None, None, :], rate, rng)[0]
    assert out.shape == q.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, atol=2e-6)
    if rate:
        # Dropout changed the answer (so the agreement above is the masks agreeing).
        plain = attention._masked_attention(q, k, v, key_mask[:, None, None, :])[0]
        assert float(jnp.max(jnp.abs(plain - expected))) > 0.05


def test_the_dropout_mask_is_bitwise_the_xla_paths():
    batch, length, heads = 2, 32, 2
    q, k, _ = qkv(batch, length, heads, head_dim=length, seed=1)
    v = one_hot_values(batch, length, heads)
    rng = jax.random.key(11)
    dropped = fa.flash_attention(q, k, v, dropout_rate=0.1, dropout_rng=rng, **BLOCKS)
    dropped = jnp.transpose(dropped, (0, 2, 1, 3))  # [batch, heads, q, kv] like the XLA path's
    mask = jnp.ones((batch, 1, 1, length), bool)
    weights = attention._masked_attention(q, k, v, mask)[1]
    xla_dropped = attention.dropout(weights, 0.1, rng)
    assert float(jnp.min(weights)) > 0.0  # so a zero is a dropped element and nothing else
    np.testing.assert_array_equal(dropped == 0.0, xla_dropped == 0.0)
    np.testing.assert_allclose(dropped, xla_dropped, rtol=2e-6, atol=1e-7)
    # Another rng, another mask.
    other = fa.flash_attention(q, k, v, dropout_rate=0.1, dropout_rng=jax.random.key(12), **BLOCKS)
    assert int(jnp.sum((other == 0.0) != (dropped.transpose(0, 2, 1, 3) == 0.0))) > 100


def test_keep_rate_and_mean_of_the_dropped_probabilities():
    batch, length, heads, rate = 2, 64, 2, 0.1
    q, k, _ = qkv(batch, length, heads, head_dim=length, seed=2)
    v = one_hot_values(batch, length, heads)
    dropped = np.asarray(
        fa.flash_attention(q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(3))
    )
    probs = np.asarray(fa.flash_attention(q, k, v))
    n = probs.size  # 16,384 probabilities
    keep_rate = np.mean(dropped != 0.0)
    # Binomial: 5 standard deviations of the kept fraction (0.0023 here).
    assert abs(keep_rate - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    # Each kept p becomes p / (1 - rate): unbiased, with variance p^2 rate / (1 - rate) per element.
    tolerance = 5 * np.sqrt(np.sum(probs.astype(np.float64) ** 2) * rate / (1 - rate)) / n
    assert abs(dropped.mean() - probs.mean()) < tolerance
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def _grads(fn, q, k, v, seed=5):
    weights = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), jnp.float32)
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), (0, 1, 2))(q, k, v)


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_gradients_equal_the_xla_paths(rate):
    q, k, v = qkv()
    key_mask = padding([32, 13], 32)
    rng = jax.random.key(9)
    kw = dict(dropout_rate=rate, dropout_rng=rng)
    fused = _grads(lambda *a: fa.flash_attention(*a, key_mask=key_mask, **kw, **BLOCKS), q, k, v)
    plain = _grads(
        lambda *a: attention._masked_attention(*a, key_mask[:, None, None, :], rate, rng)[0],
        q,
        k,
        v,
    )
    for name, a, b in zip("qkv", fused, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")


# Two rows of packed examples; row 0 ends in padding (segment 0), row 1 is full.
SEGMENTS = np.array([[1] * 10 + [2] * 14 + [0] * 8, [1] * 7 + [2] * 9 + [3] * 16])


def test_segments_equal_the_xla_path_with_a_block_diagonal_mask():
    q, k, v = qkv()
    rng = jax.random.key(4)
    seg = jnp.asarray(SEGMENTS)
    kw = dict(dropout_rate=0.1, dropout_rng=rng)
    out = fa.flash_attention(q, k, v, segment_ids=seg, **kw, **BLOCKS)
    expected = attention._masked_attention(q, k, v, segment_mask(SEGMENTS), 0.1, rng)[0]
    # Padding queries (segment 0) attend to no key: both paths give them the same uniform average.
    np.testing.assert_allclose(out, expected, atol=2e-6)
    fused = _grads(lambda *a: fa.flash_attention(*a, segment_ids=seg, **kw, **BLOCKS), q, k, v)
    plain = _grads(
        lambda *a: attention._masked_attention(*a, segment_mask(SEGMENTS), 0.1, rng)[0], q, k, v
    )
    for name, a, b in zip("qkv", fused, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")


def test_a_segments_output_does_not_depend_on_other_segments():
    q, k, v = qkv()
    seg = jnp.asarray(SEGMENTS)
    run = jax.jit(lambda q, k, v: fa.flash_attention(q, k, v, segment_ids=seg, **BLOCKS))
    before = np.asarray(run(q, k, v))
    # Change every token of segment 2 (queries, keys and values) in both rows.
    other = jnp.asarray(SEGMENTS == 2)[:, :, None, None]
    q2, k2, v2 = (jnp.where(other, x * 3.0 + 1.0, x) for x in (q, k, v))
    after = np.asarray(run(q2, k2, v2))
    # Padding queries (segment 0) average over every key, so only real segments other than 2 stay put.
    untouched = (SEGMENTS != 2) & (SEGMENTS != 0)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert np.abs(after[SEGMENTS == 2] - before[SEGMENTS == 2]).min() > 0.0


def test_a_padding_mask_with_holes_and_segments_together():
    q, k, v = qkv()
    key_mask = np.ones((2, 32), bool)
    key_mask[0, 3] = key_mask[1, 20:24] = (
        False  # not right padding: any [batch, keys] mask is taken
    )
    seg = jnp.asarray(SEGMENTS)
    out = fa.flash_attention(q, k, v, key_mask=jnp.asarray(key_mask), segment_ids=seg, **BLOCKS)
    mask = segment_mask(SEGMENTS) & jnp.asarray(key_mask)[:, None, None, :]
    np.testing.assert_allclose(out, attention._masked_attention(q, k, v, mask)[0], atol=2e-6)


def test_bfloat16_inputs_run_with_float32_statistics():
    q, k, v = qkv(dtype=jnp.bfloat16)
    key_mask = padding([32, 21], 32)
    rng = jax.random.key(1)
    out = fa.flash_attention(q, k, v, key_mask=key_mask, dropout_rate=0.1, dropout_rng=rng)
    assert out.dtype == jnp.bfloat16
    expected = attention._masked_attention(
        *(x.astype(jnp.float32) for x in (q, k, v)), key_mask[:, None, None, :], 0.1, rng
    )[0]
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2)
    grads = _grads(
        lambda *a: fa.flash_attention(*a, key_mask=key_mask).astype(jnp.float32), q, k, v
    )
    plain = _grads(
        lambda *a: attention._masked_attention(*a, key_mask[:, None, None, :])[0].astype(
            jnp.float32
        ),
        q,
        k,
        v,
    )
    for a, b in zip(grads, plain, strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=6e-2)


def test_lengths_a_gpu_cannot_tile_are_a_one_line_error():
    q, k, v = qkv(length=24)
    with pytest.raises(ValueError) as error:
        fa.flash_attention(q, k, v, interpret=False)
    assert str(error.value) == (
        "attention_impl 'pallas' needs lengths that are multiples of 16 on a GPU, "
        "not 24 queries and 24 keys"
    )


def test_the_three_kernels_lower_to_triton_for_a_gpu():
    # Cross-lowering for CUDA runs the Pallas -> Triton lowering here, without a GPU: it rejects what
    # Triton cannot express (block shapes, dtypes, scalar loads) before a GPU session would find out.
    shape = jax.ShapeDtypeStruct((2, 128, 2, 64), jnp.bfloat16)
    key_mask = jax.ShapeDtypeStruct((2, 128), jnp.bool_)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def loss(q, k, v, key_mask, rng):
        out = fa.flash_attention(
            q, k, v, key_mask=key_mask, dropout_rate=0.1, dropout_rng=rng, interpret=False
        )
        return jnp.sum(out.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, (0, 1, 2))).trace(shape, shape, shape, key_mask, rng)
    text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("stablehlo.custom_call @__gpu$xla.gpu.triton") == 3  # forward, dK/dV, dQ
