"""A table lookup (`table[ids]`) whose gradient sums the rows of each id without colliding atomic adds.

The gradient of a gather is a scatter-add: every token's gradient row is added into its id's row. On a GPU the
adds of rows that share an id collide on the same addresses and serialise; a pretraining batch of the bundled
corpus puts ~15,700 of its 32,768 tokens on the pad id (docs/performance.md). `sorted_lookup`'s backward sorts
the ids instead, sums each id's rows with a segmented scan, and adds one row per distinct id (one add per
address). It costs a sort of the ids and log2(tokens) elementwise passes over the gradient, whatever the data.

The forward is the same gather; the gradient equals the scatter-add's up to the order of float32 additions
(tested against autodiff). Which one a model uses is `BertConfig.embedding_gradient`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _segment_sum_sorted(values: Array, starts: Array) -> Array:
    """Inclusive running sums of `values` [n, d] that restart wherever `starts` [n] is True."""

    def combine(a, b):
        (start_a, sum_a), (start_b, sum_b) = a, b
        return start_a | start_b, jnp.where(start_b[:, None], sum_b, sum_a + sum_b)

    return jax.lax.associative_scan(combine, (starts, values))[1]


def table_gradient(ids: Array, grads: Array, num_rows: int) -> Array:
    """sum over tokens t with ids[t] == r of grads[t], for every row r: [num_rows, d] float32."""
    flat_ids = ids.reshape(-1)
    flat = grads.reshape(flat_ids.shape[0], -1).astype(jnp.float32)
    order = jnp.argsort(flat_ids, stable=True)
    sorted_ids, rows = flat_ids[order], flat[order]
    boundary = sorted_ids[1:] != sorted_ids[:-1]
    starts = jnp.concatenate([jnp.ones((1,), bool), boundary])
    ends = jnp.concatenate([boundary, jnp.ones((1,), bool)])
    sums = _segment_sum_sorted(rows, starts)
    # Only each id's last row (its complete sum) is added; the others point past the table and are dropped.
    target = jnp.where(ends, sorted_ids, num_rows)
    out = jnp.zeros((num_rows, flat.shape[1]), jnp.float32)
    return out.at[target].add(sums, mode="drop", indices_are_sorted=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def sorted_lookup(table: Array, ids: Array, dtype=None) -> Array:
    """`table[ids]` (cast to `dtype`), whose gradient for `table` is `table_gradient` (see the module)."""
    out = jnp.take(table, ids, axis=0)
    return out if dtype is None else out.astype(dtype)


def _forward(table, ids, dtype):
    # The table itself is not needed backward: an empty array carries its row count and dtype.
    return sorted_lookup(table, ids, dtype), (ids, jnp.zeros((table.shape[0], 0), table.dtype))


def _backward(dtype, residuals, grads):
    ids, like = residuals
    # Integer ids have no gradient: a float0 zero of their shape.
    no_grad = np.zeros(ids.shape, jax.dtypes.float0)
    return table_gradient(ids, grads, like.shape[0]).astype(like.dtype), no_grad


sorted_lookup.defvjp(_forward, _backward)
