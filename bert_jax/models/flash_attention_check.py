"""The GPU check of the Pallas flash kernel: agreement, the dropout's rate on the device, and timings.

    python -m bert_jax.models.flash_attention_check            # on a GPU machine, from the repository root
    python -m bert_jax.models.flash_attention_check --batch 64 --iters 5   # a quicker pass

Prints one JSON line per result:
  1. agreement: pallas vs xla (both with dropout 0.1, the same rng), bfloat16, outputs and gradients;
  2. dropout: the kept fraction and the mean of the dropped probabilities on the device (the kernel's output
     with one-hot values is its dropped probability matrix), with their 5-sigma tolerances;
  3. timings: fwd+bwd of one attention call on [batch, 128, 12, 64] bfloat16 with a right-padding mask for
     xla (dropout 0.1 and 0), cudnn (no dropout, as the model runs it), cuDNN's own dropout through
     jax._src.cudnn (a private API; see docs/performance.md), and pallas over a few tile shapes.
Nothing here runs in the tests (it needs a GPU); it is a module of its own so that no library module
imports a command.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.models import attention
from bert_jax.models import flash_attention as fa


def _inputs(batch, length, heads, head_dim, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(x, (batch, length, heads, head_dim), dtype) for x in keys[:3])
    lengths = jax.random.randint(keys[3], (batch,), length // 2, length + 1)
    return q, k, v, jnp.arange(length)[None] < lengths[:, None]


def _train_step(attend):
    """jit(value_and_grad) of sum(attention * fixed weights) w.r.t. q, k, v."""

    def loss(q, k, v, key_mask, rng):
        out = attend(q, k, v, key_mask, rng).astype(jnp.float32)
        return jnp.sum(out * jnp.cos(jnp.arange(out.shape[-1], dtype=jnp.float32)))

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))


def _xla(rate):
    def attend(q, k, v, key_mask, rng):
        mask = key_mask[:, None, None, :]
        return attention.dot_product_attention(
            q, k, v, mask, impl="xla", dropout_rate=rate, dropout_rng=rng
        )[0]

    return attend


def _cudnn(q, k, v, key_mask, rng):
    return attention.dot_product_attention(q, k, v, key_mask[:, None, None, :], impl="cudnn")[0]


def _cudnn_dropout(q, k, v, key_mask, rng):
    # The private entry point with cuDNN's own (Philox) dropout; its seed is a Python int fixed at trace time.
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    lengths = jnp.sum(key_mask, axis=-1, dtype=jnp.int32)
    full = jnp.full_like(lengths, q.shape[1])
    return cudnn.dot_product_attention(
        q,
        k,
        v,
        q_seqlen=full,
        kv_seqlen=lengths,
        scale=q.shape[-1] ** -0.5,
        mask_type=cudnn.MaskType.PADDING,
        dropout_rate=0.1,
        seed=42,
    )


def _pallas(rate, **blocks):
    def attend(q, k, v, key_mask, rng):
        return fa.flash_attention(
            q, k, v, key_mask=key_mask, dropout_rate=rate, dropout_rng=rng, **blocks
        )

    return attend


def _time(step, args, iters):
    out = step(*args)  # compile + one run
    jax.block_until_ready(out)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def check_agreement(rng):
    """Loss and gradient errors of pallas and xla (dropout 0.1, same rng) against xla in float32."""
    q, k, v, key_mask = _inputs(8, 128, 12, 64, jnp.float32, seed=1)
    reference = _train_step(_xla(0.1))(q, k, v, key_mask, rng)
    result = {"check": "agreement", "reference_loss": float(reference[0])}
    for dtype in (jnp.float32, jnp.bfloat16):
        args = (*(x.astype(dtype) for x in (q, k, v)), key_mask, rng)
        for name, attend in (("pallas", _pallas(0.1)), ("xla", _xla(0.1))):
            loss, grads = _train_step(attend)(*args)
            errors = [
                float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) / jnp.max(jnp.abs(r)))
                for g, r in zip(grads, reference[1], strict=True)
            ]
            key = f"{name}_{jnp.dtype(dtype).name}"
            result[key] = {
                "loss_error": abs(float(loss) - float(reference[0])),
                "grad_rel_error": errors,
            }
    return result


def check_dropout(rng, rate=0.1):
    batch, length, heads = 8, 128, 4
    q, k, _, _ = _inputs(batch, length, heads, length, jnp.float32, seed=2)
    eye = jnp.eye(length, dtype=jnp.float32)[None, :, None, :]
    v = jnp.broadcast_to(eye, (batch, length, heads, length))
    dropped = np.asarray(fa.flash_attention(q, k, v, dropout_rate=rate, dropout_rng=rng))
    probs = np.asarray(fa.flash_attention(q, k, v))
    n = probs.size
    xla = attention.dropout(jnp.transpose(jnp.asarray(probs), (0, 2, 1, 3)), rate, rng)
    same_mask = bool(
        np.array_equal(dropped == 0.0, np.transpose(np.asarray(xla), (0, 2, 1, 3)) == 0)
    )
    return {
        "check": "dropout",
        "device": str(jax.devices()[0]),
        "keep_rate": float(np.mean(dropped != 0.0)),
        "keep_rate_tolerance": float(5 * np.sqrt(rate * (1 - rate) / n)),
        "mean_dropped": float(dropped.mean()),
        "mean_undropped": float(probs.mean()),
        "mean_tolerance": float(
            5 * np.sqrt(np.sum(probs.astype(np.float64) ** 2) * rate / (1 - rate)) / n
        ),
        "mask_equals_xla_dropout": same_mask,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    rng = jax.random.key(0)
    print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__}), flush=True)
    for check in (check_agreement, check_dropout):
        try:
            print(json.dumps(check(rng)), flush=True)
        except Exception as error:  # report and go on: the timings are still worth having
            print(json.dumps({"check": check.__name__, "error": str(error)[:400]}), flush=True)
    inputs = (*_inputs(args.batch, 128, 12, 64, jnp.bfloat16), rng)
    candidates = {
        "xla dropout 0.1": _xla(0.1),
        "xla dropout 0": _xla(0.0),
        "cudnn dropout 0": _cudnn,
        "cudnn private dropout 0.1": _cudnn_dropout,
        "pallas dropout 0": _pallas(0.0),
    }
    for bq, bk, warps in ((64, 64, 4), (128, 64, 4), (128, 128, 8), (64, 128, 4)):
        name = f"pallas dropout 0.1 block_q={bq} block_k={bk} warps={warps}"
        candidates[name] = _pallas(0.1, block_q=bq, block_k=bk, num_warps=warps)
    for name, attend in candidates.items():
        try:
            ms = _time(_train_step(attend), inputs, args.iters)
            print(json.dumps({"impl": name, "shape": [args.batch, 128, 12, 64], "fwd_bwd_ms": ms}))
        except Exception as error:
            print(json.dumps({"impl": name, "error": str(error).splitlines()[0][:400]}))


if __name__ == "__main__":
    main()
