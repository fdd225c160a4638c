"""Optimizer, learning-rate schedule and the train state.

BERT's recipe (Devlin et al. 2018, appendix A.2): Adam with β1 0.9, β2 0.999, ε 1e-6, L2 weight decay 0.01
decoupled from the gradient and not applied to LayerNorm parameters or biases, gradients clipped at global norm
1.0, learning rate warmed up linearly over 10k steps and then decayed linearly to zero.

"bert_adam" (the recipes' default) is the original code's AdamWeightDecayOptimizer: no bias correction of the
moments, and its schedule, whose linear decay runs from step 0 underneath the warmup (so the peak after a 10k
warmup of 1M steps is 0.99 x the learning rate). "adamw" is optax's bias-corrected AdamW with a decay that starts
at the end of the warmup; "lamb" (You et al. 2019) is the large-batch option. "albert_lamb" is
google-research/albert's LAMBOptimizer (ALBERT's pretraining): the same unbias-corrected moments as "bert_adam",
decoupled weight decay, then each parameter's update scaled by ||param|| / ||update|| (the trust ratio), both
decay and trust ratio skipped for LayerNorm parameters and biases, on the original schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

OPTIMIZERS = ("bert_adam", "adamw", "lamb", "albert_lamb")
# The optimizers that use the original BERT code's schedule (its decay runs from step 0 under the warmup).
ORIGINAL_SCHEDULE = ("bert_adam", "albert_lamb")


def make_schedule(
    config, num_train_steps: int | None = None, warmup_steps: int | None = None
) -> optax.Schedule:
    """The learning rate at an optimizer-update count (reads `learning_rate` and `optimizer`).

    `num_train_steps` and `warmup_steps`: the run's length and warmup in updates (`run_setup.run_length`
    derives them from a recipe's epochs or fractions); not given, the config's fields of those names.
    "bert_adam": the original's formula: `lr * (1 - step / num_train_steps)`, replaced during the warmup by
    `lr * step / warmup_steps`. Otherwise: linear warmup 0 -> `lr`, then linear decay from `lr` to 0.
    """
    lr = config.learning_rate
    total = config.num_train_steps if num_train_steps is None else num_train_steps
    warmup = config.warmup_steps if warmup_steps is None else warmup_steps
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup_steps {warmup} must be between 0 and num_train_steps {total}")
    if config.optimizer in ORIGINAL_SCHEDULE:

        def original(count):
            step = jnp.asarray(count, jnp.float32)
            decayed = lr * (1.0 - jnp.minimum(step, total) / total)
            return (
                jnp.where(step < warmup, lr * step / max(warmup, 1), decayed) if warmup else decayed
            )

        return original
    warm = optax.linear_schedule(0.0, lr, warmup)
    decay = optax.linear_schedule(lr, 0.0, max(total - warmup, 1))
    return optax.join_schedules([warm, decay], boundaries=[warmup])


class ScaleByBertAdamState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_bert_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """The original AdamWeightDecayOptimizer's direction: `m / (sqrt(v) + eps)` with the moments' running
    averages as they are (no bias correction), kept in float32."""

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
        return ScaleByBertAdamState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        direction = jax.tree.map(
            lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates
        )
        return direction, ScaleByBertAdamState(mu, nu)

    return optax.GradientTransformation(init, update)


def weight_decay_mask(params) -> Any:
    """True for the parameters that get weight decay: each layer's weight matrix, by rank, never its vectors.

    A parameter decays when it has at least 2 dimensions and more than every other parameter of its module: a
    dense layer's kernel (its bias has one dimension fewer, also for the per-head [heads, head_dim] attention
    biases), an embedding table (alone in its module). LayerNorm's scale and bias tie (both vectors, or both
    [layers, hidden] when the layers are scanned) and so do not decay; nor does a lone vector (the MLM bias).
    That is BERT's rule, "not on LayerNorm or biases", read from shapes rather than names.

    Works on boxed (`nn.LogicallyPartitioned`) or plain parameter trees, arrays or shapes; returns a tree of
    Python bools of the unboxed structure.
    """

    def mask(tree):
        leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
        ranks = {k: len(getattr(v, "shape", ())) for k, v in leaves.items()}
        out = {}
        for key, value in tree.items():
            if key not in leaves:
                out[key] = mask(value)
                continue
            others = [r for k, r in ranks.items() if k != key]
            out[key] = ranks[key] >= 2 and all(ranks[key] > r for r in others)
        return type(tree)(out) if not isinstance(tree, dict) else out

    return mask(nn.unbox(params))


def make_optimizer(
    config, num_train_steps: int | None = None, warmup_steps: int | None = None
) -> optax.GradientTransformation:
    """Clip by global norm, then the original BERT Adam (or AdamW, or LAMB) with the decay mask.

    Config fields (the recipes in bert_jax/configs hold their defaults; a missing one is an error):
      learning_rate, warmup_steps, num_train_steps: the schedule (`make_schedule`), counted in optimizer
        updates (gradient accumulation happens inside the train step: one loop step is one update); the two
        step counts may be passed as arguments instead (`run_setup.run_length`'s, e.g. from epochs).
      adam_b1, adam_b2, adam_epsilon: Adam moments and epsilon (also LAMB's).
      weight_decay: decoupled decay, scaled by the learning rate, masked by `weight_decay_mask`.
      max_grad_norm: global-norm clip applied to the (accumulated) gradient; 0 disables clipping.
      optimizer: "bert_adam" (the original's update and schedule), "adamw", "lamb" or "albert_lamb".
    """
    schedule = make_schedule(config, num_train_steps, warmup_steps)
    b1, b2, eps = config.adam_b1, config.adam_b2, config.adam_epsilon
    kwargs = dict(b1=b1, b2=b2, eps=eps, weight_decay=config.weight_decay, mask=weight_decay_mask)
    if config.optimizer == "bert_adam":
        opt = optax.chain(
            scale_by_bert_adam(b1, b2, eps),
            # Decoupled: added to the Adam direction, then scaled by the learning rate with it.
            optax.add_decayed_weights(config.weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    elif config.optimizer == "adamw":
        opt = optax.adamw(schedule, **kwargs)
    elif config.optimizer == "lamb":
        opt = optax.lamb(schedule, **kwargs)
    elif config.optimizer == "albert_lamb":
        opt = optax.chain(
            scale_by_bert_adam(b1, b2, eps),
            optax.add_decayed_weights(config.weight_decay, weight_decay_mask),
            # The original excludes the same parameters from layer adaptation as from weight decay.
            optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise ValueError(f"optimizer {config.optimizer!r} is not one of {OPTIMIZERS}")
    max_norm = config.max_grad_norm
    return optax.chain(optax.clip_by_global_norm(max_norm), opt) if max_norm > 0 else opt


@struct.dataclass
class TrainState:
    """Everything a training step updates: the step count, parameters and optimizer state (a pytree).

    The optimizer itself is not stored (it is not an array); pass the same `tx` to `create` and
    `apply_gradients`, e.g. bound with `functools.partial`.
    """

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> TrainState:
        """A state at step 0; `params` unboxed (call under jit with out_shardings to create it sharded)."""
        params = nn.unbox(params)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    @classmethod
    def abstract(cls, params, param_shardings, tx: optax.GradientTransformation) -> TrainState:
        """The state's shapes, dtypes and shardings as `jax.ShapeDtypeStruct`s, without allocating it.

        `params`: boxed or plain, real or `jax.eval_shape`d; `param_shardings`: the matching tree of
        NamedShardings (e.g. `sharding.logical_shardings`). Optimizer leaves shaped like a parameter (Adam
        moments) take that parameter's sharding; counters are replicated. Use it as
        Orbax's restore target, and `jax.tree.map(lambda x: x.sharding, ...)` as jit out_shardings.
        """
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(params))
        is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
        mesh = jax.tree.leaves(param_shardings, is_leaf=is_sharding)[0].mesh
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        opt_state = jax.eval_shape(tx.init, params)
        opt_shardings = optax.tree_map_params(
            tx,
            lambda _, sharding: sharding,
            opt_state,
            param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=is_sharding,
        )
        state = cls(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
        shardings = cls(step=replicated, params=param_shardings, opt_state=opt_shardings)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
        )

    def apply_gradients(self, grads, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update: the state at step + 1."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)

    def apply_gradients_if(self, ok, grads, tx: optax.GradientTransformation) -> TrainState:
        """`apply_gradients` where the scalar `ok` is true; otherwise params and optimizer state stay as they
        were (so the optimizer's count, and with it the schedule, pauses) while `step` still advances."""
        new = self.apply_gradients(grads, tx)
        keep = functools.partial(jax.tree.map, lambda n, o: jnp.where(ok, n, o))
        return new.replace(
            params=keep(new.params, self.params), opt_state=keep(new.opt_state, self.opt_state)
        )
