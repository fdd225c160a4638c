"""What a run does before its first step so that every failure there is clean: signals that arrive during
start-up, one run per workdir, and every host agreeing that setup worked before the first collective.

Used by every loop (pretraining, fine-tuning) and by main; imports no loop and nothing from `data/`.
See docs/reliability.md for what is guaranteed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from bert_jax.run_setup import (
    Preempted,
    SetupError,
    absolute_workdir,
    flat_config,
    prepare_workdir,
)


# ----------------------------------------------------------------------------------------------------------
# Signals before the loop's own handler (train_lib.Preemption) is installed.
# ----------------------------------------------------------------------------------------------------------
class EarlySignals:
    """The SIGTERM/SIGINT handler main installs first thing: records the signal so start-up stops cleanly at
    the setup agreement (no half-written file, exit main.EXIT_STOPPED); a second Ctrl-C interrupts at once.
    `train_lib.Preemption` inherits `received` when it replaces this handler."""

    def __init__(self):
        self.received: list[int] = []

    def __call__(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if _AGREED:
            # Past the setup agreement the state is being restored or created: the loop takes over the
            # request, trains its first step and saves it.
            logging.warning("%s during start-up: saving after the first step, then stopping", name)
        else:
            logging.warning("%s during start-up: stopping before the first step", name)
        self.received.append(signum)

    def install(self) -> EarlySignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self)
        return self


# Set once this process passed SetupAgreement.reach(): a signal after it stops the run after one step.
_AGREED = False


def _early_signal_received() -> bool:
    return any(
        getattr(signal.getsignal(s), "received", None) for s in (signal.SIGTERM, signal.SIGINT)
    )


# ----------------------------------------------------------------------------------------------------------
# Every host agrees that setup worked, before the first collective.
# ----------------------------------------------------------------------------------------------------------
# Config fields each process may set for itself: where compiled code is cached is a local path.
HOST_LOCAL = ("compilation_cache_dir",)


def code_version() -> str:
    """A hash of bert_jax's source files: processes running other code would compute other steps."""
    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, package).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def run_fingerprint(config) -> dict[str, object]:
    """{what: value} of everything the processes of one run must agree on: each config field (but HOST_LOCAL),
    each data file and its size, the vocab's content hash, and the code version. Never raises: what cannot be
    read is recorded as such (the loader reports it as its own error)."""
    from bert_jax.data.streams import data_fingerprint  # NumPy only; imported when a run starts

    flat = flat_config(config)
    out: dict[str, object] = {f"config {k}": v for k, v in flat.items() if k not in HOST_LOCAL}
    if "data" in config:
        fields = ("input_pattern", "phase2_input_pattern", "eval_input_pattern")
        try:
            out.update(
                data_fingerprint(
                    config.data,
                    fields,
                    vocab_file=config.get("vocab_file", ""),
                    family=config.get("family", "bert"),
                )
            )
        except Exception as error:  # noqa: BLE001 -- compared as a value, reported by the loader
            out["data files"] = f"unreadable ({type(error).__name__})"
    out["code version"] = code_version()
    return out


def first_difference(fingerprints: list[dict]) -> str | None:
    """ "config learning_rate is 0.001 on process 0 but 0.002 on process 1" for the first (sorted) entry on which
    a process differs from process 0, or None when all agree."""
    keys = sorted(set().union(*fingerprints))
    for key in keys:
        values = [
            json.dumps(f.get(key, "(absent)"), sort_keys=True, default=str) for f in fingerprints
        ]
        for i, value in enumerate(values[1:], start=1):
            if value != values[0]:
                return f"{key} is {values[0]} on process 0 but {value} on process {i}"
    return None


