"""The building blocks every encoder family shares, as Flax Linen modules and initialisers.

Parameters carry logical axis names (`bert_jax.sharding.LOGICAL_AXIS_RULES`) so that the trainer creates them
already sharded. A module reads its sizes and numerics from a family config with BERT's field names
(`hidden_size`, `num_heads`, `head_dim`, `intermediate_size`, `hidden_act`, `hidden_dropout_prob`,
`attention_dropout_prob`, `attention_impl`, `initializer_range`, `layer_norm_eps`, `num_layers`,
`compute_dtype`, `storage_dtype`). `dtype` is the compute dtype and `param_dtype` the storage dtype; softmax
and LayerNorm statistics are float32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.models.attention import dot_product_attention, dropout

Array = jax.Array

ACTIVATIONS = {
    "gelu": functools.partial(
        jax.nn.gelu, approximate=False
    ),  # exact erf GELU, as the paper's code
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
REMAT_POLICIES = ("none", "full", "dots")


class _FlatInit(nn.LogicallyPartitioned):
    """A box for the flattened value `nn.DenseGeneral` initialises before reshaping it to the named shape.

    DenseGeneral calls its initializer with the 2-D (or 1-D) flattened shape and then reshapes the boxed
    value (`replace_boxed`). A plain `nn.LogicallyPartitioned` would apply its 3 axis names to the flat
    value as a sharding constraint under a mesh context and fail; this box skips the constraint while the
    rank does not match and becomes a plain box once the value has its real shape.
    """

    def unbox(self, apply_constraint=True):
        return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))

    def replace_boxed(self, val):
        return nn.LogicallyPartitioned(val, self.names, self.mesh, self.rules)


def partitioned(init, axes: tuple[str | None, ...]):
    """`init` whose value is boxed with the logical `axes` (also when DenseGeneral flattens the shape)."""

    def boxed(rng, shape, dtype=jnp.float32):
        box = _FlatInit if len(shape) != len(axes) else nn.LogicallyPartitioned
        return box(init(rng, shape, dtype), tuple(axes))

    return boxed


def normal(config, axes: tuple[str | None, ...]):
    """Truncated-normal init with std `initializer_range`, annotated with logical axes."""
    return partitioned(nn.initializers.truncated_normal(stddev=config.initializer_range), axes)


def zeros(axes):
    return partitioned(nn.initializers.zeros_init(), axes)


def layer_norm(config, name: str) -> nn.LayerNorm:
    # Flax computes the mean/variance in float32 even for bfloat16 inputs.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=zeros(("embed",)),
        name=name,
    )


def dense(config, features, axes, name: str, **kwargs) -> nn.Module:
    """A kernel (truncated normal) and a bias (zeros) over `features`, both with logical axes."""
    return nn.DenseGeneral(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.storage_dtype,
        kernel_init=normal(config, axes),
        bias_init=zeros(axes[-1:] if isinstance(features, int) else axes[-len(features) :]),
        name=name,
        **kwargs,
    )


class Dropout(nn.Module):
    """`dropout` as a module: active only when not `deterministic`, drawing from the "dropout" rng."""

    rate: float

    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


def select_rows(table: Array, ids: Array) -> Array:
    """`table[ids]` for a table of a few rows, as a chain of selects (exact, and no scatter in its gradient).

    Ids past the last row take the last row (the data never has them; a gather would give NaN).
    """
    out = jnp.broadcast_to(table[0], (*ids.shape, table.shape[-1]))
    for row in range(1, table.shape[0]):
        out = jnp.where((ids >= row)[..., None], table[row], out)
    return out


class SelfAttention(nn.Module):
    """Multi-head self-attention with the padding mask; query/key/value/output projections."""

    config: object

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_attentions: bool):
        cfg = self.config
        heads = (cfg.num_heads, cfg.head_dim)
        q = dense(cfg, heads, ("embed", "heads", "kv"), "query")(x)
        k = dense(cfg, heads, ("embed", "heads", "kv"), "key")(x)
        v = dense(cfg, heads, ("embed", "heads", "kv"), "value")(x)
        rate = cfg.attention_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out, weights = dot_product_attention(
            q,
            k,
            v,
            mask,
            impl=cfg.attention_impl,
            dropout_rate=rate,
            dropout_rng=rng,
            return_weights=output_attentions,
        )
        out = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "output", axis=(-2, -1))(out)
        return out, weights


class EncoderLayer(nn.Module):
    """One post-LN Transformer layer: attention, residual, LN; feed-forward, residual, LN."""

    config: object

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, output_attentions: bool = False):
        cfg = self.config
        attn, weights = SelfAttention(cfg, name="attention")(
            x, mask, deterministic, output_attentions
        )
        attn = Dropout(cfg.hidden_dropout_prob)(attn, deterministic)
        x = layer_norm(cfg, "attention_layer_norm")(x + attn)
        h = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x)
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h)
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic)
        x = layer_norm(cfg, "output_layer_norm")(x + h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, weights


def layer_class(config) -> type[nn.Module]:
    """`EncoderLayer`, wrapped in `nn.remat` per `config.remat_policy`."""
    if config.remat_policy == "none":
        return EncoderLayer
    policy = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    # Argument numbers count `self`: (self, x, mask, deterministic, output_attentions).
    return nn.remat(EncoderLayer, policy=policy[config.remat_policy], static_argnums=(3, 4))


def _scan_body(layer, x, mask, deterministic, output_attentions, output_hidden_states):
    x, weights = layer(x, mask, deterministic, output_attentions)
    # Emit each layer's output only when asked: a stacked [layers, batch, length, hidden] costs memory.
    return x, (x if output_hidden_states else None, weights)


def scan_layers(
    layer, x, mask, deterministic: bool, output_attentions: bool, output_hidden_states: bool
):
    """Runs `layer` (whose parameters are stacked over a leading layer axis) once per layer in a scan.

    Returns (last hidden state, (every layer's output [layers, ...] or None, attention weights
    [layers, ...] or None)). Each layer gets its own dropout key, as the unrolled loop's distinct module
    names give it.
    """
    scan = nn.scan(
        _scan_body,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * 4,
        length=layer.config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scan(layer, x, mask, deterministic, output_attentions, output_hidden_states)


def run_layers(layers, config, x, mask, deterministic, output_attentions, output_hidden_states):
    """The layer stack (a list of layers, or one scanned layer when `config.scan_layers`).

    Returns (last hidden state, [embeddings output, each layer's output (None when not emitted)],
    [each layer's attention weights or None])."""
    hidden_states, attentions = [x], []
    if config.scan_layers:
        x, (states, weights) = scan_layers(
            layers, x, mask, deterministic, output_attentions, output_hidden_states
        )
        indices = range(config.num_layers)
        hidden_states += [None if states is None else states[i] for i in indices]
        attentions = [None if weights is None else weights[i] for i in indices]
    else:
        for layer in layers:
            x, weights = layer(x, mask, deterministic, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
    return x, hidden_states, attentions


def stack_layers(params: dict, num_layers: int) -> dict:
    """Per-layer parameters (`layer_0` ... `layer_{L-1}`, as saved and converted) -> the scanned model's
    `layers` subtree with a leading [num_layers] axis. Works on the encoder or any tree that holds it."""
    params = dict(params)
    if "layer_0" in params:
        layers = [params.pop(f"layer_{i}") for i in range(num_layers)]
        params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return {k: stack_layers(v, num_layers) if isinstance(v, dict) and k != "layers" else v
            for k, v in params.items()}  # fmt: skip


def unstack_layers(params: dict) -> dict:
    """The inverse of `stack_layers`: `layers` [num_layers, ...] -> `layer_0` ... `layer_{L-1}`."""
    params = dict(params)
    if "layers" in params:
        layers = params.pop("layers")
        num_layers = jax.tree.leaves(layers)[0].shape[0]
        for i in range(num_layers):
            params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
    return {k: unstack_layers(v) if isinstance(v, dict) and not k.startswith("layer_") else v
            for k, v in params.items()}  # fmt: skip
