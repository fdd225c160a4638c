"""GLUE fine-tuning of one task with one setting, top to bottom (the grid and the suite are in sweep.py).

`run(config, workdir)` fine-tunes `config.task` from `config.init_checkpoint` (warm_start.py), evaluating on dev at
the end of every epoch and checkpointing there; the final model predicts the test split(s) into
WORKDIR/leaderboard/ (with MNLI also AX). WORKDIR/results.json holds the final epoch's dev scores (the run's
result, as the original protocol), the best epoch's apart, and the config. A killed or preempted run resumes where
it stopped; a used workdir of another run is refused unless `config.overwrite`. Bad input raises
`train_lib.SetupError` (one line) before training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from absl import logging

from bert_jax import (
    losses,
    metrics,
    optim,
    reporting,
    sharding,
    startup,
    tasks,
    train_lib,
    warm_start,
)
from bert_jax.data import glue
from bert_jax.train_lib import setup_error
from bert_jax.workdir import save_tokenizer


# ----------------------------------------------------------------------------------------------------------
# The steps: pure functions bound to model and optimizer with functools.partial.
# ----------------------------------------------------------------------------------------------------------
def _loss_sums(model, params, batch, rng, *, regression: bool, deterministic: bool):
    logits = tasks.forward(model, params, batch, rng, deterministic)["logits"]
    loss_fn = losses.regression_loss if regression else losses.classification_loss
    return loss_fn(logits, batch["labels"], batch["weights"]), logits


def train_step(state, batch, rng, *, model, tx, schedule, regression: bool):
    """One optimizer update; a non-finite loss or gradient leaves params and Adam state as they were."""
    rng = jax.random.fold_in(rng, state.step)

    def objective(params):
        sums, _ = _loss_sums(model, params, batch, rng, regression=regression, deterministic=False)
        return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1e-5), sums

    (loss, sums), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return train_lib.guarded_update(state, grads, loss, tx, schedule, sums)


def eval_step(params, batch, *, model, regression: bool):
    """Logits of a (padded) batch, with its labels, weights and example ids, for the host's metrics."""
    _, logits = _loss_sums(model, params, batch, None, regression=regression, deterministic=True)
    return {"logits": logits, **{k: batch[k] for k in ("labels", "weights", "example_ids")}}


