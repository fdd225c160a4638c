"""Fine-tuning, top to bottom: the one loop of every task in `bert_jax.tasks` (GLUE, SQuAD, SWAG, CoNLL).

`run(config, workdir)` fine-tunes the task of `config.mode` ("finetune" and "glue_suite" are GLUE's runs of
`config.task`; "squad", "swag", "conll") from `config.init_checkpoint` (warm_start.py) for `config.num_epochs`
epochs (or `config.num_train_steps` steps: `run_setup.run_length`), evaluating on dev after each (or, without
`eval_every_epoch`, after the last). As the original scripts, the run's score is the final model's dev score;
the best epoch is recorded beside it under its own name, never in its place. The two newest models are kept
with Orbax in WORKDIR/checkpoints (each epoch's end, and the step a SIGTERM/SIGINT stopped at: rerunning the
command resumes there, to the same result, whenever the run was killed; a damaged newest one falls back), a
finished run's final one alone; the final model writes
the task's files (SQuAD/SWAG/CoNLL dev predictions, GLUE's leaderboard files), and WORKDIR/results.json holds
the scores, the per-epoch history and the config. A used workdir of another run is refused unless
`config.overwrite`. Bad input raises `run_setup.SetupError` (one line) before training. The grid over seeds
and the GLUE suite are in sweep.py.
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

from bert_jax import optim, reporting, run_setup, sharding, startup, tasks, train_lib, warm_start
from bert_jax.data import batching
from bert_jax.models import registry
from bert_jax.run_setup import setup_error
from bert_jax.workdir import save_tokenizer

# The compact progress line: (label, metric key, format); accuracy where the task's loss counts hits.
PROGRESS_FIELDS = (("loss", "train/loss", ".4f"), ("acc", "train/accuracy", ".3f"))
# Fields a rerun may change and still be the same run (a finished one is then reported, not retrained);
# the evaluation cadence changes what is measured, not what is trained (and GLUE recipes gained the field).
SAFE_CHANGES = (
    "log_every_steps", "eval_batch_size", "eval_every_epoch", "predict_test", "max_consecutive_nonfinite",
    "mesh_shape", "overwrite", "sweep", "data_dir", "tfds_data_dir", "model.embedding_gradient",
)  # fmt: skip
# What every run writes into its workdir (the task adds its FILES): removed when `overwrite` starts over.
RUN_FILES = ("checkpoints", "results.json", "metrics.jsonl", "config.json")


def _checkpoint_labels(path: str) -> list[str] | None:
    """The label names of a transformers checkpoint's config.json (id2label), if it has them."""
    config_file = epath.Path(path) / "config.json" if path else None
    if config_file is None or not config_file.exists():
        return None
    id2label = json.loads(config_file.read_text()).get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] or None


def train_step(state, batch, rng, *, task, model, tx, schedule, grad_accum_steps: int = 1):
    """One optimizer update on the task's loss, over `grad_accum_steps` micro-batches
    (`train_lib.accumulate_gradients`); a non-finite loss or gradient leaves the state as it was."""
    rng = jax.random.fold_in(rng, state.step)

    def objective(params, micro_batch, micro_rng):
        outputs = task.forward(model, params, micro_batch, micro_rng, deterministic=False)
        sums = task.loss_sums(outputs, micro_batch)
        return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1e-5), sums

    (loss, sums), grads = train_lib.accumulate_gradients(
        objective, state.params, batch, rng, grad_accum_steps
    )
    return train_lib.guarded_update(state, grads, loss, tx, schedule, sums)


def _eval_scalars(name: str, results: dict) -> dict:
    """results as eval/ keys: {entry: {metric: v}} (GLUE) as eval/<entry>/<metric>, flat numbers as
    eval/<name>/<metric>."""
    scalars = {}
    for key, value in results.items():
        if isinstance(value, dict):
            scalars.update({f"eval/{key}/{m}": v for m, v in value.items()})
        elif isinstance(value, int | float):
            scalars[f"eval/{name}/{key}"] = value
    return scalars


