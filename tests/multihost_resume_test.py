"""Multi-host reliability, 2 local processes x 4 CPU devices (jax.distributed over localhost, gloo): a run
SIGKILLed on both hosts mid-run and restarted ends with the losses and parameters of an uninterrupted run
(the data state in the checkpoint is host-independent, the real loader on the bundled corpus); a setup error
on one host stops both at once; a process that cannot join fails within the distributed timeout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from multihost_test import free_port
from resume_test import final_state

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STEPS = 8
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}

WORKER = f"""
import sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
process_id, port, workdir, fail_on = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{{port}}", 2, process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30)
import pretrain_test
from bert_jax import pretrain, train_lib
from bert_jax import run_setup
if process_id == fail_on:
    def broken(*args, **kwargs):
        raise ValueError("no such file: /missing/on/this/host")
    pretrain.make_pretraining_loader = broken
# The real loader on the bundled sample corpus (one phase: one compile per run).
config = pretrain_test.tiny_config(
    num_train_steps={STEPS}, mesh_shape=(2, 2, 2), checkpoint_every_steps=4, eval_every_steps=0,
    preemption_check_every_steps=1, async_checkpoints=True, **{{"model.vocab_size": -1,
    "data.phase2_fraction": 0.0}})
try:
    pretrain.run(config, workdir)
except run_setup.SetupError as error:
    sys.exit(f"error: {{error}}")
"""


def launch(workdir, fail_on=-1):
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), port, str(workdir), str(fail_on)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]


def finish(procs, timeout=600):
    outs = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=timeout)
            outs.append((proc.returncode, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def params(workdir):
    return {k: v for k, v in final_state(workdir, STEPS).items() if k.startswith("params/")}


@pytest.mark.slow
def test_two_hosts_killed_mid_run_resume_exactly(tmp_path):
    reference = tmp_path / "reference"
    for code, stderr in finish(launch(reference)):
        assert code == 0, stderr[-3000:]
    want = {r["step"]: r["train/loss"] for r in records(reference)}
    assert sorted(want) == list(range(1, STEPS + 1))

    killed = tmp_path / "killed"
    procs = launch(killed)
    deadline = time.time() + 600
    while not ((killed / "checkpoints" / "4").exists() and (killed / "metrics.jsonl").exists()
               and max(r["step"] for r in records(killed)) >= 5):  # fmt: skip
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    finish(procs)

    outs = finish(launch(killed))
    for code, stderr in outs:
        assert code == 0, stderr[-3000:]
    # The killed run's lock is stale (its process is gone): the restart takes it over.
    assert "taking over the stale lock" in outs[0][1]
    got = records(killed)
    # Each step logged once: the lines the killed run wrote past step 4 were dropped on resume.
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["train/loss"] for r in got], [want[s] for s in range(1, STEPS + 1)],
                               rtol=0, atol=1e-6)  # fmt: skip
    one, two = params(reference), params(killed)
    assert sorted(one) == sorted(two) and len(one) > 20
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_a_setup_error_on_one_host_stops_both(tmp_path):
    start = time.time()
    (code0, err0), (code1, err1) = finish(launch(tmp_path, fail_on=1), timeout=120)
    assert time.time() - start < 60
    assert code1 == 1 and "error: data: no such file: /missing/on/this/host" in err1
    assert code0 == 1 and "error: process(es) [1] failed during setup" in err0
    assert not (tmp_path / "run.lock").exists()  # released on the way out


@pytest.mark.slow
def test_a_process_that_cannot_join_fails_within_the_timeout(tmp_path):
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.main", f"--workdir={tmp_path}", "--distributed_timeout_s=5",
         f"--coordinator_address=localhost:{free_port()}", "--num_processes=2", "--process_id=1"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert time.time() - start < 60
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(
        "error: process 1 could not join the run at localhost:"
    )
    assert "within 5 s" in last
