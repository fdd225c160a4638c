"""The lost-host watchdog's decisions (issue 24, row 13), on a fake key-value store: a peer whose beat stops is
named after `stale_s`, never before; a peer that finished on its own is never lost; an unreachable store names
the coordinator; the watchdog's deadline always comes before JAX's earliest abort. The 2-process run that kills
a host is `restart_campaign_test.py::test_two_process_pretraining_killed_ten_times_ends_bitwise_equal`."""

import time

import pytest

from bert_jax import host_watchdog


class FakeStore:
    def __init__(self):
        self.values, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        assert allow_overwrite or key not in self.values
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

    def key_value_try_get(self, key):
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: {key}")
        return self.values[key]


def test_a_peer_whose_beat_stops_is_named_after_stale_s_and_a_finished_one_never():
    store = FakeStore()
    dogs = [host_watchdog.HostWatchdog(store, i, 3, "h0:1234", stale_s=10.0) for i in range(3)]
    for dog in dogs:
        dog._kv_set(
            f"{host_watchdog.HOST}{dog.process_id}", f"host{dog.process_id}, pid 10{dog.process_id}"
        )
        dog.beat()
    t0 = dogs[0].seen[1][1]
    assert dogs[0].check(t0) is None
    # Process 2 finishes first (its atexit): never watched again, however long the others run.
    dogs[2].finish()
    assert dogs[2].stopped.is_set() and store.values[f"{host_watchdog.DONE}2"] == "1"
    # Process 1 beats until t0 + 5, then is killed.
    for t in range(1, 6):
        dogs[0].beat(), dogs[1].beat()
        assert dogs[0].check(t0 + t) is None
    for t in range(6, 16):
        dogs[0].beat()
        assert dogs[0].check(t0 + t) is None, t  # 10 s after its last beat seen at t0 + 5: not yet
    assert (
        dogs[0].check(t0 + 15.5)
        == "host 1 (host1, pid 101) stopped responding: no heartbeat for 10 s"
    )
    # A peer that died before publishing its name is named by its index alone.
    del store.values[f"{host_watchdog.HOST}1"]
    assert "host 1 (address unknown)" in dogs[0].check(t0 + 16)


def test_an_unreachable_store_names_the_coordinator_after_stale_s():
    store = FakeStore()
    dog = host_watchdog.HostWatchdog(store, 1, 2, "h0:1234", stale_s=5.0)
    store.values[f"{host_watchdog.ALIVE}0"] = "1"
    assert dog.check(100.0) is None
    store.down = True
    dog.beat()  # a failed write is what `check` reports, not an error of its own
    assert dog.check(104.0) is None
    assert dog.check(105.5) == (
        "host 0 (the coordinator at h0:1234) stopped responding: its key-value store has not answered for 6 s"
    )


@pytest.mark.parametrize("timeout, stale", [(60, 27.0), (30, 12.0), (10, 2.0), (4, 1.0)])
def test_the_watchdog_acts_before_jaxs_earliest_abort(timeout, stale):
    # JAX's coordination service declares a process dead `timeout` s after its last heartbeat, sent every
    # timeout / 2 s: its abort comes >= timeout / 2 s after the death. The watchdog acts <= stale + 2 s after it.
    # Below 8 s there is no room for both (the floor is 1 s).
    assert host_watchdog.stale_after(timeout) == stale
    assert (stale + 2 * host_watchdog.BEAT_S < timeout / 2) == (timeout >= 8)


def test_a_failed_collective_waits_for_the_watchdog_to_name_the_lost_host(monkeypatch, capsys):
    # gloo raises at once when a peer dies mid-collective; main then waits for the watchdog's verdict.
    store = FakeStore()
    exits = []
    monkeypatch.setattr(host_watchdog.atexit, "register", lambda fn: None)
    monkeypatch.setattr(host_watchdog, "_ACTIVE", None)
    host_watchdog.await_verdict()  # no watchdog (one process): returns at once
    peer = host_watchdog.HostWatchdog(store, 1, 2, "h0:1234", stale_s=1.0)
    peer._kv_set(f"{host_watchdog.HOST}1", "host1, pid 101")
    peer.beat()  # then it dies
    dog = host_watchdog.HostWatchdog(store, 0, 2, "h0:1234", stale_s=1.0)

    def exit_(code):
        exits.append(code)
        dog.stopped.set()

    monkeypatch.setattr(host_watchdog.os, "_exit", exit_)
    dog.start()
    start = time.monotonic()
    host_watchdog.await_verdict()
    assert exits == [1] and time.monotonic() - start < 1.0 + 3 * host_watchdog.BEAT_S
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: host 1 (host1, pid 101) stopped responding: no heartbeat for ")
    assert last.endswith("rerun the command on every host to resume from the newest checkpoint")
