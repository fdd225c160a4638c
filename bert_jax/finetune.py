"""GLUE fine-tuning on a device mesh, top to bottom: one task, the paper's grid, or the whole suite.

`train_and_evaluate(config, workdir)` fine-tunes one task (or, with `config.sweep`, every setting of the
paper's grid with several seeds), evaluating on dev at the end of every epoch; the best epoch's state is kept
with Orbax in WORKDIR/checkpoints and predicts the test split(s) into WORKDIR/leaderboard/ (with MNLI also
AX). WORKDIR/results.json holds the dev scores and the config. `run_suite(config, workdir)` does every task
and prints the GLUE table. The weights come from a bert_jax workdir or a transformers-layout directory; bad
input raises `pretrain.SetupError` (one line) before training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import checkpoint, convert, losses, metrics, optim, sharding
from bert_jax.data import glue
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.data.tokenizer import load_tokenizer
from bert_jax.model import BertConfig, build_model, dummy_inputs
from bert_jax.pretrain import NonFiniteGuard, setup_error


# ----------------------------------------------------------------------------------------------------------
# Initial weights: a bert_jax workdir (pretraining or fine-tuning) or a transformers-layout directory.
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Start:
    """What a fine-tuning run starts from: the encoder's config, its tokenizer and weights."""

    model_config: BertConfig
    tokenizer: object
    tokenizer_spec: dict  # {"path", "do_lower_case"}: how to load the tokenizer again
    params: dict | None  # unboxed {"bert": ..., maybe "classifier": ...}; None = random init
    source: str


def _boxed_init(model):
    return lambda rng: model.init(rng, **dummy_inputs(1, 8))["params"]


def _model_config(fields, tokenizer, config) -> BertConfig:
    """BertConfig from stored fields: vocab -1 resolved, dtype and dropout from the fine-tuning config."""
    fields = {**fields, "dtype": config.dtype}
    fields["hidden_dropout_prob"] = fields["attention_dropout_prob"] = config.dropout
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = tokenizer.vocab_size
    return BertConfig.from_dict(fields)


def _restore_workdir(path: epath.Path, config, mesh) -> Start:
    """Parameters of the latest checkpoint in a bert_jax workdir (checkpoint.py's layout), on `mesh`."""
    directory = path / "checkpoints"
    ckpt = checkpoint.Checkpointer(str(directory), keep=1, save_interval_steps=1, async_save=False)
    try:
        # The stored config says which model and optimizer wrote the state (its restore target).
        step, stored = ckpt.read_config()
        if stored["mode"] == "pretrain":
            spec = {"path": stored["data"]["vocab_file"] or str(SAMPLE_VOCAB)}
            spec["do_lower_case"] = stored["data"]["do_lower_case"]
            head, num_labels = "pretraining", 2
        else:
            spec, head, num_labels = stored["tokenizer"], "classification", stored["num_labels"]
        tokenizer = load_tokenizer(spec["path"], do_lower_case=spec["do_lower_case"])
        model_config = _model_config(stored["model"], tokenizer, config)
        boxed = jax.eval_shape(
            _boxed_init(build_model(model_config, head, num_labels)), jax.random.key(0)
        )
        opt_config = ml_collections.ConfigDict(stored)
        opt_config.grad_accum_steps = 1  # pretrain.py accumulates inside its step, not in optax
        abstract = optim.TrainState.abstract(
            boxed, sharding.logical_shardings(boxed, mesh), optim.make_optimizer(opt_config)
        )
        state, _, _ = ckpt.restore(step, abstract)
        params = state.params
    finally:
        ckpt.close()
    kept = {k: v for k, v in params.items() if k in ("bert", "classifier")}
    dropped = sorted(set(params) - set(kept))
    logging.info("%s step %d: restored the encoder; dropped heads %s", directory, step, dropped)
    return Start(model_config, tokenizer, spec, kept, f"{directory}/{step}")


