"""Checkpoints of the train state, the data iterator state and the config, with Orbax.

One checkpoint per saved step, `DIRECTORY/<step>/` holding four items: `state` (the sharded train state,
written by every host in parallel with OCDBT/TensorStore), `data`, `config` and `manifest` (JSON, written
once). Saves are asynchronous by default: `save` returns once the arrays are copied off the devices and
training goes on while the files are written. Local paths and gs:// go through the same code (etils epath).

The manifest makes a checkpoint prove itself: a checksum of every array (computed on the devices over the
logical array, so it holds on any mesh) and whether the state and the step's loss were finite. A state that is
not finite is never saved; a restored state must match its checksums, else the step counts as damaged.
See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

MANIFEST_VERSION = 1

# A save's size on disk beyond the arrays' bytes: TensorStore/OCDBT chunk and manifest files, the JSON items and
# filesystem blocks (measured: 1.1 MiB of arrays take 1.4 MB, the same ratio as bert-base's).
_ON_DISK_FACTOR, _ON_DISK_EXTRA = 1.25, 2**20


def _disk_size(path: epath.Path) -> int:
    """Bytes under a local directory (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(os.fspath(path)):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


class _PartialRestoreNotice(logging.Filter):
    """Drops Orbax's "Item ... was found in the checkpoint, but could not be restored" warning. Every restore
    here asks for the items it needs (the state, or only the params); the others (the data state, the
    manifest) stay on disk on purpose, so the warning is noise on every fine-tune, predict and convert."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was found in the checkpoint, but could not be restored" not in record.getMessage()


# Orbax warns through absl's logger; a filter there works whichever handler (absl's or Python's) prints it.
logging.getLogger("absl").addFilter(_PartialRestoreNotice())


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the requested state (another model size or optimizer)."""


class CheckpointSaveError(RuntimeError):
    """A save failed (disk full, no permission, unreachable bucket); the message is one line naming the step."""


class DamagedCheckpointError(ValueError):
    """A restored array does not match the checksum recorded when it was saved."""


def _digest(x) -> jax.Array:
    """A uint32 checksum of an array's bits: a position-weighted sum mod 2**32, exact in any reduction order
    (so any sharding gives the same value), and changed by every single-bit flip (the weights are odd)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
        # 8-byte values split into two uint32 words (a trailing axis).
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = bits.reshape(-1)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * (weights | jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _fingerprint(state):
    """({leaf: checksum}, all leaves finite) of a pytree of arrays, on the devices."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    digests = {_path_name(path): _digest(leaf) for path, leaf in leaves}
    finite = [jnp.isfinite(x).all() for _, x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    return digests, jnp.all(jnp.stack(finite)) if finite else jnp.bool_(True)


def _host_value(x) -> np.ndarray:
    """A replicated (possibly multi-process) scalar's value on this host."""
    return np.asarray(x.addressable_data(0))


def fingerprint(state) -> tuple[dict[str, int], bool]:
    """({array name: uint32 checksum}, whether every float array is finite) of a train state."""
    digests, finite = _fingerprint(state)
    return {k: int(_host_value(v)) for k, v in digests.items()}, bool(_host_value(finite))


def _all_hosts_ok(ok: bool) -> bool:
    """True when `ok` holds on every process (a failure on one host makes all of them fall back)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _describe(error: BaseException, directory) -> str:
    """One line for a read failure: the damaged file when the error names one under `directory` (TensorStore's
    messages do, deep inside), else the error's type and first line, shortened."""
    if isinstance(error, DamagedCheckpointError):
        return str(error)
    paths = re.findall(r"(?:gs://|/)[^\s\"',;:\]\)]+", str(error))
    inside = [q.rstrip(".") for q in paths if q.startswith(str(directory))]
    if inside:
        # TensorStore names the item folder first and the file deeper in; the file is what a person checks.
        return f"{type(error).__name__} reading {max(inside, key=len)}"
    return _first_line(error)[:200]


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
            "manifest": ocp.JsonCheckpointHandler(),
        }
        # The step whose save is in flight, named when an asynchronous failure surfaces later.
        self._pending: int | None = None
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state,
        *,
        data_state: dict,
        config: Mapping,
        force: bool = False,
        loss_finite: bool = True,
    ) -> bool:
        """Starts saving `state` with the data iterator state, the config and a manifest; True if it saves.

        Without `force`, only multiples of `save_interval_steps` are saved. A step that already has a
        checkpoint is not saved again (False), so a final forced save may follow a periodic one. A state with a
        non-finite parameter or optimizer value is not saved (False, with a warning). `loss_finite` (the step's
        loss) is recorded: `last_good_step` skips steps whose loss was not. All hosts must call it with the same
        step. `data_state` must be the same on every host (only one writes it). Raises CheckpointSaveError if
        this save cannot start (e.g. too little disk) or the previous asynchronous one failed.
        """
        step = int(step)
        if not force and step % self.save_interval_steps:
            return False
        if step in self._manager.all_steps():
            logging.info("checkpoint for step %d already exists in %s", step, self.directory)
            return False
        checksums, finite = fingerprint(state)
        if not finite:
            logging.warning(
                "not saving step %d: its parameters or optimizer state are not finite", step
            )
            return False
        self._check_space(step, state)
        manifest = {
            "version": MANIFEST_VERSION,
            "finite": finite,
            "loss_finite": bool(loss_finite),
            "checksums": checksums,
        }
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_to_json(data_state)),
            config=ocp.args.JsonSave(_to_json(config)),
            manifest=ocp.args.JsonSave(manifest),
        )
        with self._save_errors():
            saved = self._manager.save(step, args=args, force=True)
        self._pending = step
        return saved

    def _check_space(self, step: int, state) -> None:
        """Refuses a save that cannot fit a local disk, before it starts (an asynchronous write would fail one
        interval later). What a save takes on disk: the newest finished step's size when there is one, else the
        state's in-memory size plus the files' overhead (a 1.1 MiB state takes ~1.4 MB on disk)."""
        if "://" in str(self.directory) or jax.process_index() != 0:
            return
        in_memory = sum(x.nbytes for x in jax.tree.leaves(state))
        needed = _ON_DISK_FACTOR * in_memory + _ON_DISK_EXTRA
        latest = self._manager.latest_step()
        if latest is not None:
            needed = max(needed, _disk_size(self.directory / str(latest)))
        free = shutil.disk_usage(os.fspath(self.directory)).free
        if free < needed:
            raise CheckpointSaveError(
                f"cannot save step {step} to {self.directory}: {free / 2**20:.1f} MiB free, the state "
                f"needs up to {in_memory / 2**20:.1f} MiB (disk full?); on disk a save takes about "
                f"{needed / 2**20:.1f} MiB"
            )

    @contextlib.contextmanager
    def _save_errors(self):
        """Turns a failed write (this one, or the pending asynchronous one surfacing now) into one line."""
        try:
            yield
        except CheckpointSaveError:
            raise
        except Exception as error:
            what = f"step {self._pending}" if self._pending is not None else "a checkpoint"
            raise CheckpointSaveError(
                f"saving {what} to {self.directory} failed: {_first_line(error)[:300]}"
            ) from error

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
        from another model size raises CheckpointMismatchError naming the array and both shapes. A damaged
        step (unreadable, no manifest to verify it against, or an array that fails its checksum) falls back to
        the previous one with one warning line naming the file or array, and is deleted once an older step
        restores, so the run saves it again when it gets there. The returned state's `step` says which was
        used. Raises ValueError if no checkpoint is usable.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise ValueError(f"no checkpoints in {self.directory}")
        if step is not None and step not in steps:
            raise ValueError(
                f"no checkpoint at step {step} in {self.directory}; have {steps[::-1]}"
            )

        def read(s: int):
            self._check_fits(s, abstract_state)
            manifest = _read_manifest(self.directory / str(s))
            items = {
                "state": ocp.args.StandardRestore(abstract_state),
                "data": ocp.args.JsonRestore(),
                "config": ocp.args.JsonRestore(),
            }
            restored = self._manager.restore(s, args=ocp.args.Composite(**items))
            _verify(self.directory / str(s), restored["state"], manifest)
            return restored["state"], restored["data"], restored["config"]

        candidates = [s for s in steps if step is None or s <= step]
        s, restored, damaged = _first_usable(self.directory, candidates, read, all_hosts=True)
        for bad in damaged:
            logging.warning(
                "deleting damaged checkpoint %s; step %d restored", self.directory / str(bad), s
            )
            self._manager.delete(bad)
        return restored

    def last_good_step(self) -> int | None:
        """The newest finished step whose state was finite and whose loss was finite (per its manifest)."""
        for s in sorted(self._manager.all_steps(), reverse=True):
            if not (self.directory / str(s) / "manifest").exists():
                continue  # saved before manifests: unknown
            try:
                args = ocp.args.Composite(manifest=ocp.args.JsonRestore())
                manifest = self._manager.restore(s, args=args)["manifest"]
            except Exception:  # noqa: BLE001 -- an unreadable manifest is not a good checkpoint
                continue
            if manifest.get("finite") and manifest.get("loss_finite"):
                return s
        return None

    def describe_last_good(self) -> str:
        """A sentence naming the last good checkpoint (finite state and loss), for an error that stops a run."""
        with contextlib.suppress(CheckpointSaveError):
            self.wait_until_finished()  # a pending save may be the good one
        step = self.last_good_step()
        if step is None:
            return f" No checkpoint with finite parameters and loss was saved in {self.directory}."
        return f" The last good checkpoint (finite parameters and loss) is step {step} in {self.directory}."

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

    def keep_latest_only(self) -> None:
        """Deletes every finished step but the newest (see `run_setup.keep_final_checkpoint`)."""
        for s in self.all_steps()[:-1]:
            self._manager.delete(s)

    def wait_until_finished(self) -> None:
        """Blocks until the pending save is on disk; raises CheckpointSaveError if it failed."""
        with self._save_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the pending save (raising CheckpointSaveError if it failed) and releases the manager's
        threads."""
        with self._save_errors():
            self._manager.close()


def restore_params(
    directory: str, step: int | None = None, sharding=None
) -> tuple[int, dict, dict]:
    """(step, params, config) from the checkpoints in `directory` (e.g. WORKDIR/checkpoints), params only.

    The optimizer state is not read, so neither the optimizer nor the model need be known: the arrays come back
    with their stored shapes and dtypes on `sharding` (default: the first device). A damaged step falls back
    to the previous one with one warning line, as in `Checkpointer.restore`; the returned step says which was
    used. Raises ValueError if none is usable.
    """
    directory = epath.Path(directory)
    # A reading manager of its own: the PyTree handler restores a part of the stored tree.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(directory, item_handlers=handlers)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def read(s: int):
        manifest = _read_manifest(directory / str(s))
        stored = manager.item_metadata(s)["state"].tree["params"]
        abstract = {
            "params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stored)
        }
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract)
        restored = manager.restore(
            s,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract, restore_args=restore_args, partial_restore=True
                ),
                config=ocp.args.JsonRestore(),
            ),
        )
        _verify(directory / str(s), restored["state"], manifest)
        return restored["state"]["params"], restored["config"]

    try:
        steps = [s for s in sorted(manager.all_steps(), reverse=True) if step is None or s <= step]
        if not steps:
            raise ValueError(f"no checkpoints in {directory}")
        s, (params, config), _ = _first_usable(directory, steps, read, all_hosts=False)
        return s, params, config
    finally:
        manager.close()


# ----------------------------------------------------------------------------------------------------------
# The one fallback-and-verify path of both restores.
# ----------------------------------------------------------------------------------------------------------
def _first_usable(directory: epath.Path, steps: list[int], read, *, all_hosts: bool):
    """(step, read(step), the damaged steps newer than it) for the newest of `steps` (newest first) that reads
    and verifies. Each damaged step is one warning line naming the file or array; with `all_hosts`, a step
    damaged on any host is damaged on all (they must restore the same step). CheckpointMismatchError (another
    model) propagates; with no usable step, ValueError lists each step's problem."""
    damaged, failures = [], []
    for s in steps:
        where = directory / str(s)
        with _quiet_reader():
            try:
                value, problem = read(s), ""
            except CheckpointMismatchError:
                raise
            except Exception as error:  # noqa: BLE001 -- any read failure means "try the previous one"
                value, problem = None, _describe(error, where)
                logging.debug("reading %s: %r", where, error)
        ok = not problem
        if all_hosts:
            ok = _all_hosts_ok(ok)
        if ok:
            return s, value, damaged
        problem = problem or "damaged on another host"
        logging.warning("checkpoint %s is unreadable (%s); trying the previous one", where, problem)
        damaged.append(s)
        failures.append(f"step {s}: {problem}")
    raise ValueError(f"no usable checkpoint in {directory}: {'; '.join(failures)}")


