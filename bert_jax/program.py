"""The pretraining program, built in one place for the loop, the compile check and the benchmark.

`build(config, mesh, vocab_size, ...)` makes everything pretraining's steps are compiled from: the model config
and module, the objective bound to the model, the optimizer and its schedule, the train state's shapes and
shardings (nothing allocated), the phases (`data/phases.py`) with each one's abstract batch, and the train and
eval steps jitted with explicit shardings and a donated state. `pretrain.run` trains with it, `bert_jax.compile`
lowers and compiles the same jitted functions at the same abstract arguments for a TPU topology, and
`bert_jax.benchmark` times its train step: MaxText's habit, where the ahead-of-time check compiles what
training runs because both call one builder.

The steps are generic: the objective (`bert_jax.models.objectives`, chosen by the recipe's `objective` among
the model family's) owns the model and its loss inputs, so nothing here names an architecture or a loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_jax import flops, optim, run_setup, sharding, train_lib
from bert_jax.data import packing
from bert_jax.data.phases import Phase, eval_phase, pretraining_phases
from bert_jax.models import registry
from bert_jax.models.attention import check_packing as check_packed_attention


@dataclasses.dataclass(frozen=True)
class Program:
    """A pretraining run's model, optimizer, abstract state, phases and jitted steps on one mesh."""

    config: object
    mesh: Mesh
    model_config: registry.Config
    model: object
    # The pretraining objective around the model: loss, loss_sums, eval_sums, summarize.
    objective: object
    tx: object
    schedule: Callable
    # The train state's shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s).
    abstract: optim.TrainState
    # The training phases in step order, and the held-out batches' shape.
    phases: tuple[Phase, ...]
    eval_phase: Phase
    # (state, batch, rng) -> (state, metrics), jitted; donates the state.
    train_step: Callable
    # (params, batch) -> metric sums, jitted.
    eval_step: Callable

    def phase(self, name: str) -> Phase:
        """The phase called `name`: "phase1", "phase2" (only when the run has one) or "eval"."""
        found = {p.name: p for p in (*self.phases, self.eval_phase)}
        if name not in found:
            raise KeyError(f"{name!r}: this run's phases are {sorted(found)}")
        return found[name]

    @property
    def packed(self) -> bool:
        """Whether batches are packed (`data.packing`: training and held-out ones)."""
        return bool(self.config.data.get("packing", False))

    def packed_rows(self, phase: Phase) -> tuple[int, ...]:
        """The global row counts a packed training step of `phase` can have (`packing.row_buckets` per
        host, times the hosts): each one the train step compiles at once, when a step first meets it."""
        hosts = jax.process_count()
        k, multiple = self.config.data.max_sequences_per_row, packing_multiple(self.config)
        per_host = packing.row_buckets(phase.global_batch_size // hosts, k, multiple)
        return tuple(rows * hosts for rows in per_host)

    def abstract_batch(
        self, phase: Phase, rows: int | None = None
    ) -> dict[str, jax.ShapeDtypeStruct]:
        """A global batch of `phase`'s shape as the loader makes it, split over the data-parallel axes.

        A packed run (`data.packing`, held-out batches too) gets the packed fields at `rows` rows (default:
        the global batch size, every sequence alone in a row, the most a step can have: it bounds memory)."""
        data = sharding.batch_sharding(self.mesh)
        spec = lambda shape, dtype="int32": jax.ShapeDtypeStruct(shape, dtype, sharding=data)
        length, predictions = phase.seq_length, phase.max_predictions
        if not self.packed:
            rows = phase.global_batch_size
            return {
                "input_ids": spec((rows, length)),
                "token_type_ids": spec((rows, length)),
                "attention_mask": spec((rows, length)),
                "masked_lm_positions": spec((rows, predictions)),
                "masked_lm_ids": spec((rows, predictions)),
                "masked_lm_weights": spec((rows, predictions), "float32"),
                "next_sentence_labels": spec((rows,)),
            }
        rows = rows or phase.global_batch_size
        k = self.config.data.max_sequences_per_row
        budget = packing.prediction_budget(length, k, predictions, self.config.data.masked_lm_prob)
        return {
            "input_ids": spec((rows, length)),
            "token_type_ids": spec((rows, length)),
            "attention_mask": spec((rows, length)),
            "segment_ids": spec((rows, length)),
            "position_ids": spec((rows, length)),
            "cls_positions": spec((rows, k)),
            "cls_weights": spec((rows, k), "float32"),
            "next_sentence_labels": spec((rows, k)),
            "masked_lm_positions": spec((rows, budget)),
            "masked_lm_ids": spec((rows, budget)),
            "masked_lm_weights": spec((rows, budget), "float32"),
        }

    def abstract_rng(self) -> jax.ShapeDtypeStruct:
        """The dropout key's root (`train_lib.dropout_key`), replicated."""
        key = jax.eval_shape(lambda: train_lib.dropout_key(self.config))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)

    def lower(self, name: str) -> jax.stages.Lowered:
        """The train step at phase `name`'s shape, or the eval step for "eval", lowered at abstract arguments."""
        batch = self.abstract_batch(self.phase(name))
        if name == "eval":
            return self.eval_step.lower(self.abstract.params, batch)
        return self.train_step.lower(self.abstract, batch, self.abstract_rng())

    def model_flops(self, phase: Phase) -> float:
        """Model FLOPs of one training step at `phase`'s shape, all devices together (forward + backward)."""
        per_sequence = flops.model_flops_per_sequence(
            self.model_config, phase.seq_length, phase.max_predictions
        )
        return phase.global_batch_size * per_sequence