def load_start(config, mesh) -> Start:
    """Resolves `config.init_checkpoint` (see configs/glue.py)."""
    path = config.init_checkpoint
    if not path:
        logging.warning("no init_checkpoint: random initialisation (good for smoke tests only)")
        spec = {
            "path": config.vocab_file or str(SAMPLE_VOCAB),
            "do_lower_case": config.do_lower_case,
        }
        tokenizer = load_tokenizer(spec["path"], do_lower_case=spec["do_lower_case"])
        model_config = _model_config(config.model.to_dict(), tokenizer, config)
        return Start(model_config, tokenizer, spec, None, "random")
    path = epath.Path(path)
    if (path / "config.json").exists():
        # The checkpoint's own label count, so its classifier (if any) loads; `adapt_head` checks it.
        model, params, tokenizer = convert.load_pretrained(
            path, head="classification", dtype=config.dtype, seed=config.seed
        )
        model_config = _model_config(dataclasses.asdict(model.config), tokenizer, config)
        spec = {"path": str(path), "do_lower_case": None}
        return Start(model_config, tokenizer, spec, params, str(path))
    if (path / "checkpoints").is_dir():
        return _restore_workdir(path, config, mesh)
    raise ValueError(
        f"{path} is neither a bert_jax workdir (no checkpoints/) nor a transformers-layout "
        "directory (no config.json)"
    )


def initial_params(start: Start, task: glue.Task, mesh, rng):
    """The classification model and its parameters, born sharded on `mesh`: fresh ones (classifier, or
    all for a random start) replaced by the start's. Returns (model, boxed shapes, shardings, params).

    A checkpoint classifier whose shape does not fit the task is re-initialised, with a log line.
    """
    model = build_model(start.model_config, "classification", task.num_labels)
    boxed = jax.eval_shape(_boxed_init(model), rng)
    shardings = sharding.logical_shardings(boxed, mesh)
    params = jax.jit(lambda r: nn.unbox(_boxed_init(model)(r)), out_shardings=shardings)(rng)
    if start.params is None:
        return model, boxed, shardings, params
    loaded = dict(start.params)
    want = params["classifier"]["kernel"].shape
    have = loaded["classifier"]["kernel"].shape if "classifier" in loaded else None
    if have is None:
        logging.info(
            "%s has no classifier: initialised one with %d outputs", start.source, want[-1]
        )
    elif have != want:
        logging.warning(
            "%s: the checkpoint's classifier has %d outputs but %s needs %d: re-initialising it",
            *(start.source, have[-1], task.name, want[-1]),
        )
        del loaded["classifier"]
    return (
        model,
        boxed,
        shardings,
        {**params, **jax.device_put(loaded, {k: shardings[k] for k in loaded})},
    )


# ----------------------------------------------------------------------------------------------------------
# The steps: pure functions bound to model and optimizer with functools.partial.
# ----------------------------------------------------------------------------------------------------------
def _loss_sums(model, params, batch, rng, *, regression: bool, deterministic: bool):
    logits = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )["logits"]
    loss_fn = losses.regression_loss if regression else losses.classification_loss
    return loss_fn(logits, batch["labels"], batch["weights"]), logits


def train_step(state, batch, rng, *, model, tx, schedule, regression: bool):
    """One AdamW update; a non-finite loss or gradient leaves params and Adam state as they were."""
    rng = jax.random.fold_in(rng, state.step)

    def objective(params):
        sums, _ = _loss_sums(model, params, batch, rng, regression=regression, deterministic=False)
        return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1e-5), sums

    (loss, sums), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics_ = {k: jnp.where(ok, v, 0.0) for k, v in {**sums, "grad_norm": grad_norm}.items()}
    metrics_["learning_rate"] = schedule(state.step)
    metrics_["nonfinite"] = 1 - ok.astype(jnp.int32)
    return state.apply_gradients_if(ok, grads, tx), metrics_


def eval_step(params, batch, *, model, regression: bool):
    """Logits of a (padded) batch, with its labels, weights and example ids, for the host's metrics."""
    _, logits = _loss_sums(model, params, batch, None, regression=regression, deterministic=True)
    return {"logits": logits, **{k: batch[k] for k in ("labels", "weights", "example_ids")}}