def predict(p_eval_step, params, features, batch_size: int, mesh):
    """Every example of `features` through the jitted eval step (fixed-shape, padded batches)."""
    batches = glue.eval_batches(
        features,
        batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return train_lib.predict(p_eval_step, params, batches, mesh)


def _score(results) -> float:
    """The selection score: the task's metrics averaged as GLUE does (-inf when undefined)."""
    score = metrics.glue_score(results)
    return score if math.isfinite(score) else -math.inf


# ----------------------------------------------------------------------------------------------------------
# One run: one task, one setting, one seed.
# ----------------------------------------------------------------------------------------------------------
def run(config, workdir) -> dict:
    """Fine-tunes `config.task` with the config's single setting; writes WORKDIR/results.json.

    One run per workdir (a lock); every host agrees that setup worked before the first collective."""
    with startup.agreed_setup() as setup, startup.WorkdirLock(workdir):
        return _run(config, workdir, setup)


def _run(config, workdir, setup: startup.SetupAgreement) -> dict:
    workdir = train_lib.absolute_workdir(workdir)
    with setup_error("task"):
        task = glue.get_task(config.task)
        if task.name == "ax":
            raise ValueError("ax is not trained: it is predicted by the MNLI model (task=mnli)")
    regression, process_count = task.is_regression, jax.process_count()

    # Mesh.
    mesh = train_lib.make_mesh(
        config.mesh_shape,
        {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size},
    )

    # Data: read every split first, so a missing file fails before any weights are loaded.
    splits = ["train", *task.dev_splits]
    splits += [*task.test_splits] if config.predict_test else []
    with setup_error("data"):
        read = lambda name, split: glue.read_examples(
            name, split, config.data_dir, tfds_data_dir=config.tfds_data_dir
        )
        examples = {split: read(task.name, split) for split in splits}
        if config.predict_test and task.name == "mnli":
            examples["ax"] = read("ax", "test")
        per_host_batch = config.batch_size // process_count
        steps_per_epoch = glue.steps_per_epoch(
            len(examples["train"]), per_host_batch, process_count
        )
        if steps_per_epoch == 0:
            raise ValueError(f"{len(examples['train'])} training examples < one batch")
    num_train_steps = steps_per_epoch * config.num_epochs
    warmup_steps = round(config.warmup_fraction * num_train_steps)

    # Hosts read their data apart; what follows reads checkpoints and syncs them.
    setup.reach()

    # Weights, then the features their tokenizer makes.
    with setup_error("init_checkpoint"):
        weights = warm_start.load(config)
        if config.max_seq_length > weights.model_config.max_position_embeddings:
            raise ValueError(f"max_seq_length {config.max_seq_length} > max_position_embeddings")
    with setup_error("data"):
        features = {
            split: glue.encode_examples(ex, weights.tokenizer, config.max_seq_length)
            for split, ex in examples.items()
        }

    # Model and train state, born sharded; checkpoint weights replace the fresh ones.
    run_fields, tx, schedule = train_lib.fine_tuning_optimizer(
        config, num_train_steps, warmup_steps
    )
    model, _, params = warm_start.initial_params(
        weights,
        "classification",
        task.num_labels,
        mesh,
        jax.random.key(config.seed),
        task=task.name,
    )
    abstract = train_lib.abstract_state(model, tx, mesh)
    # Adam's moments are zeros_like(params), so they are born with the params' shardings.
    state = jax.device_put(optim.TrainState.create(params, tx), train_lib.shardings_of(abstract))
    logging.info(
        "%s from %s: %d examples, %d steps (%d warmup)",
        *(task.name, weights.source, len(examples["train"]), num_train_steps, warmup_steps),
    )

    # Steps, jitted with explicit shardings; the state is donated.
    p_train_step = train_lib.jit_step(
        functools.partial(train_step, model=model, tx=tx, schedule=schedule, regression=regression),
        abstract,
        mesh,
    )
    p_eval_step = train_lib.jit_eval(
        functools.partial(eval_step, model=model, regression=regression), abstract, mesh
    )
    dropout_rng = train_lib.dropout_key(config)

    # Checkpoint: the newest is kept (each epoch's end, and a preempted step). A used workdir resumes the same
    # run, and refuses another one unless told to start over.
    stored = {
        **run_fields,
        "model": dataclasses.asdict(weights.model_config),
        "tokenizer": weights.tokenizer_spec,
        "num_labels": task.num_labels,
    }
    # Created only now: bad input above leaves no directory behind.
    workdir = train_lib.prepare_workdir(workdir)
    reporting.say(f"workdir {workdir}")
    finished, ckpt, restored = train_lib.open_fine_tuning_run(
        workdir, stored, config.overwrite, abstract, safe_changes=SAFE_CHANGES, run_files=RUN_FILES
    )
    if finished is not None:
        return finished
    history, start_epoch, skip = [], 1, 0
    if restored is not None:
        state, position = restored
        history, start_epoch, skip = (
            position["history"],
            position["epoch"],
            position["batches_done"],
        )
        reporting.say(f"resumed {workdir} at step {int(state.step):,} (epoch {start_epoch})")

    # Loop: train an epoch, evaluate on dev; the final epoch's model is the run's result.
    writer = reporting.MetricWriter(workdir, process_index=jax.process_index())
    writer.write_config(stored)
    save_tokenizer(workdir, stored)  # the workdir carries its tokenizer: it works moved
    progress = reporting.Progress(num_train_steps, int(state.step), PROGRESS_FIELDS)
    window = reporting.MetricWindow()
    guard = train_lib.NonFiniteGuard(config.max_consecutive_nonfinite)
    preemption = train_lib.Preemption(check_every=1)
    step = int(state.step)
    try:
        for epoch in range(start_epoch, config.num_epochs + 1):
            batches = glue.train_batches(
                {k: v for k, v in features["train"].items() if k != "example_ids"},
                per_host_batch,
                seed=config.seed,
                epoch=epoch,
                process_index=jax.process_index(),
                process_count=process_count,
            )
            # The epoch's order is a function of (seed, epoch): a resumed epoch skips what it did.
            # The next two batches are already on their way to the devices while a step runs.
            batches = sharding.prefetch_to_device(itertools.islice(batches, skip, None), mesh)
            for done_in_epoch, (_, device_batch) in enumerate(batches, skip + 1):
                state, step_metrics = p_train_step(state, device_batch, dropout_rng)
                step += 1
                window.add(
                    step_metrics,
                    sequences=config.batch_size,
                    tokens=config.batch_size * config.max_seq_length,
                )
                guard.check(step_metrics, step)
                if step % config.log_every_steps == 0 or step == num_train_steps:
                    sums, scalars = window.flush()
                    if not regression:
                        scalars["train/accuracy"] = reporting.divide(
                            sums["correct_sum"], sums["weight_sum"]
                        )
                    writer.write_scalars(step, scalars)
                    progress.update(step, scalars)
                if done_in_epoch < steps_per_epoch and preemption.agreed(step):
                    position = {"epoch": epoch, "batches_done": done_in_epoch, "history": history}
                    ckpt.save(step, state, data_state=position, config=stored, force=True)
                    raise train_lib.Preempted(f"saved step {step} (epoch {epoch}) in {workdir}")
            skip = 0

            results = {}
            for split in task.dev_splits:
                out = predict(
                    p_eval_step, state.params, features[split], config.eval_batch_size, mesh
                )
                results[task.entry(split)] = metrics.task_metrics(
                    task, out["logits"], out["labels"]
                )
            history.append(
                {"epoch": epoch, "step": step, "score": _score(results), "results": results}
            )
            writer.write_scalars(
                step,
                {f"eval/{e}/{m}": v for e, values in results.items() for m, v in values.items()},
            )
            shown = ", ".join(
                f"{e} {m} {v:.4f}" for e, vs in results.items() for m, v in vs.items()
            )
            progress.print(f"epoch {epoch} dev: {shown}")
            position = {"epoch": epoch + 1, "batches_done": 0, "history": history}
            ckpt.save(step, state, data_state=position, config=stored, force=True)
            if epoch < config.num_epochs and preemption.agreed(step):
                raise train_lib.Preempted(f"saved step {step} (end of epoch {epoch}) in {workdir}")
            window.restart()
        ckpt.wait_until_finished()

        # The final model predicts the test split(s): the leaderboard files, as the original protocol.
        written = {}
        tests = [(task.name, s) for s in task.test_splits] if config.predict_test else []
        tests += [("ax", "test")] if "ax" in features else []
        for name, split in tests:
            out = predict(
                p_eval_step, state.params, features["ax" if name == "ax" else split],
                config.eval_batch_size, mesh,
            )  # fmt: skip
            if jax.process_index() == 0:
                path = metrics.write_leaderboard_file(
                    workdir / "leaderboard", glue.get_task(name), split, out["example_ids"],
                    out["logits"],
                )  # fmt: skip
                written[f"{name}/{split}"] = path.name
    finally:
        progress.close()
        preemption.restore()
        writer.close()
        ckpt.close()

    final, best = history[-1], max(history, key=lambda h: h["score"])
    summary = {
        "task": task.name,
        "split": "dev",
        # The run's result is its final epoch (the original's protocol); the best epoch is reported apart
        # because picking it on dev would be selecting on the evaluation set.
        "results": final["results"],
        "score": final["score"],
        "best_epoch_on_dev": best,
        "epochs": history,
        "leaderboard_files": written,
        "init_checkpoint": weights.source,
        "num_train_examples": len(examples["train"]),
        "config": stored,
    }
    reporting.write_json(workdir / "results.json", summary)
    reporting.say(f"{task.name}: results in {workdir / 'results.json'}")
    return {**summary, "workdir": str(workdir)}


# The compact progress line: (label, metric key, format).
PROGRESS_FIELDS = (("loss", "train/loss", ".4f"), ("acc", "train/accuracy", ".3f"))
# Fields a rerun may change without breaking the run it continues.
SAFE_CHANGES = (
    "log_every_steps", "eval_batch_size", "predict_test", "max_consecutive_nonfinite", "mesh_shape",
    "overwrite", "sweep", "data_dir", "tfds_data_dir", "model.embedding_gradient",
)  # fmt: skip
# What a run writes into its workdir: removed when a rerun starts over.
RUN_FILES = ("checkpoints", "leaderboard", "results.json", "metrics.jsonl")
