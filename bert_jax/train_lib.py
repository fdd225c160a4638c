"""The device side every training loop shares: the mesh and batch checks, the model config, the sharded train
state (born sharded from an init or given params), steps jitted with explicit shardings, gradient accumulation,
the guarded (finite) update, predict, the non-finite guard and preemption.

Imports no loop, nothing from `data/`, and no model family (only `models.registry`); the host side of setup
(errors, workdir policy, config rules) is `run_setup`.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import optim, sharding
from bert_jax.models import registry
from bert_jax.run_setup import Preempted, setup_error


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is left in the workdir."""


# ----------------------------------------------------------------------------------------------------------
# Mesh, model config, keys.
# ----------------------------------------------------------------------------------------------------------
def make_mesh(
    mesh_shape,
    batch_sizes: Mapping[str, int],
    grad_accum_steps: int = 1,
    *,
    dcn_mesh_shape=None,
    devices=None,
):
    """The device mesh, checking that each named global batch splits over its data-parallel shards (and
    into `grad_accum_steps` micro-batches). Raises SetupError naming the field. `dcn_mesh_shape`: the mesh
    of slices (multi-slice); `devices`: e.g. a TPU topology's abstract devices (bert_jax.compile)."""
    with setup_error("mesh_shape"):
        # Only what is set is passed on: one slice of this host's devices is the plain call.
        kwargs = {} if devices is None else {"devices": devices}
        if dcn_mesh_shape is not None and math.prod(dcn_mesh_shape) != 1:
            kwargs["dcn_mesh_shape"] = dcn_mesh_shape
        mesh = sharding.make_mesh(mesh_shape, **kwargs)
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    for name, size in batch_sizes.items():
        with setup_error(name):
            sharding.check_batch_divisible(size, mesh, jax.process_count())
            k = grad_accum_steps
            if k < 1 or size % (k * shards):
                raise ValueError(
                    f"{size} does not split into grad_accum_steps={k} micro-batches over the mesh's "
                    f"{sharding.BATCH_AXES} shards {dict(mesh.shape)}"
                )
    logging.info("mesh %s over %d processes", dict(mesh.shape), jax.process_count())
    return mesh


def model_config(
    fields: Mapping,
    *,
    vocab_size: int,
    dtype: str,
    param_dtype: str,
    family: str = "bert",
    **overrides,
):
    """`family`'s model config (`registry.config_from_fields`) from stored/recipe fields: `vocab_size` -1 takes
    the tokenizer's, the two dtypes come from the run's config (they are top-level recipe fields), `overrides`
    (e.g. dropout) win."""
    fields = {**fields, "dtype": dtype, "param_dtype": param_dtype, **overrides}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size {fields['vocab_size']} < the tokenizer's {vocab_size}")
    return registry.config_from_fields(fields, family)


def dropout_key(config) -> jax.Array:
    """The dropout keys' root, from `config.seed` with the configurable generator `config.prng_impl`
    (init always uses threefry); steps fold in their step number."""
    return jax.random.fold_in(jax.random.key(config.seed, impl=config.prng_impl), 1)


# ----------------------------------------------------------------------------------------------------------
# The train state, born sharded: shapes -> logical axes -> shardings -> jit(init, out_shardings).
# ----------------------------------------------------------------------------------------------------------
def boxed_init(model) -> Callable:
    """rng -> the model's boxed (logically annotated) parameters."""
    return lambda rng: registry.init_params(model, rng)


def abstract_state(model, tx, mesh):
    """The train state's shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s), without allocating it."""
    boxed = jax.eval_shape(boxed_init(model), jax.random.key(0))
    return optim.TrainState.abstract(boxed, sharding.logical_shardings(boxed, mesh), tx)


def shardings_of(abstract) -> object:
    return jax.tree.map(lambda x: x.sharding, abstract)


def _mesh_of(shardings):
    return jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0].mesh


def create_params(model, shardings, rng, params: Mapping | None = None):
    """The model's parameters on `shardings`: a fresh init, whose top-level modules named in `params` (e.g.
    {"bert": ...} from a checkpoint) are replaced by those."""
    init = sharding.under_mesh(lambda r: nn.unbox(boxed_init(model)(r)), _mesh_of(shardings))
    fresh = jax.jit(init, out_shardings=shardings)(rng)
    if params is None:
        return fresh
    return {**fresh, **jax.device_put(dict(params), {k: shardings[k] for k in params})}


def create_state(model, tx, abstract, rng, params: Mapping | None = None):
    """A train state at step 0 on `abstract`'s shardings (see `create_params`); Adam's moments are born with
    their parameters' shardings."""
    shardings = shardings_of(abstract)
    if params is None:
        create = lambda r: optim.TrainState.create(nn.unbox(boxed_init(model)(r)), tx)
        return jax.jit(sharding.under_mesh(create, _mesh_of(shardings)), out_shardings=shardings)(
            rng
        )
    merged = create_params(model, shardings.params, rng, params)
    # Eager zeros_like ops compile once per shape (a suite reuses them) where a jit compiles per task.
    return jax.device_put(optim.TrainState.create(merged, tx), shardings)


