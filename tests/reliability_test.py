"""Reliability rows of issue 13 that need no second process: checkpoints that prove themselves (checksums,
damaged steps re-saved, non-finite states never saved, the last good step), one run per workdir (the lock,
stale locks, an unusable workdir), signals during start-up, a host-independent data state, resume config checks
and metrics.jsonl without repeated steps, a full disk. The multi-process rows are in multihost_resume_test.py."""

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from checkpoint_test import _abstract, _leaves, _state

from bert_jax import checkpoint, pretrain, reporting, run_setup, sharding, startup, train_lib
from bert_jax.configs.pretraining import data_config
from bert_jax.data import loader as loader_lib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((8, 1, 1))


def _save(ckpt, step, state, **kwargs):
    assert ckpt.save(step, state, data_state={"step": step}, config={}, **kwargs)
    ckpt.wait_until_finished()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints that prove themselves (rows 2, 3, 7).
# ----------------------------------------------------------------------------------------------------------
def test_checksums_are_independent_of_the_mesh_and_catch_one_bit(mesh):
    state = _state(mesh, seed=3)
    sums, finite = checkpoint.fingerprint(state)
    other_mesh = jax.device_put(
        state, train_lib.shardings_of(_abstract(sharding.make_mesh((2, 2, 2))))
    )
    assert checkpoint.fingerprint(other_mesh) == (sums, True) and finite
    kernel = np.asarray(state.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    flipped = kernel.view(np.uint32).copy()
    flipped[7, 5] ^= 1 << 3  # one bit of one float
    changed = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    changed = jax.device_put(flipped.view(np.float32), changed.sharding)
    params = jax.tree_util.tree_map(lambda x: x, state.params)
    params["bert"]["embeddings"]["word_embeddings"]["embedding"] = changed
    new_sums, _ = checkpoint.fingerprint(state.replace(params=params))
    differ = [k for k in sums if sums[k] != new_sums[k]]
    assert differ == ["params/bert/embeddings/word_embeddings/embedding"]


def test_a_state_failing_its_checksums_falls_back_is_deleted_and_saved_again(
    tmp_path, mesh, caplog
):
    """Step 2's arrays replaced by another state's (a stale or swapped shard): TensorStore reads them fine,
    the checksums do not match; step 1 restores, step 2 is deleted, and saving step 2 again works."""
    first, second = _state(mesh, step=1, seed=1), _state(mesh, step=2, seed=2)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "run"), keep=3, save_interval_steps=1)
    _save(ckpt, 1, first)
    _save(ckpt, 2, second)
    other = checkpoint.Checkpointer(str(tmp_path / "other"), keep=3, save_interval_steps=1)
    _save(other, 2, _state(mesh, step=2, seed=9))
    other.close()
    shutil.rmtree(tmp_path / "run" / "2" / "state")
    shutil.copytree(tmp_path / "other" / "2" / "state", tmp_path / "run" / "2" / "state")

    with caplog.at_level(logging.WARNING):
        state, data, _ = ckpt.restore(None, _abstract(mesh))
    assert data == {"step": 1} and int(state.step) == 1
    for got, want in zip(_leaves(state), _leaves(first), strict=True):
        np.testing.assert_array_equal(got, want)
    warnings = [r.getMessage() for r in caplog.records if r.pathname.endswith("checkpoint.py")]
    assert re.fullmatch(
        f"checkpoint {tmp_path}/run/2 is unreadable \\({tmp_path}/run/2/state: '(params|opt_state)/[^']+' "
        "does not match its checksum\\); trying the previous one",
        warnings[0],
    ), warnings[0]
    assert all("\n" not in w for w in warnings)
    assert ckpt.all_steps() == [1]
    _save(ckpt, 2, second)  # the run passing step 2 again re-saves it
    state, data, _ = ckpt.restore(None, _abstract(mesh))
    assert data == {"step": 2} and int(state.step) == 2
    ckpt.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_bit_flipped_data_file_never_restores_silently(tmp_path, mesh, caplog):
    first, second = _state(mesh, step=1, seed=1), _state(mesh, step=2, seed=2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, save_interval_steps=1)
    _save(ckpt, 1, first)
    _save(ckpt, 2, second)
    files = sorted(
        p for p in (tmp_path / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    )
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        state, _, _ = ckpt.restore(None, _abstract(mesh))
    assert int(state.step) == 1
    warning = [r.getMessage() for r in caplog.records if r.pathname.endswith("checkpoint.py")][0]
    assert warning.startswith(f"checkpoint {tmp_path}/2 is unreadable (") and "\n" not in warning
    assert "tensorstore" not in warning.lower() and len(warning) < 400
    ckpt.close()


def test_non_finite_states_are_never_saved_and_the_last_good_step_is_named(tmp_path, mesh):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=5, save_interval_steps=1)
    assert ckpt.describe_last_good() == (
        f" No checkpoint with finite parameters and loss was saved in {tmp_path}."
    )
    state = _state(mesh, step=1)
    _save(ckpt, 1, state)
    # Step 2's loss was not finite (its update was skipped): saved, but not "good".
    _save(ckpt, 2, state.replace(step=state.step + 1), loss_finite=False)
    nan_params = jax.tree.map(lambda x: x * np.nan, state.params)
    assert not ckpt.save(3, state.replace(params=nan_params), data_state={}, config={}, force=True)
    # Only Adam's first moments turn infinite: the guard covers the optimizer state too.
    blow_up = lambda path, x: x * np.inf if ".mu" in jax.tree_util.keystr(path) else x
    bad_opt = jax.tree_util.tree_map_with_path(blow_up, state.opt_state)
    assert checkpoint.fingerprint(state.replace(opt_state=bad_opt))[1] is False
    assert not ckpt.save(4, state.replace(opt_state=bad_opt), data_state={}, config={}, force=True)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2] and ckpt.last_good_step() == 1
    assert ckpt.describe_last_good() == (
        f" The last good checkpoint (finite parameters and loss) is step 1 in {tmp_path}."
    )
    ckpt.close()