def predict(p_eval_step, params, features, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """Runs every example through the jitted eval step; padding rows are removed (global arrays)."""
    outs = [
        p_eval_step(params, sharding.host_to_global(b, mesh))
        for b in glue.eval_batches(
            features,
            batch_size // jax.process_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    ]
    outs = jax.tree.map(lambda *xs: np.concatenate(xs), *jax.device_get(outs))
    return {k: v[outs["weights"] > 0] for k, v in outs.items()}


def _score(results) -> float:
    """The selection score: the task's metrics averaged as GLUE does (-inf when undefined)."""
    score = metrics.glue_score(results)
    return score if math.isfinite(score) else -math.inf


# ----------------------------------------------------------------------------------------------------------
# One run: one task, one setting, one seed.
# ----------------------------------------------------------------------------------------------------------
def fine_tune(config, workdir) -> dict:
    """Fine-tunes `config.task` with the config's single setting; writes WORKDIR/results.json."""
    workdir = epath.Path(workdir)
    with setup_error("task"):
        task = glue.get_task(config.task)
        if task.name == "ax":
            raise ValueError("ax is not trained: it is predicted by the MNLI model (task=mnli)")
    regression, process_count = task.is_regression, jax.process_count()

    # Mesh.
    with setup_error("mesh_shape"):
        mesh = sharding.make_mesh(config.mesh_shape)
    with setup_error("batch_size"):
        sharding.check_batch_divisible(config.batch_size, mesh, process_count)
        sharding.check_batch_divisible(config.eval_batch_size, mesh, process_count)

    # Data: read every split first, so a missing file fails before any weights are loaded.
    splits = ["train", *task.dev_splits]
    splits += [*task.test_splits] if config.predict_test else []
    with setup_error("data"):
        read = lambda name, split: glue.read_examples(
            name, split, config.data_dir, tfds_data_dir=config.get("tfds_data_dir")
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

    # Model and train state, born sharded; checkpoint weights replace the fresh ones.
    with setup_error("init_checkpoint"):
        start = load_start(config, mesh)
        if config.max_seq_length > start.model_config.max_position_embeddings:
            raise ValueError(f"max_seq_length {config.max_seq_length} > max_position_embeddings")
    with setup_error("data"):
        features = {
            split: glue.encode_examples(ex, start.tokenizer, config.max_seq_length)
            for split, ex in examples.items()
        }
    run = {**config.to_dict(), "num_train_steps": num_train_steps, "warmup_steps": warmup_steps}
    with setup_error("optimizer"):
        tx = optim.make_optimizer(ml_collections.ConfigDict(run))
        schedule = optim.make_schedule(ml_collections.ConfigDict(run))
    init_rng = jax.random.key(config.seed)
    # The dropout keys' generator is configurable (config.prng_impl); init always uses threefry.
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed, impl=config.prng_impl), 1)
    model, boxed, param_shardings, params = initial_params(start, task, mesh, init_rng)
    abstract_state = optim.TrainState.abstract(boxed, param_shardings, tx)
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    # Adam's moments are zeros_like(params), so they are born with the params' shardings; the eager
    # ops compile once per shape (a suite reuses them) where a jit of `create` compiles per task.
    state = jax.device_put(optim.TrainState.create(params, tx), state_shardings)
    logging.info(
        "%s from %s: %d examples, %d steps (%d warmup)",
        task.name,
        start.source,
        len(examples["train"]),
        num_train_steps,
        warmup_steps,
    )

    # Steps, jitted with explicit shardings; the state is donated.
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = sharding.batch_sharding(mesh)
    p_train_step = jax.jit(
        sharding.under_mesh(
            functools.partial(
                train_step, model=model, tx=tx, schedule=schedule, regression=regression
            ),
            mesh,
        ),
        in_shardings=(state_shardings, data_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    p_eval_step = jax.jit(
        sharding.under_mesh(functools.partial(eval_step, model=model, regression=regression), mesh),
        in_shardings=(state_shardings.params, data_sharding),
        out_shardings=replicated,
    )

    # Checkpoint: only the best epoch so far is kept.
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), keep=1, save_interval_steps=1)
    stored = {
        **run,
        "model": dataclasses.asdict(start.model_config),
        "tokenizer": start.tokenizer_spec,
        "num_labels": task.num_labels,
    }

    # Loop: train an epoch, evaluate on dev, keep the best.
    writer = metrics.MetricWriter(workdir, process_index=jax.process_index())
    history, best, step = [], None, 0
    guard = NonFiniteGuard(config.max_consecutive_nonfinite)
    window, window_start = [], time.perf_counter()
    try:
        for epoch in range(1, config.num_epochs + 1):
            for batch in glue.train_batches(
                {k: v for k, v in features["train"].items() if k != "example_ids"},
                per_host_batch,
                seed=config.seed,
                epoch=epoch,
                process_index=jax.process_index(),
                process_count=process_count,
            ):
                state, step_metrics = p_train_step(
                    state, sharding.host_to_global(batch, mesh), dropout_rng
                )
                step += 1
                window.append(step_metrics)
                guard.check(step_metrics, step)
                if step % config.log_every_steps and step != num_train_steps:
                    continue
                window = jax.device_get(window)
                sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *window)
                good = len(window) - sums["nonfinite"] or math.nan  # finite steps in the window
                elapsed = time.perf_counter() - window_start
                scalars = {
                    "train/loss": sums["loss_sum"] / max(sums["weight_sum"], 1e-5),
                    "train/grad_norm": sums["grad_norm"] / good,
                    "train/learning_rate": float(window[-1]["learning_rate"]),
                    "train/nonfinite_steps": sums["nonfinite"],
                    "perf/sequences_per_sec": len(window) * config.batch_size / elapsed,
                }
                if not regression:
                    scalars["train/accuracy"] = sums["correct_sum"] / max(sums["weight_sum"], 1)
                writer.write_scalars(step, scalars)
                window, window_start = [], time.perf_counter()

            results = {}
            for split in task.dev_splits:
                out = predict(
                    p_eval_step, state.params, features[split], config.eval_batch_size, mesh
                )
                results[task.entry(split)] = metrics.task_metrics(
                    task.name, out["logits"], out["labels"]
                )
            score = _score(results)
            history.append({"epoch": epoch, "step": step, "score": score, "results": results})
            writer.write_scalars(
                step,
                {f"eval/{e}/{m}": v for e, values in results.items() for m, v in values.items()},
            )
            if best is None or score > best["score"]:
                best = history[-1]
                ckpt.save(step, state, data_state={"epoch": epoch}, config=stored, force=True)
            window_start = time.perf_counter()
        ckpt.wait_until_finished()

        # The best epoch predicts the test split(s): the leaderboard files.
        if best["step"] != step:
            state, _, _ = ckpt.restore(best["step"], abstract_state)
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
                    workdir / "leaderboard", name, split, out["example_ids"], out["logits"]
                )
                written[f"{name}/{split}"] = path.name
    finally:
        writer.close()
        ckpt.close()

    summary = {
        "task": task.name,
        "split": "dev",
        "results": best["results"],
        "score": best["score"],
        "best_epoch": best["epoch"],
        "epochs": history,
        "leaderboard_files": written,
        "init_checkpoint": start.source,
        "num_train_examples": len(examples["train"]),
        "config": stored,
    }
    write_json(workdir / "results.json", summary)
    logging.info("%s dev (best epoch %d): %s", task.name, best["epoch"], best["results"])
    return {**summary, "workdir": str(workdir)}


def write_json(path: epath.Path, value) -> None:
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        # -inf (no defined score) becomes null, so the file stays valid JSON.
        clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x
        text = json.dumps(jax.tree.map(clean, value), indent=2, default=str, allow_nan=False)
        path.write_text(text + "\n")
