"""Naming a lost host (issue 24, row 13): in a multi-process run each process beats in JAX's key-value store
once a second and watches the others' beats; when one stops, every survivor prints one line naming it and exits
1, before JAX's coordination service notices the missed heartbeats and aborts with its own C++ message.

Why it comes first: the coordination service declares a process dead `heartbeat_timeout` seconds after its last
heartbeat, which the process sends every `heartbeat_timeout / 2` seconds, so the abort comes at least
`heartbeat_timeout / 2` seconds after the death; the watchdog acts `stale_after(heartbeat_timeout) + 2`
seconds after it (a beat and a look a second each). What it cannot do: when process 0, which hosts the
coordination service, dies, the others' JAX clients abort within a second (their open RPC to it fails), before
any Python code can run; jaxlib's `missed_heartbeat_callback`, which would let Python speak first, cannot be
used (jaxlib 0.10 cannot pass it the status: std::bad_cast, then terminate). docs/reliability.md says what holds.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time

ALIVE = "bert_jax/alive/"
DONE = "bert_jax/done/"
HOST = "bert_jax/host/"
BEAT_S = 1.0
# This process's watchdog once started (one per process).
_ACTIVE: HostWatchdog | None = None


def stale_after(heartbeat_timeout_s: float) -> float:
    """Seconds without a beat after which a process counts as lost: JAX's earliest abort
    (`heartbeat_timeout_s / 2` after the death) less the watchdog's own delay (2 s) and a second's margin."""
    return max(1.0, heartbeat_timeout_s / 2 - 3)


class HostWatchdog:
    """Beats for this process and watches the others' beats through `client` (JAX's distributed runtime client:
    key_value_set, key_value_dir_get). A process that finished (normally or with its own error) says so on its
    way out (atexit) and is not watched from then on, so a host that ends before the others is never "lost".
    """

    def __init__(
        self, client, process_id: int, num_processes: int, coordinator: str, stale_s: float
    ):
        self.client, self.process_id, self.stale_s = client, process_id, stale_s
        self.coordinator = coordinator
        self.peers = [p for p in range(num_processes) if p != process_id]
        now = time.monotonic()
        # Per peer: the last beat value seen and when it was first seen; the start counts as a beat.
        self.seen = {p: (None, now) for p in self.peers}
        self.kv_ok_at = now
        self.beats = 0
        self.stopped = threading.Event()

    def start(self) -> None:
        global _ACTIVE
        _ACTIVE = self
        self._kv_set(f"{HOST}{self.process_id}", f"{socket.gethostname()}, pid {os.getpid()}")
        self.beat()
        # atexit handlers run last-registered first, before JAX's client shuts down at interpreter exit.
        atexit.register(self.finish)
        threading.Thread(target=self._run, name="host-watchdog", daemon=True).start()

    def finish(self) -> None:
        """This process is ending on its own: stop watching, and tell the others not to watch it."""
        self.stopped.set()
        self._kv_set(f"{DONE}{self.process_id}", "1")

    def beat(self) -> None:
        self.beats += 1
        self._kv_set(f"{ALIVE}{self.process_id}", str(self.beats))

    def check(self, now: float) -> str | None:
        """The line naming the first lost process at time `now` (monotonic), or None while all are alive."""
        try:
            beats = dict(self.client.key_value_dir_get(ALIVE))
            done = dict(self.client.key_value_dir_get(DONE))
        except Exception:  # noqa: BLE001 -- jaxlib raises its own error type when the store is unreachable
            if now - self.kv_ok_at > self.stale_s:
                return (
                    f"host 0 (the coordinator at {self.coordinator}) stopped responding: its key-value "
                    f"store has not answered for {now - self.kv_ok_at:.0f} s"
                )
            return None
        self.kv_ok_at = now
        for peer in self.peers:
            if f"{DONE}{peer}" in done:
                continue
            value, since = self.seen[peer]
            beat = beats.get(f"{ALIVE}{peer}")
            if beat != value:
                self.seen[peer] = (beat, now)
            elif now - since > self.stale_s:
                return f"host {peer} ({self._name(peer)}) stopped responding: no heartbeat for {now - since:.0f} s"
        return None

    def _name(self, peer: int) -> str:
        try:
            return self.client.key_value_try_get(f"{HOST}{peer}")
        except Exception:  # noqa: BLE001 -- not published (it died first): the index alone names it
            return "address unknown"

    def _kv_set(self, key: str, value: str) -> None:
        try:
            self.client.key_value_set(key, value, allow_overwrite=True)
        except Exception:  # noqa: BLE001 -- an unreachable store is what `check` reports
            pass

    def _run(self) -> None:
        while not self.stopped.wait(BEAT_S):
            self.beat()
            lost = self.check(time.monotonic())
            if lost and not self.stopped.is_set():
                sys.stderr.write(
                    f"error: {lost} (killed, or its network is down); this process stops too; rerun the "
                    "command on every host to resume from the newest checkpoint\n"
                )
                sys.stderr.flush()
                # Not sys.exit: the main thread may be inside a collective that will never complete.
                os._exit(1)


def await_verdict() -> None:
    """Called with a runtime error from a collective or the distributed runtime, before it is raised on: gloo
    fails at once ("Connection closed by peer") when a host dies mid-collective, before the watchdog can know.
    When a host was lost, the watchdog names it and exits the process within its deadline, which this waits
    for; otherwise (no watchdog, or every host still beating) it returns and the error stands."""
    dog = _ACTIVE
    if dog is not None and not dog.stopped.is_set():
        dog.stopped.wait(dog.stale_s + 3 * BEAT_S)