def run(config, workdir) -> dict:
    """Fine-tunes and evaluates the task of `config.mode`; writes WORKDIR/results.json and the task's files.

    One run per workdir (a lock, whose taking probes that the workdir is a writable directory before anything
    else); every host agrees that setup worked (and that they run the same config and code) before the first
    collective, and again once each has loaded the weights and made the features (`state_ready`)."""
    with startup.agreed_setup(config) as setup, startup.WorkdirLock(workdir):
        return _run(config, workdir, setup)


def _run(config, workdir, setup: startup.SetupAgreement) -> dict:
    workdir = run_setup.absolute_workdir(workdir)

    # ------------------------------------------------------------------------------------------------------
    # Task: the config's mode names it; a bad name (or GLUE task) fails first.
    # ------------------------------------------------------------------------------------------------------
    with setup_error("mode"):
        task = tasks.task_of(config.mode)
    with setup_error("task"):
        name = task.name(config)
    process_count = jax.process_count()

    # ------------------------------------------------------------------------------------------------------
    # Mesh.
    # ------------------------------------------------------------------------------------------------------
    # The training batch also splits into grad_accum_steps micro-batches; eval batches only over the shards.
    mesh = train_lib.make_mesh(
        config.mesh_shape, {"global_batch_size": config.global_batch_size}, config.grad_accum_steps
    )
    with run_setup.setup_error("eval_batch_size"):
        sharding.check_batch_divisible(config.eval_batch_size, mesh, process_count)
    # Data files next, so a missing or malformed file fails before any weights are loaded.
    with setup_error("data"):
        raw = task.read(config)

    # Hosts read their data apart; what follows reads checkpoints and syncs them. A host that fails to load the
    # weights or create the state tells the others at `state_ready`.
    setup.reach(then_state=True)

    # ------------------------------------------------------------------------------------------------------
    # Weights, then the features their tokenizer makes.
    # ------------------------------------------------------------------------------------------------------
    with setup_error("init_checkpoint"):
        weights = warm_start.load(config, head=task.HEAD, heads=task.KEPT_MODULES)
        # RoBERTa's positions start past its padding id: its longest input is `max_length`.
        longest = getattr(weights.model_config, "max_length", None)
        longest = weights.model_config.max_position_embeddings if longest is None else longest
        if config.max_seq_length > longest:
            raise ValueError(
                f"max_seq_length {config.max_seq_length} > the model's longest input {longest}"
            )
    with setup_error("data"):
        prepared = task.encode(
            config, raw, weights.tokenizer, _checkpoint_labels(config.init_checkpoint)
        )
        num_rows = len(prepared.train["input_ids"])
        per_host_batch = config.global_batch_size // process_count
        steps_per_epoch = batching.epoch_steps(
            prepared.train, per_host_batch, process_count, config.batch_lengths
        )
        if steps_per_epoch == 0:
            raise ValueError(f"{num_rows} training rows < one batch of {config.global_batch_size}")
    num_train_steps, warmup_steps = run_setup.run_length(config, steps_per_epoch)
    # The epochs the run touches: num_epochs, or as many as num_train_steps reaches (the last one cut short).
    num_epochs = -(-num_train_steps // steps_per_epoch)
    # Weights and features are host-local work; what follows (placing the weights on the mesh, opening the
    # checkpoint directory) syncs the hosts. Weights that failed to load on one host stop every host here,
    # instead of leaving the others waiting in that sync.
    setup.state_ready()

    # ------------------------------------------------------------------------------------------------------
    # State: model and train state, born sharded; checkpoint weights replace the fresh ones.
    # ------------------------------------------------------------------------------------------------------
    run_fields, tx, schedule = run_setup.fine_tuning_optimizer(
        config, num_train_steps, warmup_steps
    )
    model, _, params = warm_start.initial_params(
        weights, task.HEAD, prepared.num_labels, mesh, jax.random.key(config.seed), task=name
    )
    abstract = train_lib.abstract_state(model, tx, mesh)
    # Adam's moments are zeros_like(params), so they are born with the params' shardings.
    state = jax.device_put(optim.TrainState.create(params, tx), train_lib.shardings_of(abstract))
    logging.info(
        "%s from %s: %d training rows, %d steps (%d warmup)",
        *(name, weights.source, num_rows, num_train_steps, warmup_steps),
    )

    # ------------------------------------------------------------------------------------------------------
    # Steps, jitted with explicit shardings; the state is donated.
    # ------------------------------------------------------------------------------------------------------
    p_train_step = train_lib.jit_step(
        functools.partial(
            train_step,
            task=task,
            model=model,
            tx=tx,
            schedule=schedule,
            grad_accum_steps=config.grad_accum_steps,
        ),  # fmt: skip
        abstract,
        mesh,
    )
    p_eval_step = train_lib.jit_eval(
        functools.partial(tasks.eval_step, task=task, model=model), abstract, mesh
    )
    dropout_rng = train_lib.dropout_key(config)
    # params, features -> the task's outputs of every row.
    predict = functools.partial(
        tasks.predict, p_eval_step, batch_size=config.eval_batch_size, mesh=mesh
    )

    # ------------------------------------------------------------------------------------------------------
    # Checkpoint: the two newest are kept (each epoch's end, and a preempted step), so a damaged one falls back.
    # A used workdir resumes the same run (one killed before its first save starts again), and refuses another
    # one unless `overwrite`, which starts clean whatever the workdir holds.
    # ------------------------------------------------------------------------------------------------------
    stored = {
        **run_fields,
        # The model's family: a checkpoint's own, whatever the recipe's random-init `family` says.
        "family": registry.family_of(weights.model_config).name,
        "model": dataclasses.asdict(weights.model_config),
        "tokenizer": weights.tokenizer_spec,
        "num_labels": prepared.num_labels,
    }
    stored = json.loads(json.dumps(stored, default=str))  # as checkpoints and results.json store it
    reporting.say(f"workdir {workdir}")
    finished, ckpt, restored = run_setup.open_fine_tuning_run(
        workdir, stored, config.overwrite, abstract,
        safe_changes=SAFE_CHANGES, run_files=(*RUN_FILES, *task.FILES),
    )  # fmt: skip
    if finished is not None:
        run_setup.keep_final_checkpoint(workdir)  # a run killed while it pruned them
        reporting.say(
            f"{name}: already complete in {workdir}; its results.json stands "
            "(--config.overwrite=True retrains from the start)"
        )
        return finished
    history, files, start_epoch, skip = [], {}, 1, 0
    if restored is not None:
        state, position = restored
        history, start_epoch, skip = (
            position["history"],
            position["epoch"],
            position["batches_done"],
        )
        # GLUE checkpoints written before the loops were one have no "files": GLUE writes its files last.
        files = position.get("files", {})
        reporting.say(f"resumed {workdir} at step {int(state.step):,} (epoch {start_epoch})")

    # ------------------------------------------------------------------------------------------------------
    # Loop: train an epoch, evaluate on dev; the final epoch's model is the run's result.
    # ------------------------------------------------------------------------------------------------------
    # Lines past the restored step were logged by a run killed before it saved them: dropped, so each step
    # appears once.
    writer = reporting.MetricWriter(
        workdir, process_index=jax.process_index(), resume_step=int(state.step)
    )
    writer.write_config(stored)
    save_tokenizer(workdir, stored)  # the workdir carries its tokenizer: it works moved
    progress = reporting.Progress(num_train_steps, int(state.step), PROGRESS_FIELDS)
    window = reporting.MetricWindow()
    guard = train_lib.NonFiniteGuard(config.max_consecutive_nonfinite)
    preemption = train_lib.Preemption(check_every=1)
    step = int(state.step)
    # A SWAG row is four sequences: throughput counts sequences, as for the other tasks.
    sequences_per_row = math.prod(prepared.train["input_ids"].shape[1:-1])
    # The final model's files are written by process 0 only.
    directory = workdir if jax.process_index() == 0 else None
    try:
        # A signal that came while the state was restored or created: the newest checkpoint stands.
        preemption.stop_before_first_step()
        for epoch in range(start_epoch, num_epochs + 1):
            epoch_steps = min(steps_per_epoch, num_train_steps - (epoch - 1) * steps_per_epoch)
            batches = batching.train_batches(
                prepared.train,
                per_host_batch,
                seed=config.seed,
                epoch=epoch,
                process_index=jax.process_index(),
                process_count=process_count,
                # "trim"/"bucket" cut padding from training batches (eval keeps full rows).
                batch_lengths=config.batch_lengths,
            )
            # The epoch's order is a function of (seed, epoch): a resumed epoch skips what it did.
            # The next two batches are already on their way to the devices while a step runs.
            batches = sharding.prefetch_to_device(
                itertools.islice(batches, skip, epoch_steps), mesh
            )
            for done_in_epoch, (host_batch, device_batch) in enumerate(batches, skip + 1):
                state, step_metrics = p_train_step(state, device_batch, dropout_rng)
                step += 1
                window.add(
                    step_metrics,
                    sequences=config.global_batch_size * sequences_per_row,
                    tokens=config.global_batch_size * math.prod(host_batch["input_ids"].shape[1:]),
                    real_tokens=int(host_batch["attention_mask"].sum()) * process_count,
                )
                guard.check(step_metrics, step)
                if step % config.log_every_steps == 0 or step == num_train_steps:
                    sums, scalars = window.flush()
                    if "correct_sum" in sums:
                        scalars["train/accuracy"] = reporting.divide(
                            sums["correct_sum"], sums["weight_sum"]
                        )
                    writer.write_scalars(step, scalars)
                    progress.update(step, scalars)
                if done_in_epoch < epoch_steps and preemption.agreed(step):
                    position = {
                        "epoch": epoch, "batches_done": done_in_epoch, "history": history,
                        "files": files,
                    }  # fmt: skip
                    ckpt.save(step, state, data_state=position, config=stored, force=True)
                    raise run_setup.Preempted(f"saved step {step} (epoch {epoch}) in {workdir}")
            skip = 0

            last = epoch == num_epochs
            if last or config.eval_every_epoch:
                start = time.perf_counter()
                out = predict(state.params, prepared.dev)
                # Device time of the dev set (the first evaluation includes compiling the eval step).
                dev_rows = len(prepared.dev["input_ids"]) * sequences_per_row
                eval_rate = dev_rows / (time.perf_counter() - start)
                # Only the final model's dev predictions are written: they are the run's answer.
                results, written = task.score(config, prepared, out, directory if last else None)
                files.update(written)
                # Plain Python numbers: the history goes into checkpoints and must come back equal.
                results = jax.tree.map(lambda x: x.item() if hasattr(x, "item") else x, results)
                score = task.main_score(results)
                history.append({"epoch": epoch, "step": step, "score": score, "results": results})
                progress.print(f"epoch {epoch} dev {name} {task.MAIN_METRIC}: {score:.4f}")
                writer.write_scalars(
                    step,
                    {**_eval_scalars(name, results), "perf/eval_sequences_per_sec": eval_rate},
                )
            position = {"epoch": epoch + 1, "batches_done": 0, "history": history, "files": files}
            ckpt.save(step, state, data_state=position, config=stored, force=True)
            if epoch < num_epochs and preemption.agreed(step):
                raise run_setup.Preempted(f"saved step {step} (end of epoch {epoch}) in {workdir}")
            window.restart()
        ckpt.wait_until_finished()

        # The final model predicts the task's test sets (GLUE's leaderboard files, as the original protocol).
        outputs = {key: predict(state.params, features) for key, features in prepared.test.items()}
        files.update(task.write_test(config, prepared, outputs, directory))
    finally:
        progress.close()
        preemption.restore()
        writer.close()
        ckpt.close()

    final, best = history[-1], max(history, key=lambda h: h["score"])
    summary = {
        "task": name,
        "split": "dev",
        # The final model's scores: the original scripts' protocol.
        "results": final["results"],
        "score": final["score"],
        # Selected on dev after the fact: for diagnosis, not a result to report.
        "best_epoch_on_dev": {"epoch": best["epoch"], "score": best["score"]},
        "epochs": history,
        **task.summary_fields(config, files),
        "init_checkpoint": weights.source,
        **prepared.info,
        "config": stored,
    }
    reporting.write_json(workdir / "results.json", summary)
    # Written after results.json: a run killed before it still has the older checkpoint to fall back to.
    run_setup.keep_final_checkpoint(workdir)
    reporting.say(
        f"{name} dev (final model, epoch {final['epoch']}): results in {workdir}/results.json"
    )
    return {**summary, "workdir": str(workdir)}
