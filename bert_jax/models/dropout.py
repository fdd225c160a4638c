"""The dropout BERT applies to its attention probabilities (and everywhere else), as a counter hash.

`attention.py` (the XLA path) and `flash_attention.py` (the Pallas kernel) both draw their masks from here, so
the two paths drop exactly the same elements for the same rng.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def mix32(x: Array) -> Array:
    """murmur3's 32-bit finaliser: a bijection of uint32 in which every input bit flips ~half the output bits."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Inverted dropout: zero a `rate` fraction of `x` and scale the rest by 1 / (1 - rate).

    The mask is a counter-based hash of each element's index under two 32-bit seeds drawn from `rng`
    (as Philox-style dropout on GPUs does), computed inside the fused elementwise kernel. Drawing the mask
    from `jax.random` instead writes and reads a random array per dropout: on a CPU that was 0.4-0.5 s of a
    3.5 s bert_base training step, with threefry or rbg alike. The index is the global one, so the mask does
    not depend on how `x` is sharded. The rate is exact to 2**-32.
    """
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis, size in enumerate(x.shape):
        index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    bits = mix32(mix32(index * jnp.uint32(0x9E3779B9) + seeds[0]) ^ seeds[1])
    keep = bits >= jnp.uint32(threshold(rate))
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def threshold(rate: float) -> int:
    """The uint32 below which a hash drops its element: the rate is exact to 2**-32."""
    return min(round(rate * 2**32), 2**32 - 1)
