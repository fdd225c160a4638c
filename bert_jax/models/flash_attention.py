"""Flash attention as a Pallas kernel, with BERT's dropout on the probabilities, padding and packed segments.

`flash_attention(query, key, value, ...)` computes the same function as the XLA path
(`attention._masked_attention` with `attention.dropout`): softmax(QK^T / sqrt(d) + mask) with a float32
softmax, inverted dropout on the probabilities, times V. It never writes the [batch, heads, q, kv]
probabilities: each program holds a block of queries and walks the keys with an online softmax.

The dropout mask is `attention.dropout`'s counter hash of each probability's global index in
[batch, heads, queries, keys] under the same two seeds drawn from the rng, so for the same rng the fused and
XLA paths drop exactly the same probabilities. The backward pass (a `jax.custom_vjp`) recomputes the
probabilities block by block from the saved float32 logsumexp and the mask from the hash.

Who may attend to whom: query t of row b attends key s when `kv_segments[b, s] != 0` and
`q_segments[b, t] == kv_segments[b, s]`. A padding mask alone is q_segments 1, kv_segments the mask; packed
rows give each example its own segment id (0 is padding). A disallowed logit becomes float32's lowest value,
as in the XLA path, so a query with no key at all gets the same uniform average there and here.

Written for the GPU Pallas backend (Triton); anywhere else it runs in Pallas' interpret mode, which is how the
tests check it on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bert_jax.models import dropout as dropout_hash

Array = jax.Array

# Triton's dot needs every block side to be at least 16.
MIN_GPU_BLOCK = 16
# A block dimension of size 1 that the kernel does not see; `None` meant the same before `pl.squeezed`.
_SQ = getattr(pl, "squeezed", None)
# Logit of a key a query may not attend to: the XLA path's value, so that fully masked rows agree too.
_MASKED = float(jnp.finfo(jnp.float32).min)


def _compiler_params(num_warps: int, num_stages: int):
    """Triton launch parameters (the class is `TritonCompilerParams` in older jax releases)."""
    from jax.experimental.pallas import triton as plgpu

    params = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams
    return params(num_warps=num_warps, num_stages=num_stages)


def _dot(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
    """a @ b on 2-D blocks with float32 accumulation (`lax.dot_general`, which Triton lowers with transposes)."""
    dims = (((0 if trans_a else 1),), ((1 if trans_b else 0),)), ((), ())
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _keep(seeds_ref, b, n, t0, s0, block: tuple[int, int], dims: tuple[int, int, int], threshold):
    """`attention.dropout`'s keep mask for the [block_q, block_k] tile at (b, n, t0, s0).

    The index is the element's row-major position in [batch, heads, queries, keys], in uint32 arithmetic
    (wrapping like the XLA path's, which builds it axis by axis the same way).
    """
    heads, q_len, kv_len = dims
    u32 = jnp.uint32
    rows = t0 + jax.lax.broadcasted_iota(jnp.int32, block, 0)
    cols = s0 + jax.lax.broadcasted_iota(jnp.int32, block, 1)
    bn = b.astype(u32) * u32(heads) + n.astype(u32)
    index = (bn * u32(q_len) + rows.astype(u32)) * u32(kv_len) + cols.astype(u32)
    bits = dropout_hash.mix32(
        dropout_hash.mix32(index * u32(0x9E3779B9) + seeds_ref[0]) ^ seeds_ref[1]
    )
    return bits >= u32(threshold)


def _threshold(rate: float) -> int:
    """The uint32 below which a hash drops its element (as `attention.dropout` computes it)."""
    return dropout_hash.threshold(rate)


def _logits(q, k, q_seg, kv_seg, scale):
    """Scaled float32 logits of a tile and where attending is allowed."""
    s = _dot(q, k, trans_b=True) * scale
    allowed = (q_seg[:, None] == kv_seg[None, :]) & (kv_seg[None, :] != 0)
    return jnp.where(allowed, s, _MASKED), allowed


def _forward_kernel(seeds_ref, qs_ref, ks_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, c):
    """One [block_q] query tile of one (batch, head): online softmax over the key tiles."""
    b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bq, bk = c.block_q, c.block_k
    q, q_seg = q_ref[...], qs_ref[...]

    def body(j, carry):
        acc, m, total = carry
        keys = pl.ds(j * bk, bk)
        v = v_ref[keys, :]
        s, _ = _logits(q, k_ref[keys, :], q_seg, ks_ref[keys], c.scale)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        # The normaliser sums the probabilities before dropout (dropout comes after the softmax).
        total = total * alpha + jnp.sum(p, axis=1)
        if c.rate > 0.0:
            keep = _keep(seeds_ref, b, n, i * bq, j * bk, (bq, bk), c.dims, c.threshold)
            p = jnp.where(keep, p, 0.0)
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
        return acc, m_new, total

    init = (
        jnp.zeros((bq, q.shape[-1]), jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, total = jax.lax.fori_loop(0, c.dims[2] // bk, body, init)
    out = acc / total[:, None]
    if c.rate > 0.0:
        out = out / (1.0 - c.rate)
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(total)


def _probabilities(s, lse, kv_len):
    """Softmax probabilities of a tile from its masked logits and the rows' logsumexp.

    A query with no allowed key has every logit at float32's lowest, where lse = lowest + log(kv_len) rounds
    back to lowest; its softmax is uniform (as the XLA path's), which exp(s - lse) = 1 would not give.
    """
    dead = lse <= 0.5 * _MASKED
    return jnp.where(dead[:, None], 1.0 / kv_len, jnp.exp(s - lse[:, None]))


def _tile_grads(q, k, v, do, q_seg, kv_seg, lse, delta, keep, c):
    """(dropped probabilities Z, dS) of one tile; dV += Z^T dO, dQ += dS K, dK += dS^T Q."""
    s, allowed = _logits(q, k, q_seg, kv_seg, c.scale)
    p = _probabilities(s, lse, c.dims[2])
    dz = _dot(do, v, trans_b=True)
    if keep is not None:
        z = jnp.where(keep, p / (1.0 - c.rate), 0.0)
        dp = jnp.where(keep, dz / (1.0 - c.rate), 0.0)
    else:
        z, dp = p, dz
    # delta = rowsum(dO * O) = rowsum(dP * P): the softmax's Jacobian applied to dP.
    ds = jnp.where(allowed, p * (dp - delta[:, None]), 0.0)
    return z, ds


def _dkdv_kernel(
    seeds_ref, qs_ref, ks_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, c
):
    """dK and dV of one [block_k] key tile of one (batch, head), over all query tiles."""
    b, n, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bq, bk = c.block_q, c.block_k
    k, v, kv_seg = k_ref[...], v_ref[...], ks_ref[...]

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(i * bq, bq)
        q, do = q_ref[rows, :], do_ref[rows, :]
        keep = None
        if c.rate > 0.0:
            keep = _keep(seeds_ref, b, n, i * bq, j * bk, (bq, bk), c.dims, c.threshold)
        z, ds = _tile_grads(
            q, k, v, do, qs_ref[rows], kv_seg, lse_ref[rows], delta_ref[rows], keep, c
        )
        dv = dv + _dot(z.astype(do.dtype), do, trans_a=True)
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    zeros = jnp.zeros((bk, k.shape[-1]), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, c.dims[1] // bq, body, (zeros, zeros))
    dk_ref[...] = (dk * c.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
    seeds_ref, qs_ref, ks_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, c
):
    """dQ of one [block_q] query tile of one (batch, head), over all key tiles."""
    b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bq, bk = c.block_q, c.block_k
    q, do, q_seg = q_ref[...], do_ref[...], qs_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(j, dq):
        keys = pl.ds(j * bk, bk)
        k = k_ref[keys, :]
        keep = None
        if c.rate > 0.0:
            keep = _keep(seeds_ref, b, n, i * bq, j * bk, (bq, bk), c.dims, c.threshold)
        _, ds = _tile_grads(q, k, v_ref[keys, :], do, q_seg, ks_ref[keys], lse, delta, keep, c)
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, c.dims[2] // bk, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * c.scale).astype(dq_ref.dtype)


@dataclasses.dataclass(frozen=True)
class _Config:
    """The static settings of one call (hashable: custom_vjp takes it as a non-differentiable argument)."""

    dims: tuple[int, int, int]  # heads, queries, keys
    scale: float
    rate: float
    block_q: int
    block_k: int
    interpret: bool
    num_warps: int
    num_stages: int

    @property
    def threshold(self) -> int:
        return _threshold(self.rate)

    def call(self, kernel, grid, in_specs, out_specs, out_shape):
        return pl.pallas_call(
            functools.partial(kernel, c=self),
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=out_shape,
            interpret=self.interpret,
            compiler_params=None
            if self.interpret
            else _compiler_params(self.num_warps, self.num_stages),
        )


def _specs(c: _Config, head_dim: int, tiled: str):
    """BlockSpecs by role (seeds, segment ids, q/dO or k/v tiles, row statistics) on a (b, n, tile) grid.

    `tiled` is "q" (the grid's last axis walks query tiles; keys are whole) or "k" (the other way round).
    Arrays are [batch, length, heads, head_dim] (the model's layout), read in place without a transpose.
    """
    _, q_len, kv_len = c.dims
    bq = c.block_q if tiled == "q" else q_len
    bk = c.block_k if tiled == "k" else kv_len
    qi = (lambda b, n, i: (b, i, n, 0)) if tiled == "q" else (lambda b, n, i: (b, 0, n, 0))
    ki = (lambda b, n, i: (b, i, n, 0)) if tiled == "k" else (lambda b, n, i: (b, 0, n, 0))
    q_rows = (lambda b, n, i: (b, i)) if tiled == "q" else (lambda b, n, i: (b, 0))
    k_rows = (lambda b, n, i: (b, i)) if tiled == "k" else (lambda b, n, i: (b, 0))
    stats = (lambda b, n, i: (b, n, i)) if tiled == "q" else (lambda b, n, i: (b, n, 0))
    q_spec = pl.BlockSpec((_SQ, bq, _SQ, head_dim), qi)
    k_spec = pl.BlockSpec((_SQ, bk, _SQ, head_dim), ki)
    return dict(
        seeds=pl.BlockSpec((2,), lambda b, n, i: (0,)),
        q_seg=pl.BlockSpec((_SQ, bq), q_rows),
        kv_seg=pl.BlockSpec((_SQ, bk), k_rows),
        q=q_spec,
        kv=k_spec,
        stats=pl.BlockSpec((_SQ, _SQ, bq), stats),
    )


def _forward(q, k, v, q_seg, kv_seg, seeds, c: _Config):
    batch, q_len, heads, head_dim = q.shape
    s = _specs(c, head_dim, "q")
    return c.call(
        _forward_kernel,
        grid=(batch, heads, q_len // c.block_q),
        in_specs=[s["seeds"], s["q_seg"], s["kv_seg"], s["q"], s["kv"], s["kv"]],
        out_specs=[s["q"], s["stats"]],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, v.dtype),
            jax.ShapeDtypeStruct((batch, heads, q_len), jnp.float32),
        ],
    )(seeds, q_seg, kv_seg, q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, q_seg, kv_seg, seeds, c: _Config):
    return _forward(q, k, v, q_seg, kv_seg, seeds, c)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, seeds, c):
    out, lse = _forward(q, k, v, q_seg, kv_seg, seeds, c)
    return out, (q, k, v, q_seg, kv_seg, seeds, out, lse)


def _flash_bwd(c, residuals, do):
    q, k, v, q_seg, kv_seg, seeds, out, lse = residuals
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    do = do.astype(out.dtype)
    delta = jnp.einsum("btnd,btnd->bnt", do.astype(jnp.float32), out.astype(jnp.float32))
    args = (seeds, q_seg, kv_seg, q, k, v, do, lse, delta)
    s = _specs(c, head_dim, "k")
    whole_q = pl.BlockSpec((_SQ, q_len, _SQ, head_dim), lambda b, n, j: (b, 0, n, 0))
    dk, dv = c.call(
        _dkdv_kernel,
        grid=(batch, heads, kv_len // c.block_k),
        in_specs=[s["seeds"], s["q_seg"], s["kv_seg"], whole_q, s["kv"], s["kv"], whole_q]
        + [s["stats"], s["stats"]],
        out_specs=[s["kv"], s["kv"]],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    )(*args)
    s = _specs(c, head_dim, "q")
    dq = c.call(
        _dq_kernel,
        grid=(batch, heads, q_len // c.block_q),
        in_specs=[s["seeds"], s["q_seg"], s["kv_seg"], s["q"], s["kv"], s["kv"], s["q"]]
        + [s["stats"], s["stats"]],
        out_specs=s["q"],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    )(*args)
    return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def block_size(length: int, preferred: int) -> int:
    """The largest power of two up to `preferred` that divides `length` (the tile side along it)."""
    return math.gcd(length, 1 << (preferred.bit_length() - 1))


def flash_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    key_mask: Array | None = None,
    segment_ids: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Array:
    """Multi-head attention on [batch, length, heads, head_dim] inputs; output in the value dtype.

    `key_mask` [batch, kv_length] is nonzero where a key may be attended to (any pattern, not only right
    padding). `segment_ids` [batch, length] (self-attention: queries and keys are the same tokens) packs
    several examples in a row: a query attends only keys of its own segment, and segment 0 is padding.
    Dropout with `dropout_rate` and `dropout_rng` drops the same probabilities as `attention.dropout` would
    on the XLA path's [batch, heads, q, kv] probabilities. `interpret` defaults to "not on a GPU".
    """
    batch, q_len, heads, head_dim = query.shape
    kv_len = key.shape[1]
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    bq, bk = block_size(q_len, block_q), block_size(kv_len, block_k)
    if not interpret and min(bq, bk) < MIN_GPU_BLOCK:
        raise ValueError(
            f"attention_impl 'pallas' needs lengths that are multiples of {MIN_GPU_BLOCK} on a GPU, "
            f"not {q_len} queries and {kv_len} keys"
        )
    if segment_ids is not None:
        if q_len != kv_len:
            raise ValueError("segment_ids are for self-attention: queries and keys must be as many")
        q_seg = segment_ids.astype(jnp.int32)
        kv_seg = q_seg
    else:
        q_seg = jnp.ones((batch, q_len), jnp.int32)
        kv_seg = jnp.ones((batch, kv_len), jnp.int32)
    if key_mask is not None:
        kv_seg = jnp.where(key_mask.astype(bool), kv_seg, 0)
    use_dropout = dropout_rate > 0.0 and dropout_rng is not None
    if use_dropout:
        # The same two seeds `attention.dropout` draws from this rng.
        seeds = jax.random.bits(dropout_rng, (2,), jnp.uint32)
    else:
        seeds = jnp.zeros((2,), jnp.uint32)
    c = _Config(
        dims=(heads, q_len, kv_len),
        scale=head_dim**-0.5,
        rate=float(dropout_rate) if use_dropout else 0.0,
        block_q=bq,
        block_k=bk,
        interpret=bool(interpret),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return _flash(query, key, value, q_seg, kv_seg, seeds, c)
