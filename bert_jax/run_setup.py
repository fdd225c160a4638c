"""The host side of a run's setup, shared by both loops: one-line setup errors, the workdir (absolute,
writable, reused or refused), the config rules and run length, what changed since a stored run, and the
fine-tuning workdir policy (resume, finished, another run, overwrite).

No device work happens here; `train_lib` holds the device side (mesh, sharded state, jitted steps).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping

import jax
from absl import logging
from etils import epath

from bert_jax import configs, optim


# ----------------------------------------------------------------------------------------------------------
# Errors: bad input is one line, found before the first step.
# ----------------------------------------------------------------------------------------------------------
class SetupError(Exception):
    """Bad input found before training starts (mesh, batch, checkpoint, data); main prints it as one line."""


class Preempted(Exception):
    """SIGTERM or SIGINT stopped a run after it saved its state; rerunning the command resumes it."""


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
