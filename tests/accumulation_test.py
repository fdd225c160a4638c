"""train_lib.accumulate_gradients on its own: k interleaved micro-batches give the one-batch loss and gradient,
sum their aux sums, and draw micro-batch i's randomness from fold_in(rng, i)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import train_lib


def _loss(params, batch, rng):
    """Mean squared error of a linear model, plus sums; `noise` is one draw per (micro-)batch."""
    error = batch["x"] @ params["w"] + params["b"] - batch["y"]
    noise = jax.random.uniform(rng)
    return jnp.mean(error**2), {
        "rows": jnp.float32(len(error)),
        "noise": noise,
        "y_sum": batch["y"].sum(),
    }


def _batch(rows=8):
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(rows, 3)).astype(np.float32),
        "y": rng.normal(size=rows).astype(np.float32),
    }


PARAMS = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.25)}


@pytest.mark.parametrize("steps", [2, 4])
def test_micro_batches_average_to_the_one_batch_gradient(steps):
    batch, rng = _batch(), jax.random.key(3)
    (loss, aux), grads = train_lib.accumulate_gradients(_loss, PARAMS, batch, rng, steps)
    (loss_1, aux_1), grads_1 = train_lib.accumulate_gradients(_loss, PARAMS, batch, rng, 1)
    np.testing.assert_allclose(loss, loss_1, rtol=1e-6)
    for name in ("w", "b"):
        np.testing.assert_allclose(grads[name], grads_1[name], rtol=1e-5, atol=1e-7)
    assert float(aux["rows"]) == 8.0 and float(aux_1["rows"]) == 8.0
    np.testing.assert_allclose(aux["y_sum"], batch["y"].sum(), rtol=1e-6)
    expected_noise = sum(
        float(jax.random.uniform(jax.random.fold_in(rng, i))) for i in range(steps)
    )
    np.testing.assert_allclose(aux["noise"], expected_noise, rtol=1e-6)


def test_micro_batch_i_holds_rows_i_i_plus_k():
    """Rows i, i+k, i+2k, ... form micro-batch i (every device keeps its own rows)."""

    def first_row(params, batch, rng):
        del rng
        return jnp.sum(params["w"]) * 0.0, {"first": batch["x"][0, 0]}

    x = np.arange(8, dtype=np.float32)[:, None]
    (_, aux), _ = train_lib.accumulate_gradients(
        first_row, {"w": jnp.ones(1)}, {"x": x}, jax.random.key(0), 4
    )
    assert float(aux["first"]) == 0.0 + 1.0 + 2.0 + 3.0  # micro-batches start at rows 0, 1, 2, 3
