"""What a run does before its first step so that every failure there is clean: signals that arrive during
start-up, one run per workdir, and every host agreeing that setup worked before the first collective.

Used by every loop (pretraining, fine-tuning) and by main; imports no loop and nothing from `data/`.
See docs/reliability.md for what is guaranteed.
"""

from __future__ import annotations

import contextlib
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

from bert_jax.train_lib import Preempted, SetupError, absolute_workdir, prepare_workdir


# ----------------------------------------------------------------------------------------------------------
# Signals before the loop's own handler (train_lib.Preemption) is installed.
# ----------------------------------------------------------------------------------------------------------
class EarlySignals:
    """The SIGTERM/SIGINT handler main installs first thing: records the signal so start-up stops cleanly at
    the setup agreement (no half-written file, exit 0); a second Ctrl-C interrupts at once.
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
class SetupAgreement:
    """Every host learns whether setup worked on all of them before the first collective, so one host's
    setup error stops them all at once (instead of the others hanging in their first collective)."""

    def __init__(self):
        self.reached = False

    def _gather(self, flag: int) -> np.ndarray:
        if jax.process_count() == 1:
            return np.array([flag])
        return np.asarray(multihost_utils.process_allgather(np.int32(flag))).reshape(-1)

    def reach(self) -> None:
        """Called once setup is done on this host: raises SetupError when another host failed, Preempted
        when a host got SIGTERM/SIGINT during start-up (nothing new to save)."""
        global _AGREED
        flags = self._gather(2 if _early_signal_received() else 1)
        self.reached = _AGREED = True
        failed = [i for i, f in enumerate(flags) if f == 0]
        if failed:
            raise SetupError(f"process(es) {failed} failed during setup (see their log); stopping")
        if (flags == 2).any():
            raise Preempted("a signal arrived during start-up; stopped before the first step")

    def fail(self) -> None:
        """Tells the other hosts, at their `reach`, that setup failed here."""
        if not self.reached:
            self.reached = True
            self._gather(0)


@contextlib.contextmanager
def agreed_setup():
    """`with agreed_setup() as setup:` around a loop, which calls `setup.reach()` before its first collective
    (creating or restoring the state). An exception before that is agreed as a setup failure."""
    setup = SetupAgreement()
    try:
        yield setup
    except BaseException:
        setup.fail()
        raise


# ----------------------------------------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------------------------------------
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
    taken over with a warning, when its process is gone (same host) or its heartbeat, refreshed every
    `STALE_AFTER_S / 10` seconds, is older than `STALE_AFTER_S` (another host). Taking the lock is the run's
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
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._created = False

    def _stale_reason(self, held: dict) -> str | None:
        if held.get("host") == self.owner["host"]:
            pid = int(held.get("pid", -1))
            return None if _pid_alive(pid) else f"its process {pid} is gone"
        age = time.time() - float(held.get("heartbeat", 0))
        return f"no heartbeat for {age:.0f} s" if age > self.STALE_AFTER_S else None

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
        text = json.dumps({**self.owner, "heartbeat": time.time()})
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
                self.path.write_text(json.dumps({**self.owner, "heartbeat": time.time()}))

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