def jit_step(step_fn, abstract, mesh, *, donate: bool = True):
    """`step_fn(state, batch, rng) -> (state, metrics)` jitted with explicit shardings: the state keeps
    `abstract`'s, the batch is split over the data-parallel axes, metrics are replicated. Donates the state."""
    state_shardings = shardings_of(abstract)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Traced under the mesh and the logical axis rules: the model's block-boundary constraints take effect.
    return jax.jit(
        sharding.under_mesh(step_fn, mesh),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0 if donate else (),
    )


def jit_eval(eval_fn, abstract, mesh):
    """`eval_fn(params, batch) -> outputs` jitted: params as the state's, the batch split, outputs replicated."""
    return jax.jit(
        sharding.under_mesh(eval_fn, mesh),
        in_shardings=(shardings_of(abstract).params, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )


def accumulate_gradients(loss_fn, params, batch, rng, steps: int):
    """`jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)` over `steps` micro-batches.

    `loss_fn(params, batch, rng) -> (loss, aux)` where `aux` holds sums. Rows i, i+k, i+2k, ... of every batch
    array form micro-batch i (so every device keeps its own rows: no resharding); micro-batch i draws from
    `fold_in(rng, i)`. Returns ((mean loss, summed aux), mean gradient). A scan, so the activations of one
    micro-batch live at a time. `steps` 1 is the plain call.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if steps == 1:
        return grad_fn(params, batch, rng)
    micro = jax.tree.map(lambda x: x.reshape(-1, steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, xs):
        index, micro_batch = xs
        out = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, out), None

    zeros = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(steps), micro))
    (loss, aux), grads = total
    return (loss / steps, aux), jax.tree.map(lambda g: g / steps, grads)


def guarded_update(state, grads, loss, tx, schedule, metrics: Mapping):
    """Applies `grads` unless the loss or gradient is non-finite; returns (state, step metrics).

    The step metrics are `loss`, `grad_norm` and `metrics` (sums), all zero on a skipped step (a NaN would
    poison the whole logging window), plus `learning_rate` (the schedule at this update) and `nonfinite` (1 on a
    skipped step). A skipped step leaves params and optimizer state as they were, so the optimizer's count
    (schedule, Adam's bias correction) pauses while the step moves on.
    """
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    learning_rate = schedule(state.step)
    state = state.apply_gradients_if(ok, grads, tx)
    out = {"loss": loss, "grad_norm": grad_norm, **metrics}
    out = jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), out)
    out["learning_rate"] = learning_rate
    out["nonfinite"] = 1 - ok.astype(jnp.int32)
    return state, out


def predict(p_eval, params, batches: Iterable[dict], mesh) -> dict[str, np.ndarray]:
    """Every (padded) batch through the jitted eval function; padding rows (`weights` 0) are removed."""
    outs = [p_eval(params, sharding.host_to_global(b, mesh)) for b in batches]
    outs = jax.tree.map(lambda *xs: np.concatenate(xs), *jax.device_get(outs))
    keep = np.asarray(outs["weights"]) > 0
    return {k: v[keep] for k, v in outs.items()}


# ----------------------------------------------------------------------------------------------------------
# Host side of the loop: the non-finite guard and preemption (what a run reports is in reporting.py).
# ----------------------------------------------------------------------------------------------------------
class NonFiniteGuard:
    """Counts skipped (non-finite) steps from each step's `nonfinite` flag and stops a run of them.

    `check(metrics, step)` reads the flag of the step *before* `metrics`' step, so reading it never waits for
    the device to finish the step just dispatched.
    """

    def __init__(self, limit: int, note: Callable[[], str] = lambda: ""):
        # note(): appended to the error, e.g. the last good checkpoint.
        self.limit, self.note = limit, note
        self.in_a_row, self._pending = 0, None

    def check(self, metrics, step: int) -> None:
        if self._pending is not None:
            bad = int(self._pending["nonfinite"])
            self.in_a_row = (self.in_a_row + 1) * bad
            if self.in_a_row >= self.limit:
                raise NonFiniteLossError(
                    f"{self.in_a_row} non-finite losses in a row at step {step - 1}; stopping.{self.note()}"
                )
        self._pending = metrics


class Preemption:
    """Records SIGTERM (preemption) and SIGINT (Ctrl-C); `agreed(step)` is True on every host at the same step
    once any host got one. A second Ctrl-C interrupts at once."""

    def __init__(self, check_every: int):
        self.check_every = max(1, check_every)
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }
        # A signal that startup.EarlySignals recorded after the setup agreement still stops the run.
        self.requested = any(getattr(h, "received", None) for h in self._previous.values())

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning(
            "%s: saving a checkpoint and stopping at the next agreed step",
            signal.Signals(signum).name,
        )
        self.requested = True

    def agreed(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        # A tiny all-gather: every host learns whether any host was told to stop.
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))

    def stop_before_first_step(self) -> None:
        """Raises Preempted, on every host, when a signal arrived after the setup agreement (while the state was
        restored or created): the restored checkpoint stands, so nothing is compiled, run or saved."""
        requested = self.requested
        if jax.process_count() > 1:
            requested = bool(np.max(multihost_utils.process_allgather(np.int32(requested))))
        if requested:
            raise Preempted("a signal arrived before the first step; the newest checkpoint stands")

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