def test_disk_full_is_one_line_at_the_save_that_failed(small_disk, mesh):
    """A 3 MiB tmpfs (root only) and a 4 MiB state: the save refuses before it starts."""
    target = small_disk
    ckpt = checkpoint.Checkpointer(str(target), keep=1, save_interval_steps=1)
    big = {"w": jax.device_put(np.ones((1024, 1024), np.float32))}
    with pytest.raises(checkpoint.CheckpointSaveError) as error:
        ckpt.save(5, big, data_state={}, config={})
    assert str(error.value).startswith(f"cannot save step 5 to {target}: ")
    assert "MiB free, the state needs up to 4.0 MiB (disk full?)" in str(error.value)
    ckpt.close()
    assert not [p for p in target.iterdir() if p.name.isdigit()]  # nothing half-written as a step


# ----------------------------------------------------------------------------------------------------------
# One run per workdir (row 6), an unusable workdir (row 11).
# ----------------------------------------------------------------------------------------------------------
def test_a_live_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    with startup.WorkdirLock(tmp_path, process_index=0):
        held = json.loads((tmp_path / "run.lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(run_setup.SetupError) as error:
            startup.WorkdirLock(tmp_path, process_index=0).__enter__()
        assert str(error.value).startswith(
            f"workdir {tmp_path}: FileExistsError: in use by pid {os.getpid()} on {socket.gethostname()}"
        )
        assert "\n" not in str(error.value)
        startup.WorkdirLock(tmp_path, process_index=1).__enter__()  # other hosts never take it
    assert not (tmp_path / "run.lock").exists()

    # A crashed run on this host (its pid is gone), then one on another host that stopped beating.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for owner in ({"host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time()},
                  {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 601}):  # fmt: skip
        (tmp_path / "run.lock").write_text(json.dumps(owner))
        with caplog.at_level(logging.WARNING), startup.WorkdirLock(tmp_path, process_index=0):
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text and "no heartbeat for 60" in caplog.text
    (tmp_path / "run.lock").write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()})
    )
    with pytest.raises(run_setup.SetupError, match="in use by pid 1 on elsewhere"):
        startup.WorkdirLock(tmp_path, process_index=0).__enter__()