def packing_multiple(config) -> int:
    """What a host's packed row count must be a multiple of: its devices (rows split evenly over them) times
    `grad_accum_steps` (micro-batches take every k-th row)."""
    return jax.local_device_count() * config.grad_accum_steps


def check_packing(config) -> None:
    """Raises ValueError (one line naming the field) if `config` packs in a way that cannot run."""
    data = config.data
    if not data.get("packing", False):
        return
    packing.check_settings(data.seq_length, data.max_sequences_per_row)
    check_packed_attention(config.model.get("attention_impl", "auto"))


def phases_of(config) -> tuple[tuple[Phase, ...], Phase]:
    """(the training phases, the eval batches' phase) of a pretraining config (`data/phases.py`'s rule)."""
    size = config.global_batch_size
    train = pretraining_phases(
        config.data, num_train_steps=config.num_train_steps, global_batch_size=size
    )
    return train, eval_phase(config.data, global_batch_size=size)


def model_config(config, vocab_size: int) -> registry.Config:
    """The model's config (`vocab_size`: the tokenizer's, taken when `model.vocab_size` is -1), checked to
    have a position for every token of every phase. Raises SetupError naming `model`."""
    train, evaluate = phases_of(config)
    with run_setup.setup_error("model"):
        model = train_lib.model_config(
            config.model.to_dict(),
            vocab_size=vocab_size,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            family=config.get("family", "bert"),
        )
        for length in sorted({p.seq_length for p in (*train, evaluate)}):
            if length > model.max_position_embeddings:
                raise ValueError(
                    f"seq_length {length} > max_position_embeddings {model.max_position_embeddings}"
                )
    return model


# ----------------------------------------------------------------------------------------------------------
# The steps: pure functions of (state, batch, rng), bound to the objective and optimizer with functools.partial.
# ----------------------------------------------------------------------------------------------------------
def train_step(state, batch, rng, *, objective, tx, schedule, grad_accum_steps: int = 1):
    """One optimizer update on a global batch; returns (state, metrics as sums and per-step scalars).

    With `grad_accum_steps` k the batch is split into k interleaved micro-batches whose gradients are
    averaged (`train_lib.accumulate_gradients`). A non-finite loss or gradient skips the update and sets
    `nonfinite` to 1: params and optimizer state stay as they were, so the optimizer's own count (which drives
    the learning rate and Adam's bias correction) pauses while the step, the data and the logged
    `learning_rate` (the schedule at the step) move on.
    """
    rng = jax.random.fold_in(rng, state.step)
    (loss, sums), grads = train_lib.accumulate_gradients(
        objective.loss, state.params, batch, rng, grad_accum_steps
    )
    return train_lib.guarded_update(state, grads, loss, tx, schedule, sums)


def eval_step(params, batch, *, objective):
    """The objective's held-out sums (dropout off)."""
    return objective.eval_sums(params, batch)


def build(config, mesh: Mesh, vocab_size: int) -> Program:
    """The pretraining program of `config` on `mesh`. Raises SetupError naming `model`, `objective` or
    `optimizer`. The steps above are bound with `functools.partial` and jitted by `train_lib.jit_step` /
    `jit_eval`."""
    phases, evaluate = phases_of(config)
    with run_setup.setup_error("data"):
        check_packing(config)
    model_cfg = model_config(config, vocab_size)
    with run_setup.setup_error("optimizer"):
        # Accumulation happens inside train_step (one loop step = one update).
        steps, warmup = run_setup.run_length(config)
        tx = optim.make_optimizer(config, steps, warmup)
        schedule = optim.make_schedule(config, steps, warmup)
    with run_setup.setup_error("objective"):
        # The objective's head: "pretraining" (MLM + NSP, MLM), "rtd" (ELECTRA's generator + discriminator).
        model = registry.build(model_cfg, head=registry.objective_head(config.objective))
        objective = registry.objective(config.objective, model)
    abstract = train_lib.abstract_state(model, tx, mesh)
    bound = functools.partial(
        train_step,
        objective=objective,
        tx=tx,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )
    return Program(
        config=config,
        mesh=mesh,
        model_config=model_cfg,
        model=model,
        objective=objective,
        tx=tx,
        schedule=schedule,
        abstract=abstract,
        phases=phases,
        eval_phase=evaluate,
        train_step=train_lib.jit_step(bound, abstract, mesh),
        eval_step=train_lib.jit_eval(
            functools.partial(eval_step, objective=objective), abstract, mesh
        ),
    )
