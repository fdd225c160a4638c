"""BERT pretraining (masked LM + next sentence prediction) on a device mesh, top to bottom.

`train_and_evaluate(config, workdir)` builds the mesh, the data, the sharded train state and the jitted step,
restores the latest checkpoint in `workdir` if there is one, and trains to `config.num_train_steps`: metrics
every `log_every_steps` (stdout, TensorBoard, WORKDIR/metrics.jsonl), held-out MLM/NSP accuracy every
`eval_every_steps`, asynchronous Orbax checkpoints every `checkpoint_every_steps` and at the end. SIGTERM
(preemption) saves at a step all hosts agree on and returns normally. Bad input raises `SetupError` (one line)
before the first step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import checkpoint, losses, optim, sharding
from bert_jax.data.loader import make_eval_batches, make_pretraining_loader
from bert_jax.metrics import MetricWriter
from bert_jax.model import BertConfig, build_model, dummy_inputs

# Dense bfloat16 peak FLOP/s of one JAX device, by a substring of `device.device_kind` (first match wins).
# TPU v2/v3 expose each TensorCore as a device (half a chip); v4 and later one device per chip.
PEAK_FLOPS = (
    ("v6 lite", 918e12),
    ("v5 lite", 197e12),
    ("v5", 459e12),  # v5p
    ("v4", 275e12),
    ("v3", 61.5e12),
    ("v2", 22.5e12),
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("V100", 125e12),
)


class SetupError(Exception):
    """Bad input found before training starts (mesh, batch, checkpoint, data); main prints it as one line."""


class NonFiniteGuard:
    """Counts skipped (non-finite) steps from each step's `nonfinite` flag and stops a run of them.

    `check(metrics, step)` reads the flag of the step *before* `metrics`' step, so reading it never waits for
    the device to finish the step just dispatched.
    """

    def __init__(self, limit: int, note=lambda: ""):
        self.limit, self.note = (
            limit,
            note,
        )  # note(): appended to the error, e.g. the last good checkpoint
        self.in_a_row, self.total, self._pending = 0, 0, None

    def check(self, metrics, step: int) -> None:
        if self._pending is not None:
            bad = int(self._pending["nonfinite"])
            self.in_a_row, self.total = (self.in_a_row + 1) * bad, self.total + bad
            if self.in_a_row >= self.limit:
                raise NonFiniteLossError(
                    f"{self.in_a_row} non-finite losses in a row at step {step - 1}; stopping.{self.note()}"
                )
        self._pending = metrics


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


# ----------------------------------------------------------------------------------------------------------
# Model FLOPs and the backend's peak, for MFU.
# ----------------------------------------------------------------------------------------------------------
def model_flops_per_sequence(cfg: BertConfig, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence (forward + backward = 3 x forward, 2 FLOPs per multiply-add).

    Counts the matmuls of the paper's model: Q/K/V/output projections, attention scores and values, the
    feed-forward block, the pooler and NSP head, and the MLM head at the `predictions` masked positions only.
    """
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_layer = length * (4 * h * h + 2 * h * i) + 2 * length * length * h
    heads = predictions * (h * h + h * cfg.vocab_size) + h * h + 2 * h
    return 6.0 * (cfg.num_layers * per_layer + heads)


def measure_matmul_peak(sizes=(1024, 2048), repeats: int = 10) -> float:
    """FLOP/s of the fastest float32 [n, n] matmul on the first device (the CPU's practical peak).

    The best of several sizes and repeats, so that a busy moment does not inflate the MFU.
    """
    best = 0.0
    for size in sizes:
        x = jnp.ones((size, size), jnp.float32)
        matmul = jax.jit(lambda a: a @ a)
        matmul(x).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(x).block_until_ready()
            best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops() -> tuple[float, str]:
    """(peak FLOP/s of all devices together, where the number comes from)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        # Fake CPU devices share the host's cores, so the host's measured peak is the whole mesh's.
        return measure_matmul_peak(), "measured float32 matmul"
    for name, flops in PEAK_FLOPS:
        if name.lower() in device.device_kind.lower():
            return flops * jax.device_count(), f"{device.device_kind} bf16 table"
    return math.nan, f"unknown device {device.device_kind!r}"


# ----------------------------------------------------------------------------------------------------------
# The steps: pure functions of (state, batch, rng), bound to model and optimizer with functools.partial.
# ----------------------------------------------------------------------------------------------------------
def _forward(model, params, batch, rng, deterministic):
    outputs = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        batch["masked_lm_positions"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )
    mlm = losses.mlm_loss(
        outputs["prediction_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
    )
    nsp = losses.nsp_loss(outputs["seq_relationship_logits"], batch["next_sentence_labels"])
    return mlm, nsp


def _objective(params, batch, rng, *, model):
    """The paper's loss: mean MLM cross entropy over masked positions + mean NSP cross entropy."""
    mlm, nsp = _forward(model, params, batch, rng, deterministic=False)
    loss = mlm["loss_sum"] / jnp.maximum(mlm["weight_sum"], 1e-5) + nsp["loss_sum"] / nsp["count"]
    return loss, (mlm, nsp)


