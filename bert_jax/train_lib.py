"""What every training loop shares: setup errors, the mesh, the sharded train state, jitted steps with a finite
guard, preemption, and one metric window and writer (the same key means the same thing in every loop).

Imports no loop and nothing from `data/`; pretrain.py, finetune.py and the task loops import it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import configs, optim, sharding
from bert_jax.models import registry


# ----------------------------------------------------------------------------------------------------------
# Errors: bad input is one line, found before the first step.
# ----------------------------------------------------------------------------------------------------------
class SetupError(Exception):
    """Bad input found before training starts (mesh, batch, checkpoint, data); main prints it as one line."""


class Preempted(Exception):
    """SIGTERM or SIGINT stopped a run after it saved its state; rerunning the command resumes it."""


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is left in the workdir."""


@contextlib.contextmanager
def setup_error(what: str):
    """Turns a ValueError/OSError raised while setting up `what` into a one-line SetupError."""
    try:
        yield
    except (ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SetupError(f"{what}: {first}") from error


def absolute_workdir(workdir) -> epath.Path:
    """The workdir as an absolute path (Orbax needs one); gs:// and other URLs are absolute already."""
    return epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))


def prepare_workdir(workdir) -> epath.Path:
    """The absolute workdir, created; a local one that is a file or not writable is a SetupError."""
    path = absolute_workdir(workdir)
    if "://" in str(path):
        return path
    with setup_error("workdir"):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file, not a directory")
        path.mkdir(parents=True, exist_ok=True)
        # A probe file, not os.access: root passes access checks on read-only mounts.
        probe = path / f".write_test_{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise ValueError(f"{path} is not writable ({error.strerror})") from error
    return path