def _gather_json(value) -> list:
    """Every process's `value` (JSON), in process order: lengths first, so the byte arrays have one shape."""
    blob = np.frombuffer(json.dumps(value, sort_keys=True, default=str).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(blob.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.int32)
    padded[: blob.size] = blob
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [
        json.loads(bytes(row[:n].astype(np.uint8)).decode())
        for row, n in zip(rows, sizes, strict=True)
    ]


class SetupAgreement:
    """Every host learns whether setup worked on all of them before the first collective, so one host's
    setup error stops them all at once (instead of the others hanging in their first collective). With a
    config, the hosts also compare `run_fingerprint`s: processes that disagree (another learning rate, batch,
    data file or code) all stop with the same line naming the first difference, before any step."""

    def __init__(self, config=None):
        self.reached, self.state_pending = False, False
        self.config = config

    def _gather(self, flag: int) -> np.ndarray:
        if jax.process_count() == 1:
            return np.array([flag])
        return np.asarray(multihost_utils.process_allgather(np.int32(flag))).reshape(-1)

    def reach(self, *, then_state: bool = False) -> None:
        """Called once setup is done on this host: raises SetupError when another host failed or the hosts
        disagree, Preempted when a host got SIGTERM/SIGINT during start-up (nothing new to save).
        `then_state`: the loop also calls `state_ready` once the state is restored or created."""
        global _AGREED
        flags = self._gather(2 if _early_signal_received() else 1)
        # Every host raises below or none does, so a host stopped here owes the others no later agreement.
        self.reached = _AGREED = True
        failed = [i for i, f in enumerate(flags) if f == 0]
        if failed:
            raise SetupError(f"process(es) {failed} failed during setup (see their log); stopping")
        if self.config is not None and jax.process_count() > 1:
            difference = first_difference(_gather_json(run_fingerprint(self.config)))
            if difference:
                raise SetupError(
                    f"the processes disagree: {difference} (every process must run the same config, data "
                    "files and code); stopping all"
                )
        if (flags == 2).any():
            raise Preempted("a signal arrived during start-up; stopped before the first step")
        self.state_pending = then_state

    def state_ready(self) -> None:
        """Called once the state is restored or created: raises SetupError when that failed on another host (an
        init checkpoint missing there, a refused resume), so no host enters the loop alone."""
        self.state_pending = False
        failed = [i for i, f in enumerate(self._gather(1)) if f == 0]
        if failed:
            raise SetupError(
                f"process(es) {failed} failed restoring or creating the state (see their log); stopping"
            )

    def fail(self) -> None:
        """Tells the other hosts, at their `reach` (or `state_ready`), that setup failed here."""
        if not self.reached or self.state_pending:
            self.reached, self.state_pending = True, False
            self._gather(0)


@contextlib.contextmanager
def agreed_setup(config=None):
    """`with agreed_setup(config) as setup:` around a loop, which calls `setup.reach()` before its first
    collective (creating or restoring the state). An exception before that is agreed as a setup failure; with
    `config`, the processes' fingerprints are compared there too."""
    global _AGREED
    # A new run in this process (a sweep's next member, a test) starts before its own agreement.
    _AGREED = False
    setup = SetupAgreement(config)
    try:
        yield setup
    except BaseException:
        setup.fail()
        raise


# ----------------------------------------------------------------------------------------------------------
# A corrupt record met mid-run.
# ----------------------------------------------------------------------------------------------------------
def stop_at_corrupt_record(error: Exception, ckpt, state, loader, config) -> Exception:
    """The one-line error (the record's file and offset, what was saved, what to do) for a corrupt record the
    loop met; saves the last finished step first, so a rerun resumes there. Only with one process: the others
    are not at this point to join a save (they stop when this one exits)."""
    step = int(np.asarray(jax.device_get(state.step)))
    if jax.process_count() > 1:
        saved = f"the newest checkpoint stands (not saved: {jax.process_count()} processes)"
    else:
        try:
            if ckpt.save(step, state, data_state=loader.get_state(step), config=config, force=True):
                ckpt.wait_until_finished()
            saved = f"step {step} is saved" if step in ckpt.all_steps() else "nothing new saved"
        except Exception as save_error:  # noqa: BLE001 -- the data error stays the one line
            saved = f"step {step} could not be saved ({type(save_error).__name__})"
    return type(error)(
        f"{error}; {saved}; rerun with --config.data.skip_corrupt_records=True to skip damaged records "
        "(allowed when resuming)"
    )


# ----------------------------------------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------------------------------------
def _boot_id() -> str:
    """This machine's boot id (a new one after every reboot; '' where there is none)."""
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot ('' where unknown): a reused pid has another."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so count from its closing parenthesis.
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _call_with_deadline(action: Callable, timeout_s: float) -> list:
    """[("ok", value)] or [("error", exception)] from `action()`, or [] if it is still running at the deadline."""
    result: list = []

    def call():
        try:
            result.append(("ok", action()))
        except Exception as error:  # noqa: BLE001 -- the caller reports it as one line
            result.append(("error", error))

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return result


def bounded(what: str, action: Callable, *, attempts: int = 3, timeout_s: float = 60.0):
    """`action()` with a bounded number of tries and one deadline over all of them (a gs:// client retries for
    minutes on its own); raises SetupError naming `what` and the last error."""
    deadline, error = time.monotonic() + timeout_s, None
    for attempt in range(attempts):
        result = _call_with_deadline(action, max(0.0, deadline - time.monotonic()))
        if not result:
            raise SetupError(f"{what}: no answer within {timeout_s:.0f} s (unreachable?)")
        (kind, value), error = result[0], result[0][1]
        if kind == "ok":
            return value
        if isinstance(error, (PermissionError, FileExistsError, NotADirectoryError)):
            break  # retrying cannot help
        time.sleep(min(2.0**attempt, max(0.0, deadline - time.monotonic())))
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    raise SetupError(f"{what}: {type(error).__name__}: {first}")


class WorkdirLock:
    """One run per workdir: process 0 holds WORKDIR/run.lock (host, pid, heartbeat) while the run lives.

    A second run on a live workdir raises SetupError naming the owner. A lock left by a crash is stale, and
    taken over with a warning, when its heartbeat, refreshed every `STALE_AFTER_S / 10` seconds, is older than
    `STALE_AFTER_S`, or on the same host at once when the machine rebooted since (another boot id), its pid
    is gone, or its pid now belongs to another process (another start time: a restarted container reuses
    pids). A lock cut short while it was written is taken over too. Taking the lock is the run's
    first write, so an unusable workdir (no gcsfs for gs://, an unreachable bucket, a read-only disk) fails
    here as one line, after bounded retries.
    """

    # A heartbeat every minute; ten missed ones mean the owner is gone.
    STALE_AFTER_S = 600.0

    def __init__(self, workdir, *, process_index: int | None = None, timeout_s: float = 60.0):
        self.workdir = absolute_workdir(workdir)
        self.path = self.workdir / "run.lock"
        self.active = (jax.process_index() if process_index is None else process_index) == 0
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        # What tells this process apart from a later one with the same pid (after a reboot, in a new container).
        self.identity = {"boot_id": _boot_id(), "started": _process_start(os.getpid())}
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._created = False

    def _stale_reason(self, held: dict) -> str | None:
        if not held:
            return "it was cut short while being written"
        age = time.time() - float(held.get("heartbeat", 0))
        if age > self.STALE_AFTER_S:
            return f"no heartbeat for {age:.0f} s"
        if held.get("host") != self.owner["host"]:
            return None
        pid = int(held.get("pid", -1))
        if held.get("boot_id") and held["boot_id"] != self.identity["boot_id"]:
            return f"the host rebooted since process {pid} took it"
        if not _pid_alive(pid):
            return f"its process {pid} is gone"
        if held.get("started") and held["started"] != _process_start(pid):
            return f"pid {pid} now belongs to another process"
        return None

    def _record(self) -> str:
        return json.dumps({**self.owner, **self.identity, "heartbeat": time.time()})

    def _acquire(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                held = json.loads(self.path.read_text())
            except ValueError:
                held = {}  # a lock cut short by a crash while it was written
            reason = self._stale_reason(held)
            if reason is None:
                age = time.time() - float(held.get("heartbeat", 0))
                raise FileExistsError(
                    f"in use by pid {held.get('pid')} on {held.get('host')} (heartbeat {age:.0f} s "
                    f"ago); wait for it, use another --workdir, or delete {self.path} if that run is gone"
                )
            logging.warning("taking over the stale lock %s (%s)", self.path, reason)
            self.path.unlink()
        text = self._record()
        if "://" in str(self.path):
            self.path.write_text(text)  # object stores have no exclusive create: best effort
            return
        # O_EXCL: of two runs starting together, exactly one creates the file.
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.STALE_AFTER_S / 10):
            with contextlib.suppress(Exception):
                if "://" in str(self.path):
                    self.path.write_text(self._record())
                    continue
                # Written aside and renamed: a starting run never reads a half-written live lock.
                partial = self.path.parent / f"{self.path.name}.{os.getpid()}.tmp"
                partial.write_text(self._record())
                os.replace(partial, self.path)

    def __enter__(self) -> WorkdirLock:
        if not self.active:
            return self
        gcs = str(self.workdir).startswith("gs://")
        if gcs and not any(importlib.util.find_spec(m) for m in ("gcsfs", "tensorflow")):
            raise SetupError(
                f"workdir {self.workdir}: gs:// needs gcsfs (pip install gcsfs, or bert_jax's [tpu] extra)"
            )
        # Bad input found after the lock leaves no directory behind: one the lock created goes if still empty.
        self._created = not gcs and not self.workdir.exists()
        if not gcs:
            prepare_workdir(self.workdir)  # a file or a read-only directory: its own one line
        bounded(f"workdir {self.workdir}", self._acquire, timeout_s=self.timeout_s)
        threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.active:
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            held = json.loads(self.path.read_text())
            if {k: held.get(k) for k in self.owner} == self.owner:
                self.path.unlink()
            if self._created and not any(self.workdir.iterdir()):
                self.workdir.rmdir()
