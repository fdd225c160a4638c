"""BERT pretraining (masked LM + next sentence prediction) on a device mesh, top to bottom.

`run(config, workdir)` builds the mesh, the data, the sharded train state and the jitted step,
restores the latest checkpoint in `workdir` if there is one, and trains to `config.num_train_steps`: metrics
every `log_every_steps` (stdout, TensorBoard, WORKDIR/metrics.jsonl), held-out MLM/NSP accuracy every
`eval_every_steps`, asynchronous Orbax checkpoints every `checkpoint_every_steps` and at the end. SIGTERM
(preemption) saves at a step all hosts agree on and returns normally. Bad input raises `SetupError` (one line)
before the first step.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from bert_jax import (
    checkpoint,
    flops,
    reporting,
    run_setup,
    sharding,
    startup,
    train_lib,
    warm_start,
)
from bert_jax import program as program_lib
from bert_jax.data import packing
from bert_jax.data.loader import make_eval_batches, make_pretraining_loader
from bert_jax.data.tfrecord import CorruptRecordError
from bert_jax.run_setup import setup_error
from bert_jax.workdir import save_tokenizer

# Config fields a resumed run may change: they leave the data order, the model and the optimizer as they were.
RESUME_SAFE = (
    "num_train_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_every_steps",
    "eval_batches", "data.eval_input_pattern", "mesh_shape", "grad_accum_steps", "async_checkpoints",
    "preemption_check_every_steps", "max_consecutive_nonfinite", "model.attention_impl", "model.remat_policy",
    "model.embedding_gradient", "init_checkpoint",
)  # fmt: skip


def check_resume(stored, config, step: int) -> None:
    """Raises ValueError when `config` cannot continue the run stored at `step` (see RESUME_SAFE); warns with
    the safe changes."""
    breaking, safe = run_setup.config_changes(stored, config, RESUME_SAFE)
    if breaking:
        raise ValueError(
            f"the config differs from the stored run's in ways that break continuation: {'; '.join(breaking)}"
            " (use another --workdir to start a new run)"
        )
    if safe:
        logging.warning("resuming with changed settings: %s", "; ".join(safe))
    if config.num_train_steps < step:
        raise ValueError(f"num_train_steps {config.num_train_steps} < the restored step {step}")


# The compact progress line: (label, metric key, format).
PROGRESS_FIELDS = (
    ("loss", "train/loss", ".3f"),
    ("mlm_acc", "train/mlm_accuracy", ".3f"),
    ("nsp_acc", "train/nsp_accuracy", ".3f"),
    # ALBERT's mlm_sop objective; a field the objective does not report is left out of the line.
    ("sop_acc", "train/sop_accuracy", ".3f"),
)


def real_flops(model_config, batch) -> float:
    """Training FLOPs of a host batch's real tokens: each sequence at its own length with its own
    predictions (padding and empty rows count nothing), so MFU means the same packed or not."""
    if "segment_ids" in batch:
        seg, k = batch["segment_ids"], batch["cls_weights"].shape[1]
        # Tokens per (row, segment): segment ids offset per row, counted at once; segment 0 is padding.
        ids = seg + (np.arange(len(seg)) * (k + 1))[:, None]
        lengths = np.bincount(ids.ravel(), minlength=len(seg) * (k + 1)).reshape(len(seg), k + 1)
        lengths = lengths[:, 1:][batch["cls_weights"] > 0]
    else:
        lengths = batch["attention_mask"].sum(1)
    predictions = int((batch["masked_lm_weights"] > 0).sum())
    # FLOPs are affine in the predictions: count them once, over the batch, beside the sequences.
    head = flops.model_flops_per_sequence(model_config, 0, 1)
    head -= flops.model_flops_per_sequence(model_config, 0, 0)
    sizes, counts = np.unique(lengths, return_counts=True)
    encoder = sum(
        int(n) * flops.model_flops_per_sequence(model_config, int(length), 0)
        for length, n in zip(sizes, counts, strict=True)
    )
    return encoder + predictions * head


def agreed_rows(items, process_count: int, multiple: int = 1):
    """(step, batch) pairs with every host's packed batch padded with empty rows to the same count (the
    largest, rounded up to `multiple`), since the global array is the hosts' rows concatenated; one tiny
    all-gather per packed batch on several hosts. Unpacked batches pass through."""
    for step, batch in items:
        if "segment_ids" in batch:
            rows = len(batch["input_ids"])
            if process_count > 1:
                rows = int(np.max(multihost_utils.process_allgather(np.int32(rows))))
            batch = packing.pad_rows(batch, -(-rows // multiple) * multiple)
        yield step, batch


def run(config, workdir: str):
    """Pretrains per `config` in `workdir` (resuming from its latest checkpoint); returns the final state.

    One run per workdir (a lock); every host agrees that setup worked before the first collective."""
    with startup.agreed_setup(config) as setup, startup.WorkdirLock(workdir):
        return _run(config, workdir, setup)


def _run(config, workdir: str, setup: startup.SetupAgreement):
    started = time.perf_counter()
    workdir = run_setup.prepare_workdir(workdir)
    process_index, process_count = jax.process_index(), jax.process_count()

    # ------------------------------------------------------------------------------------------------------
    # Mesh.
    # ------------------------------------------------------------------------------------------------------
    mesh = train_lib.make_mesh(
        config.mesh_shape,
        {"global_batch_size": config.global_batch_size},
        config.grad_accum_steps,
        dcn_mesh_shape=config.get("dcn_mesh_shape"),
    )

    # ------------------------------------------------------------------------------------------------------
    # Data.
    # ------------------------------------------------------------------------------------------------------
    packed = bool(config.data.get("packing", False))
    with setup_error("data"):
        loader = make_pretraining_loader(
            config.data,
            vocab_file=config.vocab_file,
            do_lower_case=config.do_lower_case,
            global_batch_size=config.global_batch_size,
            num_train_steps=config.num_train_steps,
            process_index=process_index,
            process_count=process_count,
            seed=config.seed,
            # The family's data path (data/family_data.py) and, with vocab_file "", its bundled vocabulary.
            family=config.get("family", "bert"),
            # Packed rows split evenly over this host's devices and micro-batches.
            **({"row_multiple": program_lib.packing_multiple(config)} if packed else {}),
        )
        eval_batches = []
        if config.eval_every_steps > 0 and config.eval_batches > 0:
            eval_batches = make_eval_batches(
                config.data,
                vocab_file=config.vocab_file,
                do_lower_case=config.do_lower_case,
                global_batch_size=config.global_batch_size,
                num_batches=config.eval_batches,
                process_index=process_index,
                process_count=process_count,
                seed=config.seed,
                family=config.get("family", "bert"),
            )
            # Packed held-out batches: rows split evenly over the devices and agreed by the hosts.
            multiple = jax.local_device_count()
            eval_batches = [
                b for _, b in agreed_rows(enumerate(eval_batches), process_count, multiple)
            ]

    # ------------------------------------------------------------------------------------------------------
    # The program: model, optimizer, abstract state (shapes -> logical axes -> shardings) and the steps jitted
    # with explicit shardings and a donated state; the compile check and the benchmark build the same one.
    # ------------------------------------------------------------------------------------------------------
    # The loader's tokenizer decides the ids.
    program = program_lib.build(
        config,
        mesh,
        loader.tokenizer.vocab_size,
    )
    model_config, abstract = program.model_config, program.abstract
    p_train_step, p_eval_step = program.train_step, program.eval_step
    num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    logging.info("model %s: %s parameters", config.size, f"{num_params:,}")
    dropout_rng = train_lib.dropout_key(config)

    # ------------------------------------------------------------------------------------------------------
    # Checkpoint: restore the latest one in the workdir, or create the state from scratch.
    # ------------------------------------------------------------------------------------------------------
    # The first collective (Orbax syncs the hosts when it opens the directory) comes after the agreement.
    setup.reach(then_state=True)
    ckpt = checkpoint.Checkpointer(
        str(workdir / "checkpoints"),
        keep=config.keep_checkpoints,
        save_interval_steps=config.checkpoint_every_steps,
        async_save=config.async_checkpoints,
    )
    reporting.say(f"workdir {workdir}")
    resumed = ckpt.latest_step() is not None
    if resumed:
        with setup_error("checkpoint"):
            state, data_state, stored = ckpt.restore(None, abstract)
            check_resume(stored, config, int(state.step))
            try:
                loader.set_state(data_state)
            except ValueError as error:
                if "data phases" not in str(error):
                    raise
                # Phase 2 starts at a fraction of num_train_steps: another length moves steps already trained.
                raise ValueError(
                    f"num_train_steps={config.num_train_steps:,} moves the sequence-length phases of the "
                    f"{int(state.step):,} steps already trained ({error}); a run cannot be lengthened in "
                    f"place: start a new --workdir with --config.init_checkpoint={workdir} (the weights, "
                    "a fresh schedule)"
                ) from error
        reporting.say(f"resumed from {ckpt.directory} at step {int(state.step):,}")
    else:
        with setup_error("init_checkpoint"):
            params = warm_start.pretraining_params(config, abstract)
        state = train_lib.create_state(
            program.model, program.tx, abstract, jax.random.key(config.seed), params
        )
    setup.state_ready()
    start_step = int(state.step)
    if start_step >= config.num_train_steps:
        reporting.say(
            f"already complete at step {start_step:,} (num_train_steps {config.num_train_steps:,})"
        )
        ckpt.close()
        return state

    # ------------------------------------------------------------------------------------------------------
    # Loop.
    # ------------------------------------------------------------------------------------------------------
    writer = reporting.MetricWriter(workdir, process_index=process_index, resume_step=start_step)
    writer.write_config(config)
    save_tokenizer(workdir, config)  # the workdir carries its tokenizer: it works moved
    shown = program.objective.progress
    fields = (PROGRESS_FIELDS[0], *((name, f"train/{key}", spec) for name, key, spec in shown))
    progress = reporting.Progress(config.num_train_steps, start_step, fields)
    peak, peak_source = flops.peak_flops()
    logging.info("peak %.3g FLOP/s (%s)", peak, peak_source)
    preemption = train_lib.Preemption(config.preemption_check_every_steps)
    window = reporting.MetricWindow(peak)
    guard = train_lib.NonFiniteGuard(
        config.max_consecutive_nonfinite,
        note=ckpt.describe_last_good,
    )
    batches = loader.iterate(start_step)
    try:
        preemption.stop_before_first_step()
        # The next two batches are already on their way to the devices while a step runs.
        prefetched = sharding.prefetch_to_device(
            agreed_rows(batches, process_count), mesh, batch=lambda item: item[1]
        )
        for (step, batch), device_batch in prefetched:
            if step >= config.num_train_steps:
                break
            length = batch["input_ids"].shape[1]
            state, metrics = p_train_step(state, device_batch, dropout_rng)
            done = step + 1
            if done == start_step + 1:
                # The one wait outside the log steps: how long compiling and the first step took.
                jax.block_until_ready(metrics)
                seconds = time.perf_counter() - started
                reporting.say(f"first step finished (step {done}) {seconds:.1f} s after start")
            window.add(
                metrics,
                sequences=config.global_batch_size,
                tokens=len(batch["input_ids"]) * process_count * length,
                # This host's real tokens and their FLOPs, times the hosts (exact on one host).
                real_tokens=int(batch["attention_mask"].sum()) * process_count,
                flops=real_flops(model_config, batch) * process_count,
            )
            guard.check(metrics, done)

            if done % config.log_every_steps == 0 or done == config.num_train_steps:
                sums, scalars = window.flush()
                scalars.update(
                    {f"train/{k}": v for k, v in program.objective.summarize(sums).items()}
                )
                writer.write_scalars(done, scalars)
                progress.update(done, scalars)

            if eval_batches and (
                done % config.eval_every_steps == 0 or done == config.num_train_steps
            ):
                sums = [
                    p_eval_step(state.params, sharding.host_to_global(b, mesh))
                    for b in eval_batches
                ]
                sums = jax.tree.map(lambda *xs: float(sum(xs)), *jax.device_get(sums))
                evaluated = {f"eval/{k}": v for k, v in program.objective.summarize(sums).items()}
                writer.write_scalars(done, evaluated)
                # The objective's own accuracies (MLM alone has no NSP).
                shown = [
                    f"{label} {evaluated['eval/' + key]:{spec}}"
                    for label, key, spec in program.objective.progress
                ]
                progress.print(f"eval at step {done:,}: {' · '.join(shown)}")
                window.restart()

            stop = preemption.agreed(done)
            if (
                done == config.num_train_steps
                or stop
                or (done % config.checkpoint_every_steps == 0 and not guard.in_a_row)
            ):
                saved = ckpt.save(
                    done,
                    state,
                    data_state=loader.get_state(done),
                    config=config,
                    force=stop or done == config.num_train_steps,
                    loss_finite=not int(metrics["nonfinite"]),
                )
                if saved:
                    progress.print(f"saving step {done:,} to {ckpt.directory / str(done)}")
                window.restart()
            if stop:
                logging.warning("preempted: saved step %d, exiting", done)
                break
        ckpt.wait_until_finished()
    except CorruptRecordError as error:
        raise startup.stop_at_corrupt_record(error, ckpt, state, loader, config) from None
    finally:
        progress.close()
        batches.close()  # stops the prefetch thread
        preemption.restore()
        writer.close()
        ckpt.close()
    return state