# Value rules checked before anything runs: (field-name test, the rule, what it must be).
_RULES = (
    (lambda k: k == "learning_rate", lambda v: v > 0, "> 0"),
    (lambda k: k in ("num_train_steps", "num_epochs"), lambda v: v > 0, "> 0"),
    (lambda k: k.endswith("batch_size"), lambda v: v > 0, "> 0"),
    (lambda k: k == "warmup_steps", lambda v: v >= 0, ">= 0"),
    (lambda k: k.endswith(("_prob", "_fraction")), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (lambda k: k.endswith(("dropout", "dropout_prob")), lambda v: 0 <= v < 1, "in [0, 1)"),
    (lambda k: k in ("adam_b1", "adam_b2"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (lambda k: k == "adam_epsilon", lambda v: v > 0, "> 0"),
    (
        lambda k: k in ("weight_decay", "max_grad_norm", "eval_every_steps"),
        lambda v: v >= 0,
        ">= 0",
    ),
    (lambda k: k in ("log_every_steps", "checkpoint_every_steps"), lambda v: v > 0, "> 0"),
    (lambda k: k in ("grad_accum_steps", "max_consecutive_nonfinite"), lambda v: v >= 1, ">= 1"),
)


def check_config(config) -> None:
    """Raises SetupError naming the first field whose value is out of range (a negative learning rate, zero
    steps, a probability above 1, a warmup longer than the run)."""
    flat = flat_config(config)
    for key, value in flat.items():
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        for applies, ok, must in _RULES:
            if applies(name) and not ok(value):
                raise SetupError(f"{key}: {value!r} must be {must}")
    for pair in configs.ONE_OF:
        if all(name in flat for name in pair):
            _one_of(flat, *pair)
    if flat.get("mode") == "pretrain" and flat.get("num_epochs") is not None:
        raise SetupError(_NO_EPOCHS)
    steps, warmup = flat.get("num_train_steps"), flat.get("warmup_steps")
    if steps is not None and warmup is not None and warmup > steps:
        raise SetupError(f"warmup_steps: {warmup} must be <= num_train_steps {steps}")


_NO_EPOCHS = "num_epochs: pretraining streams have no epochs; set num_train_steps instead"


def _one_of(fields: Mapping, first: str, second: str):
    """(name, value) of the one field of the pair that is set; a SetupError naming both when not exactly one."""
    given = [(name, fields.get(name)) for name in (first, second) if fields.get(name) is not None]
    if len(given) != 1:
        state = "both are" if given else "neither is"
        raise SetupError(f"{first}, {second}: set exactly one of them ({state} set)")
    return given[0]


def run_length(config, steps_per_epoch: int | None = None) -> tuple[int, int]:
    """(num_train_steps, warmup_steps) of a run: `num_train_steps` as set, or `num_epochs` x `steps_per_epoch`
    (a fine-tuning loop's full batches per epoch; pretraining streams have none); `warmup_steps` as set, or
    `warmup_fraction` of the steps, rounded. Exactly one field of each pair (configs.ONE_OF) is set; else,
    or a warmup longer than the run, a SetupError naming the fields."""
    fields = {name: config.get(name) for pair in configs.ONE_OF for name in pair}
    name, value = _one_of(fields, "num_train_steps", "num_epochs")
    if name == "num_epochs" and steps_per_epoch is None:
        raise SetupError(_NO_EPOCHS)
    steps = value if name == "num_train_steps" else value * steps_per_epoch
    name, value = _one_of(fields, "warmup_steps", "warmup_fraction")
    warmup = value if name == "warmup_steps" else round(value * steps)
    if not 0 <= warmup <= steps:
        raise SetupError(f"warmup_steps: {warmup} must be between 0 and num_train_steps {steps}")
    return steps, warmup


def flat_config(config, prefix="") -> dict:
    """{"data.seq_length": 128, ...}: a (nested) config as one level of dotted keys, tuples as lists."""
    config = config.to_dict() if hasattr(config, "to_dict") else config
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            # JSON (the stored config) has lists where the recipe has tuples.
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# Changes safe in every loop: where compiled code is cached, and skipping damaged records (the data order of the
# good records is unchanged; a run stopped at a corrupt record is resumed with it turned on).
ALWAYS_SAFE = ("compilation_cache_dir", "data.skip_corrupt_records")


def config_changes(stored, current, safe: Iterable[str]) -> tuple[list[str], list[str]]:
    """(breaking, safe) changes from a workdir's stored config to the current one, as "field: old -> new".

    A change is safe when its field is in `safe` (or starts with one of them followed by "."): logging, cadence,
    more steps; every other difference breaks continuation (vocab, lower-casing, model shape, data, optimizer).
    """
    # An old run's config names some fields as the previous release did (configs.RENAMED).
    stored = stored.to_dict() if hasattr(stored, "to_dict") else stored
    old, new = flat_config(configs.translate(stored)), flat_config(current)
    safe = (*safe, *ALWAYS_SAFE)
    breaking, allowed = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        line = f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
        is_safe = any(key == s or key.startswith(f"{s}.") for s in safe)
        (allowed if is_safe else breaking).append(line)
    return breaking, allowed


def fine_tuning_optimizer(config, num_train_steps: int, warmup_steps: int):
    """(the run's fields: the recipe plus its step counts from `run_length`, the optimizer, its schedule) of a
    fine-tuning run. A bad optimizer field is a SetupError naming it."""
    fields = {**config.to_dict(), "num_train_steps": num_train_steps, "warmup_steps": warmup_steps}
    with setup_error("optimizer"):
        tx = optim.make_optimizer(config, num_train_steps, warmup_steps)
        return fields, tx, optim.make_schedule(config, num_train_steps, warmup_steps)


# Fine-tuning checkpoints kept: the newest and the one before it, so a damaged newest one falls back (a rerun
# retrains from there to the same result) instead of leaving nothing to resume from.
FINE_TUNING_KEEP = 2
# Fields whose change is a run of another length: the schedule decays to 0 over num_train_steps.
_LENGTH_FIELDS = ("num_epochs", "num_train_steps", "warmup_steps")


def open_fine_tuning_run(
    workdir: epath.Path,
    stored: dict,
    overwrite: bool,
    abstract,
    *,
    safe_changes: Iterable[str],
    run_files: Iterable[str],
):
    """(the finished run's summary or None, the run's checkpointer, (state, data position) restored from its
    newest usable checkpoint or None) for a fine-tuning run; `reuse_workdir` decides what a used workdir means.

    The checkpointer keeps FINE_TUNING_KEEP checkpoints (each epoch's end, and the step a preemption stopped at),
    so a damaged newest one falls back to the one before with one warning line; a finished run keeps only its
    final one (`keep_final_checkpoint`).
    """
    from bert_jax import checkpoint

    with setup_error("workdir"):
        finished = reuse_workdir(
            workdir, stored, overwrite, safe_changes=safe_changes, run_files=run_files
        )
    if finished is not None:
        return finished, None, None
    ckpt = checkpoint.Checkpointer(
        str(workdir / "checkpoints"), keep=FINE_TUNING_KEEP, save_interval_steps=1
    )
    if ckpt.latest_step() is None:
        return None, ckpt, None
    try:
        with setup_error("checkpoint"):
            state, position, _ = ckpt.restore(None, abstract)
    except BaseException:
        ckpt.close()
        raise
    return None, ckpt, (state, position)


def keep_final_checkpoint(workdir: epath.Path) -> None:
    """Keeps only the newest checkpoint of a finished fine-tuning run: its final model is the run's result, and
    a fallback to an older epoch's model (after damage) would quietly be another model. While the run trains
    the older one is what a damaged newest one falls back to."""
    from bert_jax import checkpoint

    if not (workdir / "checkpoints").is_dir():
        return  # moved away by hand: nothing to prune, and no empty folder to leave
    ckpt = checkpoint.Checkpointer(
        str(workdir / "checkpoints"), keep=FINE_TUNING_KEEP, save_interval_steps=1, async_save=False
    )
    try:
        ckpt.keep_latest_only()
    finally:
        ckpt.close()


def _stored_run_config(workdir: epath.Path) -> tuple[dict | None, dict | None]:
    """(the config of the run in `workdir`, its finished summary) from results.json, else from the newest
    checkpoint whose config reads; (None, None) when neither holds one (a fresh workdir, or a run killed before
    its first save finished). A torn results.json (a kill while it was written) or an unreadable checkpoint
    config is one warning line naming the file: the checkpoints write it again."""
    from bert_jax import checkpoint  # the one user of Orbax here; most of this module needs none

    results = workdir / "results.json"
    if results.exists():
        try:
            summary = json.loads(results.read_text())
            return summary["config"], summary
        except (ValueError, KeyError, TypeError):
            logging.warning("%s is torn or incomplete; the run's checkpoints decide", results)
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return None, None
    ckpt = checkpoint.Checkpointer(
        str(directory), keep=FINE_TUNING_KEEP, save_interval_steps=1, async_save=False
    )
    try:
        for step in reversed(ckpt.all_steps()):
            try:
                return ckpt.read_config(step)[1], None
            except Exception as error:  # noqa: BLE001 -- an older step may read; restore decides
                logging.warning(
                    "the config of %s is unreadable (%s); trying the previous step",
                    directory / str(step),
                    type(error).__name__,
                )
    finally:
        ckpt.close()
    return None, None


def reuse_workdir(
    workdir: epath.Path,
    stored: dict,
    overwrite: bool,
    *,
    safe_changes: Iterable[str],
    run_files: Iterable[str],
) -> dict | None:
    """What a used workdir means for a fine-tuning run: None to train, or the finished run's summary.

    `overwrite` deletes the `run_files` and event files whatever they hold (a finished run, another run, a
    damaged or half-written checkpoint) and trains from the start. Otherwise: None for a fresh workdir, one
    whose run was killed before its first checkpoint finished (it starts again), or the same run to resume from
    its checkpoints (a changed field in `safe_changes` is logged and allowed); the finished run's results.json
    (plus "workdir") when the workdir holds this very run, complete. Another run's workdir is an error naming the
    changes (another length: why it cannot be extended in place, and what to do).
    """
    used = [name for name in run_files if (workdir / name).exists()]
    if overwrite:
        if used:
            logging.warning("overwrite: deleting the previous run in %s", workdir)
        if jax.process_index() == 0:
            for name in used:
                path = workdir / name
                path.rmtree() if path.is_dir() else path.unlink(missing_ok=True)
            for events in workdir.glob("events.out.tfevents.*"):
                events.unlink()
        return None
    previous, summary = _stored_run_config(workdir) if used else (None, None)
    if previous is None:
        return None
    breaking, safe = config_changes(previous, stored, safe_changes)
    if breaking and all(line.split(":")[0] in _LENGTH_FIELDS for line in breaking):
        raise ValueError(
            f"{workdir} holds a run of another length ({'; '.join(breaking)}): the learning rate decays to 0 "
            "over num_train_steps (warmup a fraction of it), so a fine-tuning run cannot be extended or "
            f"shortened in place; to train on, use another --workdir with --config.init_checkpoint={workdir} "
            "(its final weights, a fresh schedule), or --config.overwrite=True to retrain from the start"
        )
    if breaking:
        raise ValueError(
            f"{workdir} holds another run ({'; '.join(breaking[:3])}"
            f"{'; ...' if len(breaking) > 3 else ''}): use another --workdir, or "
            "--config.overwrite=True to delete it and start over"
        )
    if safe:
        logging.warning("%s: continuing with changed settings: %s", workdir, "; ".join(safe))
    if summary is not None:
        return {**summary, "workdir": str(workdir)}
    return None


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


def model_config(fields: Mapping, *, vocab_size: int, dtype: str, param_dtype: str, **overrides):
    """The model family's config (`registry.config_from_fields`) from stored/recipe fields: `vocab_size` -1 takes the tokenizer's, the two dtypes come from
    the run's config (they are top-level recipe fields), `overrides` (e.g. dropout) win."""
    fields = {**fields, "dtype": dtype, "param_dtype": param_dtype, **overrides}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = vocab_size
    elif fields["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size {fields['vocab_size']} < the tokenizer's {vocab_size}")
    return registry.config_from_fields(fields)


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