def train_step(state, batch, rng, *, model, tx, schedule, grad_accum_steps: int = 1):
    """One optimizer update on a global batch; returns (state, metrics as sums and per-step scalars).

    With `grad_accum_steps` k the batch is split into k interleaved micro-batches whose gradients are
    averaged (a scan, so activations of one micro-batch live at a time). A non-finite loss or gradient
    skips the update and sets `nonfinite` to 1: params and optimizer state stay as they were, so the
    optimizer's own count (which drives the learning rate and Adam's bias correction) pauses while the
    step, the data and the logged `learning_rate` (the schedule at the step) move on.
    """
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(functools.partial(_objective, model=model), has_aux=True)
    if grad_accum_steps == 1:
        (loss, (mlm, nsp)), grads = grad_fn(state.params, batch, rng)
    else:
        # Rows i, i+k, i+2k, ... form micro-batch i: every device keeps its own rows (no resharding).
        micro = jax.tree.map(
            lambda x: x.reshape(-1, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch
        )

        def accumulate(carry, xs):
            index, micro_batch = xs
            out = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, out), None

        zeros = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
        (loss, (mlm, nsp)), grads = total
        loss, grads = loss / grad_accum_steps, jax.tree.map(lambda g: g / grad_accum_steps, grads)

    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    state = state.apply_gradients_if(ok, grads, tx)
    # A skipped step contributes nothing to the sums (a NaN would poison the whole logging window).
    zero_if_bad = lambda x: jnp.where(ok, x, jnp.zeros_like(x))
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        **{f"mlm_{k}": v for k, v in mlm.items()},
        **{f"nsp_{k}": v for k, v in nsp.items()},
    }
    metrics = jax.tree.map(zero_if_bad, metrics)
    metrics["learning_rate"] = schedule(state.step - 1)
    metrics["nonfinite"] = 1 - ok.astype(jnp.int32)
    return state, metrics


