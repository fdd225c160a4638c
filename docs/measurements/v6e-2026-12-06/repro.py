"""Standalone reproduction of the TPU v6e compiler crash (no bert_jax): BERT's attention with its hashed dropout.

    python repro.py [--topology=v6e:2x2] [--batch=1] [--length=512] [--heads=16] [--head_dim=64]
                    [--dropout=0.1] [--forward_only] [--dtype=bfloat16] [--remat=none|dots|full]

Needs jax and libtpu (`pip install 'jax[tpu]'`), no TPU: the step is compiled ahead of time for the named
topology through `jax.experimental.topologies`. Prints one line: the compile's result, or the process dies
with SIGSEGV inside `compile()` when the compiler crashes.
"""

import argparse
import importlib.metadata
import os
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402


def mix32(x):
    """murmur3's 32-bit finaliser."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout(x, rate, key):
    """Inverted dropout whose mask is a hash of each element's global index under two seeds drawn from `key`."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis, size in enumerate(x.shape):
        index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
    bits = mix32(mix32(index * jnp.uint32(0x9E3779B9) + seeds[0]) ^ seeds[1])
    keep = bits >= jnp.uint32(round(rate * 2**32))
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def attention(q, k, v, mask, key, rate):
    logits = (
        jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
        * q.shape[-1] ** -0.5
    )
    # The padding mask: [batch, keys] 0/1 -> [batch, 1, 1, keys].
    logits = jnp.where(mask[:, None, None, :] > 0, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if rate > 0:
        probs = dropout(probs, rate, key)
    return jnp.einsum("bnts,bsnd->btnd", probs.astype(v.dtype), v)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default="v6e:2x2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--forward_only", action="store_true")
    # As bert_jax's nn.remat per layer: "dots" keeps matmul outputs without batch dimensions, "full" nothing.
    parser.add_argument("--remat", default="none", choices=("none", "dots", "full"))
    args = parser.parse_args()
    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    mesh = Mesh(np.array(devices), ("data",))
    shape = (args.batch * len(devices), args.length, args.heads, args.head_dim)
    x = jax.ShapeDtypeStruct(shape, args.dtype, sharding=NamedSharding(mesh, PartitionSpec("data")))
    mask = jax.ShapeDtypeStruct(
        shape[:2], jnp.int32, sharding=NamedSharding(mesh, PartitionSpec("data"))
    )
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, PartitionSpec()))

    def block(q, k, v, mask, key):
        return attention(q, k, v, mask, key, args.dropout)

    if args.remat != "none":
        policy = (
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            if args.remat == "dots"
            else None
        )
        block = jax.checkpoint(block, policy=policy)

    def loss(q, k, v, mask, key):
        return block(q, k, v, mask, key).astype(jnp.float32).sum()

    step = jax.jit(loss if args.forward_only else jax.grad(loss, argnums=(0, 1, 2)))
    start = time.perf_counter()
    compiled = step.lower(x, x, x, mask, key).compile()
    seconds = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    versions = f"jax {jax.__version__}, libtpu {importlib.metadata.version('libtpu')}"
    print(f"compiled in {seconds:.1f} s, {temp:.0f} MiB temporaries: {vars(args)} ({versions})")


if __name__ == "__main__":
    main()
