"""Fine-tuning on SQuAD v1.1/v2.0, SWAG and CoNLL-2003 NER, top to bottom, on train_lib.

`run(config, workdir)` fine-tunes the task named by `config.mode` ("squad", "swag", "conll"; the task's own
pieces are in `bert_jax.tasks`) from `config.init_checkpoint` (warm_start.py) for `config.num_epochs` epochs,
evaluating on dev after each (or only after the last). As the original scripts, the run's score is the final
model's dev score; the best epoch is recorded beside it under its own name, never in its place. The newest
model is kept with Orbax in WORKDIR/checkpoints (each epoch's end, and the step a SIGTERM/SIGINT stopped at:
rerunning the command resumes there, to the same result); the final model writes the task's prediction files
into WORKDIR, and WORKDIR/results.json holds the scores, the per-epoch history and the config. Bad input
raises `train_lib.SetupError` (one line) before training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath

from bert_jax import optim, reporting, sharding, startup, train_lib, warm_start
from bert_jax.data import glue
from bert_jax.tasks import conll, squad, swag
from bert_jax.train_lib import setup_error
from bert_jax.workdir import save_tokenizer

TASKS = {"squad": squad, "swag": swag, "conll": conll}
# Fields a rerun may change and still be the same run (a finished one is then reported, not retrained).
SAFE_CHANGES = (
    "log_every_steps", "eval_batch_size", "max_consecutive_nonfinite", "mesh_shape", "overwrite",
    "data_dir", "tfds_data_dir", "model.embedding_gradient",
)  # fmt: skip
# What a run writes into its workdir: removed when `overwrite` starts over.
RUN_FILES = (
    "checkpoints", "results.json", "metrics.jsonl", "config.json", "predictions.json",
    "nbest_predictions.json", "null_odds.json", "predictions.csv", "dev_predictions.txt",
)  # fmt: skip


def entry(config) -> str:
    """The task's name in metric keys and results: squad_v1.1, squad_v2.0, swag, conll."""
    return f"squad_v{config.version}" if config.mode == "squad" else config.mode


def _checkpoint_labels(path: str) -> list[str] | None:
    """The label names of a transformers checkpoint's config.json (id2label), if it has them."""
    config_file = epath.Path(path) / "config.json" if path else None
    if config_file is None or not config_file.exists():
        return None
    id2label = json.loads(config_file.read_text()).get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] or None


# ----------------------------------------------------------------------------------------------------------
# The steps: pure functions bound to the task, model and optimizer with functools.partial.
# ----------------------------------------------------------------------------------------------------------
def train_step(state, batch, rng, *, task, model, tx, schedule):
    """One optimizer update on the task's loss; a non-finite loss or gradient leaves the state as it was."""
    rng = jax.random.fold_in(rng, state.step)

    def objective(params):
        sums = task.loss_sums(task.forward(model, params, batch, rng, deterministic=False), batch)
        return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1e-5), sums

    (loss, sums), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return train_lib.guarded_update(state, grads, loss, tx, schedule, sums)


def eval_step(params, batch, *, task, model):
    """The task's outputs of a (padded) batch, with its weights, for the host's scores."""
    return task.eval_outputs(task.forward(model, params, batch, None, deterministic=True), batch)


