"""Checkpoints of the train state, the data iterator state and the config, with Orbax.

One checkpoint per saved step, `DIRECTORY/<step>/` holding three items: `state` (the sharded train state,
written by every host in parallel with OCDBT/TensorStore), `data` and `config` (JSON, written once). Saves
are asynchronous by default: `save` returns once the arrays are copied off the devices and training goes
on while the files are written. Local paths and gs:// go through the same code (etils epath).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the requested state (another model size or optimizer)."""


def _path_name(path) -> str:
    """'params/bert/layer_0/attention/query/kernel' from a key path of any pytree kind."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _to_json(config: Any) -> Any:
    """A plain JSON value from a dict or an ml_collections ConfigDict (tuples become lists)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for bert_jax train states.

    directory: local path or gs:// URL. keep: how many of the latest checkpoints to keep.
    save_interval_steps: `save` writes only at multiples of it (or when forced).
    async_save: write in a background thread; a failed write raises from the next `save`,
    `wait_until_finished` or `close`.
    """

    def __init__(
        self, directory: str, *, keep: int, save_interval_steps: int, async_save: bool = True
    ):
        self.directory = epath.Path(directory)
        self.save_interval_steps = save_interval_steps
        # The interval is applied in `save` (multiples of it); Orbax's own policy would also save the
        # first step it sees, whatever it is.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            create=True,
        )
        # Handlers named up front: a manager that did not save a step itself (a restarted process) needs
        # them to read the step's metadata and to restore.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state, *, data_state: dict, config: Mapping, force: bool = False
    ) -> bool:
        """Starts saving `state` with the data iterator state and the config as JSON; True if it saves.

        Without `force`, only multiples of `save_interval_steps` are saved. A step that already has a
        checkpoint is not saved again (False), so a final forced save may follow a periodic one. All hosts
        must call it with the same step. `data_state` must be the same on every host (only one writes it).
        Raises if the previous asynchronous save failed.
        """
        step = int(step)
        if not force and step % self.save_interval_steps:
            return False
        if step in self._manager.all_steps():
            logging.info("checkpoint for step %d already exists in %s", step, self.directory)
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_to_json(data_state)),
            config=ocp.args.JsonSave(_to_json(config)),
        )
        return self._manager.save(step, args=args, force=True)

    def _check_fits(self, step: int, abstract_state) -> None:
        """Raises CheckpointMismatchError naming the first array whose shape differs, or is missing."""
        stored = _shapes(self._manager.item_metadata(step)["state"].tree)
        wanted = _shapes(abstract_state)
        where = f"checkpoint {self.directory / str(step)}"
        for name, shape in wanted.items():
            if name not in stored:
                raise CheckpointMismatchError(f"{where} has no {name!r} (the model wants {shape})")
            if stored[name] != shape:
                raise CheckpointMismatchError(
                    f"{where}: {name!r} has shape {stored[name]} but the model wants {shape}"
                )
        extra = sorted(set(stored) - set(wanted))
        if extra:
            raise CheckpointMismatchError(
                f"{where} has {len(extra)} arrays the state lacks, e.g. {extra[0]!r}"
            )

    def restore(self, step: int | None, abstract_state) -> tuple[Any, dict, dict]:
        """Restores (state, data_state, config) from `step` (None: the latest).

        `abstract_state`: the state's structure as `jax.ShapeDtypeStruct`s with `.sharding`; arrays are read
        straight into those shardings, so a checkpoint saved on one mesh restores onto another. A checkpoint
        from another model size raises CheckpointMismatchError naming the array and both shapes. An
        unreadable (corrupt, partly deleted) checkpoint falls back to the previous step with a warning; the
        returned state's `step` says which was used. Raises ValueError if no checkpoint is usable.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise ValueError(f"no checkpoints in {self.directory}")
        if step is not None and step not in steps:
            raise ValueError(
                f"no checkpoint at step {step} in {self.directory}; have {steps[::-1]}"
            )
        candidates = [s for s in steps if step is None or s <= step]
        failures = []
        for s in candidates:
            try:
                self._check_fits(s, abstract_state)
                restored = self._manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                        config=ocp.args.JsonRestore(),
                    ),
                )
            except CheckpointMismatchError:
                raise
            except Exception as error:  # noqa: BLE001 -- any read failure means "try the previous one"
                failures.append(f"step {s}: {_first_line(error)}")
                logging.warning(
                    "checkpoint %s is unreadable (%s); trying the previous one",
                    self.directory / str(s),
                    _first_line(error),
                )
                continue
            if failures:
                logging.warning("restored step %d instead: %s", s, "; ".join(failures))
            return restored["state"], restored["data"], restored["config"]
        raise ValueError(f"no usable checkpoint in {self.directory}: {'; '.join(failures)}")

    def read_config(self, step: int | None = None) -> tuple[int, dict]:
        """(step, config) of `step` (None: the latest), without reading the state.

        Lets a caller that does not know the stored model (fine-tuning from a pretraining workdir) build the
        abstract state that `restore` needs. Raises ValueError if there is no checkpoint.
        """
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoints in {self.directory}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return step, restored["config"]

    def wait_until_finished(self) -> None:
        """Blocks until the pending save is on disk; raises if it failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the pending save (raising if it failed) and releases the manager's threads."""
        self._manager.close()


def restore_params(
    directory: str, step: int | None = None, sharding=None
) -> tuple[int, dict, dict]:
    """(step, params, config) from the checkpoints in `directory` (e.g. WORKDIR/checkpoints), params only.

    The optimizer state is not read, so neither the optimizer nor the model need be known: the arrays come back
    with their stored shapes and dtypes on `sharding` (default: the first device). An unreadable step falls back
    to the previous one with a warning; the returned step says which was used. Raises ValueError if none is
    usable.
    """
    directory = epath.Path(directory)
    # A reading manager of its own: the PyTree handler restores a part of the stored tree.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(directory, item_handlers=handlers)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        steps = [s for s in steps if step is None or s <= step]
        if not steps:
            raise ValueError(f"no checkpoints in {directory}")
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        failures = []
        for s in steps:
            try:
                stored = manager.item_metadata(s)["state"].tree["params"]
                abstract = {
                    "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stored)
                }
                restore_args = jax.tree.map(
                    lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract
                )
                restored = manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            item=abstract, restore_args=restore_args, partial_restore=True
                        ),
                        config=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as error:  # noqa: BLE001 -- any read failure means "try the previous one"
                failures.append(f"step {s}: {_first_line(error)}")
                logging.warning(
                    "checkpoint %s is unreadable (%s); trying the previous one",
                    directory / str(s),
                    _first_line(error),
                )
                continue
            return s, restored["state"]["params"], restored["config"]
        raise ValueError(f"no usable checkpoint in {directory}: {'; '.join(failures)}")
    finally:
        manager.close()
