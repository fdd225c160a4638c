"""The sorted lookup: the same rows forward, and the scatter-add's gradient backward, on any ids."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.models import bert as model_lib
from bert_jax.models import lookup


@pytest.mark.parametrize("case", ["random", "padded", "one_id", "every_id_once"])
def test_gradient_equals_the_scatter_add(case):
    rng = np.random.default_rng(hash(case) % 2**32)
    table = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32)
    ids = {
        "random": rng.integers(0, 40, (5, 9)),
        # Most rows on the pad id 0, as the bundled corpus's batches (48% padding).
        "padded": np.where(
            np.arange(9)[None] < rng.integers(2, 9, (5, 1)), rng.integers(1, 40, (5, 9)), 0
        ),
        "one_id": np.full((5, 9), 7),
        "every_id_once": rng.permutation(40)[:36].reshape(4, 9),
    }[case]
    ids = jnp.asarray(ids, jnp.int32)
    weights = jnp.asarray(rng.normal(size=(*ids.shape, 6)), jnp.float32)
    plain = jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) * weights))(table)
    sorted_ = jax.jit(jax.grad(lambda t: jnp.sum(lookup.sorted_lookup(t, ids) * weights)))(table)
    np.testing.assert_allclose(sorted_, plain, rtol=1e-6, atol=1e-6)
    # Forward: the gather, cast to the compute dtype after it (as nn.Embed's cast-then-gather, exactly).
    got = lookup.sorted_lookup(table, ids, jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, jnp.take(table.astype(jnp.bfloat16), ids, axis=0))


def test_model_with_sorted_embedding_gradient_matches_the_default():
    kwargs = dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24)
    plain = model_lib.BertForPreTraining(model_lib.BertConfig(**kwargs))
    sorted_ = model_lib.BertForPreTraining(
        model_lib.BertConfig(**kwargs, embedding_gradient="sorted")
    )
    params = nn.unbox(model_lib.init_params(plain, jax.random.key(0)))
    # Three sequences of 6 tokens and 4 pads (id 0), one token repeated across them.
    ids = np.where(np.arange(10) < 6, np.arange(30).reshape(3, 10) % 7 + 1, 0)
    ids = jnp.asarray(ids, jnp.int32)

    def loss(model, p):
        out = model.apply({"params": p}, ids, jnp.zeros_like(ids), (ids > 0).astype(jnp.int32))
        return jnp.sum(out["prediction_logits"] ** 2) + jnp.sum(out["pooler_output"])

    np.testing.assert_allclose(loss(sorted_, params), loss(plain, params), rtol=1e-6)
    g_plain, g_sorted = (
        jax.grad(lambda p: loss(plain, p))(params),
        jax.grad(lambda p: loss(sorted_, p))(params),
    )
    for a, b in zip(jax.tree.leaves(g_sorted), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_embedding_gradient_is_one_line():
    with pytest.raises(
        ValueError, match=r"embedding_gradient 'atomic' not in \('scatter', 'sorted'\)"
    ):
        model_lib.BertConfig(embedding_gradient="atomic")