def test_an_unusable_workdir_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(run_setup.SetupError) as error:
        startup.WorkdirLock(tmp_path / "file" / "run", process_index=0).__enter__()
    message = str(error.value)
    assert message.startswith("workdir: ") and f"{tmp_path}/file" in message and "\n" not in message
    monkeypatch.setattr(startup.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(run_setup.SetupError) as error:
        startup.WorkdirLock("gs://bucket/run", process_index=0).__enter__()
    assert str(error.value) == (
        "workdir gs://bucket/run: gs:// needs gcsfs (pip install gcsfs, or bert_jax's [tpu] extra)"
    )
    start = time.monotonic()
    with pytest.raises(run_setup.SetupError, match=r"^workdir gs://x: no answer within 0 s"):
        startup.bounded("workdir gs://x", lambda: time.sleep(5), timeout_s=0.3)
    assert time.monotonic() - start < 2
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionError("503 Service Unavailable\ndetails...")

    with pytest.raises(run_setup.SetupError) as error:
        startup.bounded("workdir gs://x", flaky, attempts=2, timeout_s=5)
    assert (
        str(error.value) == "workdir gs://x: ConnectionError: 503 Service Unavailable"
        and len(calls) == 2
    )


# ----------------------------------------------------------------------------------------------------------
# Signals during start-up (row 12).
# ----------------------------------------------------------------------------------------------------------
def test_a_signal_during_start_up_stops_at_the_setup_agreement():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        early = startup.EarlySignals().install()
        startup.SetupAgreement().reach()  # no signal yet: setup goes on
        os.kill(os.getpid(), signal.SIGTERM)
        assert early.received == [signal.SIGTERM]
        with pytest.raises(run_setup.Preempted, match="signal arrived during start-up"):
            startup.SetupAgreement().reach()
        # A loop's handler installed after the agreement inherits it, and restores it afterwards.
        preemption = train_lib.Preemption(check_every=1)
        assert preemption.requested and preemption.agreed(1)
        preemption.restore()
        assert signal.getsignal(signal.SIGTERM) is early
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal, Ctrl-C: at once
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.slow
def test_main_exits_75_on_sigterm_during_start_up(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bert_jax.main", f"--workdir={tmp_path}", "--config.num_train_steps=4",
         "--config.warmup_steps=1"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "] mesh {" in line:  # logged in setup, after main installed its handler
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 75, "".join(lines) + rest
    assert "SIGTERM during start-up" in rest and "stopped before the first step" in rest
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.slow
def test_main_saves_and_exits_75_on_ctrl_c(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bert_jax.main", f"--workdir={tmp_path}", "--config.num_train_steps=400",
         "--config.warmup_steps=1", "--config.global_batch_size=8", "--config.log_every_steps=1",
         "--config.eval_every_steps=0", "--config.data.seq_length=32", "--config.mesh_shape=(8,1,1)"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    # main.EXIT_STOPPED: not 0, so `train && finetune` does not go on with a half-trained model.
    assert proc.returncode == 75, stderr[-3000:]
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 1 <= saved[0] < 400 and "SIGINT: saving a checkpoint" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "run.lock").exists()


# ----------------------------------------------------------------------------------------------------------
# Resume: a host-independent data state (row 1), the config check (row 10), metrics.jsonl.
# ----------------------------------------------------------------------------------------------------------
def _loader(process_index=0, process_count=2, num_train_steps=40):
    # The recipe's data fields (every one is read as cfg.field), shrunk.
    config = data_config()
    config.update(
        seq_length=32, max_predictions_per_seq=5, phase2_seq_length=64, phase2_fraction=0.25
    )
    return loader_lib.make_pretraining_loader(
        config, global_batch_size=8, num_train_steps=num_train_steps, seed=1,
        process_index=process_index, process_count=process_count,
    )  # fmt: skip


def test_the_data_state_is_host_independent():
    hosts = [_loader(0), _loader(1)]
    saved = json.loads(json.dumps(hosts[0].get_state(12)))  # written by process 0 only
    assert saved == hosts[1].get_state(12)
    for host in hosts:
        fresh = _loader(host.process_index)
        fresh.set_state(saved)
        iterator = fresh.iterate()
        step, batch = next(iterator)
        iterator.close()
        assert step == 12
        want = host.batch(12)
        for key in want:
            np.testing.assert_array_equal(batch[key], want[key], err_msg=key)
    with pytest.raises(
        ValueError, match=r"^data state has process_count=2, this run 1 \(each host"
    ):
        _loader(0, process_count=1).set_state(saved)
    # More steps move phase 2 (step 30 -> 60): fine before step 30, an error after it.
    _loader(num_train_steps=80).set_state(saved)
    with pytest.raises(
        ValueError,
        match=r"before step 32 were \[\[0, 32, 5\], \[30, 64, 80\]\], this run has \[\[0, 32, 5\]\]$",
    ):
        _loader(num_train_steps=80).set_state(hosts[0].get_state(32))


def test_resume_refuses_breaking_config_changes(caplog):
    from pretrain_test import tiny_config

    stored = json.loads(json.dumps(tiny_config().to_dict()))
    for override, words in [
        ({"vocab_file": "/other/vocab.txt"}, "vocab_file: '' -> '/other/vocab.txt'"),
        ({"do_lower_case": False}, "do_lower_case: True -> False"),
        ({"data.phase2_fraction": 0.5}, "data.phase2_fraction: 0.05 -> 0.5"),
        ({"model.hidden_size": 64}, "model.hidden_size: 32 -> 64"),
        ({"global_batch_size": 32}, "global_batch_size: 16 -> 32"),
        ({"seed": 1}, "seed: 0 -> 1"),
        ({"learning_rate": 1e-4}, "learning_rate: 0.001 -> 0.0001"),
    ]:
        with pytest.raises(ValueError) as error:
            pretrain.check_resume(stored, tiny_config(**override), step=5)
        assert str(error.value) == (
            f"the config differs from the stored run's in ways that break continuation: {words} "
            "(use another --workdir to start a new run)"
        )
    with pytest.raises(ValueError, match=r"^num_train_steps 4 < the restored step 5$"):
        pretrain.check_resume(stored, tiny_config(num_train_steps=4), step=5)
    with caplog.at_level(logging.WARNING):
        pretrain.check_resume(
            stored, tiny_config(num_train_steps=30, log_every_steps=5, mesh_shape=(2, 2, 2)), step=5
        )
    assert (
        "resuming with changed settings: log_every_steps: 1 -> 5; mesh_shape: [-1, 1, 1] -> [2, 2, 2]; "
        "num_train_steps: 10 -> 30"
    ) in caplog.text


def test_metrics_lines_past_the_restored_step_are_dropped(tmp_path):
    lines = [{"step": s, "train/loss": float(s)} for s in (1, 2, 3, 4, 5, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with reporting.MetricWriter(tmp_path, process_index=0, resume_step=4) as writer:
        writer.write_scalars(5, {"train/loss": 50.0})
    got = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert got == [*lines[:4], {"step": 5, "train/loss": 50.0}]
