"""TPU's Splash attention kernel for BERT's padding masks and packed rows.

`splash_attention(query, key, value, q_segments, kv_segments)` runs JAX's own Splash kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`, a Pallas/Mosaic flash attention) on [batch, length,
heads, head_dim] inputs. Splash takes no dense mask, only segment ids: query t of a row attends key s when
`q_segments[t] == kv_segments[s]`. `attention.py` builds them:

  padding  keys: 1 for a real token, 0 for padding; queries: 1 on every position of a row that has a real
           token, so every query sees exactly the keys the XLA path's [batch, 1, 1, keys] mask lets it see
           (padded query rows included); a row with no real token at all gets 0, attending every key, where
           the XLA path averages all values uniformly (its output there is meaningless either way);
  packed   queries and keys both the row's segment ids (1..K, 0 padding). A real token attends its own
           sequence exactly as on the XLA path; a padding query (0) attends the padding keys, where the XLA
           path gives it the uniform average of every key. Padded query rows differ, real tokens do not,
           and nothing reads a padded row (the losses weight them 0, the heads read [CLS] and real tokens).

No query row is ever left with no key at all: Splash's backward pass is wrong for such a row (its saved
logsumexp rounds to the mask value), so a row the model did read would get a wrong gradient.

Numerics: the kernel computes QK^T, the online softmax and PV in float32 whatever the input dtype (it casts
V up), so the house rule holds. It does not scale: the query is scaled by 1/sqrt(head_dim) first (exact for
head sizes 4^k, e.g. 64). It has no dropout and returns no weights (`attention.py` refuses both).

Shapes: Splash's blocks are multiples of 128 tokens, so a length that is not one is padded up here (keys in
a segment no real query has) and sliced back; "auto" only picks Splash where no padding is needed.

Placement: the kernel is a single-device custom call, which the SPMD partitioner cannot split. Under a mesh
(the abstract mesh `sharding.under_mesh` sets while a step is traced) it runs inside `jax.shard_map`, batch
and heads split as the logical-axis rules split "batch" and "heads", each device running the multi-head
kernel vmapped over its own examples (the documented usage). On a TPU it is compiled by Mosaic; anywhere
else (the CPU tests) it runs in Pallas' interpret mode.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Splash's blocks lie along the TPU's 128 lanes: every block of queries or keys is a multiple of 128 tokens.
LANES = 128
# MaxText's default Splash block (512 queries x 512 keys); a shorter length takes one block of its own size.
MAX_BLOCK = 512


def target_platform() -> str:
    """The platform the program being traced is for: the mesh's devices (an ahead-of-time compile for a TPU
    traces on a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        return mesh.abstract_device.platform
    return jax.default_backend()


def block_size(length: int) -> int:
    """The largest multiple of 128 up to 512 that divides `length` (itself a multiple of 128)."""
    return max(b for b in range(LANES, MAX_BLOCK + 1, LANES) if length % b == 0)


def _kernel(heads: int, length: int, interpret: bool):
    """The multi-head Splash kernel for [heads, length, head_dim] inputs, every query free to see every key
    (the segment ids do all the masking)."""
    # Imported here: every model imports this module, few steps run the kernel (0.25 s of imports).
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
        splash_attention_mask as splash_mask,
    )

    block = block_size(length)
    blocks = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.FullMask((length, length))] * heads)
    # Built afresh in every trace: its block tables are arrays, and a kernel kept from one trace for the next
    # carried them into it as leaked tracers (seen under nn.scan with gradients).
    return splash.make_splash_mha_single_device(mask, block_sizes=blocks, interpret=interpret)


def _on_device(query, key, value, q_segments, kv_segments, *, interpret: bool) -> Array:
    """The kernel on one device's [batch, heads, length, head_dim] shard, vmapped over its examples."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds  # noqa: PLC0415

    kernel = _kernel(query.shape[1], query.shape[2], interpret)
    segments = SegmentIds(q=q_segments, kv=kv_segments)
    return jax.vmap(kernel)(query, key, value, segment_ids=segments)


def _split(spec, dims: tuple[int, ...], mesh) -> list:
    """Each entry of `spec` kept to the longest prefix of its mesh axes that divides its dimension."""
    out = []
    for axes, dim in zip(spec, dims, strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a in mesh.axis_names and a not in mesh.manual_axes)
        while names and dim % math.prod(mesh.shape[a] for a in names):
            names = names[:-1]
        out.append(names or None)
    return out


def splash_attention(
    query: Array, key: Array, value: Array, q_segments: Array, kv_segments: Array
) -> Array:
    """Splash attention on [batch, length, heads, head_dim] inputs with int32 [batch, length] segment ids
    (see the module docstring); returns [batch, length, heads, head_dim] in the value dtype."""
    batch, length, heads, head_dim = query.shape
    scale = head_dim**-0.5
    query = (query.astype(jnp.float32) * scale).astype(query.dtype)
    # The kernel wants heads before length.
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
    q_segments = q_segments.astype(jnp.int32)
    kv_segments = kv_segments.astype(jnp.int32)
    padded = -length % LANES
    if padded:
        # The added positions are a segment of their own, -1: no real query sees them, and each added
        # query sees them alone (a row with no key at all is what the module docstring rules out).
        grow = ((0, 0), (0, 0), (0, padded), (0, 0))
        q, k, v = (jnp.pad(x, grow) for x in (q, k, v))
        q_segments = jnp.pad(q_segments, ((0, 0), (0, padded)), constant_values=-1)
        kv_segments = jnp.pad(kv_segments, ((0, 0), (0, padded)), constant_values=-1)
    run = functools.partial(_on_device, interpret=target_platform() != "tpu")
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(mesh.axis_names) - set(mesh.manual_axes):
        # Batch and heads split as everywhere else in the model; length and head_dim stay whole on a device.
        rules = nn.logical_to_mesh_axes(("batch", "heads"))
        rules = tuple(rules) + (None,) * (2 - len(rules))
        b_axes, h_axes = _split(rules, (batch, heads), mesh)
        qkv_spec = jax.sharding.PartitionSpec(b_axes, h_axes, None, None)
        segment_spec = jax.sharding.PartitionSpec(b_axes, None)
        run = jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(qkv_spec,) * 3 + (segment_spec,) * 2,
            out_specs=qkv_spec,
            check_vma=False,
        )
    out = run(q, k, v, q_segments, kv_segments)
    return jnp.swapaxes(out[:, :, :length], 1, 2).astype(value.dtype)