class _DropReaderTracebacks(logging.Filter):
    """Orbax and TensorStore log each failed read at ERROR with its traceback (thousands of lines for a damaged
    step, through absl's logger); the fallback's own warning line says what failed."""

    def filter(self, record) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _quiet_reader():
    absl_logger, quiet = logging.getLogger("absl"), _DropReaderTracebacks()
    absl_logger.addFilter(quiet)
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)


def _read_manifest(step_dir: epath.Path) -> dict:
    """The step's manifest; DamagedCheckpointError when it is missing, empty or unreadable: without checksums
    a flipped bit would restore silently, so such a step is not trusted."""
    path = step_dir / "manifest" / "metadata"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(
            f"{path} is missing (no checksums to verify against)"
        ) from None
    except (OSError, ValueError) as error:
        raise DamagedCheckpointError(f"{path} is unreadable ({type(error).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checksums"), dict):
        raise DamagedCheckpointError(f"{path} has no checksums")
    return manifest


def _verify(step_dir: epath.Path, restored, manifest: dict) -> None:
    """Raises DamagedCheckpointError naming the first restored array whose checksum differs from the manifest's
    (or that it lacks), or when the state was not finite when saved."""
    if not manifest.get("finite", True):
        raise DamagedCheckpointError(f"{step_dir}: its state was not finite when saved")
    checksums, _ = fingerprint(restored)
    for name, got in checksums.items():
        if manifest["checksums"].get(name) != got:
            raise DamagedCheckpointError(
                f"{step_dir / 'state'}: {name!r} does not match its checksum"
            )