def predict(p_eval_step, params, features, batch_size: int, mesh):
    """Every dev row through the jitted eval step in fixed-shape batches (the last one padded)."""
    batches = glue.eval_batches(
        features,
        batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return train_lib.predict(p_eval_step, params, batches, mesh)


# ----------------------------------------------------------------------------------------------------------
# One run.
# ----------------------------------------------------------------------------------------------------------
def run(config, workdir) -> dict:
    """Fine-tunes and evaluates the task `config.mode`; writes WORKDIR/results.json and prediction files.

    One run per workdir (a lock); every host agrees that setup worked before the first collective."""
    with startup.agreed_setup() as setup, startup.WorkdirLock(workdir):
        return _run(config, workdir, setup)


def _run(config, workdir, setup: startup.SetupAgreement) -> dict:
    workdir = train_lib.absolute_workdir(workdir)
    with setup_error("mode"):
        if config.mode not in TASKS:
            raise ValueError(f"{config.mode!r} is not one of {tuple(TASKS)}")
    task, name, process_count = TASKS[config.mode], entry(config), jax.process_count()

    # Mesh.
    mesh = train_lib.make_mesh(
        config.mesh_shape,
        {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size},
    )

    # Data files first, so a missing or malformed file fails before any weights are loaded.
    with setup_error("data"):
        raw = task.read(config)

    # Hosts read their data apart; what follows reads checkpoints and syncs them.
    setup.reach()

    # Weights, then the features their tokenizer makes.
    with setup_error("init_checkpoint"):
        weights = warm_start.load(config, head=task.HEAD, heads=task.KEPT_MODULES)
        if config.max_seq_length > weights.model_config.max_position_embeddings:
            raise ValueError(f"max_seq_length {config.max_seq_length} > max_position_embeddings")
    with setup_error("data"):
        prepared = task.encode(
            config, raw, weights.tokenizer, _checkpoint_labels(config.init_checkpoint)
        )
        num_rows = len(prepared.train["input_ids"])
        per_host_batch = config.batch_size // process_count
        steps_per_epoch = glue.steps_per_epoch(num_rows, per_host_batch, process_count)
        if steps_per_epoch == 0:
            raise ValueError(f"{num_rows} training rows < one batch of {config.batch_size}")
    num_train_steps = steps_per_epoch * config.num_epochs
    warmup_steps = round(config.warmup_fraction * num_train_steps)

    # Model and train state, born sharded; checkpoint weights replace the fresh ones.
    run_fields, tx, schedule = train_lib.fine_tuning_optimizer(
        config, num_train_steps, warmup_steps
    )
    model, _, params = warm_start.initial_params(
        weights, task.HEAD, prepared.num_labels, mesh, jax.random.key(config.seed), task=name
    )
    abstract = train_lib.abstract_state(model, tx, mesh)
    state = jax.device_put(optim.TrainState.create(params, tx), train_lib.shardings_of(abstract))
    logging.info(
        "%s from %s: %d training rows, %d steps (%d warmup)",
        *(name, weights.source, num_rows, num_train_steps, warmup_steps),
    )

    # Steps, jitted with explicit shardings; the state is donated.
    p_train_step = train_lib.jit_step(
        functools.partial(train_step, task=task, model=model, tx=tx, schedule=schedule),
        abstract,
        mesh,
    )
    p_eval_step = train_lib.jit_eval(
        functools.partial(eval_step, task=task, model=model), abstract, mesh
    )
    dropout_rng = train_lib.dropout_key(config)

    # Checkpoint: the final model (the one the score describes).
    stored = {
        **run_fields,
        "model": dataclasses.asdict(weights.model_config),
        "tokenizer": weights.tokenizer_spec,
        "num_labels": prepared.num_labels,
    }
    stored = json.loads(json.dumps(stored, default=str))  # as checkpoints and results.json store it
    finished, ckpt, restored = train_lib.open_fine_tuning_run(
        workdir, stored, config.overwrite, abstract, safe_changes=SAFE_CHANGES, run_files=RUN_FILES
    )
    if finished is not None:
        return finished
    history, files, start_epoch, skip = [], {}, 1, 0
    if restored is not None:
        state, position = restored
        history, files, start_epoch, skip = (
            position["history"],
            position["files"],
            position["epoch"],
            position["batches_done"],
        )
        reporting.say(f"resumed {workdir} at step {int(state.step):,} (epoch {start_epoch})")

    # Loop: train an epoch, evaluate on dev.
    writer = reporting.MetricWriter(workdir, process_index=jax.process_index())
    writer.write_config(stored)
    save_tokenizer(workdir, stored)  # the workdir carries its tokenizer: it works moved
    progress = reporting.Progress(
        num_train_steps, int(state.step), (("loss", "train/loss", ".4f"),)
    )
    window = reporting.MetricWindow()
    guard = train_lib.NonFiniteGuard(config.max_consecutive_nonfinite)
    preemption = train_lib.Preemption(check_every=1)
    step = int(state.step)
    # A SWAG row is four sequences: throughput counts sequences, as for the other tasks.
    sequences_per_row = math.prod(prepared.train["input_ids"].shape[1:-1])
    tokens_per_row = math.prod(prepared.train["input_ids"].shape[1:])
    try:
        for epoch in range(start_epoch, config.num_epochs + 1):
            batches = glue.train_batches(
                prepared.train,
                per_host_batch,
                seed=config.seed,
                epoch=epoch,
                process_index=jax.process_index(),
                process_count=process_count,
            )
            # The epoch's order is a function of (seed, epoch): a resumed epoch skips what it did.
            for done_in_epoch, batch in enumerate(itertools.islice(batches, skip, None), skip + 1):
                state, step_metrics = p_train_step(
                    state, sharding.host_to_global(batch, mesh), dropout_rng
                )
                step += 1
                window.add(
                    step_metrics,
                    sequences=config.batch_size * sequences_per_row,
                    tokens=config.batch_size * tokens_per_row,
                )
                guard.check(step_metrics, step)
                if step % config.log_every_steps == 0 or step == num_train_steps:
                    _, scalars = window.flush()
                    writer.write_scalars(step, scalars)
                    progress.update(step, scalars)
                if done_in_epoch < steps_per_epoch and preemption.agreed(step):
                    position = {
                        "epoch": epoch, "batches_done": done_in_epoch, "history": history,
                        "files": files,
                    }  # fmt: skip
                    ckpt.save(step, state, data_state=position, config=stored, force=True)
                    raise train_lib.Preempted(f"saved step {step} (epoch {epoch}) in {workdir}")
            skip = 0

            final = epoch == config.num_epochs
            if final or config.eval_every_epoch:
                start = time.perf_counter()
                out = predict(p_eval_step, state.params, prepared.dev, config.eval_batch_size, mesh)
                # Device time of the dev set (the first evaluation includes compiling the eval step).
                eval_rate = (
                    len(prepared.dev["input_ids"])
                    * sequences_per_row
                    / (time.perf_counter() - start)
                )
                # Only the final model's predictions are written: they are the run's answer.
                directory = workdir if final and jax.process_index() == 0 else None
                results, written = task.score(config, prepared, out, directory)
                files.update(written)
                # Plain Python numbers: the history goes into checkpoints and must come back equal.
                results = jax.tree.map(lambda x: x.item() if hasattr(x, "item") else x, results)
                history.append({"epoch": epoch, "step": step, "results": results})
                progress.print(
                    f"epoch {epoch} dev {name} {task.MAIN_METRIC}: {results[task.MAIN_METRIC]:.4f}"
                )
                writer.write_scalars(
                    step,
                    {
                        **{
                            f"eval/{name}/{k}": v
                            for k, v in results.items()
                            if isinstance(v, int | float)
                        },
                        "perf/eval_sequences_per_sec": eval_rate,
                    },
                )
            position = {"epoch": epoch + 1, "batches_done": 0, "history": history, "files": files}
            ckpt.save(step, state, data_state=position, config=stored, force=True)
            if epoch < config.num_epochs and preemption.agreed(step):
                raise train_lib.Preempted(f"saved step {step} (end of epoch {epoch}) in {workdir}")
            window.restart()
        ckpt.wait_until_finished()
    finally:
        progress.close()
        writer.close()
        ckpt.close()

    best = max(history, key=lambda h: h["results"][task.MAIN_METRIC])
    summary = {
        "task": name,
        "split": "dev",
        # The final model's scores: the original scripts' protocol.
        "results": history[-1]["results"],
        "metric": task.MAIN_METRIC,
        "score": history[-1]["results"][task.MAIN_METRIC],
        "epoch": config.num_epochs,
        # Selected on dev after the fact: for diagnosis, not a result to report.
        "best_epoch_on_dev": {"epoch": best["epoch"], "score": best["results"][task.MAIN_METRIC]},
        "epochs": history,
        "files": files,
        "init_checkpoint": weights.source,
        **prepared.info,
        "config": stored,
    }
    reporting.write_json(workdir / "results.json", summary)
    logging.info("%s dev (final model, epoch %d): %s", name, config.num_epochs, summary["results"])
    return {**summary, "workdir": str(workdir)}