def eval_step(params, batch, *, model):
    """Held-out MLM and NSP sums (dropout off)."""
    mlm, nsp = _forward(model, params, batch, None, deterministic=True)
    return {**{f"mlm_{k}": v for k, v in mlm.items()}, **{f"nsp_{k}": v for k, v in nsp.items()}}


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Means and accuracies from summed MLM/NSP metrics (the host divides once)."""
    divide = lambda a, b: (
        a / b if b > 0 else math.nan
    )  # no weight (e.g. only skipped steps): no value
    return {
        "mlm_loss": divide(sums["mlm_loss_sum"], sums["mlm_weight_sum"]),
        "mlm_accuracy": divide(sums["mlm_correct_sum"], sums["mlm_weight_sum"]),
        "nsp_loss": divide(sums["nsp_loss_sum"], sums["nsp_count"]),
        "nsp_accuracy": divide(sums["nsp_correct_sum"], sums["nsp_count"]),
    }


class _Preemption:
    """Records SIGTERM; `agreed(step)` is True on every host at the same step once any host got one."""

    def __init__(self, check_every: int):
        self.requested, self.check_every = False, max(1, check_every)
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM: saving a checkpoint and stopping at the next agreed step")
        self.requested = True

    def agreed(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        # A tiny all-gather: every host learns whether any host was told to stop.
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str):
    """Pretrains per `config` in `workdir` (resuming from its latest checkpoint); returns the final state."""
    # Orbax wants absolute paths; gs:// and other URLs are absolute already.
    workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
    process_index, process_count = jax.process_index(), jax.process_count()

    # ------------------------------------------------------------------------------------------------------
    # Mesh.
    # ------------------------------------------------------------------------------------------------------
    with setup_error("mesh_shape"):
        mesh = sharding.make_mesh(
            config.mesh_shape, dcn_mesh_shape=config.get("dcn_mesh_shape")
        )
    with setup_error("global_batch_size"):
        sharding.check_batch_divisible(config.global_batch_size, mesh, process_count)
        k = config.grad_accum_steps
        if k < 1 or config.global_batch_size % (
            k * math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
        ):
            raise ValueError(
                f"{config.global_batch_size} does not split into grad_accum_steps={k} micro-batches "
                f"over the mesh's {sharding.BATCH_AXES} shards {dict(mesh.shape)}"
            )
    logging.info("mesh %s over %d processes", dict(mesh.shape), process_count)

    # ------------------------------------------------------------------------------------------------------
    # Data.
    # ------------------------------------------------------------------------------------------------------
    with setup_error("data"):
        loader = make_pretraining_loader(
            config.data,
            global_batch_size=config.global_batch_size,
            num_train_steps=config.num_train_steps,
            process_index=process_index,
            process_count=process_count,
            seed=config.seed,
        )
        eval_batches = []
        if config.eval_every_steps > 0 and config.eval_batches > 0:
            eval_batches = make_eval_batches(
                config.data,
                global_batch_size=config.global_batch_size,
                num_batches=config.eval_batches,
                process_index=process_index,
                process_count=process_count,
                seed=config.seed,
            )

    # ------------------------------------------------------------------------------------------------------
    # Model and train state, born sharded: shapes -> logical axes -> shardings -> jit(init, out_shardings).
    # ------------------------------------------------------------------------------------------------------
    with setup_error("model"):
        model_fields = {**config.model.to_dict(), "dtype": config.dtype}
        # The loader's tokenizer decides the ids; older loaders keep it private.
        tokenizer = loader.tokenizer
        tokenizer_vocab = tokenizer.vocab_size
        if model_fields["vocab_size"] == -1:
            model_fields["vocab_size"] = tokenizer_vocab
        elif model_fields["vocab_size"] < tokenizer_vocab:
            raise ValueError(
                f"model.vocab_size {model_fields['vocab_size']} < the tokenizer's {tokenizer_vocab}"
            )
        model_config = BertConfig.from_dict(model_fields)
        for length in {loader.seq_length(0), loader.seq_length(config.num_train_steps - 1)}:
            if length > model_config.max_position_embeddings:
                raise ValueError(
                    f"seq_length {length} > max_position_embeddings {model_config.max_position_embeddings}"
                )
    with setup_error("optimizer"):
        # Accumulation happens inside train_step (one loop step = one update), not in optax.MultiSteps.
        opt_config = config.copy_and_resolve_references()
        opt_config.grad_accum_steps = 1
        tx = optim.make_optimizer(opt_config)
        schedule = optim.make_schedule(config)
    model = build_model(model_config, head="pretraining")

    def init_boxed_params(rng):
        return model.init(rng, **dummy_inputs(1, 8))["params"]

    init_rng = jax.random.key(config.seed)
    # The dropout keys' generator is configurable (config.prng_impl); init always uses threefry.
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed, impl=config.prng_impl), 1)
    replicated = NamedSharding(mesh, PartitionSpec())
    boxed = jax.eval_shape(init_boxed_params, init_rng)
    param_shardings = sharding.logical_shardings(boxed, mesh)
    create = lambda rng: optim.TrainState.create(nn.unbox(init_boxed_params(rng)), tx)
    # Adam's moments take their parameters' shardings; counters are replicated.
    abstract_state = optim.TrainState.abstract(boxed, param_shardings, tx)
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    logging.info("model %s: %s parameters", config.get("size", "?"), f"{num_params:,}")

    # ------------------------------------------------------------------------------------------------------
    # Steps, jitted with explicit shardings; the state is donated (updated in place).
    # ------------------------------------------------------------------------------------------------------
    data_sharding = sharding.batch_sharding(mesh)
    # Traced under the mesh and the logical rules, so the block-boundary constraints take effect.
    p_train_step = jax.jit(
        sharding.under_mesh(
            functools.partial(
                train_step,
                model=model,
                tx=tx,
                schedule=schedule,
                grad_accum_steps=config.grad_accum_steps,
            ),
            mesh,
        ),
        in_shardings=(state_shardings, data_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    p_eval_step = jax.jit(
        sharding.under_mesh(functools.partial(eval_step, model=model), mesh),
        in_shardings=(state_shardings.params, data_sharding),
        out_shardings=replicated,
    )

    # ------------------------------------------------------------------------------------------------------
    # Checkpoint: restore the latest one in the workdir, or create the state from scratch.
    # ------------------------------------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        str(workdir / "checkpoints"),
        keep=config.keep_checkpoints,
        save_interval_steps=config.checkpoint_every_steps,
        async_save=config.async_checkpoints,
    )
    if ckpt.latest_step() is not None:
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            state_shardings,
        )
        with setup_error("checkpoint"):
            state, data_state, _ = ckpt.restore(None, abstract)
            loader.set_state(data_state)
        logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = jax.jit(sharding.under_mesh(create, mesh), out_shardings=state_shardings)(init_rng)
    start_step = int(state.step)

    # ------------------------------------------------------------------------------------------------------
    # Loop.
    # ------------------------------------------------------------------------------------------------------
    writer = MetricWriter(workdir, process_index=process_index)
    peak, peak_source = peak_flops()
    logging.info("peak %.3g FLOP/s (%s)", peak, peak_source)
    preemption = _Preemption(config.preemption_check_every_steps)
    window, window_start, window_steps, window_flops = [], time.perf_counter(), 0, 0.0
    guard = NonFiniteGuard(
        config.max_consecutive_nonfinite,
        note=lambda: f" The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}",
    )
    batches = loader.iterate(start_step)
    try:
        for step, batch in batches:
            if step >= config.num_train_steps:
                break
            length, predictions = batch["input_ids"].shape[1], batch["masked_lm_ids"].shape[1]
            state, metrics = p_train_step(state, sharding.host_to_global(batch, mesh), dropout_rng)
            done = step + 1
            window.append(metrics)
            window_steps += 1
            window_flops += config.global_batch_size * model_flops_per_sequence(
                model_config, length, predictions
            )

            guard.check(metrics, done)

            if done % config.log_every_steps == 0 or done == config.num_train_steps:
                sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(window))
                elapsed = time.perf_counter() - window_start
                good = window_steps - sums["nonfinite"] or math.nan  # finite steps in the window
                step_time = elapsed / window_steps
                writer.write_scalars(
                    done,
                    {
                        "train/loss": sums["loss"] / good,
                        **{f"train/{k}": v for k, v in summarize(sums).items()},
                        "train/learning_rate": float(window[-1]["learning_rate"]),
                        "train/grad_norm": sums["grad_norm"] / good,
                        "train/nonfinite_steps": guard.total + int(window[-1]["nonfinite"]),
                        "perf/step_time": step_time,
                        "perf/sequences_per_sec": config.global_batch_size / step_time,
                        "perf/tokens_per_sec": config.global_batch_size * length / step_time,
                        "perf/mfu": window_flops / elapsed / peak,
                    },
                )
                window, window_start, window_steps, window_flops = [], time.perf_counter(), 0, 0.0

            if eval_batches and (
                done % config.eval_every_steps == 0 or done == config.num_train_steps
            ):
                sums = [
                    p_eval_step(state.params, sharding.host_to_global(b, mesh))
                    for b in eval_batches
                ]
                sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(sums))
                writer.write_scalars(done, {f"eval/{k}": v for k, v in summarize(sums).items()})
                window_start = time.perf_counter()

            stop = preemption.agreed(done)
            if (
                done == config.num_train_steps
                or stop
                or (done % config.checkpoint_every_steps == 0 and not guard.in_a_row)
            ):
                ckpt.save(
                    done,
                    state,
                    data_state=loader.get_state(done),
                    config=config,
                    force=stop or done == config.num_train_steps,
                )
                window_start = time.perf_counter()
            if stop:
                logging.warning("preempted: saved step %d, exiting", done)
                break
        ckpt.wait_until_finished()
    finally:
        batches.close()  # stops the prefetch thread
        preemption.restore()
        writer.close()
        ckpt.close()
    return state
