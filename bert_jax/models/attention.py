"""Multi-head dot-product attention with a padding mask, and the dropout that BERT applies to its probabilities.

Implementations (`BertConfig.attention_impl`):
  "xla"    an explicit einsum/softmax path: float32 softmax, dropout on the probabilities, can return them;
  "jax"    `jax.nn.dot_product_attention`'s own XLA path (no dropout, no weights);
  "cudnn"  cuDNN flash attention on a GPU, 16-bit inputs only (no dropout, no weights);
  "pallas" the Pallas flash kernel in models/flash_attention.py, with this module's dropout (the same mask
           for the same rng); interpret mode off a GPU. Not chosen by "auto" until a GPU has timed it;
  "splash" JAX's Splash kernel for TPUs (models/splash_attention.py: padding and packed rows as segment ids,
           no dropout, no weights); interpret mode off a TPU, refused on a GPU;
  "auto"   on a GPU cuDNN where it can run (16-bit, a head size cuDNN takes, no dropout, no weights), on a TPU
           Splash where it can run (no dropout, no weights, a length that is a multiple of 128), else "xla".

cuDNN gets the padding as per-example key lengths (`key_value_seq_lengths`), never as a broadcast
[batch, 1, 1, keys] mask, which its bias path rejects (jax-ml/jax#28974). BERT pads on the right, so a
padding mask is `arange(keys) < length`; `key_lengths` checks that on the device, and a batch whose mask is
not right padding takes the masked XLA path instead (a `lax.cond`: the answer is the same either way).

Packed rows (several sequences per row, `bert_jax.data.packing`) come as a `PackedMask`: the block-diagonal
[batch, 1, q, k] mask (a token attends only to tokens of its own sequence, Krell et al. 2021) and the segment
ids it was built from. "pallas" and "splash" take the segment ids ("auto" on a TPU picks Splash for them as for
padding); every other implementation takes the dense mask on the masked XLA path ("auto" on a GPU included:
cuDNN's key-length layout cannot express it), and "cudnn" chosen explicitly is refused (`check_packing`).

The backend an implementation is checked against is the one the program is traced for
(`splash_attention.target_platform`): an ahead-of-time compile for a TPU slice traces on a CPU host.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# The dropout hash lives apart so the Pallas kernel (flash_attention.py) can use it without importing this module.
from bert_jax.models.dropout import dropout  # noqa: F401 -- re-exported: layers and tests use attention.dropout
from bert_jax.models.splash_attention import LANES, splash_attention, target_platform

Array = jax.Array

ATTENTION_IMPLS = ("auto", "xla", "jax", "cudnn", "pallas", "splash")
# The implementations that can take packed rows: the Pallas and Splash kernels take segment ids, the others the
# dense block-diagonal mask on XLA ("auto" resolves to Splash on a TPU, else to the masked path, for packed rows).
PACKED_IMPLS = ("auto", "xla", "jax", "pallas", "splash")
# Input dtypes cuDNN's fused attention takes (as `jax.nn.dot_product_attention(implementation="cudnn")`).
CUDNN_DTYPES = ("bfloat16", "float16")


class PackedMask(NamedTuple):
    """The attention mask of packed rows: `mask` [batch, 1, q, k] True where query and key share a nonzero
    segment, and `segment_ids` [batch, length] (1..K per sequence, 0 padding) for kernels that take them."""

    mask: Array
    segment_ids: Array


def packed_mask(segment_ids: Array) -> PackedMask:
    """The block-diagonal mask of `segment_ids` [batch, length]: no token sees another sequence or padding."""
    keys = segment_ids[:, None, None, :]
    return PackedMask((segment_ids[:, None, :, None] == keys) & (keys != 0), segment_ids)


def check_packing(impl: str) -> None:
    """Raises a one-line ValueError naming `model.attention_impl` if `impl` cannot take packed rows."""
    if impl not in PACKED_IMPLS:
        raise ValueError(
            f"model.attention_impl={impl!r} cannot take packed rows (data.packing=True): cuDNN's fused "
            f"path takes key lengths, not segments; use one of {PACKED_IMPLS}"
        )


def cudnn_unsupported(
    *, backend: str, dtype: str, head_dim: int, dropout_rate: float = 0.0, weights: bool = False
) -> str | None:
    """Why cuDNN attention cannot run here (a phrase), or None if it can."""
    if backend != "gpu":
        return f"it needs a GPU and the JAX backend is {backend!r}"
    if dtype not in CUDNN_DTYPES:
        return f"it needs 16-bit inputs ({' or '.join(CUDNN_DTYPES)}) and dtype is {dtype!r}"
    if head_dim % 8 or head_dim > 128:
        return f"it needs a head size that is a multiple of 8 up to 128, not {head_dim}"
    if why := _fused_kernel_limits(dropout_rate, weights):
        return why
    return None


def _fused_kernel_limits(dropout_rate: float, weights: bool) -> str | None:
    """What no fused kernel here does (cuDNN's, Splash): dropout on the probabilities, returning them."""
    if dropout_rate > 0.0:
        return (
            f"it applies no dropout to the attention probabilities (attention_dropout_prob is "
            f"{dropout_rate}; set it to 0, which is not the paper's recipe, or use 'auto' or 'xla')"
        )
    if weights:
        return "it cannot return attention weights (output_attentions=True); use 'auto' or 'xla'"
    return None


def pallas_unsupported(*, backend: str, head_dim: int) -> str | None:
    """Why the Pallas kernel cannot run here (a phrase), or None if it can (anywhere off a GPU: interpreted)."""
    if backend == "gpu" and (head_dim < 16 or head_dim & (head_dim - 1)):
        return f"on a GPU it needs a head size that is a power of two from 16, not {head_dim}"
    return None


def splash_unsupported(
    *, backend: str, dropout_rate: float = 0.0, weights: bool = False, length: int | None = None
) -> str | None:
    """Why Splash attention cannot (or, for a `length` it would pad, should not) run here, or None if it can
    (anywhere but a GPU: interpreted off a TPU)."""
    if backend == "gpu":
        return "it is a TPU kernel; on a GPU use 'cudnn', 'pallas' or 'xla'"
    if why := _fused_kernel_limits(dropout_rate, weights):
        return why
    if length is not None and length % LANES:
        return f"its blocks are multiples of {LANES} tokens and the length is {length}"
    return None


def check_attention_impl(
    impl: str, *, dtype: str, head_dim: int, dropout_rate: float, backend: str | None = None
) -> None:
    """Raises a one-line ValueError naming `attention_impl` if `impl` cannot run with these settings.

    Called when the model config is built, so that a bad setting fails before anything compiles. The
    backend is only looked up for "cudnn" (looking it up starts JAX's runtime).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl {impl!r} is not one of {ATTENTION_IMPLS}")
    if impl == "jax" and dropout_rate > 0.0:
        raise ValueError(
            f"attention_impl 'jax' applies no dropout to the attention probabilities "
            f"(attention_dropout_prob is {dropout_rate}); use 'auto' or 'xla'"
        )
    if impl == "cudnn":
        backend = backend or jax.default_backend()
        why = cudnn_unsupported(
            backend=backend, dtype=dtype, head_dim=head_dim, dropout_rate=dropout_rate
        )
        if why:
            raise ValueError(f"attention_impl 'cudnn' cannot run: {why}")
    if impl == "pallas":
        why = pallas_unsupported(backend=backend or jax.default_backend(), head_dim=head_dim)
        if why:
            raise ValueError(f"attention_impl 'pallas' cannot run: {why}")
    if impl == "splash":
        backend = backend or jax.default_backend()
        why = splash_unsupported(backend=backend, dropout_rate=dropout_rate)
        if why:
            raise ValueError(f"attention_impl 'splash' cannot run: {why}")


def resolve_impl(
    impl: str,
    *,
    dtype,
    head_dim: int,
    dropout: bool,
    weights: bool,
    length: int | None = None,
    packed: bool = False,
) -> str:
    """The implementation "auto" stands for on the backend being traced for (others are returned as they are):
    cuDNN on a GPU where it can run (never for `packed` rows), else "xla". A TPU stays on "xla": Splash
    ("splash") is asked for by name until it has been timed on a TPU (it has only been compiled for one, and it
    took 0.35 GiB more than XLA in bert_large's packed phase-2 step: docs/performance.md). `length` is kept for
    that choice."""
    del length  # the length rule (splash_unsupported) applies once "auto" takes Splash
    if impl != "auto":
        return impl
    backend = target_platform()
    if backend == "tpu":
        return "xla"
    if packed:
        return "xla"  # cuDNN's key-length layout cannot express packed rows
    why = cudnn_unsupported(
        backend=backend,
        dtype=jnp.dtype(dtype).name,
        head_dim=head_dim,
        dropout_rate=float(dropout),
        weights=weights,
    )
    return "xla" if why else "cudnn"


def key_lengths(key_mask: Array) -> tuple[Array, Array]:
    """(per-example count of attended keys [batch] int32, whether every row is a right-padding mask).

    `key_mask` [batch, keys] is nonzero/True where a key may be attended to. A row is right padding when
    its True entries are exactly the first `length` ones.
    """
    keep = key_mask.astype(bool)
    lengths = jnp.sum(keep, axis=-1, dtype=jnp.int32)
    expected = jnp.arange(keep.shape[-1], dtype=jnp.int32)[None] < lengths[:, None]
    return lengths, jnp.all(keep == expected)


def _key_padding_mask(mask: Array) -> Array | None:
    """The [batch, keys] padding mask inside a [batch, 1, 1, keys] mask; None for any other mask."""
    if mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        return mask[:, 0, 0, :]
    return None


def _masked_attention(query, key, value, mask, dropout_rate=0.0, dropout_rng=None):
    """Softmax(QK^T / sqrt(d) + mask) V with a float32 softmax; returns (output, weights before dropout)."""
    scale = query.shape[-1] ** -0.5
    logits = jnp.einsum("btnd,bsnd->bnts", query, key, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    probs = weights
    if dropout_rate > 0.0 and dropout_rng is not None:
        probs = dropout(probs, dropout_rate, dropout_rng)
    out = jnp.einsum("bnts,bsnd->btnd", probs.astype(value.dtype), value)
    return out, weights


def padded_attention(query, key, value, mask, *, implementation: str = "cudnn") -> Array:
    """`jax.nn.dot_product_attention(implementation=...)` with the padding as key lengths.

    A [batch, 1, 1, keys] right-padding mask becomes `key_value_seq_lengths` (queries keep every row, as the
    masked path computes them); any other mask, or a batch in which some row is not right padding (checked
    on the device), takes the masked XLA path. A row with no key at all gets length 1 there: its output is
    meaningless either way, and cuDNN's for length 0 is not defined.
    """
    key_mask = _key_padding_mask(mask)
    if key_mask is None:
        return _masked_attention(query, key, value, mask)[0]
    lengths, right_padded = key_lengths(key_mask)

    def by_lengths():
        return jax.nn.dot_product_attention(
            query,
            key,
            value,
            key_value_seq_lengths=jnp.maximum(lengths, 1),
            implementation=implementation,
        ).astype(value.dtype)

    def masked():
        return _masked_attention(query, key, value, mask)[0].astype(value.dtype)

    return jax.lax.cond(right_padded, by_lengths, masked)


def splash_segments(mask) -> tuple[Array, Array] | None:
    """(query, key) segment ids [batch, length] int32 that make Splash attend as `mask` does at every real
    token (see models/splash_attention.py), or None for a mask that is neither padding nor packed rows."""
    if isinstance(mask, PackedMask):
        return mask.segment_ids, mask.segment_ids
    key_mask = _key_padding_mask(mask)
    if key_mask is None:
        return None
    keys = key_mask.astype(bool).astype(jnp.int32)
    # Every query of a row sees its real keys; a row with none attends to all of them (segment 0) instead of
    # to nothing, which Splash's backward pass gets wrong.
    queries = jnp.broadcast_to(jnp.any(key_mask, axis=-1, keepdims=True), keys.shape)
    return queries.astype(jnp.int32), keys


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array,
    *,
    impl: str = "auto",
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    return_weights: bool = False,
) -> tuple[Array, Array | None]:
    """Multi-head attention on [batch, length, heads, head_dim] inputs.

    `mask` is boolean, broadcastable to [batch, heads, q_length, kv_length], True where attending is allowed
    (the model passes [batch, 1, 1, kv_length]), or a `PackedMask` for packed rows. `impl` is one of
    ATTENTION_IMPLS (see the module docstring). Returns (output [batch, length, heads, head_dim] in the
    value dtype, weights [batch, heads, q, kv] or None).
    """
    use_dropout = dropout_rate > 0.0 and dropout_rng is not None
    segment_ids = None
    packed = isinstance(mask, PackedMask)
    impl = resolve_impl(
        impl,
        dtype=query.dtype,
        head_dim=query.shape[-1],
        dropout=use_dropout,
        weights=return_weights,
        length=key.shape[1],
        packed=packed,
    )
    if impl == "splash":
        if use_dropout or return_weights:
            what = (
                "attention weights" if return_weights else "dropout on the attention probabilities"
            )
            raise ValueError(f"attention_impl 'splash' cannot give {what}; use 'auto' or 'xla'")
        segments = splash_segments(mask)
        if segments is not None:
            rows = (query.shape[0], key.shape[1])
            q_segments, kv_segments = (jnp.broadcast_to(s, rows) for s in segments)
            return splash_attention(query, key, value, q_segments, kv_segments), None
        impl = "xla"  # a dense mask that is neither padding nor packed rows: the masked path
    if packed:
        mask, segment_ids = mask
        if impl == "pallas" and not return_weights:
            from bert_jax.models import flash_attention

            out = flash_attention.flash_attention(
                query,
                key,
                value,
                segment_ids=segment_ids,
                dropout_rate=dropout_rate,
                dropout_rng=dropout_rng,
            )
            return out, None
        else:
            check_packing(impl)
    key_mask = _key_padding_mask(mask)
    if impl == "xla" or (impl == "pallas" and key_mask is None and not return_weights):
        # The kernel takes a [batch, keys] mask; any other mask shape takes the masked path, whose dropout
        # drops the same probabilities.
        out, weights = _masked_attention(query, key, value, mask, dropout_rate, dropout_rng)
        return out, (weights if return_weights else None)
    if impl == "pallas" and not return_weights:
        # Imported here: flash_attention builds on this module's dropout hash.
        from bert_jax.models import flash_attention

        out = flash_attention.flash_attention(
            query,
            key,
            value,
            key_mask=jnp.broadcast_to(key_mask, (query.shape[0], key.shape[1])),
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
        )
        return out, None
    if use_dropout or return_weights:
        what = "attention weights" if return_weights else "dropout on the attention probabilities"
        raise ValueError(f"attention_impl {impl!r} cannot give {what}; use 'auto' or 'xla'")
    if impl == "jax":
        return jax.nn.dot_product_attention(query, key, value, mask=mask), None
    if impl == "cudnn":
        return padded_attention(query, key, value, mask, implementation="cudnn"), None
    raise ValueError(f"attention_impl {impl!r} is not one of {ATTENTION_IMPLS}")
